"""Power spectra of many real frames at once: the one transform every CPU front end makes.

Two engines compute the same numbers:

* ``ducc0``: pocketfft's successor by its author (the CPU FFT of JAX), a runtime
  dependency. It transforms several rows together in SIMD registers; numpy's
  pocketfft transforms one row at a time. Measured on the 2-core machine
  (numpy 2.4, ducc0 0.42, one thread, a 10 s clip): the learned member's 618
  frames of 2048 points 2.2 ms against numpy's 6.2, the plain member's
  modulation frames (2,493 x 512) 1.8 against 5.3 ms. It costs 5-11 MB of
  resident memory once imported (scipy.fft, the same pocketfft, costs 27 MB:
  it imports scipy.special).
* ``numpy``: the fallback where ducc0 is missing. It transforms float64:
  since numpy 2.0 its float32 transforms are computed natively and are slower
  than its float64 ones (7.5 against 3.2 ms for the 2048-point frames).

ducc0 transforms rows together in groups whose size it picks from how many rows
it is given. Given 16 rows or more of 1024 or 2048 points, its wider groups ran
a third slower per transform than groups of 4 to 12 (on the AMD EPYC 2-core
machine of 2026-12-08, one thread: 2048 points 4.0 against 2.4 us a transform,
1024 points 1.9 against 1.1; 512 points and shorter gained nothing, 128 points
lost): long frames therefore go through :data:`LONG_FRAME_ROWS` rows per call.
The numbers are the same to the bit whatever the group.

Both return float32 power, so what follows (the mel product, the log) is the
same code whichever engine ran; ``tests/test_fft.py`` holds them to each other.

:meth:`PowerSpectrum.squares` stops one step short of the power: the squared
real and imaginary parts, interleaved as the complex array lies in memory. A
filterbank whose weights are repeated for the two (``repeat(w, 2, axis=0)``)
then sums them inside its matrix product, and the strided pairwise add that
makes the power (a pass over the spectrum, ~20 % of a short-frame STFT's time
on the 2-core machine) is never made.
"""

from __future__ import annotations

import importlib.util

import numpy as np

ENGINES = ("ducc0", "numpy")
LONG_FRAME = 1024  # frames of this many points or more are transformed LONG_FRAME_ROWS rows per ducc0 call
LONG_FRAME_ROWS = 12  # a multiple of 4, the float SIMD width of ducc0's x86-64 and aarch64 wheels, under 16


def available_engines() -> tuple[str, ...]:
    return tuple(e for e in ENGINES if e == "numpy" or importlib.util.find_spec(e) is not None)


def resolve_engine(engine: str = "auto") -> str:
    """``auto``: the fastest engine installed."""
    if engine == "auto":
        return available_engines()[0]
    if engine not in ENGINES:
        raise ValueError(f"FFT engine must be auto or one of {', '.join(ENGINES)}, not {engine!r}")
    if engine not in available_engines():
        raise ValueError(f"FFT engine {engine!r} is not installed (pip install {engine})")
    return engine


class PowerSpectrum:
    """Rows ``[n, n_fft]`` -> ``|rfft|^2`` ``[n, n_fft // 2 + 1]`` float32."""

    def __init__(self, n_fft: int, engine: str = "auto"):
        self.n_fft = int(n_fft)
        self.engine = resolve_engine(engine)
        if self.engine == "ducc0":
            import ducc0.fft

            self._r2c = ducc0.fft.r2c

    def squares(self, rows: np.ndarray, bins: slice = slice(None), out: np.ndarray | None = None) -> np.ndarray:
        """``[n, 2 * bins]``: ``re^2, im^2`` of each wanted bin, interleaved; their pairwise sum is the power (float32
        from ducc0, float64 from numpy).

        ``out``: a complex64 ``[n, n_fft // 2 + 1]`` buffer the transform may write into (ducc0; a block-sized one
        reused over the blocks of a clip); the result is then a view of it.
        """
        if rows.ndim != 2 or rows.shape[1] != self.n_fft:
            raise ValueError(f"expected rows of {self.n_fft} samples, got shape {rows.shape}")
        if self.engine == "ducc0":
            rows = np.ascontiguousarray(rows, dtype=np.float32)
            n = rows.shape[0]
            if self.n_fft < LONG_FRAME or n <= LONG_FRAME_ROWS:
                spec = self._r2c(rows, axes=(1,), out=None if out is None else out[:n])
            else:
                spec = np.empty((n, self.n_fft // 2 + 1), dtype=np.complex64) if out is None else out[:n]
                for lo in range(0, n, LONG_FRAME_ROWS):
                    self._r2c(rows[lo : lo + LONG_FRAME_ROWS], axes=(1,), out=spec[lo : lo + LONG_FRAME_ROWS])
            re_im = spec.view(np.float32)
            np.multiply(re_im, re_im, out=re_im)  # every bin: one contiguous pass is faster than a strided one
            return spec[:, bins].view(np.float32)
        # float64 on: the filterbank's product then sums in float64 too, and the fallback is the more exact of the two
        re_im = np.fft.rfft(rows.astype(np.float64), axis=1)[:, bins].view(np.float64)
        return np.square(re_im, out=re_im)

    def __call__(self, rows: np.ndarray, bins: slice = slice(None)) -> np.ndarray:
        """``bins``: the DFT bins wanted."""
        sq = self.squares(rows, bins)
        power = sq[:, 0::2] + sq[:, 1::2]
        return power if power.dtype == np.float32 else power.astype(np.float32)
