"""Daemon reliability III (issue 27): delivery judged by acknowledgements, an outbox that cannot fill its disk
or forget its numbering, and clips journaled once across kills.

Real parts throughout: a real Mosquitto, real SQLite files (on a real small tmpfs where the test runs as root),
``edge-asd run`` as a process killed with real signals. The one injected fault is an acknowledgement whose paho
callback fails (the review's "paho thread death" case), installed on the publisher's own paho client.
"""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from edge_asd.mqtt.outbox import Outbox, OutboxFullError
from edge_asd.mqtt.payloads import encode, score_payload
from edge_asd.mqtt.publisher import Publisher

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker  # noqa: E402
from daemon_proc import Daemon, fill_file_system, noise_wavs, scores, write_config  # noqa: E402

SCORE_TOPIC = "edge_asd/box1/pump1/score"


def _score(seq: int) -> dict:
    return score_payload(1795000000 + 10 * seq, seq, 0.5, 1.0, False, 0.2, -30.0, "bundle-1")


def _seqs(sub, topic: str = SCORE_TOPIC) -> list[int]:
    return [m["seq"] for m in scores(sub, topic)]


# --- 1. a lost acknowledgement ------------------------------------------------------------------


class LoseOneAck:
    """Makes paho's on-publish callback fail once, for the ``nth`` acknowledgement: its mid never reaches the drain."""

    def __init__(self, pub: Publisher, nth: int):
        self._real = pub._client.on_publish
        self._calls = 0
        self._nth = nth
        self.lost = threading.Event()
        pub._client.on_publish = self

    def __call__(self, *args) -> None:
        self._calls += 1
        if self._calls == self._nth:
            self.lost.set()
            raise RuntimeError("injected: the on-publish callback failed")
        self._real(*args)


def test_a_lost_acknowledgement_is_sent_again_and_delivery_goes_on_after_a_reconnect(tmp_path):
    """Issue 27, item 1: one failed on-publish callback used to stop delivery for good after the next reconnect."""
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    broker.save()  # the subscriber's session survives the restart below
    with Outbox(tmp_path / "o.sqlite") as box:
        pub = Publisher(broker.mqtt_settings(ack_timeout_s=2.0), "box1", box, ["pump1"])
        fault = LoseOneAck(pub, nth=5)  # the first is the status "online"; the fifth a score
        try:
            pub.start()
            for _ in range(30):
                pub.enqueue_score("pump1", _score)
            assert fault.lost.wait(30), "the fault was never injected"
            sub.wait_for(lambda _: set(_seqs(sub)) == set(range(1, 31)), what="seqs 1..30")
            connects = sub.connects
            broker.restart()
            sub.wait_reconnected(connects)
            for _ in range(30):
                pub.enqueue_score("pump1", _score)
            assert pub.flush(30), f"delivery stopped after the lost acknowledgement ({box.depth()} left)"
            sub.wait_for(lambda _: set(_seqs(sub)) == set(range(1, 61)), what="seqs 1..60")
            counters = pub.counters
            assert counters["resent"] >= 1, counters
            assert counters["stalled_s"] == 0.0 and pub.stalled_for() == 0.0
            assert pub.dead_thread() is None
            got = _seqs(sub)
            print(f"\nlost acknowledgement: 60 journaled, {len(got)} delivered, {len(got) - len(set(got))} duplicated, "
                  f"0 lost; resent {counters['resent']}")
        finally:
            pub.stop()
            sub.close()
            broker.stop()


# --- shared by the daemon tests below ---------------------------------------------------------------

CLIP_S = 2.0  # the tiny bundle's segment length: the shortest clip it takes


def _config(tmp_path: Path, port: int, bundle: Path, rec: Path, *, mqtt: str = "", outbox: Path | None = None,
            storage: str = "", machine: str = "") -> Path:
    """tests/daemon_proc.py's daemon configuration, with more ``[mqtt]`` keys and the outbox elsewhere if asked."""
    cfg = write_config(tmp_path / "edge-asd.toml", port, bundle, f"file:{rec}",
                       machine=f"realtime = false\nclip_seconds = {CLIP_S}\n{machine}", storage=storage)
    text = cfg.read_text().replace("keepalive = 10\n", f"keepalive = 10\n{mqtt}")
    if outbox is not None:
        text = text.replace(f'outbox = "{tmp_path / "state" / "outbox.sqlite"}"', f'outbox = "{outbox}"')
    cfg.write_text(text)
    return cfg


