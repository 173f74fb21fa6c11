"""The on-disk queue of messages not yet acknowledged by the MQTT broker.

Every score is written here *before* any attempt to publish it (write-ahead), so a
broker that is away, a network that is down or a daemon that is killed loses
nothing: what is not acknowledged is re-sent, in order, when the broker is back or
the daemon restarts (CONTRACT.md, "MQTT").

Storage is SQLite from the standard library: a single file that survives power
loss when run in WAL mode with ``synchronous=FULL`` (every commit is fsynced
before it returns), with no server and no extra dependency on the device.
Payloads are stored as opaque bytes (the JSON the publisher sends); nothing is
ever pickled.

Disk use: ``max_bytes`` bounds the whole outbox on disk, not only its rows. The write-ahead log
grows by a page or two per commit until a checkpoint copies it back, and SQLite's default (a
checkpoint every 1000 pages, no size limit) lets it reach 4 MB while the queue is nearly empty, enough
to fill a small file system on its own. So the budget is split: a quarter for the WAL (checkpointed
at half of that, truncated back to it by ``journal_size_limit``), 32 KiB for the shared-memory index,
two pages for the ledger, the rest for the rows (``max_page_count``); and when the queue drains the WAL
is truncated to nothing.

Numbering: each stream's last seq lives in the outbox and, reserved before each commit, in the
ledger beside it (:mod:`edge_asd.mqtt.ledger`), so a lost, emptied or replaced outbox cannot make
numbering start again at 1. A replay source's position is stored in the same transaction as the
message of its clip, so a kill at any instant leaves both or neither.

Threading: one connection, shared by the pipeline thread (appending) and the
publisher thread (reading, deleting), guarded by a lock. SQLite serializes
writers anyway; one connection under a lock keeps "allocate the next seq" and
"insert the message" in one transaction without busy-retry loops.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from edge_asd.errors import UserError
from edge_asd.mqtt.ledger import LedgerState, ledger_path, read_ledger, write_ledger

log = logging.getLogger("edge_asd.mqtt")

# Bumped when the table layout changes; an outbox written by a newer version is
# refused rather than misread.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    -- AUTOINCREMENT: ids are never reused, even after every row was delivered and
    -- deleted, so an id is a stable position in the delivery order.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
-- Where a replay source got to: written with the message of the clip (schema 2).
CREATE TABLE IF NOT EXISTS positions (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- This file's identity, so the ledger can tell a new or replaced outbox (schema 2).
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# SQLite's primary result codes (stable C API values; the sqlite3 module only
# exports them as names from Python 3.11).
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_ACTION_DELETE = "remove delivered messages from"

# Rows deleted per statement in mark_delivered (SQLite limits bound parameters).
_DELETE_CHUNK = 500

# The shared-memory index beside the WAL: 32 KiB covers 4096 frames, more than the budget ever lets in.
_SHM_BYTES = 32768
# The smallest outbox_max_mb that leaves the rows room beside the WAL, the index and the ledger.
MIN_MAX_BYTES = 256 * 1024
# Without a size limit: SQLite's own checkpoint interval, and the WAL truncated back to 4 MiB.
_DEFAULT_AUTOCHECKPOINT = 1000
_DEFAULT_WAL_LIMIT = 4 * 1024 * 1024
_WAL_FRAME_HEADER = 24


@dataclass(frozen=True)
class DiskBudget:
    """How ``max_bytes`` is shared between the rows, the WAL, its index and the ledger."""

    db_pages: int | None        # max_page_count; None: unbounded
    autocheckpoint: int         # pages in the WAL that trigger a checkpoint
    wal_limit: int              # journal_size_limit in bytes

    @staticmethod
    def of(max_bytes: int | None, page_size: int) -> DiskBudget:
        if max_bytes is None:
            return DiskBudget(None, _DEFAULT_AUTOCHECKPOINT, _DEFAULT_WAL_LIMIT)
        frame = page_size + _WAL_FRAME_HEADER
        wal = min(max(max_bytes // 4, 16 * frame), _DEFAULT_WAL_LIMIT)
        # A commit can add one transaction's frames past the checkpoint mark: half the WAL's share is kept for it.
        autocheckpoint = max(4, wal // frame // 2)
        rows = max_bytes - wal - _SHM_BYTES - 2 * page_size
        return DiskBudget(max(1, rows // page_size), autocheckpoint, wal)


class OutboxError(UserError):
    """The outbox file cannot be used; the message names the file."""


class OutboxCorruptError(OutboxError):
    """The outbox file is damaged. The daemon refuses to start rather than delete queued data."""


class OutboxFullError(OutboxError):
    """The disk (or the configured outbox size limit) is full: an append stored nothing, a delete removed nothing."""


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


class Outbox:
    """A durable FIFO of MQTT messages with per-stream persistent sequence numbers.

    ``max_bytes`` caps the database size (SQLite ``max_page_count``): appends beyond
    it raise :class:`OutboxFullError` exactly like a full disk, so a long broker
    outage cannot fill the file system that clip recordings and logs share.
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.ledger_path = ledger_path(self.path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ledger_failing = False
        if max_bytes is not None and max_bytes < MIN_MAX_BYTES:
            raise OutboxError(f"{self.path}: an outbox size limit of {max_bytes} bytes is below the "
                              f"{MIN_MAX_BYTES // 1024} KiB its database, write-ahead log and index need")
        # Zero-length (or absent) before SQLite touches it: whatever numbering it had is gone.
        empty_before = not self.path.exists() or self.path.stat().st_size == 0
        _prepare_file(self.path)
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        try:
            self._setup(conn, max_bytes)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        # Kept in memory: depth() is asked for by every heartbeat, status line and flush
        # poll, and COUNT(*) reads the whole table, which after a long outage is large.
        # One process owns an outbox, so only this object changes it.
        self._depth = int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        try:
            self._ledger = self._reconcile(conn, empty_before)
        except BaseException:
            self.close()
            raise

    def _setup(self, conn: sqlite3.Connection, max_bytes: int | None) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"{self.path}: the file system does not support SQLite's WAL journal (got {mode!r})"
                )
            conn.execute("PRAGMA synchronous=FULL")
            # quick_check reads every page once: cheap for a queue that is normally
            # near empty, and it turns a damaged file into a clear refusal at start
            # instead of an error in the middle of the night.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise OutboxCorruptError(
                    f"{self.path}: the outbox database is corrupt ({problems[0]}); "
                    "move it aside to start with an empty outbox (its unsent messages would be lost)"
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path}: outbox written by a newer edge-asd (schema {version}, this one reads {SCHEMA_VERSION})"
                )
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if not conn.execute("SELECT 1 FROM meta WHERE key = 'outbox_id'").fetchone():
                conn.execute("INSERT INTO meta (key, value) VALUES ('outbox_id', ?)", (uuid.uuid4().hex,))
            conn.execute("COMMIT")
            budget = DiskBudget.of(max_bytes, int(conn.execute("PRAGMA page_size").fetchone()[0]))
            if budget.db_pages is not None:
                conn.execute(f"PRAGMA max_page_count={budget.db_pages}")
            conn.execute(f"PRAGMA wal_autocheckpoint={budget.autocheckpoint}")
            conn.execute(f"PRAGMA journal_size_limit={budget.wal_limit}")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, "open") from exc

    def _reconcile(self, conn: sqlite3.Connection, empty_before: bool) -> LedgerState:
        """Continue the numbering the ledger knows when this outbox is not the one it describes; returns the ledger now."""
        box_id = str(conn.execute("SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()[0])
        seqs = {str(k): int(v) for k, v in conn.execute("SELECT stream, seq FROM streams")}
        positions = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM positions")}
        old = read_ledger(self.ledger_path)
        # The ledger reserves a seq before the outbox commits it: one ahead is a kill in between, not another file.
        same = old is not None and old.outbox_id == box_id and all(
            n <= seqs.get(s, 0) + 1 for s, n in old.seqs.items())
        if old is not None and not same:
            carried = {s: n for s, n in old.seqs.items() if n > seqs.get(s, 0)}
            try:
                conn.execute("BEGIN IMMEDIATE")
                for stream, n in carried.items():
                    conn.execute("INSERT INTO streams (stream, seq) VALUES (?, ?) "
                                 "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq", (stream, n))
                for key, value in old.positions.items():
                    conn.execute("INSERT INTO positions (key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise _translate(exc, self.path, "continue the numbering of") from exc
            seqs.update(carried)
            positions.update(old.positions)
            what = "empty" if empty_before else "not the one last used (replaced, or restored from a copy)"
            numbering = ", ".join(f"{s} after seq {n}" for s, n in sorted(seqs.items())) or "nothing to continue"
            held = f"; it holds {self._depth} message(s) of its own, sent first" if self._depth else ""
            log.warning("outbox %s is %s: a new outbox; numbering continues from %s (%s): %s; %d message(s) the "
                        "previous outbox had not delivered are not in this one%s", self.path, what,
                        self.ledger_path, "kept beside it", numbering, old.undelivered, held)
        elif old is None and not empty_before:
            log.info("outbox %s: no ledger beside it yet (%s); writing one", self.path, self.ledger_path)
        elif old is None:
            log.info("outbox %s: a new outbox; numbering starts at 1 (no ledger %s from an earlier one)",
                     self.path, self.ledger_path)
        state = LedgerState(box_id, seqs, positions, self._depth)
        if old is None or not same or old.seqs != seqs or old.positions != positions:
            self._write_ledger(state, "the outbox is not opened")
        return state

    def _write_ledger(self, state: LedgerState, consequence: str = "the message was not stored") -> None:
        """Write the ledger; an :class:`OutboxError` (full: :class:`OutboxFullError`) naming it when that fails."""
        try:
            write_ledger(self.ledger_path, state)
        except OSError as exc:
            text = f"{self.ledger_path}: cannot write the outbox ledger: {exc.strerror or exc}; {consequence}"
            if exc.errno == errno.ENOSPC:
                raise OutboxFullError(text) from exc
            raise OutboxError(text) from exc
        self._ledger_failing = False

    def _update_ledger(self) -> None:
        """Record the depth after a delivery or an unnumbered append; a failure only makes the count older."""
        try:
            self._write_ledger(replace(self._ledger, undelivered=self._depth),
                               "its count of undelivered messages is older (written again with the next message)")
        except OutboxError as exc:
            if not self._ledger_failing:
                log.warning("%s", exc)
            self._ledger_failing = True

    # --- writing ----------------------------------------------------------------

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Store one message; it is on disk when this returns. Returns its id."""
        payload = _as_bytes(payload)
        with self._lock:
            with self._transaction("append") as conn:
                cur = conn.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, int(qos), int(bool(retain)), time.time()),
                )
            self._depth += 1
            self._update_ledger()
            return int(cur.lastrowid)

    def append_with_seq(
        self, stream: str, topic: str, make_payload: Callable[[int], bytes], qos: int = 1,
        position: tuple[str, str] | None = None,
    ) -> int:
        """Allocate the next seq of ``stream`` and store the message built from it, atomically.

        Seqs start at 1 and continue across restarts, and across the loss of the outbox file
        (the ledger). Allocation and insert share one transaction, so a crash can neither skip
        a seq nor store a message twice; if ``make_payload`` raises, nothing is stored and the
        seq is not used. ``position`` (key, value): where a replay source got to with this
        message, stored in the same transaction (:meth:`position` reads it back). Returns the seq.
        """
        with self._lock:
            with self._transaction("append") as conn:
                row = conn.execute("SELECT seq FROM streams WHERE stream = ?", (stream,)).fetchone()
                seq = (int(row[0]) if row else 0) + 1
                payload = _as_bytes(make_payload(seq))
                reserved = replace(self._ledger, seqs={**self._ledger.seqs, stream: seq},
                                   positions=self._ledger.positions if position is None
                                   else {**self._ledger.positions, position[0]: position[1]},
                                   undelivered=self._depth + 1)
                # Before the commit: the ledger may run one seq ahead of the outbox, never behind it.
                self._write_ledger(reserved)
                if position is not None:
                    conn.execute("INSERT INTO positions (key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", position)
                conn.execute(
                    "INSERT INTO streams (stream, seq) VALUES (?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq",
                    (stream, seq),
                )
                conn.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created) VALUES (?, ?, ?, 0, ?)",
                    (topic, payload, int(qos), time.time()),
                )
            self._ledger = reserved
            self._depth += 1
            return seq

    def mark_delivered(self, ids: Iterable[int]) -> None:
        """Forget acknowledged messages (one transaction for the whole batch)."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        with self._lock:
            with self._transaction(_ACTION_DELETE) as conn:
                deleted = 0
                for start in range(0, len(ids), _DELETE_CHUNK):
                    chunk = ids[start : start + _DELETE_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    deleted += conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk).rowcount
            self._depth -= deleted
            if self._depth == 0:
                self._checkpoint()
            self._update_ledger()

    def _checkpoint(self) -> None:
        """The queue is empty: copy the WAL back and truncate it to nothing (its frames are the only disk it holds)."""
        try:
            self._open_conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("%s: checkpoint failed (%s); the next one retries", self.path, exc)

    # --- reading ----------------------------------------------------------------

    def pending(self, limit: int = 100, after_id: int = 0) -> list[OutboxMessage]:
        """Up to ``limit`` undelivered messages with id > ``after_id``, oldest first."""
        with self._lock:
            conn = self._open_conn()
            try:
                rows = conn.execute(
                    "SELECT id, topic, payload, qos, retain, created FROM messages "
                    "WHERE id > ? ORDER BY id LIMIT ?",
                    (int(after_id), int(limit)),
                ).fetchall()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "read") from exc
        return [
            OutboxMessage(id=int(r[0]), topic=r[1], payload=bytes(r[2]), qos=int(r[3]), retain=bool(r[4]), created=float(r[5]))
            for r in rows
        ]

    def depth(self) -> int:
        """Number of messages waiting for acknowledgement."""
        with self._lock:
            self._open_conn()
            return self._depth

    def position(self, key: str) -> str | None:
        """The position last stored under ``key`` with a message (see :meth:`append_with_seq`), or None."""
        value = self._scalar("SELECT value FROM positions WHERE key = ?", (key,))
        return None if value is None else str(value)

    def disk_bytes(self) -> int:
        """Bytes the outbox takes on disk: the database, its WAL and shared-memory index, and the ledger."""
        total = 0
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"), self.ledger_path):
            try:
                total += p.stat().st_blocks * 512
            except OSError:
                pass
        return total

    def last_seq(self, stream: str) -> int:
        """The last seq allocated to ``stream`` (0 when none was)."""
        value = self._scalar("SELECT seq FROM streams WHERE stream = ?", (stream,))
        return int(value) if value is not None else 0

    def _scalar(self, sql: str, params: tuple) -> object:
        with self._lock:
            conn = self._open_conn()
            try:
                row = conn.execute(sql, params).fetchone()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "read") from exc
        return row[0] if row else None

    # --- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """The open connection inside ``BEGIN IMMEDIATE``: committed when the block ends, rolled back if it raises.

        The caller holds ``self._lock``, and keeps it for the in-memory depth it updates after the
        commit. IMMEDIATE makes a read at the start (the stream's last seq) part of the same write
        transaction as the inserts. An SQLite error becomes an :class:`OutboxError` that names the
        file and ``action``; any other exception (a payload builder's) passes through unchanged.
        """
        conn = self._open_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, action) from exc

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"outbox {self.path} is closed")
        return self._conn


def _prepare_file(path: Path) -> None:
    """Create the parent folder (0700) and the file (0600) before SQLite does.

    Queued payloads describe the plant; SQLite would create the file with the
    process umask (often world-readable), and its -wal/-shm companions copy the
    main file's mode, so creating it first with 0600 covers all three.
    """
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
            os.chmod(parent, 0o700)
        except OSError as exc:
            raise OutboxError(f"{path}: cannot create the outbox folder: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise OutboxError(f"{path}: the outbox path is a folder, not a file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OutboxError(f"{path}: cannot create or open the outbox file: {exc.strerror or exc}") from exc
    os.close(fd)


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"outbox payloads are bytes (serialized JSON), not {type(payload).__name__}")


def _rollback(conn: sqlite3.Connection) -> None:
    # After SQLITE_FULL SQLite may already have rolled the transaction back itself.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _translate(exc: sqlite3.Error, path: Path, action: str) -> OutboxError:
    """Turn an SQLite error into an error that names the file and what to do."""
    # sqlite_errorcode exists from Python 3.11; the message text covers 3.10.
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    low = text.lower()
    if primary == _SQLITE_FULL or "disk is full" in low:
        consequence = (
            "delivered messages could not be removed; they are kept and removed once there is room"
            if action == _ACTION_DELETE else "the message was not stored"
        )
        return OutboxFullError(f"{path}: outbox full ({text}): free disk space or raise the outbox size limit; {consequence}")
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in low or "malformed" in low:
        return OutboxCorruptError(
            f"{path}: the outbox file is not a valid SQLite database ({text}); "
            "move it aside to start with an empty outbox (its unsent messages would be lost)"
        )
    return OutboxError(f"{path}: cannot {action} the outbox: {text}")
