"""Daemon reliability III, the smaller faults (issue 27, item 6): evidence on a full disk, and a hung
PortAudio abort that must not hold the audio host's lock.

Real parts: ``edge-asd run`` as a process, a real Mosquitto, a real (full) tmpfs. The hung abort uses
the fake ``sounddevice`` of tests/fake_sounddevice, as test_reliability.py does: no test can make a
real driver hang. (The bundle's flipped byte, the web API's ``since`` and a recovered microphone's
``last_error`` are tested beside their kin in test_bundle.py, test_web.py and test_sources.py.)
"""

from __future__ import annotations

import logging
import re
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_asd.io.evidence import EvidenceStore

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker  # noqa: E402
from daemon_proc import Daemon, bundle_manifest, fill_file_system, noise_wavs, scores, write_config  # noqa: E402
from fake_usb import UsbBus, latest_source_state, mic_config, seqs_of  # noqa: E402

SR = 16000


def test_evidence_on_a_full_disk_is_one_log_line_and_no_traceback(tiny_bundle, edge_asd_exe, tmp_path, small_fs,
                                                                    daemons):
    # Before: libsndfile wrote through a cffi callback, which printed one "Exception ignored ... ENOSPC"
    # traceback per block to stderr, and each save then failed with an AssertionError.
    evidence = small_fs / "evidence"
    evidence.mkdir()
    fill_file_system(small_fs)
    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 4, clip_s)
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/#")
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           machine="realtime = false\nthreshold = -1000.0\n",  # every clip anomalous
                           storage=f'evidence = "{evidence}"\n')
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        assert d.wait(120) == 0, d.log()
        sub.wait_for(lambda _: len(scores(sub)) >= 4, what="4 scores")
        assert [m["seq"] for m in scores(sub)] == [1, 2, 3, 4] and all(m["anomalous"] for m in scores(sub))
        stats = [m.json() for m in sub.on("edge_asd/box1/stats")]
        sub.close()
    log = d.log()
    assert "Exception ignored" not in log and "Traceback" not in log, log
    failed = [line for line in log.splitlines() if "evidence: cannot save" in line]
    assert len(failed) == 1, log
    assert "No space left on device" in failed[0] and str(evidence / "fan1") in failed[0]
    assert stats[-1]["evidence_errors"] == 4, stats[-1]
    assert not list((evidence / "fan1").iterdir()), "no half-written clip or temporary file is left"


def test_evidence_saves_again_once_space_returns(small_fs, caplog):
    store = EvidenceStore(small_fs / "evidence", 10 * 1024 * 1024)
    filler = fill_file_system(small_fs)
    clip = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    t = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
    with caplog.at_level(logging.INFO, logger="edge_asd.evidence"):
        assert [store.save("m1", clip, t, seq) for seq in (1, 2, 3)] == [None, None, None]
        filler.unlink()
        saved = store.save("m1", clip, t, 4)
    assert saved is not None and saved.name == "20261201T080000.000Z_seq4.wav" and saved.stat().st_size > 2 * SR
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "cannot save" in m]) == 1, lines
    assert any("saving again (3 clip(s) could not be saved: No space left on device)" in m for m in lines), lines
    assert (store.errors, store.saved) == (3, 1)
    assert sorted(p.name for p in (small_fs / "evidence" / "m1").iterdir()) == [saved.name]


def test_a_hung_abort_does_not_stop_other_microphones_opening(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """usb-b's abort never returns (PortAudio issue 1037); usb-c must still be closed, reopened and heard.

    Before, the abort ran with the host's lock held: usb-c's source, reopening its silent device, waited
    for that lock for ever and never scored again.
    """
    bus = UsbBus(tmp_path / "usb.json", "usb-a", "usb-b", "usb-c")
    bus.hang_abort("usb-b")
    bus.mute_device("usb-c")  # opens, delivers nothing: its source reopens it every few seconds
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        cfg = mic_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle,
                         {"fan1": "usb-a", "fan2": "usb-b", "fan3": "usb-c"}, alerts="source_hang_s = 300\n")
        d = Daemon(edge_asd_exe, cfg, env=bus.env)
        daemons.append(d)
        sub.wait_for(lambda _: seqs_of(sub, "fan1") and seqs_of(sub, "fan2"), timeout=90, what="scores from both")
        bus.pull("usb-b")
        sub.wait_for(lambda _: latest_source_state(sub, "fan2") == "failing", timeout=60, what="fan2 failing")
        # fan2's capture thread is now inside the abort that never returns. fan3 gives up its silent
        # stream after that (a close and an open, each needing the lock) ...
        hung_at = len(d.lines)
        reopened = re.compile(r"audio input 'usb-c \(hw:1,0\)' \(index 2\) open")
        sub.wait_for(lambda _: any(reopened.search(line) for line in d.lines[hung_at:]), timeout=60,
                     what="fan3 reopening its silent stream after the hang")
        # ... and once its microphone is heard again, it scores.
        bus.mute.remove("usb-c")
        bus._write()
        sub.wait_for(lambda _: seqs_of(sub, "fan3"), timeout=90, what="fan3 scoring while fan2's abort hangs")
        assert "device list not refreshed: closing the stream of 'usb-b (hw:1,0)' has not returned" in d.log()
        assert d.proc.poll() is None, d.log()
        going = max(seqs_of(sub, "fan1"))
        sub.wait_for(lambda _: max(seqs_of(sub, "fan1")) > going, timeout=60, what="fan1 scoring on")
        d.send(signal.SIGTERM)
        d.wait(60)
        sub.close()