def _last_stats(d: Daemon) -> dict:
    """The last heartbeat the daemon logged (it logs each one at DEBUG before publishing it)."""
    lines = [line for line in d.log().splitlines() if "stats: {" in line]
    assert lines, d.log()
    return json.loads(lines[-1].split("stats: ", 1)[1])


# --- 1. a delivery that makes no progress ends the daemon ------------------------------------------------


def test_a_delivery_that_makes_no_progress_while_connected_ends_the_daemon(tiny_bundle, edge_asd_exe, tmp_path,
                                                                         daemons):
    """A frozen broker keeps the connection up and acknowledges nothing: logged, in the heartbeat, exit 1;
    the next start delivers everything."""
    noise_wavs(tmp_path / "rec", 3, CLIP_S * 3)
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    broker.save()
    # keepalive 60: paho would notice a frozen broker only after 90 s; the acknowledgements say it at once.
    cfg = _config(tmp_path, broker.port, tiny_bundle, tmp_path / "rec", machine="loop = true\n",
                  mqtt="ack_timeout_s = 1.0\ndelivery_stall_s = 4.0\n")
    cfg.write_text(cfg.read_text().replace("keepalive = 10\n", "keepalive = 60\n"))
    runs = []
    try:
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        runs.append(d)
        sub.wait_for(lambda _: len(scores(sub, "edge_asd/box1/fan1/score")) >= 3, timeout=120, what="3 scores")
        broker.pause()
        assert d.wait(90) == 1, d.log()
        d.wait_log(r"none acknowledged for \d+ s \(delivery_stall_s 4\): delivery is stuck; exiting so that "
                   r"systemd restarts the service")
        stats = [json.loads(line.split("stats: ", 1)[1]) for line in d.log().splitlines() if "stats: {" in line]
        assert max(s["mqtt"]["stalled_s"] for s in stats) >= 1.0, "the heartbeat shows the stall building up"
        assert all(s["mqtt"]["connected"] for s in stats[-3:]), "it was connected all along"
        broker.resume()
        again = Daemon(edge_asd_exe, cfg)
        daemons.append(again)
        runs.append(again)
        journaled = set(d.seqs())
        sub.wait_for(lambda _: journaled <= {m["seq"] for m in scores(sub, "edge_asd/box1/fan1/score")}
                     and len(again.seqs()) >= 3, timeout=120, what="every seq of the stalled run")
        again.send(signal.SIGTERM)
        assert again.wait(60) == 0, again.log()
        got = [m["seq"] for m in scores(sub, "edge_asd/box1/fan1/score")]
        delivered = set(got)
        assert delivered == set(range(1, max(delivered) + 1)) and set(again.seqs()) <= delivered
        print(f"\nstalled delivery: exit 1 after the stall; {max(delivered)} journaled over 2 runs, {len(got)} delivered, "
              f"{len(got) - len(delivered)} duplicated, 0 lost")
    finally:
        sub.close()
        broker.resume()
        broker.stop()


# --- 2. the outbox's disk use, WAL included, stays under outbox_max_mb ---------------------------------------


