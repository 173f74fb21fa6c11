"""Audio in: reading clips, amplitude standardization, segmentation, resampling.

Everything here is numpy + soundfile, shared by training, offline scoring and the
daemon, so that the three can never cut or scale audio differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from edge_asd.errors import AudioError

SAMPLE_RATE = 16000
# A peak below -90 dBFS is a muted or unplugged microphone, not a machine (in a 16-bit file: digital
# silence or 1-LSB dither). One rule for import, which skips such windows, and training, which refuses
# a folder of them, so training never refuses what import kept.
SILENT_PEAK = 10 ** (-90 / 20)
# The STFT hop of the front end (16 ms at 16 kHz). Segment starts are snapped to
# it so that the spectrogram of a whole clip can be computed once and sliced per
# segment with exactly the frames a per-segment computation would give.
FRONTEND_HOP = 256


@dataclass(frozen=True)
class SegmentSpec:
    """How a clip is cut into the S overlapping T-second segments of Eq. 4."""

    sample_rate: int = SAMPLE_RATE
    segment_seconds: float = 2.0
    n_segments: int = 10
    align: int = FRONTEND_HOP
    # Amplitude normalization before the extractor: None standardizes each clip
    # (the report); (mean, std) is one fixed scale for the machine type, from its
    # training clips (the authors' recipe), which keeps the absolute level.
    level: tuple[float, float] | None = None

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * self.sample_rate))

    def starts(self, n_samples: int) -> np.ndarray:
        """Start sample of each segment: evenly spread over the clip, snapped to ``align``."""
        seg = self.segment_samples
        if n_samples < seg:
            raise ValueError(f"clip of {n_samples} samples is shorter than one segment ({seg})")
        if self.n_segments == 1:
            return np.zeros(1, dtype=np.int64)
        span = n_samples - seg
        raw = np.arange(self.n_segments) * (span / (self.n_segments - 1))
        snapped = np.floor(raw / self.align).astype(np.int64) * self.align
        return np.minimum(snapped, span)


def open_audio(path: str | Path) -> sf.SoundFile:
    """An open soundfile handle, to be read in blocks where a file may be long.

    :class:`AudioError` naming the file and the problem when it cannot be opened.
    """
    path = Path(path)
    try:
        return sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises several types for bad headers
        if not path.exists():
            raise AudioError(f"{path}: no such file") from None
        try:
            empty = path.is_file() and path.stat().st_size == 0
        except OSError:
            empty = False
        if empty:
            # libsndfile calls this "format not recognised", which sends users hunting for a codec.
            raise AudioError(f"{path}: empty file (0 bytes)") from None
        detail = short_error(exc)
        # libsndfile repeats the path; the message already starts with it.
        detail = detail.removeprefix(f"Error opening {str(path)!r}: ")
        raise AudioError(f"{path}: unreadable audio file ({detail})") from None


def read_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Read a mono WAV/FLAC clip as float32 in [-1, 1].

    PCM 16/24/32-bit and float files are accepted (soundfile converts them);
    8-bit PCM is accepted too. A wrong sample rate, more than one channel, an
    unreadable or too-short file, or non-finite samples raise :class:`AudioError`
    naming the file: resampling or down-mixing silently would change what the
    model hears, so it is left to the user (or to the daemon's explicit resampler).
    ``max_seconds`` refuses a longer file from its header, before any of it is read.
    """
    path = Path(path)
    with open_audio(path) as f:
        if f.samplerate != sample_rate:
            raise AudioError(f"{path}: sample rate {f.samplerate} Hz, expected {sample_rate} Hz")
        if f.channels != 1:
            raise AudioError(f"{path}: {f.channels} channels, expected mono")
        if max_seconds is not None and f.frames > max_seconds * f.samplerate:
            raise TooLongError(path, f.frames / f.samplerate, max_seconds)
        try:
            data = f.read(dtype="float32", always_2d=False)
        except Exception as exc:
            raise AudioError(f"{path}: unreadable audio data ({short_error(exc)})") from None
    data = np.asarray(data, dtype=np.float32).reshape(-1)
    if data.size == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if min_seconds is not None and data.size < int(round(min_seconds * sample_rate)):
        raise AudioError(
            f"{path}: {data.size / sample_rate:.3f} s long, shorter than one {min_seconds:g} s segment"
        )
    return data


# A DCASE clip is 10 s. Scoring reads a whole file (one score per file) and
# standardizes it as one clip: a recording of hours would take gigabytes and
# still give one meaningless number, so it is refused from its header.
DEFAULT_MAX_SECONDS = 600.0


