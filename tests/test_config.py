"""The daemon's configuration: strict validation with one-line errors that name the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.daemon.config import DaemonConfig
from edge_asd.daemon.loading import load_config
from edge_asd.errors import ConfigError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from vmic import VirtualMic, unavailable_reason  # noqa: E402


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder with what a config refers to: a bundle file, a WAV folder, a password file."""
    (tmp_path / "pump.asd").write_bytes(b"not checked by the config loader, only its existence")
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    sf.write(wavs / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "secret").write_text("s3cret-pw\n")
    return tmp_path


def write(folder: Path, text: str, name: str = "edge-asd.toml") -> Path:
    p = folder / name
    p.write_text(text)
    return p


BASE_TOP = 'device_id = "line1-edge"\n'
BASE_STORAGE = '[storage]\noutbox = "state/outbox.sqlite"\n'
BASE_MACHINE = '[[machines]]\nid = "pump1"\nbundle = "pump.asd"\nsource = "file:wavs"\n'


def config_text(top: str = "", mqtt: str = "", storage: str = "", machine: str = "", extra: str = "") -> str:
    text = BASE_TOP + top
    if mqtt:
        text += "[mqtt]\n" + mqtt
    text += BASE_STORAGE + storage + BASE_MACHINE + machine + extra
    return text


def load_error(folder: Path, text: str, env: dict | None = None) -> str:
    path = write(folder, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {}, check_devices=True)
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line"
    assert msg.startswith(f"{path}: "), "errors name the file"
    return msg


def test_minimal_config_defaults_and_relative_paths(files: Path):
    cfg = load_config(write(files, config_text()), env={})
    assert isinstance(cfg, DaemonConfig)
    assert cfg.device_id == "line1-edge"
    assert cfg.mqtt.host == "127.0.0.1" and cfg.mqtt.port == 1883 and cfg.mqtt.prefix == "edge_asd"
    assert cfg.storage.outbox == files / "state" / "outbox.sqlite"
    (m,) = cfg.machines
    assert m.id == "pump1" and m.bundle == files / "pump.asd"
    assert m.source.kind == "file" and Path(m.source.target) == files / "wavs"
    assert m.realtime is True and m.loop is False and m.channel == 0
    assert m.clip_seconds is None and m.hop_seconds is None and m.section is None
    assert m.save_evidence is False  # no evidence folder configured
    assert cfg.alerts.raise_after >= 1 and cfg.alerts.clear_after >= 1
    assert cfg.stats_interval_s > 0


def test_contract_example_with_every_documented_key(files: Path):
    text = f"""
device_id = "line1-edge"
stats_interval_s = 30
shutdown_timeout_s = 5
[mqtt]
host = "broker.local"
port = 8883
prefix = "factory/edge_asd"
username = "edge"
password_file = "secret"
tls_ca = "{files / 'secret'}"
keepalive = 20
client_id = "box-7"
ha_discovery = true
ha_prefix = "homeassistant"
[storage]
outbox = "/var/lib/edge-asd/outbox.sqlite"
evidence = "evidence"
evidence_max_mb = 50
[alerts]
raise_after = 2
clear_after = 4
[logging]
level = "debug"
json = true
[[machines]]
id = "pump1"
bundle = "pump.asd"
source = "file:wavs/*.wav"
realtime = false
loop = true
section = "01"
clip_seconds = 4
hop_seconds = 2
threshold = 1.5
backend = "onnx-cpu"
"""
    cfg = load_config(write(files, text), env={})
    assert cfg.mqtt.password == "s3cret-pw", "the trailing newline of a password file is not part of the password"
    assert cfg.mqtt.prefix == "factory/edge_asd" and cfg.mqtt.ha_discovery
    assert cfg.storage.evidence == files / "evidence" and cfg.storage.evidence_max_mb == 50
    assert cfg.alerts.raise_after == 2 and cfg.alerts.clear_after == 4
    assert cfg.logging.level == "DEBUG" and cfg.logging.json
    m = cfg.machines[0]
    assert (m.realtime, m.loop, m.section, m.clip_seconds, m.hop_seconds, m.threshold) == (False, True, "01", 4.0, 2.0, 1.5)
    assert m.save_evidence is True, "evidence is saved by default once a folder is configured"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.mqtt), "secrets never appear in a repr"


