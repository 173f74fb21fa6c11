"""``edge-asd import``: a user's own recordings made into DCASE clips that training reads.

A recording of any name, length, rate, channel count and format soundfile reads is
streamed block by block (an hour takes the memory of a few blocks); one channel is
resampled to 16 kHz by :class:`~edge_asd.io.audio.StreamResampler`, which gives
exactly :func:`~edge_asd.io.audio.resample` of the whole recording, so no clip has a
seam where a block ended. The stream is cut into windows; every usable one becomes a
16-bit WAV clip under ``DATA/<machine>/<split>/`` with the next free DCASE name, and
``DATA/<machine>/import.csv`` says where each clip came from.

What a user can get wrong (options, recordings, the data folder) is checked before the
first clip is written, so a refused import changes nothing. A clip appears whole or not
at all and never takes the name of an existing file; the provenance file is only
appended to.
"""

from __future__ import annotations

import csv
import math
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np
import soundfile as sf

from edge_asd.errors import AudioError, DataError, UserError
from edge_asd.io.audio import SAMPLE_RATE, SILENT_PEAK, StreamResampler, open_audio, short_error
from edge_asd.io.dcase import DOMAINS, LABELS, SECTION_ID, SPLITS, clip_name, parse_name
from edge_asd.io.files import audio_files, expand_paths
from edge_asd.progress import Progress

PROVENANCE_NAME = "import.csv"
PROVENANCE_COLUMNS = ("clip", "recording", "start_s", "end_s", "imported_at")

# A loud recording touches full scale at single peaks (a full-scale tone sampled at 8 kHz
# may sit there on a quarter of its samples, but not on two in a row); a saturated
# converter or amplifier holds it for several samples in a row on every loud cycle (a
# 1 kHz sine overdriven by 5 % for ~4 at 44.1 kHz). So full-scale samples count in runs
# of CLIP_RUN or more, and past 0.1 % of a window such flattened peaks are a steady
# distortion, whose harmonics the model would learn as the machine's sound.
CLIP_RUN = 2
CLIPPED_FRACTION = 1e-3

# Full scale in soundfile's float reading of a file's own samples: the largest code of
# integer PCM (the negative end reads as -1.0) and of mu-law and A-law. Float and lossy
# files have no largest code (a decoded clipped peak rings around its level): 0.999.
FULL_SCALE_DEFAULT = 0.999
FULL_SCALE = {
    "PCM_S8": 1 - 2**-7,
    "PCM_U8": 1 - 2**-7,
    "PCM_16": 1 - 2**-15,
    "PCM_24": 1 - 2**-23,
    "PCM_32": 1 - 2**-31,
    "ULAW": 32124 / 32768,
    "ALAW": 32256 / 32768,
}

# The daemon's file: sources read the same 64 Ki frames at a time: 1.4 s at 48 kHz,
# a few MB even for many channels.
BLOCK_FRAMES = 65536
# Below a minute an import takes about a second: a progress bar would only flicker.
PROGRESS_MIN_SECONDS = 60.0
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
    """What one recording gave: the clips written (in order) and the windows skipped."""

    recording: Path
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


def import_recordings(
    paths: list[Path],
    options: ImportOptions,
    *,
    progress: bool = False,
    on_recording: Callable[[RecordingImport], None] | None = None,
    block_frames: int = BLOCK_FRAMES,
) -> list[RecordingImport]:
    """Import recordings (files, or folders of .wav and .flac) into the data set, in the order given.

    Everything is checked first (:class:`UserError` naming the file or option; nothing
    written). A recording that turns out damaged midway stops the import with an
    :class:`AudioError`; the clips written before it stay, each with its provenance row.
    """
    options.check()
    recordings = expand_paths(paths)
    for path in recordings:
        with open_recording(path, options.channel):
            pass
    next_index = next_free_index(options)
    _prepare_folder(options)
    imported_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # one per run: a run is findable
    results = []
    with _open_provenance(options.provenance) as log:
        for path in recordings:
            result, next_index = _import_one(path, options, next_index, log, imported_at, progress, block_frames)
            results.append(result)
            if on_recording is not None:
                on_recording(result)
    return results


def open_recording(path: Path, channel: int) -> sf.SoundFile:
    """An open recording that has ``channel``; :class:`AudioError` naming the file otherwise."""
    f = open_audio(path)
    if channel >= f.channels:
        n = f.channels
        f.close()
        raise AudioError(f"{path}: has {n} channel{'' if n == 1 else 's'}; --channel {channel} does not exist "
                         "(channels count from 0)")
    return f


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


