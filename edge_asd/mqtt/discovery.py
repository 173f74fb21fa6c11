"""Home Assistant MQTT discovery: the retained config messages that announce the box and its machines.

Every entity tells the truth about how fresh it is:

* availability: a machine's entities are available only while the box says ``online`` (a
  clean stop's retained ``stopped`` counts as not available, as the broker's ``offline``
  does) and its source is ``ok`` or ``silent`` (a dead or ended source leaves no score to
  trust);
* the anomalous binary sensor follows the debounced alert state (the retained
  ``<machine>/alert_state`` topic), not each clip's raw flag, so it does not flicker;
* the source state (``ok``, ``silent``, ``failing``, ``ended``) is an entity of its own;
* score and sound level expire when no clip came for as long as the daemon itself waits
  before it calls a source failing;
* device names and entity ids carry the box's device id, so two boxes with a ``fan00`` do
  not collide, and the devices link to the box's page when ``[web]`` is on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_asd import __version__
from edge_asd.mqtt.payloads import SOURCE_STATES, STATUS_OFFLINE, STATUS_ONLINE
from edge_asd.mqtt.topics import build_topic, check_level

# The retained topic under <prefix>/<device_id>/<machine_id>/ that carries the debounced state.
ALERT_STATE = "alert_state"
# Discovery messages per machine (score, level, anomalous, source): the publisher sizes paho's window with it.
ENTITIES_PER_MACHINE = 4
# The source states a machine publishes (the heartbeat's "starting" never reaches the source topic).
PUBLISHED_SOURCE_STATES = tuple(s for s in SOURCE_STATES if s != "starting")
# Source states under which the machine's scores are current: a silent microphone still gives them.
LIVE_SOURCE_STATES = ("ok", "silent")


@dataclass(frozen=True)
class HaDevice:
    """What discovery says beyond the ids, known only to the daemon: the page and the clip timing."""

    configuration_url: str | None = None           # the page on the box, when [web] is on
    expire_after_s: Mapping[str, int] = field(default_factory=dict)  # machine id -> seconds a score stays fresh


def _slug(text: str) -> str:
    # Home Assistant's entity ids are lowercase letters, digits and underscores.
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def _status_available(status_topic: str) -> dict[str, str]:
    # "stopped" (a clean shutdown) and "offline" (the last will) both mean: nothing current here.
    return {
        "topic": status_topic,
        "value_template": f"{{{{ '{STATUS_ONLINE}' if value == '{STATUS_ONLINE}' else '{STATUS_OFFLINE}' }}}}",
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
    }


def _source_available(source_topic: str) -> dict[str, str]:
    live = ", ".join(f"'{s}'" for s in LIVE_SOURCE_STATES)
    return {
        "topic": source_topic,
        "value_template": f"{{{{ '{STATUS_ONLINE}' if value_json.state in ({live}) else '{STATUS_OFFLINE}' }}}}",
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
    }


def discovery_messages(
    device_id: str,
    machines: Iterable[str],
    prefix: str,
    ha_prefix: str = "homeassistant",
    ha_device: HaDevice | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Retained config messages announcing the entities to Home Assistant.

    One HA device for the box (a connectivity sensor fed by the status topic) and
    one per monitored machine (anomaly score, sound level, anomalous, source), linked
    to the box with ``via_device``. Topics: ``<ha_prefix>/<component>/<device_id>/<object_id>/config``.
    """
    ha_device = ha_device or HaDevice()
    status = build_topic(prefix, device_id, "status")
    box_ident = f"edge_asd_{device_id}"
    box_slug = _slug(device_id)
    origin = {"name": "edge-asd", "sw_version": __version__}
    page = {"configuration_url": ha_device.configuration_url} if ha_device.configuration_url else {}
    box_device = {
        "identifiers": [box_ident],
        "name": f"edge-asd {device_id}",
        "manufacturer": "edge-asd",
        "model": "edge-asd monitoring daemon",
        "sw_version": __version__,
        **page,
    }
    out: list[tuple[str, dict[str, Any]]] = [
        (
            build_topic(ha_prefix, "binary_sensor", device_id, "connectivity", "config"),
            {
                "name": "Connectivity",
                "unique_id": f"{box_ident}_connectivity",
                "default_entity_id": f"binary_sensor.edge_asd_{box_slug}_connectivity",
                "state_topic": status,
                # "stopped" and "offline" both mean not connected. No availability
                # topic here: this sensor *is* the availability, and should read
                # "disconnected" rather than "unavailable".
                "value_template": "{{ 'ON' if value == 'online' else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "device": box_device,
                "origin": origin,
            },
        )
    ]
    for machine in machines:
        check_level(machine)
        score_topic = build_topic(prefix, device_id, machine, "score")
        source_topic = build_topic(prefix, device_id, machine, "source")
        state_topic = build_topic(prefix, device_id, machine, ALERT_STATE)
        ident = f"{box_ident}_{machine}"
        entity = f"edge_asd_{box_slug}_{_slug(machine)}"
        device = {
            "identifiers": [ident],
            "name": f"{machine} ({device_id})",
            "manufacturer": "edge-asd",
            "model": "machine sound monitor",
            "via_device": box_ident,
            **page,
        }
        live = {
            "availability": [_status_available(status), _source_available(source_topic)],
            "availability_mode": "all",
        }
        expire = ha_device.expire_after_s.get(machine)
        fresh = {"expire_after": int(expire)} if expire else {}
        out.append(
            (
                build_topic(ha_prefix, "sensor", device_id, f"{machine}_score", "config"),
                {
                    "name": "Anomaly score",
                    "unique_id": f"{ident}_score",
                    "default_entity_id": f"sensor.{entity}_score",
                    "state_topic": score_topic,
                    "value_template": "{{ value_json.score }}",
                    # A dimensionless score: no device_class fits, and a wrong
                    # numeric one makes HA show "unknown".
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "json_attributes_topic": score_topic,
                    "icon": "mdi:waveform",
                    **fresh,
                    **live,
                    "device": device,
                    "origin": origin,
                },
            )
        )
        out.append(
            (
                build_topic(ha_prefix, "sensor", device_id, f"{machine}_level", "config"),
                {
                    "name": "Sound level",
                    "unique_id": f"{ident}_level",
                    "default_entity_id": f"sensor.{entity}_level",
                    "state_topic": score_topic,
                    "value_template": "{{ value_json.dbfs }}",
                    # dBFS is relative to the converter's full scale, not a sound
                    # pressure, so HA's sound_pressure class (dB SPL) would be wrong.
                    "unit_of_measurement": "dBFS",
                    "state_class": "measurement",
                    "suggested_display_precision": 1,
                    "entity_category": "diagnostic",
                    **fresh,
                    **live,
                    "device": device,
                    "origin": origin,
                },
            )
        )
        out.append(
            (
                build_topic(ha_prefix, "binary_sensor", device_id, f"{machine}_anomalous", "config"),
                {
                    "name": "Anomalous",
                    "unique_id": f"{ident}_anomalous",
                    "default_entity_id": f"binary_sensor.{entity}_anomalous",
                    # The debounced state, retained: it changes only when the alert rules
                    # say so, and Home Assistant knows it again at once after a restart.
                    # No expire_after: it is published on changes only.
                    "state_topic": state_topic,
                    "value_template": "{{ 'ON' if value_json.state == 'anomalous' else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "json_attributes_topic": state_topic,
                    "device_class": "problem",
                    **live,
                    "device": device,
                    "origin": origin,
                },
            )
        )
        out.append(
            (
                build_topic(ha_prefix, "sensor", device_id, f"{machine}_source", "config"),
                {
                    "name": "Sound source",
                    "unique_id": f"{ident}_source",
                    "default_entity_id": f"sensor.{entity}_source",
                    "state_topic": source_topic,
                    "value_template": "{{ value_json.state }}",
                    "device_class": "enum",
                    "options": list(PUBLISHED_SOURCE_STATES),
                    "json_attributes_topic": source_topic,
                    "icon": "mdi:microphone",
                    # Only the box's status: a failing source must show as failing, not unavailable.
                    "availability": [_status_available(status)],
                    "device": device,
                    "origin": origin,
                },
            )
        )
    return out
