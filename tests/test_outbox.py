"""The on-disk outbox: durability, order, seq allocation, permissions, full and corrupt files."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from edge_asd.errors import UserError
from edge_asd.mqtt.outbox import Outbox, OutboxCorruptError, OutboxError, OutboxFullError


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_creates_private_folder_and_file(tmp_path):
    path = tmp_path / "state" / "edge-asd" / "outbox.sqlite"
    with Outbox(path) as box:
        box.append("t/a", b"{}")
        assert _mode(path.parent) == 0o700
        assert _mode(path) == 0o600
        # SQLite's WAL companions copy the main file's mode.
        for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            if companion.exists():
                assert _mode(companion) == 0o600
        journal = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"


def test_pending_is_oldest_first_and_delivered_rows_go(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        ids = [box.append(f"t/{i}", f'{{"i":{i}}}'.encode(), qos=1, retain=(i == 3)) for i in range(10)]
        assert ids == sorted(ids) and len(set(ids)) == 10
        msgs = box.pending(limit=100)
        assert [m.topic for m in msgs] == [f"t/{i}" for i in range(10)]
        assert [m.retain for m in msgs] == [i == 3 for i in range(10)]
        assert all(isinstance(m.payload, bytes) and m.qos == 1 for m in msgs)
        assert [m.id for m in box.pending(limit=3, after_id=ids[4])] == ids[5:8]

        box.mark_delivered([ids[0], ids[2], ids[9]])
        assert box.depth() == 7
        assert [m.id for m in box.pending()] == [i for i in ids if i not in (ids[0], ids[2], ids[9])]
        box.mark_delivered(ids)  # re-acknowledging is harmless (QoS 1 duplicates)
        assert box.depth() == 0 and box.pending() == []
        # Ids are never reused, so they stay a valid position in the delivery order.
        assert box.append("t/x", b"{}") > ids[-1]


def test_seq_per_stream_continues_across_reopen(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        assert box.last_seq("pump1") == 0
        got = [box.append_with_seq("pump1", "p/pump1/score", lambda s: b'{"seq":%d}' % s) for _ in range(3)]
        assert got == [1, 2, 3]
        assert box.append_with_seq("fan", "p/fan/score", lambda s: b'{"seq":%d}' % s) == 1
        # Delivering everything must not reset the sequence.
        box.mark_delivered(m.id for m in box.pending())
    with Outbox(path) as box:
        assert box.depth() == 0
        assert box.last_seq("pump1") == 3 and box.last_seq("fan") == 1
        assert box.append_with_seq("pump1", "p/pump1/score", lambda s: b'{"seq":%d}' % s) == 4
        assert box.pending()[0].payload == b'{"seq":4}'


def test_failed_payload_builder_stores_nothing_and_spends_no_seq(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        box.append_with_seq("m", "t", lambda s: b"1")

        def broken(seq: int) -> bytes:
            raise ValueError("score is NaN")

        with pytest.raises(ValueError, match="NaN"):
            box.append_with_seq("m", "t", broken)
        assert box.depth() == 1 and box.last_seq("m") == 1
        assert box.append_with_seq("m", "t", lambda s: b"%d" % s) == 2


def test_payloads_must_be_bytes(tmp_path):
    # Payloads are serialized JSON: nothing is pickled, so an object is a caller's bug.
    with Outbox(tmp_path / "o.sqlite") as box:
        with pytest.raises(TypeError):
            box.append("t", {"score": 1.0})  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            box.append_with_seq("m", "t", lambda s: f"{s}")  # type: ignore[arg-type,return-value]
        assert box.depth() == 0


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from edge_asd.mqtt.outbox import Outbox
    box = Outbox(Path(sys.argv[1]))
    for _ in range(int(sys.argv[2])):
        box.append_with_seq("pump1", "edge_asd/d/pump1/score", lambda s: b'{"seq":%d}' % s)
    box.append("edge_asd/d/pump1/alert", b'{"state":"anomalous"}')
    print("written", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # no close(), no checkpoint: a power cut
    """
)