class TooLongError(AudioError):
    """A file longer than a caller reads at once; ``seconds`` is its length from the header."""

    def __init__(self, path: Path, seconds: float, max_seconds: float):
        self.path = path
        self.seconds = seconds
        self.max_seconds = max_seconds
        super().__init__(f"{path}: {seconds:.1f} s long, more than the {max_seconds:g} s read at once")


def channel_blocks(path: Path, f: sf.SoundFile, channel: int, block_frames: int) -> Iterator[np.ndarray]:
    """One channel of an open file, block by block (float32); :class:`AudioError` at the first bad block."""
    done = 0
    while True:
        try:
            block = f.read(block_frames, dtype="float32", always_2d=True)
        except Exception as exc:  # a decoder error in the middle of a damaged file
            raise AudioError(f"{path}: unreadable audio data at {done / f.samplerate:.2f} s ({short_error(exc)})") from None
        if block.shape[0] == 0:
            return
        x = block[:, channel]
        if not np.all(np.isfinite(x)):
            at = done + int(np.argmin(np.isfinite(x)))
            raise AudioError(f"{path}: contains NaN or infinite samples (first at {at / f.samplerate:.2f} s)")
        done += x.size
        yield x


def short_error(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to several), or its type."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def standardize(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Mean 0, variance 1 over the clip, as the report standardizes its inputs.

    A silent (constant) clip becomes all zeros rather than a division by zero.
    """
    centered, std = centre(x)
    if std < eps:
        return np.zeros_like(centered)
    centered *= np.float32(1.0 / std)
    return centered


def centre(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``(x - mean(x), std(x))``: float32 samples, float64 sums.

    A float64 copy of a 10 s clip cost 2 ms per clip, as much as its whole rFFT
    front end; float64 accumulators keep the sums as exact as that copy did.
    """
    x = np.asarray(x, dtype=np.float32)
    centered = x - np.float32(x.mean(dtype=np.float64))
    return centered, float(np.sqrt(np.square(centered).sum(dtype=np.float64) / max(1, x.size)))


def normalize(x: np.ndarray, spec: SegmentSpec) -> np.ndarray:
    """The extractor's amplitude normalization of a clip, as ``spec.level`` says."""
    if spec.level is None:
        return standardize(x)
    mean, std = spec.level
    x = np.asarray(x, dtype=np.float32) - np.float32(mean)
    x *= np.float32(1.0 / std)
    return x


def amplitude_manifest(spec: SegmentSpec) -> str | dict:
    """How a bundle's manifest states ``spec.level`` (read back by :func:`level_from_manifest`)."""
    if spec.level is None:
        return "standardize_per_clip"
    return {"mode": "machine", "mean": float(spec.level[0]), "std": float(spec.level[1])}


