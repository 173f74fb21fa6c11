"""A data set's clips of one machine type as ``edge-asd import`` and ``edge-asd record`` add them.

:class:`ImportOptions` says where clips go (and how a stream is cut); :class:`ClipWriter`
is the one writer of them: it numbers each clip after those already there, writes it
whole or not at all under a name nothing else has, and appends a row to the provenance
file ``DATA/<machine>/import.csv`` once the clip is in place. What a user can get wrong
(options, the data folder) is checked before the first clip is written.
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asd.errors import DataError, UserError
from edge_asd.io.audio import SAMPLE_RATE
from edge_asd.io.dcase import DOMAINS, LABELS, SECTION_ID, SPLITS, clip_name, parse_name
from edge_asd.io.files import audio_files
from edge_asd.io.windows import Window

PROVENANCE_NAME = "import.csv"
PROVENANCE_COLUMNS = ("clip", "recording", "start_s", "end_s", "imported_at")

# A window of a few hundred samples holds no machine sound a model could learn.
MIN_CLIP_SECONDS = 0.1

# A machine type names a folder and, deployed, a level of MQTT topics: '/' (and '\')
# would nest folders and topic levels, '+' and '#' are MQTT wildcards, white space and
# control characters break scripts and topic filters. A leading dot hides the folder
# from the listers (and '.' and '..' are no names at all).
_MACHINE_BAD = re.compile(r"[/\\+#\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ImportOptions:
    """Where clips go and how recordings are cut; :meth:`check` refuses what would break the layout."""

    data: Path
    machine: str
    section: str = "00"
    domain: str = "source"
    split: str = "train"
    label: str = "normal"
    clip_seconds: float = 10.0
    hop_seconds: float | None = None  # None: one clip, windows back to back
    channel: int = 0

    @property
    def hop(self) -> float:
        return self.clip_seconds if self.hop_seconds is None else self.hop_seconds

    @property
    def folder(self) -> Path:
        return self.data / self.machine / self.split

    @property
    def provenance(self) -> Path:
        return self.data / self.machine / PROVENANCE_NAME

    def check(self) -> None:
        """:class:`UserError` naming the option and the problem."""
        m = self.machine
        if not m or m in (".", "..") or m.startswith(".") or _MACHINE_BAD.search(m):
            raise UserError(
                f"--machine {m!r}: a machine type names the folder DATA/TYPE and MQTT topics; it may not be empty, "
                "start with '.', or hold '/', '\\', '+', '#', spaces or control characters"
            )
        if not SECTION_ID.fullmatch(self.section):
            raise UserError(f"--section {self.section!r}: two digits, such as 00 (DCASE names say section_XX_)")
        for option, value, allowed in (("--domain", self.domain, DOMAINS), ("--split", self.split, SPLITS),
                                       ("--label", self.label, LABELS)):
            if value not in allowed:
                raise UserError(f"{option} {value!r}: one of {', '.join(allowed)}")
        if self.label == "anomaly" and self.split != "test":
            raise UserError("--label anomaly needs --split test: training reads normal clips only")
        if not (math.isfinite(self.clip_seconds) and self.clip_seconds >= MIN_CLIP_SECONDS):
            raise UserError(f"--clip-seconds {self.clip_seconds:g}: at least {MIN_CLIP_SECONDS:g}")
        if not (math.isfinite(self.hop) and self.hop > 0):
            raise UserError(f"--hop-seconds {self.hop:g}: must be positive")
        if self.channel < 0:
            raise UserError(f"--channel {self.channel}: channels count from 0")

    def describe(self) -> str:
        return f"section {self.section}, {self.domain}, {self.label}"


@dataclass(frozen=True)
class RecordingImport:
    """What one recording (or one microphone session) gave: the clips written, in order, and the windows skipped."""

    recording: Path | str
    options: ImportOptions
    clips: tuple[str, ...]
    silent: int
    clipped: int
    short: int

    def summary(self) -> str:
        n = len(self.clips)
        return (
            f"{self.recording}: {n} clip{'' if n == 1 else 's'} -> {self.options.folder} "
            f"({self.options.describe()}); skipped {self.silent} silent, {self.clipped} clipped, {self.short} short"
        )


@dataclass
class Tally:
    """One source's clips so far and its skipped windows by reason."""

    clips: list[str] = field(default_factory=list)
    silent: int = 0
    clipped: int = 0
    short: int = 0

    def result(self, recording: Path | str, options: ImportOptions) -> RecordingImport:
        return RecordingImport(recording, options, tuple(self.clips), self.silent, self.clipped, self.short)


