"""Where each ``file:`` source of the daemon got to, kept on disk across restarts.

Without it a restarted daemon replays a folder from its first file again and
publishes the same audio a second time under new sequence numbers. A file
counts as finished once the scorer has journaled its last clip, so a crash in
the middle of a file replays that file again rather than losing its end.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("edge_asd.fileprogress")  # the name journals show, kept from before the subpackages


class FileProgress:
    """The last finished file per (machine, source target), in one small JSON file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self._state = {str(k): str(v) for k, v in data.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # Losing the position only means files are replayed again: never a reason not to start.
            log.warning("file sources: cannot read %s (%s); replaying from the first file", self.path, exc)

    @staticmethod
    def _key(machine_id: str, target: str) -> str:
        # Keyed by the target too: a source pointed at another folder starts at its beginning.
        return f"{machine_id}\t{target}"

    def last(self, machine_id: str, target: str) -> str | None:
        with self._lock:
            return self._state.get(self._key(machine_id, target))

    def record(self, machine_id: str, target: str, finished: Path) -> None:
        with self._lock:
            self._state[self._key(machine_id, target)] = str(finished)
            text = json.dumps(self._state, indent=1, sort_keys=True)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path.parent)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
                # Replaced whole: a power cut leaves the old position, never half a file.
                os.replace(tmp, self.path)
            except OSError as exc:
                log.error("file sources: cannot save the replay position to %s: %s", self.path, exc.strerror or exc)


def progress_path(outbox: Path) -> Path:
    """Next to the outbox: the two describe one daemon's state and move together."""
    return Path(str(outbox) + ".files.json")