@pytest.mark.parametrize(
    "where, text, key, hint",
    [
        ("top", config_text(top="devcie_name = 1\n"), "devcie_name", None),
        ("mqtt", config_text(mqtt='hots = "x"\n'), "mqtt.hots", "host"),
        ("storage", config_text(storage='evidnce = "e"\n'), "storage.evidnce", "evidence"),
        ("machine", config_text(machine="raise_afer = 3\n"), "machines[0].raise_afer", None),
        ("alerts", config_text(extra='[alerts]\nraise_afer = 3\n'), "alerts.raise_afer", "raise_after"),
    ],
)
def test_unknown_keys_are_rejected_with_a_suggestion(files, where, text, key, hint):
    msg = load_error(files, text)
    assert f": {key}: unknown key" in msg
    if hint:
        assert f"did you mean {hint!r}" in msg


@pytest.mark.parametrize(
    "text, key, problem",
    [
        (config_text(mqtt='port = "1883"\n'), "mqtt.port", "must be an integer"),
        (config_text(mqtt="port = true\n"), "mqtt.port", "must be an integer"),
        (config_text(mqtt="port = 70000\n"), "mqtt.port", "at most 65535"),
        (config_text(machine='realtime = "yes"\n'), "machines[0].realtime", "true or false"),
        (config_text(machine="clip_seconds = -1\n"), "machines[0].clip_seconds", "greater than 0"),
        (config_text(extra="[alerts]\nraise_after = 0\n"), "alerts.raise_after", "at least 1"),
        (config_text(extra='[logging]\nlevel = "loud"\n'), "logging.level", "must be one of"),
        (config_text(machine='backend = "cuda-magic"\n'), "machines[0].backend", "is not one of"),
        (config_text(storage="outbox_max_mb = 0.1\n"), "storage.outbox_max_mb", "must be at least 0.25"),
        (config_text(mqtt="ack_timeout_s = 0\n"), "mqtt.ack_timeout_s", "greater than 0"),
        (config_text(mqtt="ack_timeout_s = 60\ndelivery_stall_s = 30\n"), "mqtt.delivery_stall_s",
         "greater than ack_timeout_s (60)"),
        ("mqtt = 3\n" + config_text(), "mqtt", "must be a table"),
        ("machines = 3\n" + config_text().replace(BASE_MACHINE, ""), "machines", "[[machines]] tables"),
    ],
)
def test_wrong_types_and_values(files, text, key, problem):
    msg = load_error(files, text)
    assert f": {key}: " in msg and problem in msg


@pytest.mark.parametrize(
    "text, key",
    [
        (config_text().replace(BASE_TOP, ""), "device_id"),
        (config_text().replace('bundle = "pump.asd"\n', ""), "machines[0].bundle"),
        (config_text().replace('source = "file:wavs"\n', ""), "machines[0].source"),
        (config_text().replace(BASE_MACHINE, ""), "machines"),
        (config_text().replace(BASE_STORAGE, ""), "storage"),
    ],
)
def test_missing_required_keys(files, text, key):
    msg = load_error(files, text)
    assert f": {key}: " in msg and "required" in msg


def test_missing_bundle_file(files):
    msg = load_error(files, config_text().replace("pump.asd", "nope.asd"))
    assert "machines[0].bundle" in msg and "nope.asd" in msg and "does not exist" in msg


def test_file_source_that_matches_nothing(files):
    msg = load_error(files, config_text().replace("file:wavs", "file:recordings/*.wav"))
    assert "machines[0].source" in msg and "matches no audio file" in msg
    (files / "empty").mkdir()
    msg = load_error(files, config_text().replace("file:wavs", "file:empty"))
    assert "machines[0].source" in msg and "no .wav or .flac" in msg