class ClipWriter:
    """Writes the usable windows of any number of sources as clips; use as a context manager.

    Opening it checks the options and the data folder and reads where numbering
    continues; nothing is written before that has passed.
    """

    def __init__(self, options: ImportOptions):
        self.options = options
        self._next = 0
        self._log = None
        self._rows = None
        self.imported_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # one per run: a run is findable

    def __enter__(self) -> "ClipWriter":
        self.options.check()
        self._next = next_free_index(self.options)
        _prepare_folder(self.options)
        self._log = _open_provenance(self.options.provenance)
        self._rows = csv.writer(self._log)
        return self

    def __exit__(self, *exc) -> None:
        if self._log is not None:
            self._log.flush()
            os.fsync(self._log.fileno())
            self._log.close()
            self._log = None

    def take(self, window: Window, source: str, tally: Tally, offset_s: float = 0.0) -> str | None:
        """Write ``window`` as the next clip (its name), or count why it is skipped (None).

        ``offset_s`` moves the window's times from its cutter's start to the source's.
        """
        if window.samples is None:
            setattr(tally, window.verdict, getattr(tally, window.verdict) + 1)
            return None
        assert self._rows is not None and self._log is not None, "use ClipWriter as a context manager"
        name, self._next = _write_clip(self.options, self._next, window.samples)
        self._next += 1
        tally.clips.append(name)
        # After the clip is in place: a row never names a clip that is not there.
        self._rows.writerow((f"{self.options.split}/{name}", source, f"{offset_s + window.start_s:.3f}",
                             f"{offset_s + window.end_s:.3f}", self.imported_at))
        self._log.flush()
        return name


def next_free_index(options: ImportOptions) -> int:
    """The index after the largest of the clips already there with the same section, domain, split and label.

    DCASE numbers each of these groups from 0000 on its own (the 2022 development set has
    section_00_source_train_normal_0000-0989 beside section_00_target_train_normal_0000-0009),
    and dcase.py reads the index as a name only; a .flac clip holds its index as a .wav would.
    """
    if not options.folder.is_dir():
        return 0
    largest = -1
    for p in audio_files(options.folder, recursive=False):
        info = parse_name(p, options.machine)  # a stranger in the folder would stop training too: said now
        if (info.section, info.domain, info.split, info.label) == (
            options.section, options.domain, options.split, options.label
        ):
            largest = max(largest, int(info.index))
    return largest + 1


def imported_clips(data: Path, machine: str, split: str) -> list[Path]:
    """The clips of ``DATA/<machine>/<split>`` that import.csv says were imported or recorded, in its order.

    These are the user's own recordings, told apart from a benchmark's clips in the same
    folder (which must never steer a choice made before reporting on them).
    """
    path = Path(data) / machine / PROVENANCE_NAME
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the provenance file ({exc})") from None
    found = []
    for row in rows:
        clip = row.get("clip") or ""
        p = Path(data) / machine / clip
        if clip.startswith(f"{split}/") and p.is_file() and p not in found:
            found.append(p)  # a clip deleted since (a user pruning bad ones) is simply not there
    return found


def known_fault_clips(data: Path, machine: str) -> list[Path]:
    """The imported test clips of the sections that hold both normal and anomalous ones: what an official
    score can be computed on (a user's recordings of known faults beside normal ones), or none."""
    clips = imported_clips(data, machine, "test")
    infos = {p: parse_name(p, machine) for p in clips}
    labels: dict[str, set[str | None]] = {}
    for info in infos.values():
        labels.setdefault(info.section, set()).add(info.label)
    usable = {s for s, found in labels.items() if {"normal", "anomaly"} <= found}
    return [p for p in clips if infos[p].section in usable]


def _prepare_folder(options: ImportOptions) -> None:
    for p in (options.data, options.data / options.machine):
        if p.exists() and not p.is_dir():
            raise DataError(f"{p}: exists and is not a folder")
    try:
        options.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{exc.filename or options.folder}: cannot create the folder ({exc.strerror or exc})") from None
    # Root passes access() checks that the file system then refuses: only a real write tells.
    try:
        fd, probe = tempfile.mkstemp(dir=options.folder, prefix=".edge-asd-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{options.folder}: data folder not writable ({exc.strerror or exc})") from None


def _open_provenance(path: Path):
    try:
        fh = open(path, "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot append to the provenance file ({exc.strerror or exc})") from None
    if fh.tell() == 0:
        csv.writer(fh).writerow(PROVENANCE_COLUMNS)
        fh.flush()
    return fh


def _write_clip(options: ImportOptions, index: int, samples: np.ndarray) -> tuple[str, int]:
    """Write a 16 kHz clip under the first free index from ``index``: ``(name, index used)``."""
    # x * 32768 is the inverse of soundfile's reading, so a 16 kHz 16-bit recording keeps its
    # very codes; resampling can overshoot full scale by a little, which is clipped here.
    pcm = np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    folder = options.folder
    # A hidden name: the listers skip it, so a crash midway leaves no half clip in the data set.
    tmp = folder / f".edge-asd-import-{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            sf.write(fh, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            fh.flush()
            os.fsync(fh.fileno())  # a clip that survives a power cut whole, not as an empty name
        while True:
            name = clip_name(options.section, options.domain, options.split, options.label, index)
            if _place(tmp, folder / name):
                return name, index
            index += 1  # taken since the folder was read (another import at the same time)
    except OSError as exc:
        raise UserError(f"{folder}: cannot write a clip ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _place(tmp: Path, final: Path) -> bool:
    """Give ``tmp``'s content the name ``final`` unless something has that name; True when done."""
    try:
        os.link(tmp, final)  # atomic, and refuses an existing name where os.replace would replace it
        return True
    except FileExistsError:
        return False
    except OSError:
        # No hard links (FAT and exFAT cards and sticks): os.replace is atomic too, so check the name
        # first; only a writer in that very instant could slip in between.
        if os.path.lexists(final):
            return False
        os.replace(tmp, final)
        return True
