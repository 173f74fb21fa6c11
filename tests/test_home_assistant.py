"""Home Assistant discovery (issue 27, item 5): every config uses only keys Home Assistant's MQTT
integration accepts, and every state, availability and attributes topic's payload, as a real
``edge-asd run`` publishes it to a real Mosquitto, renders through its template to a value HA takes.

Home Assistant drops keys it does not know from a discovery payload without a word (its MQTT page:
"unknown configuration keys are allowed but ignored"), so a misspelt or outdated key is a silent
loss: the key sets below are what HA documents, and a config may use nothing else.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

from edge_asd.mqtt.discovery import ALERT_STATE, HaDevice, discovery_messages

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker, free_port  # noqa: E402
from daemon_proc import Daemon, bundle_manifest, noise_wavs, write_config  # noqa: E402

jinja2 = pytest.importorskip("jinja2", reason="jinja2 renders Home Assistant's templates (pip install '.[dev]')")

DEVICE = "line1-edge"
PREFIX = "edge_asd"

# --- what Home Assistant accepts, from its documentation ----------------------------------------------------
# The "Configuration Variables" of https://www.home-assistant.io/integrations/sensor.mqtt/ and
# https://www.home-assistant.io/integrations/binary_sensor.mqtt/ (home-assistant.io sources
# source/_integrations/sensor.mqtt.markdown and binary_sensor.mqtt.markdown), the discovery payload's
# `origin` of https://www.home-assistant.io/integrations/mqtt/#discovery-payload, and `default_entity_id`,
# which replaced `object_id` in Home Assistant 2025.10 (object_id stopped working in 2026.4: HA's own
# deprecation notice, quoted in github.com/SAIC-iSmart-API/saic-python-mqtt-gateway/issues/376).
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category", "entity_picture",
    "expire_after", "force_update", "icon", "json_attributes_template", "json_attributes_topic", "name",
    "origin", "payload_available", "payload_not_available", "platform", "qos", "state_topic", "unique_id",
    "value_template",
}
HA_KEYS = {
    "sensor": COMMON_KEYS | {"last_reset_value_template", "options", "suggested_display_precision", "state_class",
                             "unit_of_measurement"},
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id",
               "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"payload_available", "payload_not_available", "topic", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}
ENTITY_CATEGORIES = {"diagnostic", "config"}


def check_accepted(topic: str, config: dict) -> None:
    """``config`` uses only what Home Assistant documents for its component, in the documented combinations."""
    component = topic.split("/")[1]
    assert component in HA_KEYS, topic
    assert set(config) <= HA_KEYS[component], (topic, set(config) - HA_KEYS[component])
    assert config["state_topic"] and config["unique_id"], topic
    assert set(config["device"]) <= DEVICE_KEYS and config["device"]["identifiers"], topic
    assert set(config["origin"]) <= ORIGIN_KEYS and config["origin"]["name"], topic
    assert not ("availability" in config and "availability_topic" in config), "HA: must not be used together"
    for entry in config.get("availability", []):
        assert set(entry) <= AVAILABILITY_KEYS and entry["topic"], (topic, entry)
    assert config.get("availability_mode", "latest") in AVAILABILITY_MODES
    assert config.get("entity_category", "diagnostic") in ENTITY_CATEGORIES
    assert re.fullmatch(rf"{component}\.[a-z0-9_]+", config["default_entity_id"]), config["default_entity_id"]
    if "expire_after" in config:
        assert type(config["expire_after"]) is int and config["expire_after"] > 0
    if "options" in config:  # HA: only with device_class enum, never with state_class or a unit
        assert config["device_class"] == "enum" and config["options"]
        assert "state_class" not in config and "unit_of_measurement" not in config
    if "configuration_url" in config["device"]:
        assert re.match(r"(https?|homeassistant)://", config["device"]["configuration_url"])


def render(template: str, payload: bytes) -> str:
    """A Home Assistant value template on one MQTT payload: ``value`` the text, ``value_json`` it parsed."""
    text = payload.decode("utf-8")
    try:
        value_json = json.loads(text)
    except ValueError:
        value_json = None
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        value=text, value_json=value_json).strip()


def check_state(config: dict, payload: bytes) -> str:
    """The state Home Assistant takes from ``payload`` on the config's state topic; fails where HA would not take it."""
    state = render(config["value_template"], payload)
    if "payload_on" in config:
        assert state in (config["payload_on"], config["payload_off"]), (config["unique_id"], payload, state)
    elif config.get("device_class") == "enum":
        assert state in config["options"], (config["unique_id"], payload, state)
    else:
        assert math.isfinite(float(state)), (config["unique_id"], payload, state)
    return state


