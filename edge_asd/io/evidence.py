"""Evidence: the clips that were judged anomalous, kept as WAV files under a size cap.

An alert is only actionable when someone can listen to what triggered it
(BirdNET-Go users asked for exactly this, with quotas that really clean up).
Files are 16-bit PCM WAV at 16 kHz, one per anomalous clip, in one folder per
machine, named so that ``ls`` sorts them by time and they can be matched with
the score message (``<UTC time>_seq<seq>.wav``).

The folder is 0750 and files 0640: recordings of a factory floor may carry
speech, so they are not world-readable. When the total exceeds the cap the
oldest files are deleted first, across all machines, so the newest evidence is
always kept.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asd.io.audio import SAMPLE_RATE

log = logging.getLogger("edge_asd.evidence")  # the name journals show, kept from before the subpackages

DIR_MODE = 0o750
FILE_MODE = 0o640


class EvidenceStore:
    """Writes anomalous clips and keeps the folder under ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int, sample_rate: int = SAMPLE_RATE):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.sample_rate = sample_rate
        self._lock = threading.Lock()
        self.saved = 0
        self.deleted = 0
        self.errors = 0
        self._failing: str | None = None  # why the last save failed, until one succeeds
        self._failed_run = 0
        _make_dir(self.root)
        # (mtime, path, size) of every file, oldest first: a scan at start, then
        # kept up to date in memory so a save never re-walks the folder.
        self._files: list[tuple[float, Path, int]] = []
        for p in self.root.rglob("*.wav"):
            try:
                st = p.stat()
            except OSError:
                continue
            self._files.append((st.st_mtime, p, st.st_size))
        self._files.sort()
        self._total = sum(f[2] for f in self._files)
        with self._lock:
            self._enforce_cap()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def save(self, machine_id: str, samples: np.ndarray, end_time: datetime, seq: int) -> Path | None:
        """Write one clip; returns its path, or None when writing failed (logged and counted, never raised)."""
        folder = self.root / machine_id
        stamp = end_time.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        path = folder / f"{stamp}_seq{seq}.wav"
        tmp = None
        try:
            _make_dir(folder)
            data = _wav_bytes(samples, self.sample_rate)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".wav", dir=folder)
            try:
                os.fchmod(fd, FILE_MODE)
                _write_all(fd, data)
            finally:
                os.close(fd)
            # Renamed into place only when complete: a power cut never leaves half a WAV.
            os.replace(tmp, path)
            tmp = None
            size = path.stat().st_size
        except (OSError, sf.SoundFileError) as exc:
            self._failed(path, getattr(exc, "strerror", None) or str(exc))
            return None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        if self._failing is not None:
            log.info("evidence: saving again (%d clip(s) could not be saved: %s)", self._failed_run, self._failing)
            self._failing, self._failed_run = None, 0
        with self._lock:
            self._files.append((path.stat().st_mtime, path, size))
            self._total += size
            self.saved += 1
            self._enforce_cap()
        return path

    def _failed(self, path: Path, reason: str) -> None:
        # One line per run of failures: a full disk fails every anomalous clip until space returns,
        # and a line per clip would bury the journal (the heartbeat counts them all).
        self.errors += 1
        self._failed_run += 1
        if reason != self._failing:
            log.error("evidence: cannot save %s: %s (further clips that fail alike are counted, not logged)",
                      path, reason)
        self._failing = reason

    def _enforce_cap(self) -> None:
        while self._total > self.max_bytes and self._files:
            _, old, size = self._files.pop(0)
            try:
                old.unlink()
                self.deleted += 1
            except FileNotFoundError:
                pass  # removed by someone else: it no longer counts either way
            except OSError as exc:
                log.error("evidence: cannot delete %s to stay under the size cap: %s", old, exc.strerror or exc)
            self._total -= size


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """The clip as a 16-bit WAV, encoded in memory.

    Not written by libsndfile straight into the file: its writes to a Python file go
    through a cffi callback, where an ENOSPC is printed to stderr as an "Exception
    ignored" traceback (one per block) and the save then fails with an AssertionError
    instead of an OSError. In memory nothing can fail, and the one write to disk
    reports a full disk as the OSError it is.
    """
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0), sample_rate,
             subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask; set it explicitly.
    os.chmod(path, DIR_MODE)