def test_bad_source_syntax(files):
    msg = load_error(files, config_text().replace("file:wavs", "alsa:hw0"))
    assert "machines[0].source" in msg and "mic:default" in msg


@pytest.mark.parametrize("bad", ["pump/1", "pump#", "pump+1", "pump 1", "", "pümp", "pump1\\n"])
def test_machine_ids_must_be_topic_safe(files, bad):
    msg = load_error(files, config_text().replace('id = "pump1"', f'id = "{bad}"'))
    assert "machines[0].id" in msg and "letters, digits" in msg


@pytest.mark.parametrize("bad", ["line/1", "line#1", "line+1"])
def test_device_id_must_be_topic_safe(files, bad):
    msg = load_error(files, config_text().replace('device_id = "line1-edge"', f'device_id = "{bad}"'))
    assert ": device_id: " in msg


@pytest.mark.parametrize("bad", ["a/+/b", "#", "a//b", "/a", "a/"])
def test_bad_mqtt_prefix(files, bad):
    msg = load_error(files, config_text(mqtt=f'prefix = "{bad}"\n'))
    assert "mqtt.prefix" in msg


def test_duplicate_machine_ids(files):
    msg = load_error(files, config_text(extra=BASE_MACHINE))
    assert "machines[1].id" in msg and "duplicate" in msg and "machines[0]" in msg


def test_password_sources(files):
    msg = load_error(files, config_text(mqtt='username = "u"\npassword_file = "missing-secret"\n'))
    assert "mqtt.password_file" in msg and "missing-secret" in msg

    msg = load_error(files, config_text(mqtt='username = "u"\n'))
    assert "mqtt.username" in msg and "needs a password" in msg

    msg = load_error(files, config_text(mqtt='password = "p"\n'))
    assert "mqtt.password" in msg and "needs a username" in msg

    msg = load_error(files, config_text(mqtt='username = "u"\npassword = "p"\npassword_file = "secret"\n'))
    assert "only one of" in msg

    msg = load_error(files, config_text(mqtt='username = "u"\npassword_credential = "mqtt_password"\n'))
    assert "mqtt.password_credential" in msg and "CREDENTIALS_DIRECTORY" in msg

    creds = files / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-systemd")
    cfg = load_config(write(files, config_text(mqtt='username = "u"\npassword_credential = "mqtt_password"\n')),
                      env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.mqtt.username == "u" and cfg.mqtt.password == "from-systemd"


def test_tls_files(files):
    msg = load_error(files, config_text(mqtt='tls_ca = "ca.crt"\n'))
    assert "mqtt.tls_ca" in msg and "ca.crt" in msg and "does not exist" in msg
    msg = load_error(files, config_text(mqtt='tls_ca = "secret"\ntls_cert = "secret"\n'))
    assert "mqtt.tls_key" in msg and "go together" in msg
    msg = load_error(files, config_text(mqtt="tls_insecure = true\n"))
    assert "mqtt.tls_insecure" in msg


def test_mic_only_settings(files):
    msg = load_error(files, config_text(machine="samplerate = 48000\n"))
    assert "machines[0].samplerate" in msg
    text = config_text().replace("file:wavs", "mic:definitely-not-a-device") + "realtime = false\n"
    path = write(files, text)
    with pytest.raises(ConfigError, match=r"machines\[0\]\.realtime"):
        load_config(path, env={}, check_devices=False)


def test_evidence_needs_a_folder(files):
    msg = load_error(files, config_text(machine="save_evidence = true\n"))
    assert "machines[0].save_evidence" in msg and "storage.evidence" in msg


def test_unknown_mic_device(files):
    msg = load_error(files, config_text().replace("file:wavs", "mic:definitely-not-a-device-xyz"))
    assert "machines[0].source" in msg
    assert "definitely-not-a-device-xyz" in msg or "PortAudio is not available" in msg


def test_mic_device_index_out_of_range(files):
    msg = load_error(files, config_text().replace("file:wavs", "mic:999"))
    assert "machines[0].source" in msg and ("999" in msg or "PortAudio" in msg)


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"virtual microphone unavailable: {unavailable_reason()}")
def test_mic_devices_are_checked_against_portaudio(files, monkeypatch):
    from edge_asd.daemon.sources import PortAudioHost

    with VirtualMic() as mic:
        for k, v in mic.env.items():
            monkeypatch.setenv(k, v)
        assert PortAudioHost().rescan(), "no stream is open in this process, so PortAudio can re-read its devices"
        cfg = load_config(write(files, config_text().replace("file:wavs", "mic:pulse")), env={})
        assert cfg.machines[0].source.device == "pulse"
        msg = load_error(files, config_text(machine="channel = 64\n").replace("file:wavs", "mic:pulse"))
        assert "machines[0].source" in msg and "channel 64 does not exist" in msg


