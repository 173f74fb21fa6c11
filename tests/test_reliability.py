"""Daemon reliability II (issue 17): signals, acknowledged rows, hot-plug, stalls, a dead network thread, time.

Real parts throughout: ``edge-asd run`` as a process, real Mosquitto, real SQLite files on a real (small) file
system, real signals. Only the microphone hot-plug and a hung PortAudio call use a fake ``sounddevice`` module
(tests/fake_sounddevice), as a USB plug cannot be pulled by a test.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_asd.mqtt import Publisher, encode, score_payload
from edge_asd.outbox import Outbox

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker  # noqa: E402
from test_daemon import (  # noqa: E402
    Daemon,
    NotifySocket,
    bundle_manifest,
    noise_wavs,
    scores,
    write_config,
)


def _clip_seconds(bundle: Path) -> float:
    return float(bundle_manifest(bundle)["audio"].get("clip_seconds", 10.0))


# --- 1. signals ------------------------------------------------------------------------------


def _watchdog_pings(notify: NotifySocket) -> int:
    return notify.fields().count("WATCHDOG=1")


def _wait_more_pings(notify: NotifySocket, after: int, d: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _watchdog_pings(notify) < after + 3:
        assert d.proc.poll() is None, d.log()
        assert time.monotonic() < deadline, "the main loop stopped pinging the watchdog: it is frozen"
        time.sleep(0.05)


def test_signal_storms_never_freeze_the_main_loop(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """Thousands of SIGHUPs and SIGTERMs at random moments: the loop keeps serving, every stop is clean."""
    rng = random.Random(17)
    noise_wavs(tmp_path / "rec", 2, _clip_seconds(tiny_bundle))
    with Broker(tmp_path) as broker:
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           machine="loop = true\n")
        sent = 0
        for round_ in range(3):
            notify = NotifySocket(str(tmp_path / f"notify{round_}"))
            d = Daemon(edge_asd_exe, cfg, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"})
            daemons.append(d)
            try:
                notify.wait_for("READY=1", 60)  # the handlers are installed before READY
                for _ in range(1500):
                    d.send(signal.SIGHUP)
                    sent += 1
                    time.sleep(rng.uniform(0.0, 0.003))
                _wait_more_pings(notify, _watchdog_pings(notify), d)
                # A stop, then more signals of both kinds while it stops.
                d.send(signal.SIGTERM)
                for _ in range(300):
                    if d.proc.poll() is not None:
                        break
                    d.send(rng.choice([signal.SIGHUP, signal.SIGTERM]))
                    sent += 1
                    time.sleep(rng.uniform(0.0, 0.003))
                assert d.wait(90) == 0, d.log()
                assert broker.retained("edge_asd/box1/status") == b"stopped"
                assert "stop requested" in d.log()
            finally:
                notify.close()
        print(f"\nsignal storm: {sent} signals over 3 daemon runs; every run kept pinging and stopped cleanly")


# --- 2. acknowledged rows on a full disk -------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB tmpfs (needs root; skipped elsewhere), unmounted afterwards."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _score(seq: int) -> dict:
    return score_payload(1795000000 + 10 * seq, seq, 0.5, 1.0, False, 0.2, -30.0, "bundle-1")


def test_acknowledged_rows_a_full_disk_could_not_delete_are_deleted_later(small_fs, tmp_path, caplog):
    """Broker down, 60 scores journaled, disk filled, broker up: everything delivered once, the outbox empties."""
    caplog.set_level(logging.WARNING, logger="edge_asd.mqtt")
    path = small_fs / "outbox.sqlite"
    broker = Broker(tmp_path)
    pubs: list[Publisher] = []
    try:
        with Outbox(path) as box:
            for _ in range(60):
                box.append_with_seq("pump1", "edge_asd/box1/pump1/score", lambda s: encode(_score(s)))
            filler = _fill(small_fs)
            broker.start()
            sub = broker.subscriber("edge_asd/box1/#")
            pub = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
            pubs.append(pub)
            pub.start()
            sub.wait_for(lambda _: {m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")} >= set(range(1, 61)),
                         timeout=60, what="all 60 scores")
            deadline = time.monotonic() + 60
            while str(path) not in str(pub.counters["last_error"]):  # the failed delete was reported
                assert time.monotonic() < deadline, pub.counters
                time.sleep(0.05)
            assert box.depth() == 60, "a full disk cannot delete them yet"
            assert pub.flush(0.5) is False, "flush does not pretend the outbox is empty"
            filler.unlink()
            assert pub.flush(60), f"the outbox never emptied once space returned (depth {box.depth()})"
            assert box.depth() == 0 and pub.counters["acked"] == 60 and pub.acked_not_removed == 0
            pub.stop()
            texts = [r.getMessage() for r in caplog.records]
            assert not any("not stored" in t for t in texts), "a failed delete is not a message that was not stored"
            assert any("could not be removed" in t for t in texts), texts
            # A restart sends nothing twice: the next score arrives after anything that could be re-sent.
            box.append_with_seq("pump1", "edge_asd/box1/pump1/score", lambda s: encode(_score(s)))
            again = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
            pubs.append(again)
            again.start()
            sub.wait_for(lambda _: 61 in {m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")},
                         timeout=60, what="seq 61 after the restart")
            seqs = [m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")]
            assert sorted(seqs) == list(range(1, 62)), "every seq once: no duplicate after the restart"
            again.stop()
            sub.close()
    finally:
        for p in pubs:
            p.stop()
        broker.stop()