def check_available(entry: dict, payload: bytes) -> bool:
    verdict = render(entry["value_template"], payload)
    assert verdict in (entry["payload_available"], entry["payload_not_available"]), (entry, payload, verdict)
    return verdict == entry["payload_available"]


# --- the configs themselves -----------------------------------------------------------------------------------


def test_every_discovery_config_uses_only_keys_home_assistant_accepts():
    page = HaDevice(configuration_url="http://line1-edge.plant.lan:8080/", expire_after_s={"pump1": 31, "fan": 14})
    for ha_device in (None, page):
        msgs = discovery_messages(DEVICE, ["pump1", "fan"], PREFIX, ha_device=ha_device)
        assert len(msgs) == 1 + 4 * 2
        for topic, config in msgs:
            check_accepted(topic, config)
    # A key Home Assistant would drop is caught (the check can fail).
    topic, config = discovery_messages(DEVICE, ["pump1"], PREFIX)[1]
    with pytest.raises(AssertionError):
        check_accepted(topic, {**config, "object_id": "pump1_score"})


def test_machines_get_their_entities_and_the_device_id_in_names_and_entity_ids():
    page = HaDevice(configuration_url="http://line1-edge.plant.lan:8080/", expire_after_s={"pump1": 31})
    msgs = dict(discovery_messages(DEVICE, ["pump1", "fan"], PREFIX, ha_device=page))
    ha = "homeassistant"
    assert set(msgs) == {f"{ha}/binary_sensor/{DEVICE}/connectivity/config"} | {
        f"{ha}/{component}/{DEVICE}/{m}_{key}/config"
        for m in ("pump1", "fan")
        for component, key in (("sensor", "score"), ("sensor", "level"), ("binary_sensor", "anomalous"),
                               ("sensor", "source"))
    }
    score = msgs[f"{ha}/sensor/{DEVICE}/pump1_score/config"]
    assert score["state_topic"] == f"{PREFIX}/{DEVICE}/pump1/score" and score["expire_after"] == 31
    assert score["default_entity_id"] == "sensor.edge_asd_line1_edge_pump1_score"
    assert [a["topic"] for a in score["availability"]] == [f"{PREFIX}/{DEVICE}/status", f"{PREFIX}/{DEVICE}/pump1/source"]
    assert score["availability_mode"] == "all"
    anomalous = msgs[f"{ha}/binary_sensor/{DEVICE}/pump1_anomalous/config"]
    assert anomalous["state_topic"] == f"{PREFIX}/{DEVICE}/pump1/{ALERT_STATE}" and "expire_after" not in anomalous
    assert anomalous["device_class"] == "problem"
    source = msgs[f"{ha}/sensor/{DEVICE}/pump1_source/config"]
    assert source["options"] == ["ok", "silent", "failing", "ended"]
    assert [a["topic"] for a in source["availability"]] == [f"{PREFIX}/{DEVICE}/status"], "failing must show, not hide"
    assert "expire_after" not in msgs[f"{ha}/sensor/{DEVICE}/fan_score/config"], "no clip timing known for fan"
    box = msgs[f"{ha}/binary_sensor/{DEVICE}/connectivity/config"]
    assert box["state_topic"] == f"{PREFIX}/{DEVICE}/status" and "availability" not in box
    assert box["device"]["configuration_url"] == score["device"]["configuration_url"] == page.configuration_url
    # One HA device per machine, named with the box, linked to it; unique ids are unique.
    pump_devices = {json.dumps(c["device"], sort_keys=True) for t, c in msgs.items() if "/pump1_" in t}
    assert len(pump_devices) == 1
    pump = json.loads(pump_devices.pop())
    assert pump["via_device"] == box["device"]["identifiers"][0] and pump["name"] == f"pump1 ({DEVICE})"
    assert len({c["unique_id"] for c in msgs.values()}) == len(msgs)
    assert "configuration_url" not in discovery_messages(DEVICE, ["pump1"], PREFIX)[1][1]["device"]


def test_two_boxes_with_the_same_machine_id_do_not_collide():
    a = [c for _, c in discovery_messages("line1-edge", ["fan00"], PREFIX)]
    b = [c for _, c in discovery_messages("line2-edge", ["fan00"], PREFIX)]
    for key in ("unique_id", "default_entity_id"):
        assert not {c[key] for c in a} & {c[key] for c in b}, key
    assert not {c["device"]["name"] for c in a} & {c["device"]["name"] for c in b}
    assert not {c["device"]["identifiers"][0] for c in a} & {c["device"]["identifiers"][0] for c in b}


