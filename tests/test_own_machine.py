"""From one's own machine to a running detector (issue 25, items 3 and 4).

Recordings of odd names and formats are imported, trained on, exported, replayed with
`edge-asd score --plot` and monitored by the daemon on a `file:` source against a real
Mosquitto, each step by its console script in a subprocess, as README's "Your own
machine" runs them. The recordings are a made-up pump: a hum with harmonics in noise;
its fault adds a bearing whine and periodic clicks.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon_proc import Daemon, bundle_manifest, check_score_schema
from mqtt_broker import require_mosquitto

BIN = Path(sys.executable).parent


def pump(seconds: float, rate: int, seed: int, fault: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.05 * rng.standard_normal(t.size)
    for k, a in enumerate((0.12, 0.06, 0.04, 0.02), start=1):
        x += a * np.sin(2 * np.pi * 98.0 * k * t + rng.uniform(0, 2 * np.pi))
    if fault:
        x += 0.05 * np.sin(2 * np.pi * 3150.0 * t)
        x[:: int(rate / 23)] += 0.4
    return x.astype(np.float32)


def cli(name: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{name} {args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("recordings")
    rec = {
        "hall": d / "pump hall 2 Übergabe 2026-11-30.flac",  # 44.1 kHz stereo FLAC: 5 clips
        "wav48": d / "pump-48k.wav",  # 48 kHz 24-bit WAV: 3 clips
        "fault": d / "Lager defekt (März).wav",  # a known fault: 3 test clips
        "normal_test": d / "pump normal test.flac",  # normals beside it: 3 test clips
        "later": d / "held out" / "pump später 2026-12-01T08-00-00.flac",  # replayed, never trained on
        "later_fault": d / "held out" / "pump später 2026-12-01T09-00-00.wav",
    }
    rec["later"].parent.mkdir()
    sf.write(rec["hall"], np.stack([pump(50, 44100, 1), pump(50, 44100, 2)], axis=1), 44100, subtype="PCM_16")
    sf.write(rec["wav48"], pump(30, 48000, 3), 48000, subtype="PCM_24")
    sf.write(rec["fault"], pump(30, 22050, 4, fault=True), 22050, subtype="PCM_16")
    sf.write(rec["normal_test"], pump(30, 16000, 5), 16000)
    sf.write(rec["later"], pump(30, 44100, 6), 44100)
    sf.write(rec["later_fault"], pump(30, 48000, 7, fault=True), 48000)
    return rec


def test_own_recordings_to_a_running_detector(recordings, tmp_path):
    require_mosquitto()
    from mqtt_broker import Broker

    data, run, bundle = tmp_path / "mydata", tmp_path / "runs" / "pump", tmp_path / "pump.asd"
    # 1. import: the training recordings, then a known fault and normals as labelled test clips
    out = cli("edge-asd", "import", recordings["hall"], recordings["wav48"], "--data", data, "--machine", "pump").stdout
    assert "5 clips" in out and "3 clips" in out
    cli("edge-asd", "import", recordings["fault"], "--data", data, "--machine", "pump", "--split", "test",
        "--label", "anomaly")
    cli("edge-asd", "import", recordings["normal_test"], "--data", data, "--machine", "pump", "--split", "test")
    assert len(list((data / "pump" / "test").glob("*.wav"))) == 6

    # 2. train with the defaults: 8 normal clips are too few for a learned extractor; it says so
    done = cli("edge-asd-train", "--data", data, "--machine", "pump", "--out", run)
    assert "too few to train a feature extractor" in done.stderr and "fitting the plain system alone" in done.stderr
    assert f"plain system ready: {run}" in done.stdout
    # ... and scores the known fault (item 4)
    (known,) = [line for line in done.stdout.splitlines() if line.startswith("known faults:")]
    assert "the 6 imported test clips" in known and "(3 normal, 3 anomalous)" in known
    assert float(known.split("plain ", 1)[1].split(";")[0]) > 0.9  # the whine is plain to hear

    # 3. export: the imported labelled clips are its validation clips without a flag
    done = cli("edge-asd-export", run, "--out", bundle)
    assert f"wrote {bundle}" in done.stdout
    (line,) = [x for x in done.stdout.splitlines() if "official score" in x]
    assert float(line.split("official score ")[1].split()[0]) > 0.9

    # 4. replay held-out recordings window by window, with a timeline per recording
    replay = tmp_path / "replay"
    cli("edge-asd", "score", bundle, recordings["later"].parent, "--out", replay, "--plot", "--quiet")
    with open(replay / "windows.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_file: dict[str, list[float]] = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, []).append(float(r["score"]))
    normal, faulty = by_file[recordings["later"].name], by_file[recordings["later_fault"].name]
    assert len(normal) == len(faulty) == 3
    assert min(faulty) > max(normal)
    # three anomalous windows in a row raise an alert (the daemon's rule), in the faulty recording alone
    assert [Path(r["file"]).name for r in rows if r["event"] == "raised"] == [recordings["later_fault"].name]
    assert sorted(p.name for p in replay.glob("*.png")) == sorted(f"{recordings[k].stem}.png" for k in ("later", "later_fault"))

    # 5. the daemon monitors it: README's configuration with a file: source and this broker
    with Broker(tmp_path / "broker") as broker:
        sub = broker.subscriber("edge_asd/#")
        config = tmp_path / "config.toml"
        config.write_text(f"""device_id = "hall2"