def level_from_manifest(amplitude) -> tuple[float, float] | None:
    if amplitude in (None, "standardize_per_clip", "raw"):
        return None
    if not isinstance(amplitude, dict) or amplitude.get("mode") != "machine":
        raise ValueError(f"unknown amplitude normalization {amplitude!r}")
    mean, std = float(amplitude["mean"]), float(amplitude["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"amplitude normalization needs a finite mean and a positive std, got {mean}, {std}")
    return mean, std


def segment(x: np.ndarray, spec: SegmentSpec = SegmentSpec()) -> np.ndarray:
    """Cut a clip into ``[S, T * sr]`` overlapping segments (see :meth:`SegmentSpec.starts`)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    starts = spec.starts(x.size)
    seg = spec.segment_samples
    return np.stack([x[s : s + seg] for s in starts])


def clip_segments(path: str | Path, spec: SegmentSpec = SegmentSpec()) -> np.ndarray:
    """Read, normalize and segment one clip file: what the extractor takes."""
    x = read_audio(path, spec.sample_rate, min_seconds=spec.segment_seconds)
    return segment(normalize(x, spec), spec)


def dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    x = np.asarray(x, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return 20.0 * math.log10(rms) if rms > 1e-10 else -200.0


# --- resampling -----------------------------------------------------------------
# A polyphase windowed-sinc resampler in numpy: the runtime must not need scipy,
# and it matches scipy.signal.resample_poly (Kaiser window, beta 5, 10 zero
# crossings per side), which tests check.


def _kaiser_lowpass(up: int, down: int, beta: float = 5.0) -> np.ndarray:
    max_rate = max(up, down)
    half_len = 10 * max_rate
    n = np.arange(2 * half_len + 1) - half_len
    cutoff = 1.0 / max_rate  # fraction of the upsampled Nyquist frequency
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half_len + 1, beta)
    h /= h.sum()
    return h * up


def _polyphase_filter(orig_rate: int, target_rate: int) -> tuple[int, int, np.ndarray, int]:
    """``(up, down, polyphase, half_len)`` of the rational resampler, ``polyphase[p, j] = h[p + j * up]``."""
    g = math.gcd(int(orig_rate), int(target_rate))
    up, down = int(target_rate) // g, int(orig_rate) // g
    h = _kaiser_lowpass(up, down)
    taps = -(-h.size // up)
    hp = np.zeros(taps * up)
    hp[: h.size] = h
    return up, down, hp.reshape(taps, up).T, (h.size - 1) // 2


def _polyphase_outputs(
    x: np.ndarray, x_start: int, m_lo: int, m_hi: int, up: int, down: int, polyphase: np.ndarray, half_len: int
) -> np.ndarray:
    """Outputs ``m_lo..m_hi-1`` of resampling a signal of which ``x`` holds the samples from index ``x_start``.

    Samples outside ``x`` count as zero: callers pass every sample the outputs reach
    that exists (``resample`` the whole signal, :class:`StreamResampler` what it kept).
    """
    taps = polyphase.shape[1]
    y = np.empty(max(0, m_hi - m_lo))
    if y.size == 0:
        return y
    if x.size == 0:
        y[:] = 0.0
        return y
    # Blocks of outputs bound the gathered window matrix (a 10 s clip at 48 kHz
    # would otherwise need ~80 MB at once on a device with little memory).
    for lo in range(m_lo, m_hi, 8192):
        t = np.arange(lo, min(m_hi, lo + 8192), dtype=np.int64) * down + half_len
        idx = (t // up)[:, None] - np.arange(taps)[None, :] - x_start
        valid = (idx >= 0) & (idx < x.size)
        gathered = np.where(valid, x[np.clip(idx, 0, x.size - 1)], 0.0)
        y[lo - m_lo : lo - m_lo + t.size] = np.einsum("nj,nj->n", gathered, polyphase[t % up])
    return y


def resample(x: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Anti-aliased rational resampling of a 1-D signal (output length ceil(n * up / down))."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if orig_rate == target_rate:
        return x.astype(np.float32)
    up, down, polyphase, half_len = _polyphase_filter(orig_rate, target_rate)
    n_out = -(-x.size * up // down)
    return _polyphase_outputs(x, 0, 0, n_out, up, down, polyphase, half_len).astype(np.float32)


class StreamResampler:
    """:func:`resample` of a signal that arrives block by block, in the memory of a block and the filter.

    The outputs of :meth:`feed` and :meth:`finish`, put together, are :func:`resample`
    of the whole signal, whatever the block sizes: an output is computed once every
    input sample its filter reaches has arrived (or, in :meth:`finish`, is known to be
    past the end), and the input it may still need is kept. So a recording of hours
    is resampled with no seam at block boundaries and no whole-file read.
    """

    def __init__(self, orig_rate: int, target_rate: int = SAMPLE_RATE):
        self.orig_rate, self.target_rate = int(orig_rate), int(target_rate)
        self._same = self.orig_rate == self.target_rate
        if not self._same:
            self._up, self._down, self._polyphase, self._half_len = _polyphase_filter(orig_rate, target_rate)
        self._kept = np.zeros(0)  # the input samples outputs still to come may reach
        self._received = 0  # input samples fed so far
        self._emitted = 0  # outputs given so far

    def feed(self, x: np.ndarray) -> np.ndarray:
        """The outputs that ``x`` completes (float32; possibly none)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        self._received += x.size
        if self._same:
            self._emitted += x.size
            return x.astype(np.float32)
        self._kept = np.concatenate([self._kept, x])
        # Output m reaches up to input (m * down + half_len) // up: it is final once that sample has arrived.
        ready = max(self._emitted, -(-(self._received * self._up - self._half_len) // self._down))
        return self._emit(ready)

    def finish(self) -> np.ndarray:
        """The last outputs, which reach past the end of the signal (zeros there, as :func:`resample`)."""
        if self._same:
            return np.zeros(0, dtype=np.float32)
        return self._emit(-(-self._received * self._up // self._down))

    def _emit(self, m_hi: int) -> np.ndarray:
        kept_start = self._received - self._kept.size
        y = _polyphase_outputs(self._kept, kept_start, self._emitted, m_hi, self._up, self._down, self._polyphase,
                               self._half_len)
        self._emitted = m_hi
        # The earliest input the next output reaches; everything before it is done with.
        first_needed = (m_hi * self._down + self._half_len) // self._up - (self._polyphase.shape[1] - 1)
        drop = min(max(0, first_needed - kept_start), self._kept.size)
        if drop:
            self._kept = self._kept[drop:]
        return y.astype(np.float32)
