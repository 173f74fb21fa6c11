"""Where each ``file:`` source of the daemon got to, kept across restarts and kills.

Without it a restarted daemon replays audio again and publishes the same clips a second time under
new sequence numbers, which subscribers cannot drop. The position of a clip (its file, the offset of
its end in the file, and its end on the replay timeline) is stored in the outbox in the same
transaction as the clip's score message (:meth:`edge_asd.mqtt.outbox.Outbox.append_with_seq`), so a
kill at any instant leaves both or neither: a restarted source continues with the first clip that
has no message, and its timestamps continue the timeline instead of jumping back to "now".

Daemons before this one kept only the last *finished file*, in ``<outbox>.files.json``; that file is
still read when the outbox has no position for a source, so an upgrade does not replay everything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger("edge_asd.fileprogress")  # the name journals show, kept from before the subpackages


class PositionStore(Protocol):
    def position(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class ReplayPosition:
    """The last clip of a replay source whose message is journaled."""

    file: Path
    offset_s: float | None   # end of that clip in its file; None: the whole file is done
    end_time: datetime | None  # that clip's end on the replay timeline (None: not known, an old progress file)

    def encode(self) -> str:
        return json.dumps({"file": str(self.file), "offset_s": self.offset_s,
                           "end": None if self.end_time is None else self.end_time.isoformat()}, sort_keys=True)

    @staticmethod
    def decode(text: str) -> ReplayPosition:
        data = json.loads(text)
        end = data.get("end")
        offset = data.get("offset_s")
        return ReplayPosition(Path(data["file"]), None if offset is None else float(offset),
                              None if end is None else datetime.fromisoformat(end))


def position_key(machine_id: str, target: str) -> str:
    # Keyed by the target too: a source pointed at another folder starts at its beginning.
    return f"{machine_id}\t{target}"


class FileProgress:
    """The replay positions of one daemon: read from its outbox, or from the file an older daemon kept."""

    def __init__(self, store: PositionStore | None, legacy: Path | None = None):
        self._store = store
        self._legacy: dict[str, str] = {}
        if legacy is not None:
            try:
                data = json.loads(legacy.read_text())
                if isinstance(data, dict):
                    self._legacy = {str(k): str(v) for k, v in data.items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                # Losing the position only means files are replayed again: never a reason not to start.
                log.warning("file sources: cannot read %s (%s); replaying from the first file", legacy, exc)

    def resume(self, machine_id: str, target: str) -> ReplayPosition | None:
        key = position_key(machine_id, target)
        text = self._store.position(key) if self._store is not None else None
        if text is not None:
            try:
                return ReplayPosition.decode(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("file sources: the stored position of %s (%r) is unreadable (%s); replaying from the "
                            "first file", machine_id, text[:80], exc)
                return None
        finished = self._legacy.get(key)
        return None if finished is None else ReplayPosition(Path(finished), None, None)


def progress_path(outbox: Path) -> Path:
    """The finished-file record of daemons before positions moved into the outbox (read on upgrade only)."""
    return Path(str(outbox) + ".files.json")
