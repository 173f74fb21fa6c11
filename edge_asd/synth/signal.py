"""Signal tools the machines and the background are built from.

The sample grid of a clip with its spectral helpers (noise of a given shape,
bands, resonances, impulse trains), transients, a jittering shaft rotation,
sums of tones, and the level helpers (decibels, mean square, scaling one part
against another).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import numpy as np

TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- signal toolkit


class Clip:
    """The sample grid of one clip and the spectral helpers its sound sources share.

    Stationary noise is made directly as a spectrum and components are summed
    in the frequency domain, where filters (microphone, housing) are a
    multiplication: that keeps a 10-s clip to a handful of FFTs.
    """

    def __init__(self, n: int, sr: int) -> None:
        self.n = n
        self.sr = sr
        self.seconds = n / sr
        # Spectral shapes are float32: a decibel's accuracy is all they need, and
        # float64 transcendentals cost ~15x more per clip.
        self.freqs = np.fft.rfftfreq(n, 1.0 / sr).astype(np.float32)
        # Frequency floored so that power laws and log-frequency shapes are finite at DC.
        self.f_safe = np.maximum(self.freqs, np.float32(1.0))
        self.octave = np.log2(self.f_safe / np.float32(1000.0))  # octaves re 1 kHz
        self.t32 = np.arange(n, dtype=np.float32) / np.float32(sr)

    @cached_property
    def _index(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.float64)

    @cached_property
    def _z1(self) -> np.ndarray:
        """e^{-jw} per bin: one sample's delay."""
        w = np.float32(TWO_PI / self.sr) * self.freqs
        return np.cos(w) - np.complex64(1j) * np.sin(w)

    def power(self, spectrum: np.ndarray) -> float:
        """Mean square of the real signal whose rfft is ``spectrum``."""
        # Every bin counts twice (its negative-frequency twin) except DC and Nyquist.
        total = 2.0 * float(np.vdot(spectrum, spectrum).real) - abs(complex(spectrum[0])) ** 2
        if self.n % 2 == 0:
            total -= abs(complex(spectrum[-1])) ** 2
        return total / float(self.n) ** 2

    def noise(self, rng: np.random.Generator, magnitude: np.ndarray) -> np.ndarray:
        """Spectrum of Gaussian noise with the given magnitude shape and unit RMS."""
        spec = np.empty(self.freqs.size, dtype=np.complex64)
        spec.real = rng.standard_normal(self.freqs.size, dtype=np.float32)
        spec.imag = rng.standard_normal(self.freqs.size, dtype=np.float32)
        spec *= magnitude.astype(np.float32, copy=False)
        spec[0] = 0.0
        p = self.power(spec)
        return spec / np.float32(math.sqrt(p)) if p > 0 else spec

    def noise_time(self, rng: np.random.Generator, magnitude: np.ndarray) -> np.ndarray:
        """Unit-RMS Gaussian noise with the given magnitude shape, as samples."""
        return np.fft.irfft(self.noise(rng, magnitude), self.n).astype(np.float32, copy=False)

    def log_bump(self, center_hz: float, octaves: float) -> np.ndarray:
        """exp(-x^2/2), x = distance from ``center_hz`` in units of ``octaves``."""
        x = (self.octave - np.float32(math.log2(center_hz / 1000.0))) / np.float32(octaves)
        return np.exp(np.float32(-0.5) * x * x)

    def band(self, center_hz: float, octaves: float) -> np.ndarray:
        """A smooth band: Gaussian in log-frequency, ``octaves`` is its standard deviation."""
        return self.log_bump(center_hz, octaves)

    def spectrum(self, samples: np.ndarray) -> np.ndarray:
        return np.fft.rfft(samples.astype(np.float32, copy=False))

    def phase(self, freq_hz: float, start: float = 0.0) -> np.ndarray:
        """Phase (rad, float32, wrapped) of a steady tone; wrapped in float64 so long clips stay exact."""
        cycles = self._index * (freq_hz / self.sr) + start
        cycles -= np.floor(cycles)
        return (TWO_PI * cycles).astype(np.float32)

    def resonances(self, modes: Iterable[tuple[float, float]]) -> np.ndarray:
        """Frequency response of impulses ringing modes (Hz, decay time constant s).

        Each mode is the exact DTFT of r^n sin(w0 n), a unit-peak decaying
        sinusoid, so a train of unit impulses times this response is a train of
        ringing transients, computed with one FFT however many impulses.
        """
        z1 = self._z1
        z2 = z1 * z1
        out = np.zeros(self.freqs.size, dtype=np.complex64)
        for freq, tau in modes:
            r = math.exp(-1.0 / (tau * self.sr))
            w0 = TWO_PI * freq / self.sr
            num = np.float32(r * math.sin(w0)) * z1
            out += num / (np.float32(1.0) - np.float32(2.0 * r * math.cos(w0)) * z1 + np.float32(r * r) * z2)
        return out

    def impulses(self, positions: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
        """Spectrum of a train of impulses at the given sample positions."""
        train = np.zeros(self.n, dtype=np.float32)
        keep = (positions >= 0) & (positions < self.n)
        np.add.at(train, positions[keep], amplitudes[keep].astype(np.float32))
        return np.fft.rfft(train)


def ringing(sr: int, modes: Iterable[tuple[float, float, float]], max_seconds: float = 0.4) -> np.ndarray:
    """Samples of a transient: decaying sinusoids (Hz, decay s, amplitude) summed."""
    modes = list(modes)
    length = int(min(max_seconds, 5.0 * max(m[1] for m in modes)) * sr) + 1
    t = np.arange(length) / sr
    out = np.zeros(length)
    for freq, tau, amp in modes:
        out += amp * np.exp(-t / tau) * np.sin(TWO_PI * freq * t)
    return out.astype(np.float32)


def add_at(buffer: np.ndarray, start: int, kernel: np.ndarray, gain: float) -> None:
    """Add ``gain * kernel`` into ``buffer`` from sample ``start`` (clipped to the buffer)."""
    if start >= buffer.size or start + kernel.size <= 0:
        return
    k0 = max(0, -start)
    b0 = max(0, start)
    b1 = min(buffer.size, start + kernel.size)
    buffer[b0:b1] += np.float32(gain) * kernel[k0 : k0 + (b1 - b0)]


def peaks_gain(clip: Clip, peaks: Iterable[tuple[float, float, float]]) -> np.ndarray:
    """Magnitude response with resonant peaks (Hz, width in octaves, gain dB)."""
    db = np.zeros(clip.freqs.size, dtype=np.float32)
    for freq, width, gain_db in peaks:
        db += np.float32(gain_db) * clip.log_bump(freq, width)
    return np.power(np.float32(10.0), db / np.float32(20.0))


def von_mises(phase: np.ndarray, kappa: float) -> np.ndarray:
    """A once-per-cycle pulse of peak 1 at phase 0; width about 1/sqrt(kappa) rad."""
    return np.exp(np.float32(kappa) * (np.cos(phase) - np.float32(1.0)))


def db_gain(x: float) -> float:
    return 10.0 ** (x / 20.0)


@dataclass(frozen=True)
class Rotation:
    """A shaft turning at a jittering, slowly wandering speed."""

    cycles: np.ndarray  # float64, cumulative revolutions since the clip's start
    phase: np.ndarray  # float32, 2*pi*frac(cycles)
    rate_hz: float  # mean rate of this clip

    def harmonic_phase(self, order: float) -> np.ndarray:
        """Phase (rad, float32) of a component at ``order`` times the shaft rate."""
        if float(order).is_integer() and order < 512:
            # k * phase stays accurate in float32 for small k, and costs no float64 pass.
            return self.phase * np.float32(order)
        return (TWO_PI * np.mod(self.cycles * order, 1.0)).astype(np.float32)

    def crossings(self, order: float, offset: float) -> np.ndarray:
        """Sample indices where the ``order``-times phase passes offset + k cycles."""
        c = self.cycles * order
        k = np.arange(math.ceil(c[0] - offset), math.floor(c[-1] - offset) + 1) + offset
        return np.searchsorted(c, k)


def rotation(clip: Clip, rng: np.random.Generator, rate_hz: float, jitter: float, wander: float) -> Rotation:
    # Per-clip speed differs by ~jitter (supply, load, slip); within the clip
    # the speed hunts slowly, as any drive under control does.
    rate = rate_hz * (1.0 + float(np.clip(rng.normal(0.0, jitter), -3 * jitter, 3 * jitter)))
    t = clip.t32
    inst = np.ones(clip.n, dtype=np.float32)
    for f, ph, a in zip(rng.uniform(0.05, 0.6, 3), rng.uniform(0, TWO_PI, 3), rng.normal(0.0, wander, 3)):
        inst += np.float32(a) * np.sin(np.float32(TWO_PI * f) * t + np.float32(ph))
    # Accumulate in float64: the phase of a 10-minute clip must not drift.
    cycles = np.cumsum(inst, dtype=np.float64) * (rate / clip.sr) + rng.uniform(0.0, 1.0)
    return Rotation(cycles, (TWO_PI * np.mod(cycles, 1.0)).astype(np.float32), rate)


def tones(phase_of, components: Iterable[tuple[float, float, float]], n: int) -> np.ndarray:
    """Sum of a*sin(phase(order) + p) over (order, amplitude, phase) components."""
    out = np.zeros(n, dtype=np.float32)
    for order, amp, ph in components:
        if amp == 0.0:
            continue
        x = phase_of(order) + np.float32(ph)
        np.sin(x, out=x)
        x *= np.float32(amp)
        out += x
    return out


def vary(rng: np.random.Generator, values: Iterable[float], db: float = 1.0) -> list[float]:
    """Values each varied by a random gain of about ``db`` decibels."""
    values = list(values)
    return [v * db_gain(g) for v, g in zip(values, rng.normal(0.0, db, len(values)))]


def mean_square(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64)))


def scale_to(part: np.ndarray, part_power: float, reference_power: float, db: float) -> np.ndarray:
    """``part`` scaled to ``db`` decibels re ``reference_power``."""
    if part_power <= 0.0:
        return part
    return part * np.float32(math.sqrt(reference_power / part_power) * db_gain(db))