[mqtt]
host = "127.0.0.1"
port = {broker.port}
[storage]
outbox = "{tmp_path / 'state' / 'outbox.sqlite'}"
[[machines]]
id = "pump1"
bundle = "{bundle}"
source = "file:{recordings['later_fault']}"
realtime = false
""")
        cli("edge-asd", "run", "--config", config, "--validate-config")
        daemon = Daemon(str(BIN / "edge-asd"), config)
        try:
            msgs = sub.wait_for(lambda m: any(x.topic == "edge_asd/hall2/pump1/score" for x in m), timeout=60,
                                what="a score message")
        finally:
            daemon.kill()
    score = [m for m in msgs if m.topic == "edge_asd/hall2/pump1/score"][0].json()
    check_score_schema(score, bundle_manifest(bundle)["bundle_id"])
    assert score["anomalous"] is True


def test_known_faults_score_every_system_and_steer_export_selection(recordings, tmp_path):
    """With 10 or more normal clips a learned member is trained: train scores the known faults with each system,
    and export --select ranks runs on them without --validation."""
    data, run = tmp_path / "mydata", tmp_path / "runs" / "pump"
    long_normal = tmp_path / "lange Aufnahme.wav"
    sf.write(long_normal, pump(60, 48000, 8), 48000)
    short = ("--clip-seconds", "5")  # 12 normal clips, in half the audio to embed
    cli("edge-asd", "import", long_normal, "--data", data, "--machine", "pump", *short)
    cli("edge-asd", "import", recordings["fault"], "--data", data, "--machine", "pump", "--split", "test",
        "--label", "anomaly", *short)
    cli("edge-asd", "import", recordings["normal_test"], "--data", data, "--machine", "pump", "--split", "test", *short)
    # a benchmark's own test clip in the same folder (not in import.csv) is never a validation clip
    (data / "pump" / "test" / "section_00_source_test_anomaly_0099.wav").write_bytes(
        (data / "pump" / "test" / "section_00_source_test_normal_0000.wav").read_bytes())

    done = cli("edge-asd-train", "--data", data, "--machine", "pump", "--out", run, "--steps", "2", "--quiet")
    (known,) = [line for line in done.stdout.splitlines() if line.startswith("known faults:")]
    assert "the 12 imported test clips" in known and "(6 normal, 6 anomalous)" in known
    figures = dict(part.rsplit(" ", 1) for part in known.split(": ", 2)[2].split(";")[0].split(", "))
    assert set(figures) == {"learned", "plain", "ensemble"} and all(0 <= float(v) <= 1 for v in figures.values())
    gate = json.loads((run / "gate.json").read_text())
    assert known.endswith("deploys the plain system" if gate["decision"] == "plain" else "deploys the ensemble")

    bundle = tmp_path / "pump.asd"
    done = cli("edge-asd-export", run, run / "baseline" / "plain", "--select", "1", "--no-plain", "--out", bundle)
    selection = bundle_manifest(bundle)["selection"]
    assert selection["criterion"].startswith("official score")
    assert "section_00_source_test_anomaly_0099" not in selection["criterion"]
    assert selection["criterion"].count("section_00_source_test_") == 12
    chosen = [c for c in selection["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["figure"] == max(c["figure"] for c in selection["candidates"])
    assert "official score" in done.stdout
