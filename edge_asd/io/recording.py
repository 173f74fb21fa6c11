"""A recording cut into clips: the one cutting rule the daemon's ``file:`` source and ``edge-asd score``
share (so a replay scores what the daemon would have), and the :class:`ClipCutter` every source cuts a
sample stream with."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from edge_asd.errors import AudioError
from edge_asd.io.audio import SAMPLE_RATE, channel_blocks, open_audio, resample

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages

# 64 Ki frames: 4 s at 16 kHz, 1.4 s at 48 kHz; a few MB even for many channels.
BLOCK_FRAMES = 65536


class RecordingClips:
    """Opens, checks and cuts recordings into clips of ``clip_seconds`` every ``hop_seconds``.

    A file is streamed in blocks of ``block_frames`` frames, never read whole; clips are cut at
    the file's own rate and each is resampled to 16 kHz, as the microphone path does. A file
    that cannot give one clip (unreadable, empty, too short, no such channel) raises
    :class:`AudioError` naming it; so does the first bad block. Per-file notes (the channel
    used, a rate change) are logged once per file, under ``name``.
    """

    def __init__(self, name: str, clip_seconds: float, hop_seconds: float, channel: int = 0,
                 block_frames: int = BLOCK_FRAMES, stop: threading.Event | None = None):
        self.name = name
        self.clip_seconds = clip_seconds
        self.hop_seconds = hop_seconds
        self.channel = channel
        self.block_frames = block_frames
        self._stop = stop if stop is not None else threading.Event()  # set: cutting ends at the next block
        self._noted: set[tuple[str, str]] = set()

    def note(self, path: Path, kind: str, level: int, msg: str, *args: Any) -> None:
        """Log a per-file message once, not on every loop pass."""
        if (str(path), kind) in self._noted:
            return
        self._noted.add((str(path), kind))
        log.log(level, msg, *args)

    def forget_gone(self, paths: list[Path]) -> None:
        """Drop the once-only notes of files no longer listed: a folder that files pass through must not grow them."""
        listed = {str(p) for p in paths}
        self._noted = {k for k in self._noted if k[0] in listed}

    def open_file(self, path: Path) -> sf.SoundFile:
        """An open file that can give at least one clip; :class:`AudioError` naming it when it cannot."""
        try:
            f = open_audio(path)
        except AudioError:
            if not path.exists():
                raise AudioError(f"{path}: no such file (it disappeared)") from None
            raise
        try:
            self._check(path, f)
        except AudioError:
            f.close()
            raise
        return f

    def _check(self, path: Path, f: sf.SoundFile) -> None:
        if f.frames == 0:
            raise AudioError(f"{path}: contains no samples")
        if f.channels > 1:
            if self.channel >= f.channels:
                raise AudioError(f"{path}: has {f.channels} channels; channel {self.channel} does not exist")
            self.note(path, "channel", logging.INFO, "source %s: %s has %d channels; using channel %d",
                      self.name, path, f.channels, self.channel)
        elif self.channel > 0:
            self.note(path, "channel", logging.INFO, "source %s: %s is mono; using its only channel",
                      self.name, path)
        if f.frames < int(round(self.clip_seconds * f.samplerate)):
            raise AudioError(
                f"{path}: {f.frames / f.samplerate:.2f} s long, shorter than one {self.clip_seconds:g} s clip"
            )
        if f.samplerate != SAMPLE_RATE:
            self.note(path, "rate", logging.INFO, "source %s: %s is %d Hz; resampling to %d Hz",
                      self.name, path, f.samplerate, SAMPLE_RATE)

    def _blocks(self, path: Path, f: sf.SoundFile):
        """``(mono block, frames read so far)`` of the selected channel; :class:`AudioError` at the first bad block."""
        done = 0
        for x in channel_blocks(path, f, self.channel if f.channels > 1 else 0, self.block_frames):
            if self._stop.is_set():
                return
            done += x.size
            yield x, done

    def cut_clips(self, path: Path, f: sf.SoundFile) -> Iterator[tuple[np.ndarray, float, bool]]:
        """``(clip at 16 kHz, offset of its end in s, whether no further clip fits the file)`` of an open file.

        Streamed block by block; :class:`AudioError` at the first bad block.
        """
        rate = f.samplerate
        hop_n = max(1, int(round(self.hop_seconds * rate)))
        cutter = ClipCutter(int(round(self.clip_seconds * rate)), hop_n)
        out_n = int(round(self.clip_seconds * SAMPLE_RATE))
        for x, end_index in self._blocks(path, f):
            for native, end in cutter.feed(x, end_index):
                yield fit_length(resample(native, rate, SAMPLE_RATE), out_n), end / rate, end + hop_n > f.frames


class ClipCutter:
    """Cuts a continuous sample stream into clips of ``clip_n`` samples every ``hop_n`` samples.

    ``hop_n < clip_n`` overlaps clips; ``hop_n > clip_n`` skips audio between
    clips (scoring a 10 s clip once a minute saves a small device's CPU).
    """

    def __init__(self, clip_n: int, hop_n: int):
        if clip_n < 1 or hop_n < 1:
            raise ValueError("clip and hop must be at least one sample")
        self.clip_n = clip_n
        self.hop_n = hop_n
        self._buf = np.zeros(clip_n, dtype=np.float32)
        self._fill = 0
        self._skip = 0

    def reset(self) -> None:
        """Forget the partial clip (after a gap in the stream a clip must not straddle it)."""
        self._fill = 0
        self._skip = 0

    def feed(self, x: np.ndarray, end_index: int) -> list[tuple[np.ndarray, int]]:
        """Add samples whose last one has absolute index ``end_index - 1``.

        Returns the completed clips with the absolute index just past their last sample.
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        base = end_index - x.size
        out: list[tuple[np.ndarray, int]] = []
        pos = 0
        while pos < x.size:
            if self._skip:
                s = min(self._skip, x.size - pos)
                pos += s
                self._skip -= s
                continue
            take = min(self.clip_n - self._fill, x.size - pos)
            self._buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.clip_n:
                out.append((self._buf.copy(), base + pos))
                if self.hop_n >= self.clip_n:
                    self._fill = 0
                    self._skip = self.hop_n - self.clip_n
                else:
                    keep = self.clip_n - self.hop_n
                    self._buf[:keep] = self._buf[self.hop_n :].copy()
                    self._fill = keep
        return out


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples (the resampler rounds its output length up)."""
    if x.size >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([x, np.zeros(n - x.size, dtype=np.float32)])