def test_not_toml_and_missing_file(tmp_path):
    bad = write(tmp_path, "device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", env={})


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError) and ConfigError.exit_code == 2


# --- through the command line -------------------------------------------------------


def _run_cli(edge_asd_exe: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([edge_asd_exe, *args], capture_output=True, text=True, timeout=120, env=env)


def test_run_with_a_bad_config_exits_2_with_one_line(files, edge_asd_exe):
    bad = write(files, config_text(machine="raise_afer = 3\n"), "bad.toml")
    proc = _run_cli(edge_asd_exe, "run", "--config", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "machines[0].raise_afer" in lines[0] and "Traceback" not in proc.stderr


def test_validate_config_reports_a_bad_bundle(files, edge_asd_exe):
    cfg = write(files, config_text(), "ok-syntax.toml")
    proc = _run_cli(edge_asd_exe, "run", "--config", str(cfg), "--validate-config")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "machines[0].bundle" in lines[0] and "pump.asd" in lines[0] and "Traceback" not in proc.stderr


# --- the shipped example ----------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "config.example.toml"


def example_with_every_option(tmp_path: Path) -> str:
    """deploy/config.example.toml with its optional "#key = value" lines switched on and its paths made local."""
    text = re.sub(r"(?m)^#(\w+ = )", r"\1", EXAMPLE.read_text())
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("x")
        text = text.replace(f"/etc/edge-asd/{name}", str(tmp_path / name))
    (tmp_path / "pump.asd").write_bytes(b"x")
    text = text.replace("/opt/edge-asd/bundles/pump.asd", str(tmp_path / "pump.asd"))
    return text.replace("/var/lib/edge-asd", str(tmp_path / "state")).replace("/var/cache/edge-asd", str(tmp_path / "cache"))


def test_the_shipped_example_is_valid_with_and_without_its_options(tmp_path):
    plain = EXAMPLE.read_text()
    (tmp_path / "pump.asd").write_bytes(b"x")
    cfg = load_config(write(tmp_path, plain.replace("/opt/edge-asd/bundles/pump.asd", str(tmp_path / "pump.asd"))),
                      env={}, check_devices=False)
    assert cfg.machines[0].source.kind == "mic" and cfg.mqtt.username is None

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("pw\n")
    (creds / "web_token").write_text("web-token-1\n")
    full = example_with_every_option(tmp_path)
    assert full.count("\n#") < plain.count("\n#"), "some options were switched on"
    cfg = load_config(write(tmp_path, full, "full.toml"), env={"CREDENTIALS_DIRECTORY": str(creds)}, check_devices=False)
    assert cfg.mqtt.username == "edge-asd" and cfg.mqtt.password == "pw" and cfg.mqtt.tls_cert is not None
    assert cfg.storage.evidence == tmp_path / "state" / "evidence" and cfg.machines[0].samplerate == 48000
    assert cfg.machines[0].threshold == 1.5 and cfg.machines[0].save_evidence
    assert cfg.web.token == "web-token-1" and not cfg.web.enabled and cfg.web.history == tmp_path / "state" / "history.sqlite"
