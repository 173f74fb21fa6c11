"""Home Assistant MQTT discovery: the retained config messages that announce the box and its machines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from edge_asd import __version__
from edge_asd.mqtt.payloads import STATUS_OFFLINE, STATUS_ONLINE
from edge_asd.mqtt.topics import build_topic, check_level


def discovery_messages(
    device_id: str,
    machines: Iterable[str],
    prefix: str,
    ha_prefix: str = "homeassistant",
) -> list[tuple[str, dict[str, Any]]]:
    """Retained config messages announcing the entities to Home Assistant.

    One HA device for the box (a connectivity sensor fed by the status topic) and
    one per monitored machine (score, sound level, anomalous), linked to the box
    with ``via_device``. Topics: ``<ha_prefix>/<component>/<device_id>/<object_id>/config``.
    The anomalous sensor follows the per-clip ``anomalous`` flag of the score topic,
    so its state is known again after one clip whenever Home Assistant restarts.
    """
    status = build_topic(prefix, device_id, "status")
    box_ident = f"edge_asd_{device_id}"
    origin = {"name": "edge-asd", "sw_version": __version__}
    availability = {
        "availability_topic": status,
        "payload_available": STATUS_ONLINE,
        "payload_not_available": STATUS_OFFLINE,
    }
    box_device = {
        "identifiers": [box_ident],
        "name": f"edge-asd {device_id}",
        "manufacturer": "edge-asd",
        "model": "edge-asd monitoring daemon",
        "sw_version": __version__,
    }
    out: list[tuple[str, dict[str, Any]]] = [
        (
            build_topic(ha_prefix, "binary_sensor", device_id, "connectivity", "config"),
            {
                "name": "Connectivity",
                "unique_id": f"{box_ident}_connectivity",
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
        score_topic = build_topic(prefix, device_id, machine, "score")
        ident = f"{box_ident}_{check_level(machine)}"
        device = {
            "identifiers": [ident],
            "name": machine,
            "manufacturer": "edge-asd",
            "model": "machine sound monitor",
            "via_device": box_ident,
        }
        out.append(
            (
                build_topic(ha_prefix, "sensor", device_id, f"{machine}_score", "config"),
                {
                    "name": "Anomaly score",
                    "unique_id": f"{ident}_score",
                    "state_topic": score_topic,
                    "value_template": "{{ value_json.score }}",
                    # A dimensionless score: no device_class fits, and a wrong
                    # numeric one makes HA show "unknown".
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "json_attributes_topic": score_topic,
                    "icon": "mdi:waveform",
                    **availability,
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
                    "state_topic": score_topic,
                    "value_template": "{{ value_json.dbfs }}",
                    # dBFS is relative to the converter's full scale, not a sound
                    # pressure, so HA's sound_pressure class (dB SPL) would be wrong.
                    "unit_of_measurement": "dBFS",
                    "state_class": "measurement",
                    "suggested_display_precision": 1,
                    "entity_category": "diagnostic",
                    **availability,
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
                    "state_topic": score_topic,
                    "value_template": "{{ 'ON' if value_json.anomalous else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "problem",
                    **availability,
                    "device": device,
                    "origin": origin,
                },
            )
        )
    return out
