"""Log-mel power of a waveform by a real FFT: the CPU's front end, learned and plain members alike.

The exported front-end graph computes the DFT as matrix products, because
that is what ONNX and TensorRT run everywhere; on a CPU the same numbers
come from an rFFT at a fraction of the work (issue 28; the transform itself is
:mod:`edge_asd.io.fft`'s). Three things keep the rest fast, each measured on the
2-core machine:

* frames go through in blocks (128 frames of 2048 points, 512 of 128: see
  ``BLOCK_SAMPLES``): a 10 s clip's 618 windowed frames and their spectra are
  ~10 MB, and the whole stack at once ran at half the speed of the same
  transforms a cache-sized block at a time;
* the mel filterbank is a band matrix (each triangle spans a few DFT bins),
  so it is applied as a few dense blocks along its diagonal instead of one
  dense product that multiplies zeros ~90 % of the time, each block's product
  in row steps that stay off OpenBLAS's thread pool (:mod:`edge_asd.io.blas`);
* the filterbank reads the squared real and imaginary parts with its weights
  repeated for each (:meth:`edge_asd.io.fft.PowerSpectrum.squares`), into one
  block-sized window and spectrum buffer per call: no power array, no
  per-block allocations. The learned member's log-mel 4.7 -> 3.5 ms, the
  plain member's features 7.7 -> 6.0 ms (one thread, 2026-12-07).

One thread: a pool over the blocks ran the learned member's log-mel in 3.1
ms against 4.3 alone, but inside a scorer, between the encoder's runs, 5.05 ms
against 4.45 on one thread (the hand-offs cost more than the second core
gained), and a replay on a CPU already scores two clips side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blas import serial_rows
from .fft import PowerSpectrum

# A block of frames holds at least 128 frames and at least this many samples: its frames and spectra stay in cache,
# and short frames come in more rows, so that a block's work outweighs the Python around it. Measured (one thread,
# the AMD EPYC 2-core machine, 2026-12-08, with ducc0's transforms 12 rows at a time: edge_asd/io/fft.py): the
# learned member's log-mel (2048 points, 224 bands) 3.25 ms in blocks of 64 rows, 3.02 in blocks of 128, as fast in
# 256, 6.4 ms with the clip in one block (out of cache); the modulation STFT's 512-point frames the same in 64 to
# 1024 rows, the fast lines' 128-point frames 1.6 ms in 64 rows, 1.1 in 512.
BLOCK_SAMPLES = 64 * 1024
MIN_BLOCK_ROWS = 128
# Diagonal blocks of the filterbank, each a dense product; each runs in row steps under OpenBLAS's threading size
# (edge_asd/io/blas.py). The learned member's 224 bands in 128-row blocks: 12 chunks 3.14 ms, 16 3.02, 24 3.10, 32
# 3.17 (fewer chunks hold more zeros, more cost a call each); the plain member's 64 bands 0.93 / 0.98 ms with 12 / 16.
_MEL_CHUNKS = 16
# Under this many bands the filterbank is one dense product: its blocks would save few multiplications and cost
# a Python call each (the plain member's 8 modulation bands over 2,493 frames: 6.1 -> 4.9 ms per clip).
_FEW_BANDS = 16
LOGS = ("ln", "db")


WINDOWS = ("hann", "hann_periodic")


def hann(n: int, kind: str) -> np.ndarray:
    """Hann window, float32: "hann" symmetric (``numpy.hanning``), "hann_periodic" (``torch.hann_window``)."""
    if kind not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {kind!r}")
    return (np.hanning(n) if kind == "hann" else np.hanning(n + 1)[:-1]).astype(np.float32)


def frame_count(n_samples: int, n_fft: int, hop: int) -> int:
    """Frames of an uncentred STFT: ``1 + (n_samples - n_fft) // hop`` (0 if shorter than a window)."""
    return 0 if n_samples < n_fft else 1 + (n_samples - n_fft) // hop


@dataclass(frozen=True)
class _MelBlock:
    bins: slice  # DFT bins this block reads
    bands: slice  # mel bands it adds to
    weights: np.ndarray  # [bins, bands] float32

    def on_squares(self, first: int) -> tuple[slice, slice, np.ndarray]:
        """The block applied to :meth:`PowerSpectrum.squares` of the bins from ``first`` on: its columns there (two per
        bin), its bands, its weights repeated for the real and the imaginary part."""
        lo, hi = 2 * (self.bins.start - first), 2 * (self.bins.stop - first)
        return slice(lo, hi), self.bands, np.ascontiguousarray(np.repeat(self.weights, 2, axis=0))