class DiskSampler:
    """Samples the bytes an outbox's files take (database, WAL, index, ledger) every few ms, in a thread."""

    def __init__(self, outbox: Path):
        self.files = [outbox, Path(f"{outbox}-wal"), Path(f"{outbox}-shm"), Path(f"{outbox}.ledger.json")]
        self.peak = 0
        self.peak_wal = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _size(self, p: Path) -> int:
        try:
            return p.stat().st_blocks * 512
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            sizes = [self._size(p) for p in self.files]
            self.peak = max(self.peak, sum(sizes))
            self.peak_wal = max(self.peak_wal, sizes[1])
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_the_write_ahead_log_cannot_fill_a_small_disk(tmpfs, tmp_path):
    """Issue 27, item 2: with SQLite's defaults the WAL grew to the size of a 2 MB file system while the queue
    stayed nearly empty. 1,500 scores journaled and delivered one by one: the outbox's files stay under the
    1 MiB limit, the WAL is truncated when the queue drains, and nothing is lost."""
    fs = tmpfs("2m")
    path = fs / "outbox.sqlite"
    limit = 1024 * 1024
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#")
    sampler = DiskSampler(path)
    with Outbox(path, max_bytes=limit) as box:
        pub = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
        try:
            pub.start()
            for i in range(1500):
                pub.enqueue_score("pump1", _score)
                if i % 100 == 99:
                    assert pub.flush(60), f"not delivered ({box.depth()} left)"
            assert pub.flush(60)
            sub.wait_for(lambda _: len(set(_seqs(sub))) == 1500, timeout=60, what="1500 scores")
            assert set(_seqs(sub)) == set(range(1, 1501))
            assert box.disk_bytes() <= limit
            assert Path(f"{path}-wal").stat().st_size == 0, "the WAL is truncated once the queue is empty"
            # Delivery away (the publisher stopped, as when the daemon is down): the queue grows until the rows'
            # share of the limit is full, the WAL and all within the limit.
            pub.stop()
            stored = 0
            with pytest.raises(OutboxFullError):
                for _ in range(100_000):
                    box.append_with_seq("pump1", SCORE_TOPIC, lambda s: encode(_score(s)))
                    stored += 1
            assert stored > 500 and box.disk_bytes() <= limit
            pub = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
            pub.start()
            assert pub.flush(120), f"not delivered ({box.depth()} left)"
            sub.wait_for(lambda _: len(set(_seqs(sub))) == 1500 + stored, timeout=60, what="every score")
            assert set(_seqs(sub)) == set(range(1, 1501 + stored)), "nothing lost, the refused append spent no seq"
            got = _seqs(sub)
        finally:
            pub.stop()
            sampler.stop()
            sub.close()
            broker.stop()
    assert sampler.samples > 100
    assert sampler.peak <= limit, f"the outbox took {sampler.peak} bytes (WAL {sampler.peak_wal}) for a {limit} limit"
    print(f"\nWAL test: {1500 + stored} scores journaled ({stored} while nothing was delivered, until the outbox was "
          f"full), {len(got)} delivered, {len(got) - len(set(got))} duplicated, 0 lost; peak outbox disk use "
          f"{sampler.peak / 1024:.0f} KiB (WAL {sampler.peak_wal / 1024:.0f} KiB), limit {limit // 1024} KiB, 2 MiB tmpfs")


def test_a_long_replay_through_an_outage_stays_within_the_outbox_limit(tiny_bundle, edge_asd_exe, tmp_path, tmpfs,
                                                                        daemons):
    """The daemon with its outbox on a 2 MiB tmpfs (outbox_max_mb = 0.5): 150 clips replayed as fast as they score,
    the broker away for a third of them. Disk use stays under the limit; every clip arrives once."""
    files, per_file = 15, 10
    noise_wavs(tmp_path / "rec", files, CLIP_S * per_file)
    fs = tmpfs("2m")
    outbox = fs / "outbox.sqlite"
    limit = 512 * 1024
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    broker.save()
    cfg = _config(tmp_path, broker.port, tiny_bundle, tmp_path / "rec", outbox=outbox, storage="outbox_max_mb = 0.5\n")
    sampler = DiskSampler(outbox)
    try:
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        d.wait_scored(40, timeout=180)
        broker.stop()
        d.wait_scored(90, timeout=180)
        broker.start()
        assert d.wait(300) == 0, d.log()
        sub.wait_for(lambda _: len({m["seq"] for m in scores(sub, "edge_asd/box1/fan1/score")}) >= files * per_file,
                     timeout=60, what="every clip")
        got = [m["seq"] for m in scores(sub, "edge_asd/box1/fan1/score")]
        assert set(got) == set(range(1, files * per_file + 1)) and len(d.seqs()) == files * per_file
        assert "score not stored" not in d.log(), "the outbox never refused a score"
    finally:
        sampler.stop()
        sub.close()
        broker.stop()
    assert sampler.peak <= limit, f"the outbox took {sampler.peak} bytes (WAL {sampler.peak_wal}) for a {limit} limit"
    print(f"\nlong replay: {files * per_file} clips, {len(got)} score messages delivered, "
          f"{len(got) - len(set(got))} duplicated, 0 lost; peak outbox disk use {sampler.peak / 1024:.0f} KiB "
          f"(WAL {sampler.peak_wal / 1024:.0f} KiB) for a {limit // 1024} KiB limit on a 2 MiB tmpfs")