def test_messages_survive_a_killed_process(tmp_path):
    path = tmp_path / "o.sqlite"
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(path), "25"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "written"
    # The data lives in the write-ahead log, not yet checkpointed into the main file.
    assert Path(f"{path}-wal").stat().st_size > 0
    with Outbox(path) as box:
        msgs = box.pending(limit=1000)
        assert [m.payload for m in msgs[:-1]] == [b'{"seq":%d}' % s for s in range(1, 26)]
        assert msgs[-1].topic == "edge_asd/d/pump1/alert"
        assert box.last_seq("pump1") == 25
        assert box.append_with_seq("pump1", "t", lambda s: b"%d" % s) == 26


def test_full_outbox_raises_and_recovers_after_delivery(tmp_path):
    # A size cap gives SQLite's SQLITE_FULL exactly as a full disk does.
    with Outbox(tmp_path / "o.sqlite", max_bytes=256 * 1024) as box:
        stored = 0
        with pytest.raises(OutboxFullError) as info:
            for _ in range(10_000):
                box.append_with_seq("m", "t", lambda s: b"x" * 1000)
                stored += 1
        assert isinstance(info.value, UserError)
        assert "o.sqlite" in str(info.value) and "full" in str(info.value)
        assert 0 < stored < 10_000
        # Nothing half-written: the failed append neither stored a row nor spent a seq.
        assert box.depth() == stored and box.last_seq("m") == stored
        with pytest.raises(OutboxFullError):
            box.append("t", b"y" * 1000)

        box.mark_delivered(m.id for m in box.pending(limit=stored // 2))
        assert box.append_with_seq("m", "t", lambda s: b"x" * 1000) == stored + 1


def test_garbage_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "outbox.sqlite"
    garbage = b"this is not an sqlite database " * 200
    path.write_bytes(garbage)
    with pytest.raises(OutboxCorruptError) as info:
        Outbox(path)
    assert isinstance(info.value, UserError)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage  # never deleted or "repaired": the operator decides


def test_damaged_pages_are_refused(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        for i in range(40):
            box.append("edge_asd/d/m/score", b'{"payload":"%d"}' % i + b" " * 3000)
    # close() checkpointed the WAL into the file; now scribble over interior pages.
    page = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    size = path.stat().st_size
    assert size > 8 * page
    with open(path, "r+b") as f:
        for n in range(2, size // page, 3):
            f.seek(n * page)
            f.write(b"\xa5" * page)
    with pytest.raises(OutboxCorruptError, match="outbox.sqlite"):
        Outbox(path)


def test_outbox_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(path)


def test_unusable_location_names_the_file(tmp_path):
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    with pytest.raises(OutboxError, match="a-folder.sqlite"):
        Outbox(folder)


def test_concurrent_producers_and_consumer(tmp_path):
    """Pipeline threads append while the publisher thread reads and deletes."""
    per_thread, machines = 100, ["a", "b", "c"]
    with Outbox(tmp_path / "o.sqlite") as box:
        seqs: dict[str, list[int]] = {m: [] for m in machines}
        done = threading.Event()
        delivered: list[bytes] = []

        def produce(machine: str) -> None:
            for _ in range(per_thread):
                seqs[machine].append(
                    box.append_with_seq(machine, f"t/{machine}", lambda s, m=machine: f"{m}:{s}".encode())
                )

        def consume() -> None:
            while True:
                batch = box.pending(limit=40)
                if batch:
                    delivered.extend(m.payload for m in batch)
                    box.mark_delivered(m.id for m in batch)
                elif done.is_set():
                    if not box.pending(limit=1):
                        return
                else:
                    done.wait(0.002)  # nothing queued yet: do not starve the producers of the lock

        threads = [threading.Thread(target=produce, args=(m,)) for m in machines]
        consumer = threading.Thread(target=consume)
        consumer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        consumer.join()

        for m in machines:
            assert seqs[m] == list(range(1, per_thread + 1))
            # Per stream, the delivery order is the seq order.
            assert [p for p in delivered if p.startswith(f"{m}:".encode())] == [
                f"{m}:{s}".encode() for s in range(1, per_thread + 1)
            ]
        assert len(delivered) == per_thread * len(machines)
        assert box.depth() == 0
