"""The outbox's ledger: the numbering and replay positions kept beside the outbox, where losing the outbox cannot take them.

Subscribers drop repeats by ``seq``; a seq used twice for two different clips makes them drop a real
score. The outbox holds each stream's last seq, but an outbox file can be lost: a power cut while it
was created leaves it zero-length, an operator moves a corrupt one aside (as its error message says),
or deletes it. The ledger, a small JSON file next to it, keeps what a new outbox must continue after:

* ``outbox_id``: the identity of the outbox it describes, so a new or replaced outbox is recognized;
* ``seqs``: per stream, the last seq *reserved*. It is written before the outbox commits the message
  with that seq, so it is never behind the outbox (at most one ahead, after a kill in between);
* ``positions``: per replay source, the position stored with that message (the same lead of one);
* ``undelivered``: the outbox's depth at the last write, so the loss of an outbox can be counted.

Every write replaces the file whole and is fsynced (file and folder), so a power cut leaves the old
ledger or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("edge_asd.mqtt")

LEDGER_VERSION = 1


@dataclass
class LedgerState:
    outbox_id: str
    seqs: dict[str, int] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    undelivered: int = 0

    def to_json(self) -> str:
        return json.dumps({"version": LEDGER_VERSION, "outbox_id": self.outbox_id, "seqs": self.seqs,
                           "positions": self.positions, "undelivered": self.undelivered}, indent=1, sort_keys=True)


def ledger_path(outbox: Path) -> Path:
    """Beside the outbox: the two describe one daemon's delivery state, and a moved-aside outbox leaves it."""
    return Path(str(outbox) + ".ledger.json")


def read_ledger(path: Path) -> LedgerState | None:
    """The ledger at ``path``; None when there is none, or (logged, naming the file) when it cannot be used."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != LEDGER_VERSION:
            raise ValueError(f"not a version {LEDGER_VERSION} ledger")
        return LedgerState(
            outbox_id=str(data["outbox_id"]),
            seqs={str(k): int(v) for k, v in dict(data["seqs"]).items()},
            positions={str(k): str(v) for k, v in dict(data["positions"]).items()},
            undelivered=int(data.get("undelivered", 0)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot read the outbox ledger (%s); the outbox alone says where numbering continues",
                    path, exc)
        return None


def write_ledger(path: Path, state: LedgerState) -> None:
    """Replace the ledger durably; OSError when it cannot be written (the caller decides what that means)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-ledger-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(state.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