def _open_provenance(path: Path) -> TextIO:
    try:
        fh = open(path, "a", newline="", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot append to the provenance file ({exc.strerror or exc})") from None
    if fh.tell() == 0:
        csv.writer(fh).writerow(PROVENANCE_COLUMNS)
        fh.flush()
    return fh


def _import_one(path: Path, options: ImportOptions, index: int, log: TextIO, imported_at: str, progress: bool,
                block_frames: int) -> tuple[RecordingImport, int]:
    """The recording's result and the index after its last clip."""
    rows = csv.writer(log)
    names: list[str] = []
    skipped = {"silent": 0, "clipped": 0}
    recording = os.path.abspath(path)
    with open_recording(path, options.channel) as f:
        cutter = _Cutter(path, f, options, block_frames)
        bar = Progress(cutter.expected_windows(), path.name,
                       enabled=progress and f.frames >= PROGRESS_MIN_SECONDS * f.samplerate)
        try:
            for w in cutter.windows():
                bar.update()
                if w.samples is None:
                    skipped[w.verdict] += 1
                    continue
                name, index = _write_clip(options, index, w.samples)
                index += 1
                names.append(name)
                # After the clip is in place: a row never names a clip that is not there.
                rows.writerow((f"{options.split}/{name}", recording, f"{w.start_s:.3f}", f"{w.end_s:.3f}", imported_at))
                log.flush()
        except AudioError as exc:
            if names:
                raise AudioError(f"{exc}; the {len(names)} clip(s) before it were imported") from None
            raise
        finally:
            bar.close()
            os.fsync(log.fileno())
    return RecordingImport(path, options, tuple(names), skipped["silent"], skipped["clipped"], cutter.short), index


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


@dataclass(frozen=True)
class _Window:
    start_s: float
    end_s: float
    verdict: str  # "ok", "silent" or "clipped"
    samples: np.ndarray | None  # the 16 kHz clip when "ok"


class _Stream:
    """A sample stream fed block by block, cut into windows ``[round(k * hop * rate), + clip)``.

    Starts are rounded from seconds for every k, so a hop that is no whole number of
    samples does not drift over hours; only what later windows need is kept.
    """

    def __init__(self, rate: int, clip_seconds: float, hop_seconds: float):
        self.rate, self.hop_seconds = rate, hop_seconds
        self.n = max(1, int(round(clip_seconds * rate)))
        self.received = 0
        self.next_k = 0
        self._kept = np.zeros(0, dtype=np.float32)

    def start(self, k: int) -> int:
        return int(round(k * self.hop_seconds * self.rate))

    def feed(self, x: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self._kept = np.concatenate([self._kept, np.asarray(x, dtype=np.float32)])
        self.received += x.size
        kept_start = self.received - self._kept.size
        out = []
        while (s := self.start(self.next_k)) + self.n <= self.received:
            out.append((self.next_k, self._kept[s - kept_start : s - kept_start + self.n]))
            self.next_k += 1
        drop = min(max(0, self.start(self.next_k) - kept_start), self._kept.size)
        self._kept = self._kept[drop:]
        return out


class _Cutter:
    """One recording's windows: judged on the file's own samples, cut from its 16 kHz resampling.

    Silence and clipping are judged at the file's rate and scale (a resampled clipped peak
    overshoots and no longer sits at full scale); the clip is cut at the same times from
    the 16 kHz stream. Both streams are windowed alike, so window k of one is window k of
    the other; the resampler's output lags its input by its filter, and the two are matched.
    """

    def __init__(self, path: Path, f: sf.SoundFile, options: ImportOptions, block_frames: int):
        self.path, self.f, self.block_frames = path, f, block_frames
        self.channel = options.channel
        self.full_scale = FULL_SCALE.get(f.subtype, FULL_SCALE_DEFAULT)
        self.native = _Stream(f.samplerate, options.clip_seconds, options.hop)
        self.out = _Stream(SAMPLE_RATE, options.clip_seconds, options.hop)
        self.short = 0

    def expected_windows(self) -> int:
        """Whole windows by the header's length (for progress; the stream decides)."""
        frames, n = self.f.frames, self.native.n
        return 0 if frames < n else int((frames - n) / (self.native.hop_seconds * self.native.rate)) + 1

    def windows(self) -> Iterator[_Window]:
        resampler = StreamResampler(self.f.samplerate, SAMPLE_RATE)
        verdicts: dict[int, str] = {}
        clips: dict[int, np.ndarray] = {}
        for x in self._blocks():
            for k, w in self.native.feed(x):
                verdicts[k] = self._verdict(w)
            for k, c in self.out.feed(resampler.feed(x)):
                clips[k] = c
            yield from self._matched(verdicts, clips)
        tail = resampler.finish()
        if verdicts:
            # Rounding can end the 16 kHz stream a sample short of the last whole window's
            # clip; zeros stand in, as resample() pads past the end.
            tail = np.concatenate([tail, np.zeros(self.out.n, dtype=np.float32)])
        for k, c in self.out.feed(tail):
            clips[k] = c
        yield from self._matched(verdicts, clips)
        # Overlapping windows past the end all hold the same tail: it is one short window, not several.
        k = self.native.next_k
        self.short = int(k == 0 or self.native.start(k) < self.native.received)

    def _matched(self, verdicts: dict[int, str], clips: dict[int, np.ndarray]) -> Iterator[_Window]:
        for k in sorted(verdicts.keys() & clips.keys()):
            verdict, clip = verdicts.pop(k), clips.pop(k)
            start = self.native.start(k)
            yield _Window(start / self.native.rate, (start + self.native.n) / self.native.rate, verdict,
                          clip if verdict == "ok" else None)

    def _verdict(self, x: np.ndarray) -> str:
        a = np.abs(x)
        if float(a.max(initial=0.0)) < SILENT_PEAK:
            return "silent"
        if _in_runs(a >= self.full_scale, CLIP_RUN) > CLIPPED_FRACTION * a.size:
            return "clipped"
        return "ok"

    def _blocks(self) -> Iterator[np.ndarray]:
        f, done = self.f, 0
        while True:
            try:
                block = f.read(self.block_frames, dtype="float32", always_2d=True)
            except Exception as exc:  # a decoder error in the middle of a damaged file
                raise AudioError(
                    f"{self.path}: unreadable audio data at {done / f.samplerate:.2f} s ({short_error(exc)})"
                ) from None
            if block.shape[0] == 0:
                return
            x = block[:, self.channel]
            if not np.all(np.isfinite(x)):
                at = done + int(np.argmin(np.isfinite(x)))
                raise AudioError(f"{self.path}: contains NaN or infinite samples (first at {at / f.samplerate:.2f} s)")
            done += x.size
            yield x


def _in_runs(flags: np.ndarray, run: int) -> int:
    """How many of ``flags`` lie in runs of at least ``run`` consecutive True values."""
    if flags.size < run or not flags.any():
        return 0
    edges = np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int(lengths[lengths >= run].sum())
