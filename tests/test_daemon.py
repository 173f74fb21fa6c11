"""The daemon end to end: real bundle, real Mosquitto, real processes and signals, real microphone.

Building blocks first (debounce, evidence store, systemd notifications), then
``edge-asd run`` as a subprocess against a broker from tests/mqtt_broker.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.scoring.alerts import Debouncer
from edge_asd.io.evidence import EvidenceStore
from edge_asd.daemon.sdnotify import Notifier

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import MOSQUITTO, MOSQUITTO_PASSWD, Broker, free_port, make_ca, make_leaf, require_mosquitto  # noqa: E402
from bundle_edit import tampered_bundle  # noqa: E402
from daemon_proc import (  # noqa: E402
    SR, Daemon, NotifySocket, bundle_manifest, check_score_schema, noise_wavs, scores, write_config,
)
from vmic import DEVICE, VirtualMic, unavailable_reason  # noqa: E402


# --- building blocks ---------------------------------------------------------------------


def test_debounce_raises_and_clears_after_runs():
    d = Debouncer(raise_after=3, clear_after=2)
    seq = [True, True, False, True, True, True, True, False, True, False, False, False]
    changes = [d.update(a) for a in seq]
    assert changes == [None, None, None, None, None, "anomalous", None, None, None, None, "normal", None]
    assert d.anomalous is False


def test_evidence_store_caps_size_oldest_first(tmp_path):
    root = tmp_path / "evidence"
    clip = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    one_file = 2 * SR + 44
    store = EvidenceStore(root, max_bytes=3 * one_file + 10)
    t0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    paths = []
    for i in range(5):
        p = store.save("pump1", clip, t0 + timedelta(seconds=i), seq=i + 1)
        assert p is not None
        paths.append(p)
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))  # distinct mtimes, oldest first
    assert paths[0].name == "20260102T030405.678Z_seq1.wav"
    left = sorted(p.name for p in (root / "pump1").glob("*.wav"))
    assert left == [p.name for p in paths[2:]], "the oldest files were deleted to stay under the cap"
    assert store.total_bytes <= store.max_bytes and store.deleted == 2
    data, rate = sf.read(paths[-1], dtype="float32")
    assert rate == SR and sf.info(paths[-1]).subtype == "PCM_16"
    np.testing.assert_allclose(data, clip, atol=1 / 32768 + 1e-6)
    assert stat.S_IMODE(root.stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "pump1").stat().st_mode) == 0o750
    assert stat.S_IMODE(paths[-1].stat().st_mode) == 0o640
    assert not list((root / "pump1").glob(".tmp-*")), "no temporary files are left behind"
    # A new store over the same folder counts what is there and enforces a smaller cap at once.
    small = EvidenceStore(root, max_bytes=one_file + 10)
    assert len(list((root / "pump1").glob("*.wav"))) == 1 and small.deleted == 2


@pytest.mark.parametrize("abstract", [False, True])
def test_notifier_talks_to_a_real_socket(tmp_path, abstract):
    address = f"@edge-asd-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    ns = NotifySocket(address)
    try:
        n = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_interval == pytest.approx(2.0)
        assert n.ready("2 machines") and n.watchdog() and n.reloading() and n.stopping()
        ns.wait_for("STOPPING=1", 10)
        f = ns.fields()
        assert f[:3] == ["READY=1", "STATUS=2 machines", "WATCHDOG=1"]
        assert "RELOADING=1" in f and any(x.startswith("MONOTONIC_USEC=") for x in f)
        n.close()
    finally:
        ns.close()


def test_notifier_is_silent_outside_systemd():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None and n.ready() is False
    # The watchdog belongs to the main process only.
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None


# --- the daemon as a process ------------------------------------------------------------


def replay_daemon(exe: str, tmp_path: Path, broker: Broker, bundle: Path, daemons: list,
                  machine: str = "realtime = false\n") -> Daemon:
    """``edge-asd run`` replaying ``tmp_path/rec`` to ``broker``, with the machine settings given."""
    cfg = write_config(tmp_path / "edge-asd.toml", broker.port, bundle, f"file:{tmp_path / 'rec'}", machine=machine)
    d = Daemon(exe, cfg)
    daemons.append(d)
    return d


def unique_in_order(msgs: list[dict]) -> list[int]:
    """Seqs in order of first arrival (QoS 1 may deliver a message twice; subscribers dedupe by seq)."""
    seen, out = set(), []
    for m in msgs:
        if m["seq"] not in seen:
            seen.add(m["seq"])
            out.append(m["seq"])
    return out


def stop_and_check_every_seq(d: Daemon, sub, why: str) -> None:
    """SIGTERM, a clean exit, then every seq the daemon journaled delivered, first arrivals in order."""
    d.send(signal.SIGTERM)
    assert d.wait(60) == 0, d.log()
    final = d.last_seq()
    sub.wait_for(lambda _: set(range(1, final + 1)) <= {m["seq"] for m in scores(sub)}, timeout=60,
                 what=f"every seq up to {final} after SIGTERM")
    assert unique_in_order(scores(sub)) == list(range(1, final + 1)), why


def test_file_replay_end_to_end(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    model = bundle_manifest(tiny_bundle)["bundle_id"]
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    wavs = noise_wavs(tmp_path / "rec", 5, clip_s)
    levels = [20 * np.log10(np.sqrt(np.mean(sf.read(w, dtype="float64")[0] ** 2))) for w in wavs]
    one_wav = 2 * int(clip_s * SR) + 44
    notify = NotifySocket(str(tmp_path / "notify"))
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/#")
        cfg = write_config(
            tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
            machine="realtime = false\nthreshold = -1000.0\n",  # every clip anomalous: alerts and evidence
            storage=f'evidence = "{tmp_path / "evidence"}"\nevidence_max_mb = {2.5 * one_wav / 1048576}\n',
            alerts="raise_after = 2\nclear_after = 2\n",
        )
        d = Daemon(edge_asd_exe, cfg, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "400000"})
        daemons.append(d)
        assert d.wait(120) == 0, d.log()
        assert broker.retained("edge_asd/box1/status") == b"stopped"
        sub.wait_for(lambda _: len(scores(sub)) >= 5, what="5 scores")
        msgs = scores(sub)
        assert [m["seq"] for m in msgs] == [1, 2, 3, 4, 5]
        for m, level in zip(msgs, levels):
            check_score_schema(m, model)
            assert m["threshold"] == -1000.0 and m["anomalous"] is True
            assert m["dbfs"] == pytest.approx(level, abs=0.05)
        ts = [datetime.fromisoformat(m["ts"]) for m in msgs]
        assert all(b - a == timedelta(seconds=clip_s) for a, b in zip(ts, ts[1:])), "back-to-back replay timeline"

        alerts = [m.json() for m in sub.on("edge_asd/box1/fan1/alert")]
        assert len(alerts) == 1, "the state turned anomalous once and never cleared"
        assert alerts[0]["state"] == "anomalous" and alerts[0]["seq"] == 2 and alerts[0]["model"] == model

        states = [m.json()["state"] for m in sub.on("edge_asd/box1/fan1/source")]
        assert states and states[-1] == "ended" and set(states) <= {"ok", "ended"}, states

        # The heartbeat sent when the sources ended counts every clip.
        sub.wait_for(lambda msgs: any(m.topic == "edge_asd/box1/stats" and m.json()["machines"]["fan1"]["clips"] == 5
                                      for m in msgs), what="a heartbeat after the last clip")
        last = [m.json() for m in sub.on("edge_asd/box1/stats") if m.json()["machines"]["fan1"]["clips"] == 5][0]
        assert last["outbox_depth"] >= 0 and last["machines"]["fan1"]["source"] in ("ok", "ended")
        for key in ("uptime_s", "rss_mb", "connected", "silent_sources", "failing_sources"):
            assert key in last
        lat = last["machines"]["fan1"]["latency_ms"]
        assert set(lat) >= {"mean", "max", "median", "p95"}
        # Drift monitoring: the domain classifier's mean p_target over the recent clips, and how far their
        # scores sit from the bundle's held-out normals (KS distance, share above the normals' 95th percentile).
        drift = last["machines"]["fan1"]["drift"]
        sent = scores(sub)
        assert drift["window"] == 5
        assert drift["p_target_mean"] == pytest.approx(np.mean([m["p_target"] for m in sent]), abs=1e-4)
        assert 0.0 <= drift["ks"] <= 1.0 and drift["above_ref_p95"] in [i / 5 for i in range(6)]

    ev = sorted((tmp_path / "evidence" / "fan1").glob("*.wav"))
    assert len(ev) == 2, "anomalous clips are kept as evidence within the size cap"
    assert [int(re.search(r"_seq(\d+)\.wav", p.name).group(1)) for p in ev] == [4, 5]
    assert stat.S_IMODE(ev[0].stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "evidence").stat().st_mode) == 0o750

    notify.wait_for("STOPPING=1")
    fields = notify.fields()
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert "WATCHDOG=1" in fields
    notify.close()


def test_broker_outage_loses_no_score_and_sigterm_stops_cleanly(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    noise_wavs(tmp_path / "rec", 2, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)))
    with Broker(tmp_path) as broker:
        # A persistent session: the broker keeps what arrives for it while it is away.
        sub = broker.subscriber("edge_asd/box1/#", persistent=True)
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           machine="realtime = false\nloop = true\n")
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        sub.wait_for(lambda _: len(scores(sub)) >= 2, what="scores before the outage")
        broker.stop()
        d.wait_log("mqtt .*connection lost|cannot connect")
        during = d.last_seq()
        d.wait_seq(during + 4)  # several clips scored and journaled while the broker is away
        broker.start()
        target = d.last_seq()
        sub.wait_for(lambda _: set(range(1, target + 1)) <= {m["seq"] for m in scores(sub)}, timeout=60,
                     what=f"every seq up to {target} after the broker came back")
        stop_and_check_every_seq(d, sub, "delivered in order, none missing")
        assert broker.retained("edge_asd/box1/status") == b"stopped"
        assert "stop requested" in d.log()
        sub.close()


def test_sigkill_and_restart_delivers_the_journal_and_continues_seq(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 3, clip_s)
    port = free_port()
    cfg = write_config(tmp_path / "edge-asd.toml", port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                       machine="realtime = false\n")
    # No broker at all: the scores can only go to the outbox on disk.
    first = Daemon(edge_asd_exe, cfg)
    daemons.append(first)
    first.wait_log("every source has ended")
    assert first.last_seq() == 3
    first.proc.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    # A recording added meanwhile: the restarted source continues after the last file it
    # finished, so only the new one is scored (not the three again under new seqs).
    added = noise_wavs(tmp_path / "rec", 4, clip_s)[-1]
    with Broker(tmp_path, port=port) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        second = Daemon(edge_asd_exe, cfg)
        daemons.append(second)
        assert second.wait(120) == 0, second.log()
        assert "undelivered message(s) from before" in second.log()
        sub.wait_for(lambda _: len(scores(sub)) >= 4, what="3 journaled + 1 new score")
        assert [m["seq"] for m in scores(sub)] == [1, 2, 3, 4]
        assert second.seqs() == [4] and f"{added}@" not in first.log()
        level = 20 * np.log10(np.sqrt(np.mean(sf.read(added, dtype="float64")[0] ** 2)))
        assert scores(sub)[-1]["dbfs"] == pytest.approx(level, abs=0.5)
        assert broker.retained("edge_asd/box1/status") == b"stopped"


def test_a_full_outbox_is_reported_and_recovers(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    # outbox_max_mb gives SQLite's SQLITE_FULL exactly as a full disk does (tests/test_outbox.py).
    noise_wavs(tmp_path / "rec", 2, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)))
    # The subscriber's persistent session exists before the daemon can connect: the daemon may
    # deliver its journal the moment the broker is back, before a fresh subscription would be in place.
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    broker.stop()
    cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                       machine="realtime = false\nloop = true\n", storage="outbox_max_mb = 0.25\n")
    d = Daemon(edge_asd_exe, cfg)
    daemons.append(d)
    line = d.wait_log(r"machine fan1: score not stored: .*").group(0)
    assert "outbox.sqlite" in line and "full" in line, line
    stored = d.last_seq()
    assert stored > 0
    with broker.start():
        sub.wait_for(lambda _: any(m.json()["outbox_errors"] > 0 for m in sub.on("edge_asd/box1/stats")),
                     what="a heartbeat counting the scores that could not be stored")
        d.wait_seq(stored + 2)  # delivery made room: scores are journaled again, with the next seqs
        stop_and_check_every_seq(d, sub, "a refused score spends no seq")


def test_sighup_reloads_without_restarting_the_source(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    noise_wavs(tmp_path / "rec", 2, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)))
    notify = NotifySocket(str(tmp_path / "notify"))
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        path = tmp_path / "edge-asd.toml"
        source = f"file:{tmp_path / 'rec'}"
        write_config(path, broker.port, tiny_bundle, source, machine="realtime = false\nloop = true\n")
        d = Daemon(edge_asd_exe, path, env={"NOTIFY_SOCKET": notify.address})
        daemons.append(d)
        d.wait_seq(2)
        write_config(path, broker.port, tiny_bundle, source, machine="realtime = false\nloop = true\nthreshold = 1234.5\n")
        d.send(signal.SIGHUP)
        d.wait_log(r"reloaded: sources kept running for \['fan1'\]")
        notify.wait_for("RELOADING=1")
        sub.wait_for(lambda _: any(m["threshold"] == 1234.5 for m in scores(sub)), what="a score with the new threshold")
        # A broken configuration is refused; the running one goes on.
        path.write_text(path.read_text() + "raise_afer = 3\n")
        d.send(signal.SIGHUP)
        d.wait_log(r"reload failed, keeping the running configuration: .*raise_afer")
        n = d.last_seq()
        d.wait_seq(n + 2)
        assert [m.json()["state"] for m in sub.on("edge_asd/box1/fan1/source")] == ["ok"], \
            "the source was not restarted by either reload"
        # A changed source is restarted (the machine's alert state and seq carry on).
        noise_wavs(tmp_path / "rec2", 1, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)), seed=5)
        write_config(path, broker.port, tiny_bundle, f"file:{tmp_path / 'rec2'}",
                     machine="realtime = false\nloop = true\nthreshold = 1234.5\n")
        d.send(signal.SIGHUP)
        d.wait_log(r"reloaded: sources kept running for none; restarted \['fan1'\]")
        sub.wait_for(lambda _: len(sub.on("edge_asd/box1/fan1/source")) == 2, what="the restarted source's state")
        n = d.last_seq()
        d.wait_seq(n + 2)
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        msgs = scores(sub)
        seqs = unique_in_order(msgs)
        assert seqs == list(range(1, len(seqs) + 1)), "no score lost or reordered across reloads"
        assert msgs[-1]["threshold"] == 1234.5
        assert [m.json()["state"] for m in sub.on("edge_asd/box1/fan1/source")] == ["ok", "ok"]
        assert notify.fields().count("READY=1") >= 4  # start, each reload
    notify.close()


def test_sighup_with_a_tampered_bundle_keeps_the_old_one(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    from edge_asd.runtime.bundle import open_bundle, write_bundle

    bundle = tmp_path / "fan.asd"
    bundle.write_bytes(tiny_bundle.read_bytes())
    old_id = bundle_manifest(bundle)["bundle_id"]
    noise_wavs(tmp_path / "rec", 2, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)))
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        d = replay_daemon(edge_asd_exe, tmp_path, broker, bundle, daemons, machine="realtime = false\nloop = true\n")
        d.wait_seq(2)
        member = tampered_bundle(tiny_bundle, bundle)
        d.send(signal.SIGHUP)
        line = d.wait_log(r"reload failed, keeping the running configuration: .*").group(0)
        assert f"{bundle}: checksum mismatch for member {member}" in line, line
        after_failure = d.last_seq()
        d.wait_seq(after_failure + 2)

        # A good bundle again (a new id, so the switch shows in the scores): the next SIGHUP takes it.
        good = open_bundle(tiny_bundle)
        write_bundle(bundle, {**good.manifest.to_dict(), "bundle_id": "fan-reloaded"}, good.members())
        d.send(signal.SIGHUP)
        d.wait_log(r"reloaded: sources kept running for \['fan1'\]")
        sub.wait_for(lambda _: any(m["model"] == "fan-reloaded" for m in scores(sub)), what="a score of the new bundle")
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()

    by_seq = {m["seq"]: m["model"] for m in scores(sub)}
    assert sorted(by_seq) == list(range(1, len(by_seq) + 1)), "seq consecutive across both reloads"
    models = [by_seq[s] for s in sorted(by_seq)]
    switch = models.index("fan-reloaded")
    assert switch >= after_failure + 2 and set(models[:switch]) == {old_id}, "the old bundle kept scoring"
    assert set(models[switch:]) == {"fan-reloaded"}


def test_run_refuses_to_start_on_a_tampered_bundle(tiny_bundle, edge_asd_exe, tmp_path):
    bundle = tmp_path / "fan.asd"
    member = tampered_bundle(tiny_bundle, bundle)
    noise_wavs(tmp_path / "rec", 1, 2.0)
    cfg = write_config(tmp_path / "edge-asd.toml", free_port(), bundle, f"file:{tmp_path / 'rec'}")
    proc = subprocess.run([edge_asd_exe, "run", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"machines[0].bundle: {bundle}: checksum mismatch for member {member}" in lines[0], lines[0]
    assert not (tmp_path / "state" / "outbox.sqlite").exists(), "nothing was started"


def test_a_silent_source_is_reported(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    (tmp_path / "rec").mkdir()
    sf.write(tmp_path / "rec" / "dead.wav", np.zeros(int(clip_s * SR), dtype=np.float32), SR, subtype="PCM_16")
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           machine="realtime = false\nloop = true\n", alerts="silence_clips = 2\n")
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        sub.wait_for(lambda _: any(m.json()["state"] == "silent" for m in sub.on("edge_asd/box1/fan1/source")),
                     what="the source reported silent")
        sub.wait_for(lambda _: any(m.json()["silent_sources"] == ["fan1"] for m in sub.on("edge_asd/box1/stats")),
                     what="a heartbeat naming the silent source")
        d.wait_log(r"machine fan1: source is silent \(2 clips below -80 dBFS\)")
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        assert all(m["dbfs"] < -80 for m in scores(sub))
        retained = json.loads(broker.retained("edge_asd/box1/fan1/source"))
        assert retained["state"] == "silent", "the source state is retained for dashboards that subscribe later"


def bad_audio_folder(folder: Path, clip_s: float) -> tuple[list[tuple[Path, int]], dict[Path, str]]:
    """Good recordings mixed with every kind of bad audio, in replay (name) order.

    Returns the accepted files with the clips each must give, and the refused ones
    with the problem the log must name. Accepted files carry a 1 kHz tone of a
    level of their own, so each score message can be traced to its file by dbfs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)

    def tone(amp: float, seconds: float = clip_s, rate: int = SR) -> np.ndarray:
        t = np.arange(int(round(seconds * rate))) / rate
        return (amp * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)

    def wav(name: str, x: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Path:
        sf.write(folder / name, x, rate, subtype=subtype)
        return folder / name

    accepted: list[tuple[Path, int]] = []
    refused: dict[Path, str] = {}
    accepted.append((wav("01-good.wav", tone(0.05)), 1))
    whole = wav("02-truncated-header.wav", tone(0.5)).read_bytes()
    (folder / "02-truncated-header.wav").write_bytes(whole[:30])  # cut inside the fmt chunk
    refused[folder / "02-truncated-header.wav"] = "unreadable audio file"
    whole = wav("03-truncated-data.wav", tone(0.07, 2 * clip_s)).read_bytes()
    (folder / "03-truncated-data.wav").write_bytes(whole[: 44 + int(1.5 * clip_s * SR) * 2])  # a copy cut short
    accepted.append((folder / "03-truncated-data.wav", 1))
    (folder / "04-zero-length.wav").write_bytes(b"")
    refused[folder / "04-zero-length.wav"] = "empty file (0 bytes)"
    (folder / "05-garbage.wav").write_bytes(rng.bytes(5000))
    refused[folder / "05-garbage.wav"] = "unreadable audio file"
    accepted.append((wav("06-44k1.wav", tone(0.1, rate=44100), rate=44100), 1))
    accepted.append((wav("07-stereo.wav", np.stack([tone(0.12), tone(0.9)], axis=1)), 1))  # channel 0 is scored
    accepted.append((wav("08-pcm-u8.wav", tone(0.15), subtype="PCM_U8"), 1))
    accepted.append((wav("09-pcm-24.wav", tone(0.2), subtype="PCM_24"), 1))
    accepted.append((wav("10-float.wav", tone(0.25), subtype="FLOAT"), 1))
    refused[wav("11-short.wav", tone(0.3, clip_s / 2))] = f"{clip_s / 2:.2f} s long, shorter than one {clip_s:g} s clip"
    x = tone(0.35)
    x[SR // 2] = np.nan
    refused[wav("12-nan.wav", x, subtype="FLOAT")] = "contains NaN or infinite samples (first at 0.50 s)"
    x = tone(0.35)
    x[SR] = np.inf
    refused[wav("13-inf.wav", x, subtype="FLOAT")] = "contains NaN or infinite samples (first at 1.00 s)"
    accepted.append((wav("14-silence.wav", np.zeros(int(clip_s * SR), dtype=np.float32)), 1))
    accepted.append((wav("15-dc-offset.wav", 0.5 + tone(0.1)), 1))
    accepted.append((wav("16-clipped.wav", np.clip(tone(4.0), -1.0, 1.0)), 1))  # full scale, flat-topped
    # NaN in the third clip, blocks past the start: the two clips before it are scored, the rest is skipped.
    x = tone(0.4, 3 * clip_s)
    x[int(2.5 * clip_s * SR)] = np.nan
    path = wav("17-nan-late.wav", x, subtype="FLOAT")
    accepted.append((path, 2))
    refused[path] = f"skipping the rest of the file after 2 clip(s): {path}: contains NaN or infinite samples"
    accepted.append((wav("18-good.wav", tone(0.45)), 1))
    return accepted, refused


def test_replay_carries_on_over_every_kind_of_bad_audio(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    from edge_asd.io.audio import dbfs

    model = bundle_manifest(tiny_bundle)["bundle_id"]
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    accepted, refused = bad_audio_folder(tmp_path / "rec", clip_s)
    expected_levels = []
    for path, n in accepted:
        data, rate = sf.read(path, dtype="float64", always_2d=True)
        n_clip = int(round(clip_s * rate))
        expected_levels += [dbfs(data[i * n_clip : (i + 1) * n_clip, 0]) for i in range(n)]
    total = len(expected_levels)
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        d = replay_daemon(edge_asd_exe, tmp_path, broker, tiny_bundle, daemons)
        assert d.wait(180) == 0, d.log()
        log_text = d.log()
        sub.wait_for(lambda _: len(scores(sub)) >= total, what=f"{total} scores")
        msgs = scores(sub)
        assert [m["seq"] for m in msgs] == list(range(1, total + 1)), "every accepted clip scored, in file order"
        for m in msgs:
            check_score_schema(m, model)  # finite score, p_target and dbfs
        got = [m["dbfs"] for m in msgs]
        assert got == pytest.approx(expected_levels, abs=0.1), "each score comes from the file it should"
        assert got[accepted.index(next(a for a in accepted if a[0].name == "14-silence.wav"))] == -200.0
        for path, problem in refused.items():
            assert re.search(rf"ERROR edge_asd\.sources: source fan1: skipping .*{re.escape(f'{path}: ')}", log_text) \
                and problem in log_text, f"{path.name}: no log line naming {problem!r}:\n{log_text}"
        for path in (tmp_path / "rec" / "06-44k1.wav", tmp_path / "rec" / "07-stereo.wav"):
            assert str(path) in log_text, "a resampled or down-selected file is logged"
        assert "Traceback" not in log_text
        sub.wait_for(lambda _: any(m.json()["machines"]["fan1"]["clips"] == total
                                   for m in sub.on("edge_asd/box1/stats")), what="a heartbeat after the last clip")
        last = [m.json() for m in sub.on("edge_asd/box1/stats")][-1]["machines"]["fan1"]
        assert last["bad_files"] == len(refused) and last["score_errors"] == 0, last
        assert broker.retained("edge_asd/box1/status") == b"stopped"


def test_validate_config_loads_the_bundle(tiny_bundle, edge_asd_exe, tmp_path):
    noise_wavs(tmp_path / "rec", 1, 2.0)
    cfg = write_config(tmp_path / "ok.toml", 1883, tiny_bundle, f"file:{tmp_path / 'rec'}")
    proc = subprocess.run([edge_asd_exe, "run", "--config", str(cfg), "--validate-config"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stdout and bundle_manifest(tiny_bundle)["bundle_id"] in proc.stdout
    bad = write_config(tmp_path / "bad.toml", 1883, tiny_bundle, f"file:{tmp_path / 'rec'}", machine='section = "77"\n')
    proc = subprocess.run([edge_asd_exe, "run", "--config", str(bad), "--validate-config"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "machines[0].section" in lines[0] and "'77'" in lines[0], proc.stderr


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"virtual microphone unavailable: {unavailable_reason()}")
def test_microphone_to_mqtt(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    t = np.arange(2 * SR) / SR
    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 1000 * t), SR, subtype="PCM_16")
    with VirtualMic(rate=SR, channels=1) as mic, Broker(tmp_path) as broker:
        mic.feed(wav, loop=True)
        sub = broker.subscriber("edge_asd/box1/#")
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"mic:{DEVICE}",
                           machine="samplerate = 48000\nhop_seconds = 1.0\n")
        d = Daemon(edge_asd_exe, cfg, env=mic.env)
        daemons.append(d)
        sub.wait_for(lambda _: len(scores(sub)) >= 2, timeout=60, what="two scores from the microphone")
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        model = bundle_manifest(tiny_bundle)["bundle_id"]
        msgs = scores(sub)
        for m in msgs:
            check_score_schema(m, model)
            assert m["dbfs"] == pytest.approx(-9.03, abs=0.5), "a 0.5 amplitude tone through PortAudio at 48 kHz"
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
        ts = [datetime.fromisoformat(m["ts"]) for m in msgs]
        # Clip ends come from sample counts and the callback's clock: hop_seconds apart, give or take
        # the scheduling of PortAudio's callback.
        assert abs((ts[1] - ts[0]).total_seconds() - 1.0) < 0.5, "clips every hop_seconds"
        assert "capturing from 'pulse'" in d.log() and "at 48000 Hz" in d.log()
        assert broker.retained("edge_asd/box1/status") == b"stopped"


# --- the shipped examples, together --------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_shipped_broker_and_daemon_examples_work_together(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """deploy/mosquitto.example.conf + deploy/config.example.toml: password (as a systemd credential) over TLS."""
    import paho.mqtt.client as mqtt

    require_mosquitto(tls=True, auth=True)
    plain_port, tls_port = free_port(), free_port()
    ca = make_ca(tmp_path / "tls")
    server = make_leaf(tmp_path / "tls", "server", ca, server=True)
    passwd = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwd), "edge-asd", "s3cret"], check=True, capture_output=True)
    conf = (DEPLOY / "mosquitto.example.conf").read_text()
    conf = conf.replace("listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1")
    conf = conf.replace("listener 8883", f"listener {tls_port} 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/passwd", str(passwd))
    conf = conf.replace("/etc/mosquitto/certs/ca.crt", str(ca[0]))
    conf = conf.replace("/etc/mosquitto/certs/server.crt", str(server[0]))
    conf = conf.replace("/etc/mosquitto/certs/server.key", str(server[1]))
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    if os.geteuid() == 0:  # mosquitto would drop to its own user, which cannot read pytest's folders
        import pwd

        conf += f"user {pwd.getpwuid(0).pw_name}\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    log = open(tmp_path / "mosquitto.log", "wb")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
                break
            except OSError:
                assert broker.poll() is None and time.monotonic() < deadline, (tmp_path / "mosquitto.log").read_text()
                time.sleep(0.05)

        received: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="example-sub")
        sub.username_pw_set("edge-asd", "s3cret")
        sub.tls_set(ca_certs=str(ca[0]))
        sub.on_connect = lambda c, u, f, r, p: c.subscribe("edge_asd/#", qos=1)
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload)))
        sub.connect("127.0.0.1", tls_port)
        sub.loop_start()
        assert subscribed.wait(20)

        noise_wavs(tmp_path / "rec", 2, float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0)))
        text = (DEPLOY / "config.example.toml").read_text()
        for key in ("username", "password_credential", "tls_ca"):
            text = re.sub(rf"(?m)^#({key} = )", r"\1", text)
        text = text.replace("/etc/edge-asd/ca.crt", str(ca[0])).replace("port = 1883", f"port = {tls_port}")
        text = text.replace("/opt/edge-asd/bundles/pump.asd", str(tiny_bundle))
        text = text.replace("/var/lib/edge-asd", str(tmp_path / "state"))
        text = text.replace('source = "mic:default"', f'source = "file:{tmp_path / "rec"}"')
        text = text.replace("realtime = true", "realtime = false")
        cfg = tmp_path / "config.toml"
        cfg.write_text(text)
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "mqtt_password").write_text("s3cret\n")

        d = Daemon(edge_asd_exe, cfg, env={"CREDENTIALS_DIRECTORY": str(creds)})
        daemons.append(d)
        assert d.wait(120) == 0, d.log()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            len([t for t, _ in received if t.endswith("/score")]) < 2
            or ("edge_asd/line1-edge/status", b"stopped") not in received
        ):
            time.sleep(0.05)
        got = [json.loads(p) for t, p in received if t == "edge_asd/line1-edge/pump1/score"]
        assert [m["seq"] for m in got] == [1, 2], received
        assert ("edge_asd/line1-edge/status", b"stopped") in received
        assert "s3cret" not in d.log(), "the password never reaches the log"
        sub.loop_stop()
        sub.disconnect()
    finally:
        broker.terminate()
        broker.wait(15)
        log.close()