# --- 3. numbering survives the loss of the outbox file --------------------------------------------------------


def _lose_zero_length(path: Path) -> None:
    path.write_bytes(b"")


def _lose_moved_aside(path: Path) -> None:
    path.rename(path.with_name(path.name + ".corrupt"))


def _lose_deleted(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("lose", [_lose_zero_length, _lose_moved_aside, _lose_deleted],
                         ids=["zero-length", "moved-aside", "deleted"])
def test_a_new_outbox_continues_the_numbering_and_says_what_was_lost(tmp_path, caplog, lose):
    caplog.set_level(logging.INFO, logger="edge_asd.mqtt")
    path = tmp_path / "state" / "outbox.sqlite"
    with Outbox(path) as box:
        for i in range(1, 8):
            box.append_with_seq("fan1", "t/fan1", lambda s: encode(_score(s)), position=("fan1\trec", f"clip {i}"))
        box.append_with_seq("fan2", "t/fan2", lambda s: encode(_score(s)))
        box.mark_delivered(m.id for m in box.pending(limit=3))  # 5 of the 8 never delivered
    lose(path)
    caplog.clear()
    with Outbox(path) as box:
        assert box.depth() == 0
        assert box.append_with_seq("fan1", "t/fan1", lambda s: encode(_score(s))) == 8
        assert box.append_with_seq("fan2", "t/fan2", lambda s: encode(_score(s))) == 2
        assert box.position("fan1\trec") == "clip 7", "the replay position is not lost with the outbox"
    lines = [r.getMessage() for r in caplog.records if "a new outbox" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert str(path) in lines[0] and "fan1 after seq 7" in lines[0] and "fan2 after seq 1" in lines[0]
    assert "5 message(s) the previous outbox had not delivered are not in this one" in lines[0]
    caplog.clear()
    with Outbox(path) as box:  # the new outbox is the one the ledger knows now: nothing more to say
        assert box.append_with_seq("fan1", "t/fan1", lambda s: encode(_score(s))) == 9
    assert not [r for r in caplog.records if "a new outbox" in r.getMessage()]


def test_an_outbox_restored_from_an_older_copy_does_not_reuse_seqs(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        for _ in range(3):
            box.append_with_seq("fan1", "t", lambda s: encode(_score(s)))
    copy = (path.read_bytes())
    with Outbox(path) as box:
        for _ in range(4):
            box.append_with_seq("fan1", "t", lambda s: encode(_score(s)))
    path.write_bytes(copy)  # the same outbox (same identity), as it was 4 seqs ago
    with Outbox(path) as box:
        assert box.depth() == 3, "its own messages are kept, and sent"
        assert box.append_with_seq("fan1", "t", lambda s: encode(_score(s))) == 8
    assert any("fan1 after seq 7" in r.getMessage() for r in caplog.records)


def test_a_ledger_that_cannot_be_read_is_named_and_rebuilt(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        box.append_with_seq("fan1", "t", lambda s: encode(_score(s)))
    Path(f"{path}.ledger.json").write_text("{not json")
    with Outbox(path) as box:
        assert box.append_with_seq("fan1", "t", lambda s: encode(_score(s))) == 2
    assert any(f"{path}.ledger.json: cannot read the outbox ledger" in r.getMessage() for r in caplog.records)
    assert json.loads(Path(f"{path}.ledger.json").read_text())["seqs"] == {"fan1": 2}


# --- 4. a kill at any instant scores no clip twice --------------------------------------------------------------


def _origins(d: Daemon) -> dict[str, int]:
    """clip origin -> seq, from the daemon's ``seq N score ... from <file>@<offset>s`` lines."""
    out = {}
    for line in d.log().splitlines():
        m = re.search(r"fan1: seq (\d+) score .* from (\S+@[\d.]+s)$", line)
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


def test_daemon_killed_at_random_points_journals_each_clip_once(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """Issue 27, item 4: a kill between the outbox commit and the file-position write re-scored a clip under a new
    seq. Here SIGKILL lands at seeded random points of a replay, 6 times; then the outbox is lost (zero-length) and
    more recordings arrive. Every clip gets exactly one seq, seqs run 1..N without gap, timestamps never go back."""
    rng = random.Random(27)
    files, per_file, kills = 8, 6, 6
    rec = tmp_path / "rec"
    noise_wavs(rec, files, CLIP_S * per_file)
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    cfg = _config(tmp_path, broker.port, tiny_bundle, rec)
    runs: list[Daemon] = []

    def start() -> Daemon:
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        runs.append(d)
        return d

    try:
        for _ in range(kills):
            d = start()
            d.wait_scored(rng.randint(1, 4), timeout=120)
            time.sleep(rng.uniform(0.0, 0.08))  # anywhere within a clip's scoring and journaling
            assert d.proc.poll() is None, "the replay ended before the kill; it needs more clips"
            d.proc.send_signal(signal.SIGKILL)
            assert d.wait(30) == -signal.SIGKILL
        assert start().wait(180) == 0, runs[-1].log()
        clips = files * per_file
        sub.wait_for(lambda _: len({m["seq"] for m in scores(sub)}) >= clips, timeout=60, what=f"{clips} seqs")
        msgs = {m["seq"]: m for m in scores(sub)}
        assert sorted(msgs) == list(range(1, clips + 1)), "one seq per clip: none scored twice, none lost"
        seen: dict[str, int] = {}
        for d in runs:
            for origin, seq in _origins(d).items():
                assert origin not in seen, f"{origin} scored twice: seq {seen[origin]} and {seq}"
                seen[origin] = seq
        ts = [datetime.fromisoformat(msgs[s]["ts"]) for s in sorted(msgs)]
        assert all(a < b for a, b in zip(ts, ts[1:])), "timestamps run forward across every restart"

        # The outbox lost (a power cut while it was created): seq and the replay position continue.
        outbox = tmp_path / "state" / "outbox.sqlite"
        outbox.write_bytes(b"")
        noise_wavs(tmp_path / "more", 2, CLIP_S * per_file, seed=1)
        for i, p in enumerate(sorted((tmp_path / "more").iterdir())):
            p.rename(rec / f"rec_{files + i:02d}.wav")
        d = start()
        assert d.wait(180) == 0, d.log()
        d.wait_log(r"outbox .*outbox\.sqlite is empty: a new outbox; numbering continues .*fan1 after seq "
                   rf"{clips}\b.*0 message\(s\) the previous outbox had not delivered")
        total = clips + 2 * per_file
        sub.wait_for(lambda _: len({m["seq"] for m in scores(sub)}) >= total, timeout=60, what=f"{total} seqs")
        assert sorted({m["seq"] for m in scores(sub)}) == list(range(1, total + 1))
        assert {o.split("@")[0] for o in _origins(d)} == {str(rec / f"rec_{files + i:02d}.wav") for i in range(2)}
        print(f"\nkills: {kills} SIGKILLs; {total} clips, {len(scores(sub))} score messages delivered, "
              f"{len(scores(sub)) - total} duplicated, 0 lost, every clip one seq")
    finally:
        sub.close()
        broker.stop()


def test_a_ledger_a_full_disk_cannot_write_stores_nothing_and_spends_no_seq(tmpfs):
    fs = tmpfs("1m")
    path = fs / "outbox.sqlite"
    with Outbox(path) as box:
        for _ in range(3):
            box.append_with_seq("fan1", "t", lambda s: encode(_score(s)))
        filler = fill_file_system(fs)
        with pytest.raises(OutboxFullError) as info:
            box.append_with_seq("fan1", "t", lambda s: encode(_score(s)))
        assert f"{path}.ledger.json: cannot write the outbox ledger" in str(info.value)
        assert "the message was not stored" in str(info.value)
        assert box.depth() == 3 and box.last_seq("fan1") == 3
        filler.unlink()
        assert box.append_with_seq("fan1", "t", lambda s: encode(_score(s))) == 4
