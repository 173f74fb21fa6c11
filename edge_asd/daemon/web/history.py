"""A bounded local history of scores and alert changes, in SQLite beside the outbox.

The outbox forgets a score once the broker has it; the page needs the last
hours even when no broker was ever reachable, so the history is a second,
separate file with a retention window. Writes never happen on the scorer
thread: hooks append to a bounded in-memory queue (a full queue drops the row,
counted) and one writer thread commits them in batches. Readers open their own
read-only connections, which WAL mode lets run beside the writer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from edge_asd.errors import ConfigError

log = logging.getLogger("edge_asd.web.history")  # the name journals show, kept from before the subpackages

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    machine TEXT NOT NULL,
    t REAL NOT NULL,
    seq INTEGER NOT NULL,
    score REAL NOT NULL,
    threshold REAL NOT NULL,
    anomalous INTEGER NOT NULL,
    p_target REAL NOT NULL,
    dbfs REAL NOT NULL,
    ratio REAL,
    bands TEXT
);
CREATE INDEX IF NOT EXISTS scores_machine_t ON scores (machine, t);
CREATE TABLE IF NOT EXISTS alerts (
    machine TEXT NOT NULL,
    t REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_machine_t ON alerts (machine, t);
"""

FILE_MODE = 0o640
QUEUE_ROWS = 10000
BATCH_ROWS = 500
PRUNE_EVERY_S = 60.0
# One answer never carries more than this; a client pages on with ``since``.
MAX_ROWS = 20000
# Columns added after the first release: a history file written before gets them on open (NULL in old rows).
_ADDED_COLUMNS = {"ratio": "REAL", "bands": "TEXT"}


class History:
    """Scores and alert state changes of the last ``retention_s`` seconds."""

    def __init__(self, path: Path, retention_s: float, clock=time.time):
        self.path = Path(path)
        self.retention_s = float(retention_s)
        self.clock = clock
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_ROWS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                have = {row[1] for row in conn.execute("PRAGMA table_info(scores)")}
                for name, kind in _ADDED_COLUMNS.items():
                    if name not in have:
                        conn.execute(f"ALTER TABLE scores ADD COLUMN {name} {kind}")
                conn.commit()
            finally:
                conn.close()
            os.chmod(self.path, FILE_MODE)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"web.history: cannot use {self.path}: {exc}") from None

    # -- writing (any thread, never blocks) ---------------------------------------
    def add_score(self, machine: str, t: float, seq: int, score: float, threshold: float, anomalous: bool,
                  p_target: float, dbfs: float, ratio: float | None = None, bands: list[dict] | None = None) -> None:
        # bands as JSON text: at most 3 small objects, read back whole, never queried by field
        self._put(("s", (machine, t, seq, score, threshold, int(anomalous), p_target, dbfs, ratio,
                         None if bands is None else json.dumps(bands, separators=(",", ":")))))

    def add_alert(self, machine: str, t: float, state: str) -> None:
        self._put(("a", (machine, t, state)))

    def _put(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    # -- the writer thread ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="web-history", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is committed (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        conn = sqlite3.connect(self.path)
        # NORMAL, not FULL: the history is a convenience; losing its last second
        # in a power cut costs nothing, an fsync per batch costs the SD card.
        conn.execute("PRAGMA synchronous=NORMAL")
        next_prune = 0.0
        try:
            while True:
                try:
                    first = self._queue.get(timeout=0.5)
                except queue.Empty:
                    first = None
                if first is None and self._stop.is_set():
                    return
                batch = [first] if first is not None else []
                while len(batch) < BATCH_ROWS:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._write(conn, batch)
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + PRUNE_EVERY_S
                        self.prune(conn)
                except sqlite3.Error as exc:
                    self.dropped += len(batch)
                    log.error("web history %s: %d row(s) not stored: %s", self.path, len(batch), exc)
                finally:
                    for _ in batch:
                        self._queue.task_done()
        finally:
            conn.close()

    @staticmethod
    def _write(conn: sqlite3.Connection, batch: list[tuple]) -> None:
        if not batch:
            return
        with conn:
            conn.executemany("INSERT INTO scores (machine, t, seq, score, threshold, anomalous, p_target, dbfs, ratio, bands) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [r for k, r in batch if k == "s"])
            conn.executemany("INSERT INTO alerts VALUES (?, ?, ?)", [r for k, r in batch if k == "a"])

    def prune(self, conn: sqlite3.Connection) -> None:
        cutoff = self.clock() - self.retention_s
        with conn:
            conn.execute("DELETE FROM scores WHERE t < ?", (cutoff,))
            # The last change before the window still says which state the window starts in.
            conn.execute("DELETE FROM alerts WHERE t < ? AND rowid NOT IN "
                         "(SELECT MAX(rowid) FROM alerts WHERE t < ? GROUP BY machine)", (cutoff, cutoff))

    # -- reading (request threads) ----------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=2.0)

    def scores(self, machine: str, since: float, limit: int = MAX_ROWS, until: float = float("inf")) -> list[dict]:
        """Scores with ``since`` < t <= ``until``, oldest first."""
        return self._score_rows("machine = ? AND t > ? AND t <= ? ORDER BY t, seq LIMIT ?",
                                (machine, since, min(until, 1e300), limit))

    def score_of(self, machine: str, seq: int) -> dict | None:
        """The latest stored score with this seq (an evidence clip's), or None."""
        rows = self._score_rows("machine = ? AND seq = ? ORDER BY t DESC LIMIT 1", (machine, seq))
        return rows[0] if rows else None

    def _score_rows(self, where: str, args: tuple) -> list[dict]:
        conn = self._reader()
        try:
            rows = conn.execute("SELECT t, seq, score, threshold, anomalous, p_target, dbfs, ratio, bands FROM scores "
                                f"WHERE {where}", args).fetchall()
        finally:
            conn.close()
        return [{"t": r[0], "seq": r[1], "score": r[2], "threshold": r[3], "anomalous": bool(r[4]),
                 "p_target": r[5], "dbfs": r[6], "ratio": r[7], "bands": None if r[8] is None else json.loads(r[8])}
                for r in rows]

    def alerts(self, machine: str, since: float) -> list[dict]:
        """Alert state changes after ``since``, led by the last change before it (the state the window opens in)."""
        conn = self._reader()
        try:
            before = conn.execute("SELECT t, state FROM alerts WHERE machine = ? AND t <= ? ORDER BY t DESC LIMIT 1",
                                  (machine, since)).fetchall()
            after = conn.execute("SELECT t, state FROM alerts WHERE machine = ? AND t > ? ORDER BY t LIMIT ?",
                                 (machine, since, MAX_ROWS)).fetchall()
        finally:
            conn.close()
        return [{"t": t, "state": s} for t, s in before + after]