def test_availability_templates_treat_stopped_and_dead_sources_as_not_available():
    config = dict(discovery_messages(DEVICE, ["pump1"], PREFIX))[f"homeassistant/sensor/{DEVICE}/pump1_score/config"]
    status, source = config["availability"]
    assert [check_available(status, p) for p in (b"online", b"stopped", b"offline")] == [True, False, False]
    states = [json.dumps({"v": 1, "state": s}).encode() for s in ("ok", "silent", "failing", "ended")]
    assert [check_available(source, p) for p in states] == [True, True, False, False]


# --- what a running daemon publishes ----------------------------------------------------------------------------


def test_a_running_daemon_publishes_what_its_discovery_templates_read(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 3, clip_s)
    web_port = free_port()
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("#")
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           top=f'[web]\nenabled = true\nlisten = "127.0.0.1:{web_port}"\n',
                           # Real time: the source is "ok" while it plays (a fast replay can end first).
                           machine="realtime = true\nthreshold = -1000.0\n",  # every clip anomalous
                           alerts="raise_after = 2\nclear_after = 2\nstall_clips = 3\n")
        cfg.write_text(cfg.read_text().replace("[mqtt]\n", "[mqtt]\nha_discovery = true\n"))
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        assert d.wait(120) == 0, d.log()
        assert broker.retained("edge_asd/box1/status") == b"stopped"
        sub.wait_for(lambda msgs: any(m.topic == "edge_asd/box1/fan1/source" and m.json()["state"] == "ended"
                                      for m in msgs), what="the source ending")
        received = list(sub.messages)
        sub.close()
        late = broker.subscriber("#")  # what a Home Assistant starting now would get: the retained messages
        wanted = {"edge_asd/box1/status", f"edge_asd/box1/fan1/{ALERT_STATE}", "edge_asd/box1/fan1/source",
                  *(t for t in {m.topic for m in received} if t.startswith("homeassistant/"))}
        late.wait_for(lambda msgs: wanted <= {m.topic for m in msgs}, what="the retained messages")
        retained = {m.topic: m for m in late.messages}
        late.close()

    on_topic: dict[str, list[bytes]] = {}
    for m in received:
        on_topic.setdefault(m.topic, []).append(m.payload)
    configs = {t: json.loads(p[-1]) for t, p in on_topic.items() if t.startswith("homeassistant/")}
    assert len(configs) == 5, sorted(configs)
    for topic, config in configs.items():
        check_accepted(topic, config)
        assert retained[topic].retain
        payloads = on_topic.get(config["state_topic"])
        assert payloads, f"nothing was published on {config['state_topic']}"
        states = [check_state(config, p) for p in payloads]
        if "json_attributes_topic" in config:
            assert all(isinstance(json.loads(p), dict) for p in on_topic[config["json_attributes_topic"]])
        for entry in config.get("availability", []):
            for p in on_topic[entry["topic"]]:
                check_available(entry, p)
        if config["unique_id"].endswith("_anomalous"):
            # The debounced state: normal for the first clip, anomalous from the second (raise_after 2),
            # never the raw flag (which was anomalous from the first); retained, so HA knows it at once.
            assert states == ["OFF", "ON"], states
            assert retained[config["state_topic"]].retain and check_state(config, retained[config["state_topic"]].payload) == "ON"
        if config["unique_id"].endswith("_score"):
            assert len(states) == 3
            # A source is failing after max(stall_clips clips, 10 s) without a clip; the score expires a clip later.
            assert config["expire_after"] == math.ceil(max(3 * clip_s, 10.0) + clip_s)
        if config["unique_id"].endswith("_source"):
            assert states[-1] == "ended" and retained[config["state_topic"]].retain
        assert config["device"]["configuration_url"] == f"http://127.0.0.1:{web_port}/"
    # The entities of a stopped box, and of an ended source, are not available (before: still "online").
    score = configs["homeassistant/sensor/box1/fan1_score/config"]
    status_entry, source_entry = score["availability"]
    assert not check_available(status_entry, retained["edge_asd/box1/status"].payload)
    assert not check_available(source_entry, retained["edge_asd/box1/fan1/source"].payload)
    assert check_available(source_entry, on_topic["edge_asd/box1/fan1/source"][0]), "ok while it played"