def band_blocks(fb: np.ndarray, chunks: int = _MEL_CHUNKS) -> list[_MelBlock]:
    """A filterbank ``[n_mels, n_bins]`` as dense blocks that together hold every nonzero weight.

    The bins a filterbank uses are cut into ``chunks`` runs; each run's block
    spans the bands that touch it. Exact for any filterbank (a block holds its
    zeros too), cheap for a banded one.
    """
    used = np.flatnonzero(fb.any(axis=0))
    if used.size == 0:
        raise ValueError("the mel filterbank has no nonzero weight")
    edges = np.unique(np.linspace(used[0], used[-1] + 1, chunks + 1).astype(int))
    blocks = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        bands = np.flatnonzero(fb[:, lo:hi].any(axis=1))
        if bands.size:
            b0, b1 = int(bands[0]), int(bands[-1]) + 1
            blocks.append(_MelBlock(slice(int(lo), int(hi)), slice(b0, b1),
                                    np.ascontiguousarray(fb[b0:b1, lo:hi].T, dtype=np.float32)))
    return blocks


class LogMelSTFT:
    """Waveform ``[N]`` -> log-mel ``[frames, n_mels]``, float32: uncentred STFT, power, mel, log.

    ``log``: "ln" gives ``ln(mel + eps)``, "db" ``10 log10(mel + eps)``; ``fft``: an
    :mod:`edge_asd.io.fft` engine (auto: the fastest installed).
    """

    def __init__(self, n_fft: int, hop: int, window: np.ndarray, fb: np.ndarray, log: str = "ln",
                 eps: float = 1e-6, fft: str = "auto"):
        if hop < 1 or n_fft < 2 or window.shape != (n_fft,) or fb.shape[1] != n_fft // 2 + 1:
            raise ValueError(f"STFT settings do not fit: n_fft {n_fft}, hop {hop}, window {window.shape}, "
                             f"filterbank {fb.shape}")
        if log not in LOGS:
            raise ValueError(f"log must be one of {', '.join(LOGS)}, not {log!r}")
        self.n_fft, self.hop, self.n_mels = int(n_fft), int(hop), int(fb.shape[0])
        self.window = np.asarray(window, dtype=np.float32)
        self.log, self.eps = log, np.float32(eps)
        blocks = band_blocks(fb, _MEL_CHUNKS if fb.shape[0] >= _FEW_BANDS else 1)
        self._bins = slice(min(b.bins.start for b in blocks), max(b.bins.stop for b in blocks))
        self._power = PowerSpectrum(self.n_fft, fft)
        self._rows = max(MIN_BLOCK_ROWS, BLOCK_SAMPLES // self.n_fft)  # 128 rows up to 512 points; 128 points: 512
        # each block's product in equal row steps that stay on the calling thread (edge_asd/io/blas.py)
        self._blocks = []
        for b in blocks:
            columns, bands, weights = b.on_squares(self._bins.start)
            steps = -(-self._rows // serial_rows(weights.size))
            self._blocks.append((columns, bands, weights, -(-self._rows // steps)))

    @property
    def fft(self) -> str:
        return self._power.engine

    def frames(self, n_samples: int) -> int:
        return frame_count(n_samples, self.n_fft, self.hop)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        n = self.frames(x.size)
        if n == 0:
            raise ValueError(f"waveform of {x.size} samples is shorter than the {self.n_fft}-sample window")
        frames = np.lib.stride_tricks.as_strided(
            x, shape=(n, self.n_fft), strides=(x.strides[0] * self.hop, x.strides[0]), writeable=False
        )
        out = np.zeros((n, self.n_mels), dtype=np.float32)
        rows = min(self._rows, n)
        # one block's windowed frames and spectrum, reused by every block of this call (not kept between calls:
        # a replay scores two clips at once with the same front end)
        windowed = np.empty((rows, self.n_fft), dtype=np.float32)
        spectrum = np.empty((rows, self.n_fft // 2 + 1), dtype=np.complex64)
        for lo in range(0, n, rows):
            block = frames[lo : lo + rows]
            w = np.multiply(block, self.window, out=windowed[: block.shape[0]])
            squares = self._power.squares(w, self._bins, out=spectrum)
            o = out[lo : lo + rows]
            for columns, bands, weights, step in self._blocks:
                for r in range(0, o.shape[0], step):
                    o[r : r + step, bands] += squares[r : r + step, columns] @ weights
        out += self.eps
        if self.log == "ln":
            np.log(out, out=out)
        else:
            np.log10(out, out=out)
            out *= np.float32(10.0)
        return out

