"""Cutting a stream of audio into data-set clips, with the rules for windows no model should learn from.

One :class:`WindowCutter` serves every way audio comes in (a recording read block by
block, a microphone's stream): it is fed blocks of one channel at their own rate and
gives back windows, each judged on those very samples (silent, clipped or usable) and,
when usable, cut at the same times from its 16 kHz resampling by
:class:`~edge_asd.io.audio.StreamResampler`, which gives exactly
:func:`~edge_asd.io.audio.resample` of the whole stream, so no clip has a seam where
a block ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_asd.io.audio import SAMPLE_RATE, SILENT_PEAK, StreamResampler

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
# files have no largest code (a decoded clipped peak rings around its level), and a
# microphone's converter hides behind PortAudio's float samples: 0.999.
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


@dataclass(frozen=True)
class Window:
    start_s: float  # from the start of the stream the cutter was fed
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


class WindowCutter:
    """One stream's windows: judged at the stream's own rate and scale, cut from its 16 kHz resampling.

    Silence and clipping are judged on the samples as they came (a resampled clipped peak
    overshoots and no longer sits at full scale); the clip is cut at the same times from
    the 16 kHz stream. Both streams are windowed alike, so window k of one is window k of
    the other; the resampler's output lags its input by its filter, and the two are matched.
    Feed blocks with :meth:`feed`, then call :meth:`finish` once; :attr:`short` then says
    whether a tail shorter than a clip was left (1) or not (0).
    """

    def __init__(self, rate: int, clip_seconds: float, hop_seconds: float, full_scale: float = FULL_SCALE_DEFAULT):
        self.full_scale = full_scale
        self.native = _Stream(rate, clip_seconds, hop_seconds)
        self.out = _Stream(SAMPLE_RATE, clip_seconds, hop_seconds)
        self.short = 0
        self._resampler = StreamResampler(rate, SAMPLE_RATE)
        self._verdicts: dict[int, str] = {}
        self._clips: dict[int, np.ndarray] = {}

    @property
    def seconds(self) -> float:
        """How much audio has been fed."""
        return self.native.received / self.native.rate

    def expected_windows(self, frames: int) -> int:
        """Whole windows in a stream of ``frames`` samples (for progress bars)."""
        n = self.native.n
        return 0 if frames < n else int((frames - n) / (self.native.hop_seconds * self.native.rate)) + 1

    def feed(self, x: np.ndarray) -> list[Window]:
        """The windows that ``x`` completes, in order."""
        for k, w in self.native.feed(x):
            self._verdicts[k] = self._verdict(w)
        for k, c in self.out.feed(self._resampler.feed(x)):
            self._clips[k] = c
        return self._matched()

    def finish(self) -> list[Window]:
        """The windows the resampler's last outputs complete; counts the tail shorter than a clip."""
        tail = self._resampler.finish()
        if self._verdicts:
            # Rounding can end the 16 kHz stream a sample short of the last whole window's
            # clip; zeros stand in, as resample() pads past the end.
            tail = np.concatenate([tail, np.zeros(self.out.n, dtype=np.float32)])
        for k, c in self.out.feed(tail):
            self._clips[k] = c
        out = self._matched()
        # Overlapping windows past the end all hold the same tail: it is one short window, not several.
        k = self.native.next_k
        self.short = int(k == 0 or self.native.start(k) < self.native.received)
        return out

    def _matched(self) -> list[Window]:
        out = []
        for k in sorted(self._verdicts.keys() & self._clips.keys()):
            verdict, clip = self._verdicts.pop(k), self._clips.pop(k)
            start = self.native.start(k)
            out.append(Window(start / self.native.rate, (start + self.native.n) / self.native.rate, verdict,
                              clip if verdict == "ok" else None))
        return out

    def _verdict(self, x: np.ndarray) -> str:
        a = np.abs(x)
        if float(a.max(initial=0.0)) < SILENT_PEAK:
            return "silent"
        if in_runs(a >= self.full_scale, CLIP_RUN) > CLIPPED_FRACTION * a.size:
            return "clipped"
        return "ok"


def in_runs(flags: np.ndarray, run: int) -> int:
    """How many of ``flags`` lie in runs of at least ``run`` consecutive True values."""
    if flags.size < run or not flags.any():
        return 0
    edges = np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int(lengths[lengths >= run].sum())
