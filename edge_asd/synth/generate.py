"""Synthetic machine sounds in the DCASE layout (``edge-asd synth``).

The generator exists so that every part of edge-asd -- training, export,
offline scoring, the daemon, the tests -- runs with no download. It is built
from the physics of each machine so that the detector faces the same kinds of
problem it faces on real recordings (section identity carried by a few tones
and resonances, domain shift, subtle anomalies under factory noise), but it is
*demo and test data*: do not tune the method on it.

Machines
--------
``fan``
    A motor turns an impeller of B blades at shaft rate f_r (rpm/60). The sound
    is a few shaft harmonics k*f_r (residual imbalance and misalignment, weak),
    the blade-pass tone BPF = B*f_r with its harmonics (the pressure pulse each
    blade sends past the cut-off, strong), and aerodynamic broadband noise from
    turbulence whose spectral hump moves with tip speed and whose level grows
    steeply with speed; the turbulence is amplitude modulated at BPF because
    every passing blade sheds it. Anomalies: *imbalance* (the 1x shaft harmonic
    grows, the loosened mounting rattles at every shaft harmonic, the whole
    sound is modulated once per revolution), a *damaged blade* (one blade's
    pulse differs, so the blade-pass tone gets sidebands at BPF +- k*f_r, its
    harmonics change and more turbulence is shed), *rubbing* (a scrape burst
    of high-frequency noise at one angle of the revolutions where the impeller
    touches the housing).
``pump``
    A centrifugal pump: shaft harmonics, the vane-pass tone Z*f_r and its
    harmonics, hydraulic flow noise whose level follows the delivery head, and
    the motor's cooling fan. Anomalies: *cavitation* (vapour bubbles collapsing
    as a crackle of very short high-frequency impulses, denser when a vane
    passes the cut-water) and *clogging* (a partly blocked impeller: the
    vane-pass tone modulated at the shaft rate and a slow surge of the flow).
``gearbox``
    A pinion of z1 teeth at f_1 drives a wheel of z2 teeth at f_2 = f_1*z1/z2.
    The gear-mesh frequency GMF = z1*f_1 and its harmonics dominate (tooth
    stiffness varies as teeth come in and out of contact); small eccentricity
    and pitch errors of each gear modulate the mesh in amplitude and phase once
    per revolution, which puts sidebands at GMF +- k*f_1 and GMF +- k*f_2. Load
    raises the mesh level and its harmonics. Anomalies: a *damaged tooth* on
    one gear (a short drop of the mesh each time that tooth meshes plus an
    impact exciting the casing resonances, once per revolution of that gear:
    a comb of sidebands and an impulse train) and *wear* (sidebands,
    harmonics and broadband noise grow).
``bearing``
    A motor shaft at f_r runs in a rolling-element bearing of n balls, ball to
    pitch diameter ratio d/D and contact angle phi. The healthy sound is shaft
    harmonics, the rotor slot-pass tone, and rolling noise: countless tiny
    impacts filtered by the structural resonances of the housing. A defect
    makes one impact per contact, which rings the resonances as a decaying
    sinusoid: an *outer-race* defect at BPFO = n/2*f_r*(1 - d/D*cos phi)
    with steady amplitude (the outer race is still and the defect sits in the
    load zone), an *inner-race* defect at BPFI = n/2*f_r*(1 + d/D*cos phi)
    whose amplitude is modulated as the defect turns through the load zone
    once per revolution, a *ball* defect at 2*BSF modulated at the cage rate
    FTF. Impact times slip by about a percent, as real rolling elements do.
``valve``
    A solenoid valve cycles with a fixed period and a section-specific pattern
    of pulses (single, double, long-short, triple). Each opening and closing is
    a click: an impulse ringing the valve body's modes (open and close ring
    differently); while open, gas flow makes band-limited hiss whose pitch
    and level follow the supply pressure; an AC solenoid buzzes at twice the
    mains frequency while energized; closing may vent an exhaust puff.
    Anomalies: a *leak* (a hiss and a faint whistle that never stops), *timing*
    faults (late, early or missed pulses, a sticking valve that closes late),
    *chatter* (the disc oscillates against its seat for part of the opening:
    a 20-60 Hz rattle of small impacts ringing its higher modes, and a
    fluttering flow).

Sections, domains, variability
------------------------------
Each section is a different machine individual: its own blade/vane/tooth/ball
count, nominal speed or cycle pattern, harmonic profile and housing resonances
(a few peaks in the machine's transfer function), so that sections can be told
apart by ear, as stage 1 of the method learns to do. Section designs depend on
(seed, machine, section) only.

Every section has a *source* and a *target* domain that differ the way real
domain shift does: a different operating point (speed, load, pressure or cycle
time, named in the file's attributes), another microphone (a different
frequency response: high-pass, low-pass, a presence peak, a spectral tilt) at
another place, and another factory background (other mix of pink and brown
noise, other mains frequency and hum level, other distant machinery and rate of
impacts, a lower machine-to-noise ratio). Target training data is scarce
(``train_target``), as in DCASE 2022. Within a domain every clip varies:
speed jitter of about a percent and slow speed wander, random phases,
component levels that vary by about a decibel, a random SNR around the
domain's value.

Background and level
--------------------
Every clip has factory background: pink and brown noise, mains hum with its
harmonics, distant machinery (low harmonics through walls, slowly beating) and
occasional impacts (something dropped or struck: a burst of decaying modes).
The background is scaled against the *healthy* part of the machine's sound, so
an anomaly adds to the machine rather than hiding under a louder background.
Finally every clip gets a random RMS level (uniform in dBFS), so loudness
alone tells nothing about the label; the peak is kept below -3 dBFS.

Anomalies have a severity drawn uniformly from [0, 1] per clip; the weakest
are barely audible, the strongest obvious. ``OUT/<machine>/synth_meta.csv``
lists every clip with its anomaly kind, severity and operating point, for
demos that break results down by kind.

Every clip draws from its own numpy Generator seeded from (seed, machine,
section, domain, split, label, index), so a data set is the same byte for byte
whatever the order, the process count or the other clips generated.
Everything is vectorized numpy (float32 where precision allows) and clips are
generated by a process pool.
"""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
import hashlib
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from edge_asd.errors import UserError

SAMPLE_RATE = 16000
MANIFEST_NAME = "synth_meta.csv"
# Final level of a clip: RMS uniform in this range, so level carries no label
# information; the range is low enough that the crest factor of impulsive
# clips rarely reaches the peak ceiling (which would lower their RMS).
RMS_RANGE_DBFS = (-38.0, -26.0)
PEAK_CEILING_DBFS = -3.0
MIN_SECONDS = 2.0
MAX_SECONDS = 600.0
MAX_SECTIONS = 99
TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Counts are per section (test: per section, domain and label)."""

    machines: tuple[str, ...] = ("fan", "gearbox", "bearing", "valve")
    sections: int = 2
    train_source: int = 40
    train_target: int = 10
    test: int = 10
    seconds: float = 10.0
    seed: int = 0
    sample_rate: int = SAMPLE_RATE
    # Worker processes; 0 means one per available core. The data set does not
    # depend on it (every clip has its own seed).
    workers: int = 0

    def validate(self) -> None:
        """Raise :class:`UserError` with a one-line message for a bad setting."""
        if not self.machines:
            raise UserError(f"no machine types given (known: {', '.join(MACHINE_TYPES)})")
        seen: set[str] = set()
        for m in self.machines:
            if m not in MACHINE_TYPES:
                raise UserError(f"unknown machine type '{m}' (known: {', '.join(MACHINE_TYPES)})")
            if m in seen:
                raise UserError(f"machine type '{m}' given twice")
            seen.add(m)
        if not _is_int(self.sections) or not 1 <= self.sections <= MAX_SECTIONS:
            raise UserError(f"sections must be an integer from 1 to {MAX_SECTIONS}, got {self.sections}")
        for name in ("train_source", "train_target", "test"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 0, got {value}")
        if self.train_source + self.train_target + self.test == 0:
            raise UserError("nothing to generate: train-source, train-target and test are all 0")
        if not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds):
            raise UserError(f"seconds must be a number, got {self.seconds}")
        if not MIN_SECONDS <= self.seconds <= MAX_SECONDS:
            raise UserError(f"seconds must be from {MIN_SECONDS:g} to {MAX_SECONDS:g}, got {self.seconds:g}")
        if not _is_int(self.seed) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed}")
        # The machine designs put energy up to about 7.5 kHz.
        if not _is_int(self.sample_rate) or self.sample_rate < 16000:
            raise UserError(f"sample rate must be an integer >= 16000 Hz, got {self.sample_rate}")
        if not _is_int(self.workers) or self.workers < 0:
            raise UserError(f"workers must be an integer >= 0, got {self.workers}")

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    def clips_per_section(self) -> int:
        return self.train_source + self.train_target + 4 * self.test


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- seeding


def _rng(seed: int, *key: object) -> np.random.Generator:
    """A Generator that depends only on ``seed`` and ``key`` (not on Python's hash salt)."""
    digest = hashlib.blake2b("/".join(str(k) for k in key).encode(), digest_size=16).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


# --------------------------------------------------------------------------- signal toolkit


class _Clip:
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


def _ringing(sr: int, modes: Iterable[tuple[float, float, float]], max_seconds: float = 0.4) -> np.ndarray:
    """Samples of a transient: decaying sinusoids (Hz, decay s, amplitude) summed."""
    modes = list(modes)
    length = int(min(max_seconds, 5.0 * max(m[1] for m in modes)) * sr) + 1
    t = np.arange(length) / sr
    out = np.zeros(length)
    for freq, tau, amp in modes:
        out += amp * np.exp(-t / tau) * np.sin(TWO_PI * freq * t)
    return out.astype(np.float32)


def _add_at(buffer: np.ndarray, start: int, kernel: np.ndarray, gain: float) -> None:
    """Add ``gain * kernel`` into ``buffer`` from sample ``start`` (clipped to the buffer)."""
    if start >= buffer.size or start + kernel.size <= 0:
        return
    k0 = max(0, -start)
    b0 = max(0, start)
    b1 = min(buffer.size, start + kernel.size)
    buffer[b0:b1] += np.float32(gain) * kernel[k0 : k0 + (b1 - b0)]


def _peaks_gain(clip: _Clip, peaks: Iterable[tuple[float, float, float]]) -> np.ndarray:
    """Magnitude response with resonant peaks (Hz, width in octaves, gain dB)."""
    db = np.zeros(clip.freqs.size, dtype=np.float32)
    for freq, width, gain_db in peaks:
        db += np.float32(gain_db) * clip.log_bump(freq, width)
    return np.power(np.float32(10.0), db / np.float32(20.0))


def _von_mises(phase: np.ndarray, kappa: float) -> np.ndarray:
    """A once-per-cycle pulse of peak 1 at phase 0; width about 1/sqrt(kappa) rad."""
    return np.exp(np.float32(kappa) * (np.cos(phase) - np.float32(1.0)))


def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


@dataclass(frozen=True)
class _Rotation:
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


def _rotation(clip: _Clip, rng: np.random.Generator, rate_hz: float, jitter: float, wander: float) -> _Rotation:
    # Per-clip speed differs by ~jitter (supply, load, slip); within the clip
    # the speed hunts slowly, as any drive under control does.
    rate = rate_hz * (1.0 + float(np.clip(rng.normal(0.0, jitter), -3 * jitter, 3 * jitter)))
    t = clip.t32
    inst = np.ones(clip.n, dtype=np.float32)
    for f, ph, a in zip(rng.uniform(0.05, 0.6, 3), rng.uniform(0, TWO_PI, 3), rng.normal(0.0, wander, 3)):
        inst += np.float32(a) * np.sin(np.float32(TWO_PI * f) * t + np.float32(ph))
    # Accumulate in float64: the phase of a 10-minute clip must not drift.
    cycles = np.cumsum(inst, dtype=np.float64) * (rate / clip.sr) + rng.uniform(0.0, 1.0)
    return _Rotation(cycles, (TWO_PI * np.mod(cycles, 1.0)).astype(np.float32), rate)


def _tones(phase_of, components: Iterable[tuple[float, float, float]], n: int) -> np.ndarray:
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


def _vary(rng: np.random.Generator, values: Iterable[float], db: float = 1.0) -> list[float]:
    """Values each varied by a random gain of about ``db`` decibels."""
    values = list(values)
    return [v * _db(g) for v, g in zip(values, rng.normal(0.0, db, len(values)))]


# --------------------------------------------------------------------------- microphone and background


@dataclass(frozen=True)
class MicResponse:
    """Magnitude response of a microphone at its place: band limits, a presence peak, a tilt."""

    highpass_hz: float
    lowpass_hz: float
    peak_hz: float
    peak_db: float
    tilt_db_per_octave: float

    def gain(self, clip: _Clip) -> np.ndarray:
        f = clip.f_safe
        hp = (f / np.float32(self.highpass_hz)) ** 2
        hp = hp / np.sqrt(np.float32(1.0) + hp * hp)  # 2nd-order Butterworth magnitudes
        lp = (f / np.float32(self.lowpass_hz)) ** 2
        lp = np.float32(1.0) / np.sqrt(np.float32(1.0) + lp * lp)
        db = np.float32(self.peak_db) * clip.log_bump(self.peak_hz, 0.6)
        db += np.float32(self.tilt_db_per_octave) * clip.octave
        g = hp * lp * np.power(np.float32(10.0), db / np.float32(20.0))
        g[0] = 0.0
        return g


@dataclass(frozen=True)
class Background:
    """A factory's background: broadband noise mix, hum, distant machinery, impacts."""

    snr_db: float  # healthy machine to background, mean over clips
    brown: float  # brown-noise power relative to pink
    mains_hz: float
    hum_db: float  # hum relative to the broadband noise
    distant_hz: float  # fundamental of distant machinery
    distant_db: float
    impacts_per_s: float

    def render(self, clip: _Clip, rng: np.random.Generator) -> np.ndarray:
        """Unit-power spectrum of one clip of this background."""
        f = clip.f_safe
        pink = 1.0 / f
        brown = (100.0 / f) ** 2 / 100.0
        # Rooms do not carry much below 20 Hz; sound below that is not in a microphone either.
        shape = np.sqrt((pink / pink[1:].mean() + self.brown * brown / brown[1:].mean()) * (f > 15.0))
        spec = clip.noise(rng, shape)

        # Mains hum: odd harmonics stronger (transformer magnetostriction, rectifiers), slight drift.
        hum = _db(self.hum_db + rng.normal(0.0, 2.0))
        mains = clip.phase(self.mains_hz * (1.0 + rng.normal(0.0, 0.002)))
        x = _tones(lambda k: mains * np.float32(k), [
            (k, hum * (1.0 if k % 2 else 0.5) / k * _db(rng.normal(0.0, 2.0)), rng.uniform(0, TWO_PI))
            for k in range(1, 9)
        ], clip.n)
        # Distant machinery: its low harmonics come through the walls, beating slowly.
        dist = _db(self.distant_db + rng.normal(0.0, 2.0))
        distant = clip.phase(self.distant_hz * (1.0 + rng.normal(0.0, 0.01)))
        tone = _tones(lambda k: distant * np.float32(k),
                      [(k, dist / k, rng.uniform(0, TWO_PI)) for k in range(1, 7)], clip.n)
        beat = np.sin(np.float32(TWO_PI * rng.uniform(0.1, 0.8)) * clip.t32 + np.float32(rng.uniform(0, TWO_PI)))
        x += tone * (np.float32(1.0) + np.float32(0.3) * beat)
        # Impacts: something dropped or struck somewhere in the hall.
        for _ in range(rng.poisson(self.impacts_per_s * clip.seconds)):
            modes = [
                (rng.uniform(250.0, 4000.0), rng.uniform(0.01, 0.08), rng.uniform(0.3, 1.0))
                for _ in range(rng.integers(1, 4))
            ]
            _add_at(x, int(rng.integers(0, clip.n)), _ringing(clip.sr, modes), _db(rng.uniform(0.0, 14.0)))
        spec = spec + clip.spectrum(x)
        return spec / np.float32(math.sqrt(clip.power(spec)))


@dataclass(frozen=True)
class OperatingPoint:
    """One operating condition of a machine, as its file-name attributes name it."""

    speed_hz: float  # shaft rate (rotating machines) or cycle rate (valve)
    load: float  # machine-specific: load fraction (gearbox), head re nominal (pump), kN (bearing), bar (valve)
    attributes: str  # "key_value_key_value", no '_' inside keys or values


@dataclass(frozen=True)
class Domain:
    name: str  # "source" or "target"
    points: tuple[OperatingPoint, ...]
    mic: MicResponse
    background: Background


def _domain_acoustics(
    rng: np.random.Generator,
) -> tuple[tuple[MicResponse, Background], tuple[MicResponse, Background]]:
    """Microphones and backgrounds of a section's source and target domains."""
    src_mic = MicResponse(
        highpass_hz=rng.uniform(25.0, 60.0),
        lowpass_hz=rng.uniform(6800.0, 7800.0),
        peak_hz=rng.uniform(2500.0, 6000.0),
        peak_db=rng.uniform(-1.0, 2.0),
        tilt_db_per_octave=rng.uniform(-0.5, 0.5),
    )
    tgt_mic = MicResponse(
        highpass_hz=rng.uniform(90.0, 250.0),
        lowpass_hz=rng.uniform(4500.0, 7000.0),
        peak_hz=rng.uniform(1200.0, 4000.0),
        peak_db=rng.uniform(3.0, 7.0) * rng.choice([-1.0, 1.0]),
        tilt_db_per_octave=rng.uniform(-1.5, 1.0),
    )
    src_snr = rng.uniform(9.0, 14.0)
    src_bg = Background(
        snr_db=src_snr,
        brown=rng.uniform(0.1, 0.5),
        mains_hz=50.0,
        hum_db=rng.uniform(-24.0, -14.0),
        distant_hz=rng.uniform(18.0, 40.0),
        distant_db=rng.uniform(-16.0, -8.0),
        impacts_per_s=rng.uniform(0.05, 0.2),
    )
    tgt_bg = Background(
        snr_db=src_snr - rng.uniform(3.0, 7.0),
        brown=rng.uniform(0.8, 2.0),
        mains_hz=float(rng.choice([50.0, 60.0])),
        hum_db=rng.uniform(-16.0, -8.0),
        distant_hz=rng.uniform(40.0, 90.0),
        distant_db=rng.uniform(-12.0, -4.0),
        impacts_per_s=rng.uniform(0.15, 0.5),
    )
    return (src_mic, src_bg), (tgt_mic, tgt_bg)


def _housing(rng: np.random.Generator, lo: float = 200.0, hi: float = 5000.0, count: int = 3) -> tuple:
    """Resonant peaks of a machine's housing: part of what makes an individual sound like itself."""
    return tuple(
        (float(math.exp(rng.uniform(math.log(lo), math.log(hi)))), rng.uniform(0.15, 0.4), rng.uniform(3.0, 9.0))
        for _ in range(count)
    )


def _pick(table: tuple, section: int) -> object:
    return table[section % len(table)]


def _attrs(*pairs: tuple[str, object]) -> str:
    parts = []
    for key, value in pairs:
        text = str(value)
        if "_" in key or "_" in text:
            raise ValueError(f"attribute {key}={text} contains '_'")
        parts += [key, text]
    return "_".join(parts)


# --------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class Anomaly:
    kind: str
    severity: float  # 0 (barely audible) .. 1 (obvious)


@dataclass(frozen=True)
class _Sound:
    """A machine's sound before microphone and background.

    ``healthy_power`` is the power of the part a healthy machine would make,
    against which the background is scaled.
    """

    spectrum: np.ndarray
    healthy_power: float


@dataclass(frozen=True)
class Section:
    machine: str
    index: int
    design: object
    housing: tuple
    source: Domain
    target: Domain

    def domain(self, name: str) -> Domain:
        return self.source if name == "source" else self.target


def _mean_square(samples: np.ndarray) -> float:
    return float(np.mean(np.square(samples, dtype=np.float64)))


def _finish(clip: _Clip, section: Section, healthy: np.ndarray, spectral: np.ndarray | None = None,
            added: np.ndarray | None = None, added_spectral: np.ndarray | None = None) -> _Sound:
    """A machine's sound through its housing.

    ``healthy`` (samples) and ``spectral`` (a spectrum, for stationary noise) are
    what the machine makes anyway; ``added`` and ``added_spectral`` are an
    additive anomaly, left out of the power the background is scaled against.
    """
    total = healthy if added is None else healthy + added
    spec = clip.spectrum(total)
    for part in (spectral, added_spectral):
        if part is not None:
            spec = spec + part
    spec = spec * _peaks_gain(clip, section.housing)
    p_total = clip.power(spec)
    p_added = (_mean_square(added) if added is not None else 0.0) + (
        clip.power(added_spectral) if added_spectral is not None else 0.0
    )
    if p_added == 0.0:
        return _Sound(spec, p_total)
    # The anomaly is uncorrelated with the rest and the housing filters both alike,
    # so the healthy share of the output power is the healthy share of the input.
    p_healthy = _mean_square(healthy) + (clip.power(spectral) if spectral is not None else 0.0)
    return _Sound(spec, p_total * p_healthy / (p_healthy + p_added))


def _scale_to(part: np.ndarray, part_power: float, reference_power: float, db: float) -> np.ndarray:
    """``part`` scaled to ``db`` decibels re ``reference_power``."""
    if part_power <= 0.0:
        return part
    return part * np.float32(math.sqrt(reference_power / part_power) * _db(db))


class Machine(ABC):
    """A machine type: how its sections are designed and how one clip of it sounds."""

    name = ""
    anomalies: tuple[str, ...] = ()

    @abstractmethod
    def design(self, index: int, rng: np.random.Generator) -> tuple[object, tuple, tuple]:
        """(design, source operating points, target operating points) of a section."""

    @abstractmethod
    def render(self, clip: _Clip, rng: np.random.Generator, section: Section, point: OperatingPoint,
               anomaly: Anomaly | None) -> _Sound:
        """One clip of the machine at ``point``, healthy or with ``anomaly``."""

    def section(self, seed: int, index: int) -> Section:
        rng = _rng(seed, "design", self.name, index)
        design, src_points, tgt_points = self.design(index, rng)
        (src_mic, src_bg), (tgt_mic, tgt_bg) = _domain_acoustics(rng)
        return Section(
            machine=self.name,
            index=index,
            design=design,
            housing=_housing(rng),
            source=Domain("source", src_points, src_mic, src_bg),
            target=Domain("target", tgt_points, tgt_mic, tgt_bg),
        )


def _rpm_points(base_rpm: float, extra: str, src_extra: str, tgt_extra: str, rng: np.random.Generator) -> tuple:
    """Source at three speeds around nominal; target at one speed well outside them."""
    def point(rpm: float, tag: str) -> OperatingPoint:
        rpm = int(round(rpm / 10.0) * 10)
        return OperatingPoint(rpm / 60.0, 1.0, _attrs(("rpm", rpm), (extra, tag)))

    src = tuple(point(base_rpm * f, src_extra) for f in (0.94, 1.0, 1.06))
    tgt = (point(base_rpm * float(rng.choice([0.78, 1.24])), tgt_extra),)
    return src, tgt


@dataclass(frozen=True)
class _FanDesign:
    blades: int
    rpm: float
    shaft_amps: tuple[float, ...]  # orders 1..4
    bpf_amps: tuple[float, ...]  # blade-pass harmonics 1..4
    turbulence_hz: float
    turbulence_octaves: float
    turbulence_level: float
    turbulence_am: float
    rub_hz: float


class Fan(Machine):
    name = "fan"
    anomalies = ("imbalance", "blade", "rub")

    def design(self, index, rng):
        blades = int(_pick((7, 5, 9, 11, 6, 13, 8, 4), index))
        rpm = float(_pick((1380, 960, 1740, 1170, 1560, 1020, 1860, 1260), index)) + 30.0 * (index // 8)
        d = _FanDesign(
            blades=blades,
            rpm=rpm,
            shaft_amps=(
                rng.uniform(0.05, 0.1), rng.uniform(0.03, 0.06), rng.uniform(0.01, 0.03), rng.uniform(0.005, 0.02)
            ),
            bpf_amps=(1.0, rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.3), rng.uniform(0.04, 0.12)),
            turbulence_hz=rng.uniform(500.0, 1500.0),
            turbulence_octaves=rng.uniform(1.0, 1.6),
            turbulence_level=rng.uniform(0.5, 0.9),
            turbulence_am=rng.uniform(0.15, 0.35),
            rub_hz=rng.uniform(2500.0, 5000.0),
        )
        src, tgt = _rpm_points(rpm, "loc", "A", "B", rng)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _FanDesign = section.design
        rot = _rotation(clip, rng, point.speed_hz, jitter=0.012, wander=0.004)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        kind, s = (anomaly.kind, anomaly.severity) if anomaly else ("", 0.0)

        shaft = _vary(rng, d.shaft_amps)
        bpf = _vary(rng, d.bpf_amps)
        turbulence_db = 0.0
        if kind == "imbalance":
            shaft[0] *= _db(6.0 + 18.0 * s)
            # The shaken mounting works loose and rattles at every shaft harmonic.
            rattle = d.bpf_amps[0] * _db(-30.0 + 24.0 * s)
            shaft += [0.0] * (8 - len(shaft))
            for k in range(1, 8):
                shaft[k] += rattle / math.sqrt(k + 1) * rng.lognormal(0.0, 0.3)
        if kind == "blade":
            # A bent or chipped blade changes the shape of the blade-pass pulse
            # (its harmonics) and sheds more turbulence.
            bpf = [a * _db(rng.uniform(-1.0, 1.0) * (2.0 + 6.0 * s)) if k else a for k, a in enumerate(bpf)]
            turbulence_db = 1.0 + 4.0 * s
        x = _tones(rot.harmonic_phase, [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(shaft)], clip.n)
        blade_pass = _tones(
            rot.harmonic_phase, [(d.blades * (k + 1), a, rng.uniform(0, TWO_PI)) for k, a in enumerate(bpf)], clip.n
        )
        if kind == "blade":
            # One blade's pressure pulse differs: the blade-pass tone is modulated over
            # one blade spacing per revolution, which puts sidebands at BPF +- k*f_r.
            width = TWO_PI / d.blades
            pulse = _von_mises(rot.phase - np.float32(rng.uniform(0, TWO_PI)), 1.0 / width**2)
            blade_pass *= np.float32(1.0) + np.float32(0.15 + 0.65 * s) * (pulse - pulse.mean())
        x += blade_pass

        level = d.turbulence_level * rel_speed**1.5 * _db(turbulence_db + rng.normal(0.0, 1.0))
        turb = clip.noise_time(rng, clip.band(d.turbulence_hz * rel_speed, d.turbulence_octaves))
        shedding = np.cos(rot.harmonic_phase(d.blades) + np.float32(rng.uniform(0, TWO_PI)))
        turb *= np.float32(level) * (np.float32(1.0) + np.float32(d.turbulence_am) * shedding)
        x += turb

        if kind == "imbalance":
            # The shaken housing modulates everything once per revolution.
            x *= np.float32(1.0) + np.float32(0.03 + 0.3 * s) * np.cos(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
        added = self._rub(clip, rng, rot, d, s, _mean_square(x)) if kind == "rub" else None
        return _finish(clip, section, x, added=added)

    @staticmethod
    def _rub(clip, rng, rot, d, s, healthy_power):
        # Contact at one angle, not on every revolution; each contact a few ms of scrape.
        width = TWO_PI * rot.rate_hz * rng.uniform(0.002, 0.006)
        env = _von_mises(rot.phase - np.float32(rng.uniform(0, TWO_PI)), 1.0 / width**2)
        revs = np.floor(rot.cycles).astype(np.int64)
        revs -= revs[0]
        contact = (rng.uniform(size=revs[-1] + 1) < 0.4 + 0.5 * s) * rng.lognormal(0.0, 0.4, revs[-1] + 1)
        env *= contact[revs].astype(np.float32)
        scrape = clip.noise_time(rng, clip.band(d.rub_hz, 0.5)) * env
        return _scale_to(scrape, _mean_square(scrape), healthy_power, -24.0 + 22.0 * s)


@dataclass(frozen=True)
class _PumpDesign:
    vanes: int
    rpm: float
    shaft_amps: tuple[float, ...]
    vpf_amps: tuple[float, ...]
    flow_hz: float
    flow_level: float
    cooling_blades: int
    cooling_level: float
    cavitation_modes: tuple[tuple[float, float], ...]


class Pump(Machine):
    name = "pump"
    anomalies = ("cavitation", "clog")

    def design(self, index, rng):
        vanes = int(_pick((7, 5, 6, 8, 9, 5, 7, 6), index))
        rpm = float(_pick((2900, 1450, 2400, 1750, 3400, 980, 2100, 1200), index)) + 20.0 * (index // 8)
        d = _PumpDesign(
            vanes=vanes,
            rpm=rpm,
            shaft_amps=(rng.uniform(0.1, 0.2), rng.uniform(0.05, 0.1), rng.uniform(0.02, 0.05)),
            vpf_amps=(1.0, rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.2)),
            flow_hz=rng.uniform(250.0, 700.0),
            flow_level=rng.uniform(0.6, 1.0),
            cooling_blades=int(rng.choice([9, 11, 13])),
            cooling_level=rng.uniform(0.1, 0.25),
            cavitation_modes=tuple((rng.uniform(3000.0, 6500.0), rng.uniform(0.0002, 0.0008)) for _ in range(3)),
        )
        # Source: the pump against three delivery heads; target: a variable-speed
        # drive turned down, or a much higher head.
        base_head = int(_pick((30, 20, 40, 25, 50, 15, 35, 45), index))
        src = tuple(
            OperatingPoint(rpm / 60.0, h / base_head, _attrs(("rpm", int(rpm)), ("head", h)))
            for h in (base_head - 5, base_head, base_head + 5)
        )
        if rng.uniform() < 0.5:
            t_rpm = int(round(rpm * 0.8 / 10.0) * 10)
            # Head falls with the square of speed (affinity laws).
            tgt = (OperatingPoint(t_rpm / 60.0, 0.64, _attrs(("rpm", t_rpm), ("head", int(base_head * 0.64)))),)
        else:
            tgt = (OperatingPoint(rpm / 60.0, 1.6, _attrs(("rpm", int(rpm)), ("head", int(base_head * 1.6)))),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _PumpDesign = section.design
        rot = _rotation(clip, rng, point.speed_hz, jitter=0.008, wander=0.003)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        kind, s = (anomaly.kind, anomaly.severity) if anomaly else ("", 0.0)

        shaft = [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(_vary(rng, d.shaft_amps))]
        x = _tones(rot.harmonic_phase, shaft, clip.n)
        # Off the best-efficiency point the vane-pass pulsation grows.
        vpf_gain = 0.7 + 0.3 * point.load
        vpf = _tones(
            rot.harmonic_phase,
            [(d.vanes * (k + 1), a * vpf_gain, rng.uniform(0, TWO_PI)) for k, a in enumerate(_vary(rng, d.vpf_amps))],
            clip.n,
        )
        if kind == "clog":
            vpf *= np.float32(1.0) + np.float32(0.1 + 0.6 * s) * np.cos(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
        x += vpf
        x += _tones(rot.harmonic_phase, [(d.cooling_blades, d.cooling_level, rng.uniform(0, TWO_PI))], clip.n)

        flow_level = d.flow_level * math.sqrt(point.load) * rel_speed**1.5 * _db(rng.normal(0.0, 1.0))
        flow_shape = clip.band(d.flow_hz * rel_speed, 1.3) + 0.1 * clip.band(5000.0, 0.6) * d.cooling_level
        flow = clip.noise(rng, flow_shape) * np.float32(flow_level)
        spectral = flow
        if kind == "clog":
            # A partly blocked impeller surges: the flow noise swells and fades slowly.
            t = clip.t32
            swell = np.sin(np.float32(TWO_PI * rng.uniform(0.5, 3.0)) * t + np.float32(rng.uniform(0, TWO_PI)))
            x += np.fft.irfft(flow, clip.n).astype(np.float32) * (np.float32(1.0) + np.float32(0.1 + 0.5 * s) * swell)
            spectral = None
        if kind != "cavitation":
            return _finish(clip, section, x, spectral)
        # Bubble collapses: a Poisson crackle, denser as each vane passes the cut-water.
        rate = (400.0 + 2500.0 * s) * rel_speed
        cand = np.sort(rng.uniform(0.0, clip.seconds, rng.poisson(2.0 * rate * clip.seconds)))
        pos = (cand * clip.sr).astype(np.int64)
        vane_phase = rot.harmonic_phase(d.vanes)[np.minimum(pos, clip.n - 1)]
        keep = rng.uniform(size=pos.size) < 0.5 * (1.0 + np.cos(vane_phase))
        pos = pos[keep]
        crackle = clip.impulses(pos, rng.exponential(1.0, pos.size)) * clip.resonances(d.cavitation_modes)
        healthy = _mean_square(x) + clip.power(spectral)
        crackle = _scale_to(crackle, clip.power(crackle), healthy, -26.0 + 22.0 * s)
        return _finish(clip, section, x, spectral, added_spectral=crackle)


@dataclass(frozen=True)
class _GearDesign:
    z1: int
    z2: int
    rpm: float
    mesh_amps: tuple[float, ...]  # mesh harmonics 1..4
    am1: float
    am2: float
    fm: float
    noise_level: float
    noise_hz: float
    casing_modes: tuple[tuple[float, float], ...]


class Gearbox(Machine):
    name = "gearbox"
    anomalies = ("tooth", "wear")

    def design(self, index, rng):
        z1 = int(_pick((19, 27, 23, 15, 31, 17, 25, 13), index))
        ratio = float(_pick((2.6, 1.8, 3.3, 4.1, 1.5, 2.9, 2.2, 3.7), index))
        z2 = int(round(z1 * ratio))
        if math.gcd(z1, z2) > 1:  # a hunting-tooth design meets every tooth pair evenly
            z2 += 1
        rpm = float(_pick((1500, 1200, 1000, 1800, 1350, 1650, 900, 2000), index)) + 20.0 * (index // 8)
        d = _GearDesign(
            z1=z1,
            z2=z2,
            rpm=rpm,
            mesh_amps=(1.0, rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.2)),
            am1=rng.uniform(0.03, 0.08),
            am2=rng.uniform(0.03, 0.08),
            fm=rng.uniform(0.02, 0.08),
            noise_level=rng.uniform(0.3, 0.6),
            noise_hz=rng.uniform(800.0, 2500.0),
            casing_modes=tuple((rng.uniform(1500.0, 5000.0), rng.uniform(0.002, 0.006)) for _ in range(2)),
        )
        base_load = int(_pick((50, 40, 60, 50, 30, 70, 45, 55), index))
        src = tuple(
            OperatingPoint(rpm / 60.0, ld / 100.0, _attrs(("rpm", int(rpm)), ("load", ld)))
            for ld in (base_load - 20, base_load, base_load + 20)
        )
        if rng.uniform() < 0.5:
            t_rpm = int(round(rpm * float(rng.choice([0.75, 1.3])) / 10.0) * 10)
            tgt = (OperatingPoint(t_rpm / 60.0, base_load / 100.0, _attrs(("rpm", t_rpm), ("load", base_load))),)
        else:
            t_load = 95 if base_load <= 50 else 5
            tgt = (OperatingPoint(rpm / 60.0, t_load / 100.0, _attrs(("rpm", int(rpm)), ("load", t_load))),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _GearDesign = section.design
        rot = _rotation(clip, rng, point.speed_hz, jitter=0.01, wander=0.003)
        kind, s = (anomaly.kind, anomaly.severity) if anomaly else ("", 0.0)
        load = point.load
        ratio = d.z1 / d.z2
        ph2 = rot.harmonic_phase(ratio)

        am1, am2, fm = d.am1, d.am2, d.fm
        amps = _vary(rng, d.mesh_amps)
        # Load deflects the teeth: more mesh, more harmonics.
        amps = [a * (0.4 + load) * ((0.5 + load) if k else 1.0) for k, a in enumerate(amps)]
        noise_db = 0.0
        if kind == "wear":
            am1 += 0.05 + 0.3 * s
            am2 += 0.03 + 0.2 * s
            fm += 0.03 + 0.25 * s
            amps = [a * ((1.0 + 1.5 * s) if k else 1.0) for k, a in enumerate(amps)]
            noise_db = 1.0 + 6.0 * s
        wobble = np.float32(fm) * np.sin(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
        mesh_phase = rot.harmonic_phase(d.z1)
        mesh = np.zeros(clip.n, dtype=np.float32)
        for k, a in enumerate(amps):
            h = k + 1
            phase = mesh_phase * np.float32(h) + np.float32(h) * wobble + np.float32(rng.uniform(0, TWO_PI))
            mesh += np.float32(a) * np.sin(phase)
        mesh *= (
            np.float32(1.0)
            + np.float32(am1) * np.cos(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
            + np.float32(am2) * np.cos(ph2 + np.float32(rng.uniform(0, TWO_PI)))
        )
        hits = None
        if kind == "tooth":
            # The damaged tooth carries less load: a dip of the mesh over one tooth
            # spacing, and an impact ringing the casing, once per turn of its gear.
            on_pinion = rng.uniform() < 0.5
            teeth = d.z1 if on_pinion else d.z2
            order = 1.0 if on_pinion else ratio
            angle = rng.uniform(0.0, 1.0)
            gear_phase = rot.phase if on_pinion else ph2
            dip = _von_mises(gear_phase - np.float32(TWO_PI * angle), (teeth / TWO_PI) ** 2)
            mesh *= np.float32(1.0) - np.float32(0.1 + 0.5 * s) * dip
            pos = rot.crossings(order, angle)
            hits = clip.impulses(pos, rng.lognormal(0.0, 0.2, pos.size)) * clip.resonances(d.casing_modes)
            hits = _scale_to(hits, clip.power(hits), _mean_square(mesh), -28.0 + 24.0 * s)
        x = mesh
        x += _tones(rot.harmonic_phase, [(1, 0.05, rng.uniform(0, TWO_PI)), (2, 0.03, rng.uniform(0, TWO_PI))], clip.n)
        x += _tones(lambda o: ph2 * np.float32(o), [(1, 0.04, rng.uniform(0, TWO_PI))], clip.n)
        noise = clip.noise(rng, clip.band(d.noise_hz, 1.5)) * np.float32(
            d.noise_level * math.sqrt(0.3 + load) * _db(noise_db + rng.normal(0.0, 1.0))
        )
        return _finish(clip, section, x, noise, added_spectral=hits)


@dataclass(frozen=True)
class _BearingDesign:
    balls: int
    d_over_D: float
    contact_deg: float
    rpm: float
    slots: int
    slot_level: float
    shaft_amps: tuple[float, ...]
    rolling_level: float
    modes: tuple[tuple[float, float], ...]

    def orders(self) -> dict[str, float]:
        """Defect frequencies as multiples of the shaft rate (classic kinematics)."""
        c = self.d_over_D * math.cos(math.radians(self.contact_deg))
        return {
            "bpfo": self.balls / 2.0 * (1.0 - c),
            "bpfi": self.balls / 2.0 * (1.0 + c),
            "bsf": 1.0 / (2.0 * self.d_over_D) * (1.0 - c * c),
            "ftf": 0.5 * (1.0 - c),
        }


class Bearing(Machine):
    name = "bearing"
    anomalies = ("outer", "inner", "ball")

    def design(self, index, rng):
        rpm = float(_pick((1800, 1200, 2400, 1500, 2100, 900, 2700, 1350), index)) + 30.0 * (index // 8)
        d = _BearingDesign(
            balls=int(_pick((9, 7, 12, 8, 10, 13, 11, 6), index)),
            d_over_D=rng.uniform(0.18, 0.32),
            contact_deg=rng.uniform(0.0, 15.0),
            rpm=rpm,
            slots=int(_pick((28, 36, 44, 24, 32, 40, 30, 48), index)),
            slot_level=rng.uniform(0.3, 0.6),
            shaft_amps=(rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.2)),
            rolling_level=rng.uniform(0.6, 1.0),
            modes=tuple(sorted((rng.uniform(1800.0, 6500.0), rng.uniform(0.001, 0.004)) for _ in range(3))),
        )
        base_load = int(_pick((2, 4, 3, 5, 2, 6, 3, 4), index))
        src_rpm = [int(round(rpm * f / 10.0) * 10) for f in (0.92, 1.0, 1.08)]
        src = tuple(OperatingPoint(r / 60.0, base_load, _attrs(("rpm", r), ("load", base_load))) for r in src_rpm)
        if rng.uniform() < 0.5:
            t_rpm = int(round(rpm * float(rng.choice([0.7, 1.35])) / 10.0) * 10)
            tgt = (OperatingPoint(t_rpm / 60.0, base_load, _attrs(("rpm", t_rpm), ("load", base_load))),)
        else:
            t_load = base_load * 3
            tgt = (OperatingPoint(rpm / 60.0, t_load, _attrs(("rpm", int(rpm)), ("load", t_load))),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _BearingDesign = section.design
        rot = _rotation(clip, rng, point.speed_hz, jitter=0.01, wander=0.002)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        load = point.load / 3.0  # kN relative to a typical design load
        orders = d.orders()

        comps = [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(_vary(rng, d.shaft_amps))]
        comps += [(d.slots * h, d.slot_level / h, rng.uniform(0, TWO_PI)) for h in (1, 2)]
        x = _tones(rot.harmonic_phase, comps, clip.n)
        # Waviness of any real race leaves a faint component at the defect rates.
        x += _tones(rot.harmonic_phase, [(orders["bpfo"], 0.03, rng.uniform(0, TWO_PI)),
                                         (orders["bpfi"], 0.02, rng.uniform(0, TWO_PI))], clip.n)
        h_modes = clip.resonances(d.modes)
        mag = np.abs(h_modes)
        shape = mag / mag.max() + 0.15 * np.sqrt(300.0 / clip.f_safe)
        rolling = clip.noise(rng, shape) * np.float32(
            d.rolling_level * rel_speed * math.sqrt(0.5 + load) * _db(rng.normal(0.0, 1.0))
        )
        if anomaly is None:
            return _finish(clip, section, x, rolling)

        s = anomaly.severity
        jitter = 0.01  # rolling elements slip: impacts are not exactly periodic
        if anomaly.kind == "outer":
            order = orders["bpfo"]
        elif anomaly.kind == "inner":
            order = orders["bpfi"]
        else:
            order = 2.0 * orders["bsf"]  # a ball defect strikes both races each spin
        pos = rot.crossings(order, rng.uniform())
        period = clip.sr / (rot.rate_hz * order)
        pos = pos + np.round(rng.normal(0.0, jitter * period, pos.size)).astype(np.int64)
        amps = rng.lognormal(0.0, 0.15, pos.size)
        at = np.clip(pos, 0, clip.n - 1)
        if anomaly.kind == "inner":
            # The defect turns with the shaft and strikes hard only in the load zone.
            zone = np.cos(rot.phase[at].astype(np.float64) - rng.uniform(0, TWO_PI))
            amps *= 0.15 + 0.85 * np.maximum(zone, 0.0) ** 1.5
        elif anomaly.kind == "ball":
            cage = np.cos(TWO_PI * np.mod(rot.cycles[at] * orders["ftf"], 1.0) - rng.uniform(0, TWO_PI))
            amps *= 0.3 + 0.7 * np.maximum(cage, 0.0)
        hits = clip.impulses(pos, amps) * h_modes
        # A loaded bearing strikes harder.
        level_db = -22.0 + 24.0 * s + 10.0 * math.log10(0.5 + load)
        hits = _scale_to(hits, clip.power(hits), _mean_square(x) + clip.power(rolling), level_db)
        return _finish(clip, section, x, rolling, added_spectral=hits)


@dataclass(frozen=True)
class _ValveDesign:
    cycle_s: float
    pattern: tuple[tuple[float, float], ...]  # (open at, open for) as fractions of the cycle
    open_modes: tuple[tuple[float, float, float], ...]
    close_modes: tuple[tuple[float, float, float], ...]
    close_gain: float
    flow_hz: float
    flow_octaves: float
    flow_level: float
    buzz_hz: float  # 0: DC solenoid, no buzz
    puff_level: float


_VALVE_PATTERNS = (
    ((0.0, 0.35),),
    ((0.0, 0.15), (0.4, 0.15)),
    ((0.0, 0.45), (0.6, 0.1)),
    ((0.0, 0.1), (0.25, 0.1), (0.5, 0.1)),
)


class Valve(Machine):
    name = "valve"
    anomalies = ("leak", "timing", "chatter")

    def design(self, index, rng):
        cycle = float(_pick((0.8, 1.2, 0.6, 1.6, 1.0, 2.0, 0.7, 1.4), index)) + 0.05 * (index // 8)
        pattern = tuple(
            (a + (rng.uniform(0.0, 0.05) if a else 0.0), w * rng.uniform(0.9, 1.1))
            for a, w in _VALVE_PATTERNS[index % len(_VALVE_PATTERNS)]
        )
        def modes(lo, hi):
            return tuple((rng.uniform(lo, hi), rng.uniform(0.002, 0.008), rng.uniform(0.5, 1.0)) for _ in range(2))
        d = _ValveDesign(
            cycle_s=cycle,
            pattern=pattern,
            open_modes=modes(1500.0, 4500.0),
            close_modes=modes(800.0, 3500.0),
            close_gain=rng.uniform(1.2, 2.0),
            flow_hz=rng.uniform(1200.0, 3000.0),
            flow_octaves=rng.uniform(0.6, 1.0),
            flow_level=rng.uniform(0.15, 0.35),
            buzz_hz=float(rng.choice([0.0, 100.0, 120.0])),
            puff_level=rng.uniform(0.0, 0.5),
        )
        base_bar = int(_pick((4, 3, 5, 4, 6, 3, 5, 4), index))
        def point(cycle_s, bar):
            ms = int(round(cycle_s * 1000.0))
            return OperatingPoint(1000.0 / ms, float(bar), _attrs(("cyc", ms), ("bar", bar)))
        src = tuple(point(cycle, b) for b in (base_bar - 1, base_bar, base_bar + 1))
        if rng.uniform() < 0.5:
            tgt = (point(cycle * 0.7, base_bar),)
        else:
            tgt = (point(cycle, base_bar + 3 if base_bar < 5 else base_bar - 2),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _ValveDesign = section.design
        kind, s = (anomaly.kind, anomaly.severity) if anomaly else ("", 0.0)
        period = 1.0 / point.speed_hz
        pressure = point.load / 4.0
        jitter = 0.003
        miss, late = 0.0, 0.0
        if kind == "timing":
            jitter = 0.008 + 0.05 * s
            miss = 0.1 + 0.3 * s
            late = 0.15 + 0.8 * s

        # Event times of every pulse that touches the clip.
        opens, closes = [], []
        t0 = -rng.uniform(0.0, period)
        for c in range(int(clip.seconds / period) + 2):
            start = t0 + c * period * (1.0 + rng.normal(0.0, 0.002))
            for at, width in d.pattern:
                if miss and rng.uniform() < miss:
                    continue
                o = start + at * period + rng.normal(0.0, jitter)
                w = width * period + rng.normal(0.0, jitter)
                if late and rng.uniform() < 0.5:
                    w += rng.uniform(0.0, late) * width * period  # sticking: closes late
                opens.append(o)
                closes.append(o + max(w, 0.01))
        opens, closes = np.array(opens), np.array(closes)

        x = np.zeros(clip.n, dtype=np.float32)
        click_gain = 0.6 + 0.4 * pressure
        k_open = _ringing(clip.sr, d.open_modes)
        k_close = _ringing(clip.sr, d.close_modes)
        chatter_hz = rng.uniform(20.0, 60.0)
        # Small, fast impacts of the fluttering disc ring its higher modes.
        k_tick = _ringing(clip.sr, [(f * rng.uniform(1.4, 2.0), tau * 0.5, a) for f, tau, a in d.close_modes])
        for o, c in zip(opens, closes):
            _add_at(x, int(o * clip.sr), k_open, click_gain * rng.lognormal(0.0, 0.15))
            _add_at(x, int(c * clip.sr), k_close, click_gain * d.close_gain * rng.lognormal(0.0, 0.15))
            if kind == "chatter":
                # A worn spring or low supply lets the disc oscillate against its seat
                # for part of the opening: a rattle of small seat impacts.
                stop = o + (c - o) * (0.2 + 0.8 * s)
                hit = o + 1.0 / chatter_hz
                while hit < stop:
                    amp = click_gain * d.close_gain * (0.15 + 0.85 * s) * rng.lognormal(0.0, 0.3)
                    _add_at(x, int(hit * clip.sr), k_tick, amp)
                    hit += rng.normal(1.0, 0.05) / chatter_hz

        # Flow while open: hiss rising and falling with the valve, pitch with pressure.
        gate = np.zeros(clip.n, dtype=np.float32)
        t = clip.t32
        attack, release = rng.uniform(0.005, 0.015), rng.uniform(0.01, 0.03)
        energized = np.zeros(clip.n, dtype=bool)
        for o, c in zip(opens, closes):
            i0, i1 = max(0, int(o * clip.sr)), min(clip.n, int(c * clip.sr))
            if i1 > i0:
                gate[i0:i1] = 1.0 - np.exp(-(t[i0:i1] - np.float32(o)) / np.float32(attack))
                energized[i0:i1] = True
            end = min(clip.n, int((c + 6 * release) * clip.sr))
            i = max(0, int(c * clip.sr))
            if end > i:
                held = 1.0 - math.exp(-max(c - o, 0.0) / attack)
                gate[i:end] = np.maximum(gate[i:end], held * np.exp(-(t[i:end] - np.float32(c)) / np.float32(release)))
        flow_hz = d.flow_hz * math.sqrt(pressure)
        flow = clip.noise_time(rng, clip.band(flow_hz, d.flow_octaves))
        level = d.flow_level * pressure * _db(rng.normal(0.0, 1.0))
        if kind == "chatter":
            flutter = 1.0 + (0.2 + 0.6 * s) * np.sin(np.float32(TWO_PI * chatter_hz) * t)
            gate *= flutter.astype(np.float32)
        x += flow * gate * np.float32(level)
        if d.puff_level > 0:
            # Exhaust vented as the valve closes.
            puff = np.zeros(clip.n, dtype=np.float32)
            kernel = np.exp(-np.arange(int(0.25 * clip.sr)) / (0.05 * clip.sr)).astype(np.float32)
            for c in closes:
                _add_at(puff, int(c * clip.sr), kernel, 1.0)
            x += np.roll(flow, clip.n // 3) * puff * np.float32(d.puff_level * level * 2.0)
        if d.buzz_hz:
            buzz_phase = clip.phase(d.buzz_hz)
            buzz = _tones(lambda k: buzz_phase * np.float32(k),
                          [(1, 0.05, rng.uniform(0, TWO_PI)), (2, 0.02, rng.uniform(0, TWO_PI))], clip.n)
            x += buzz * energized

        added = None
        if kind == "leak":
            # Gas escaping past the seat hisses, and often whistles, all the time.
            hiss = clip.noise_time(rng, clip.band(rng.uniform(3500.0, 6500.0), 0.3))
            whistle = _tones(clip.phase,
                             [(rng.uniform(2500.0, 6000.0), 0.3 * rng.uniform(), 0.0)], clip.n)
            # Level set by the hiss (unit power); the whistle comes on top of it.
            added = _scale_to(hiss + whistle, 1.0, _mean_square(x), -26.0 + 22.0 * s)
        return _finish(clip, section, x, added=added)


MACHINES: dict[str, Machine] = {m.name: m for m in (Fan(), Pump(), Gearbox(), Bearing(), Valve())}
MACHINE_TYPES: tuple[str, ...] = tuple(MACHINES)


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class ClipJob:
    """Everything that determines one clip (the rest follows from the seed)."""

    machine: str
    section: int
    domain: str
    split: str
    label: str
    index: int
    seed: int
    n_samples: int
    sample_rate: int


@dataclass(frozen=True)
class Rendered:
    """A clip's samples and what went into it."""

    samples: np.ndarray  # float32 in [-1, 1]
    attributes: str
    anomaly: Anomaly | None
    point: OperatingPoint
    snr_db: float
    rms_dbfs: float

    def file_name(self, job: ClipJob) -> str:
        return (
            f"section_{job.section:02d}_{job.domain}_{job.split}_{job.label}_{job.index:04d}"
            f"_{self.attributes}.wav"
        )


def render_clip(job: ClipJob) -> Rendered:
    """Render one clip: machine through its housing, plus background, through the microphone."""
    machine = MACHINES[job.machine]
    section = machine.section(job.seed, job.section)
    domain = section.domain(job.domain)
    rng = _rng(job.seed, "clip", job.machine, job.section, job.domain, job.split, job.label, job.index)
    clip = _Clip(job.n_samples, job.sample_rate)

    point = domain.points[int(rng.integers(len(domain.points)))]
    anomaly = None
    if job.label == "anomaly":
        anomaly = Anomaly(str(rng.choice(machine.anomalies)), float(rng.uniform()))
    sound = machine.render(clip, rng, section, point, anomaly)

    snr = domain.background.snr_db + rng.normal(0.0, 2.0)
    background = domain.background.render(clip, rng)
    spec = sound.spectrum + background * np.float32(math.sqrt(sound.healthy_power) * _db(-snr))
    samples = np.fft.irfft(spec * domain.mic.gain(clip), clip.n)

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    level = rng.uniform(*RMS_RANGE_DBFS)
    samples *= _db(level) / rms
    peak = float(np.max(np.abs(samples)))
    ceiling = _db(PEAK_CEILING_DBFS)
    if peak > ceiling:
        samples *= ceiling / peak
        level += 20.0 * math.log10(ceiling / peak)
    return Rendered(samples.astype(np.float32), point.attributes, anomaly, point, float(snr), float(level))


def _jobs(cfg: SynthConfig, machine: str) -> Iterator[ClipJob]:
    plan = (
        ("source", "train", "normal", cfg.train_source),
        ("target", "train", "normal", cfg.train_target),
        ("source", "test", "normal", cfg.test),
        ("source", "test", "anomaly", cfg.test),
        ("target", "test", "normal", cfg.test),
        ("target", "test", "anomaly", cfg.test),
    )
    for section in range(cfg.sections):
        for domain, split, label, count in plan:
            for index in range(count):
                yield ClipJob(machine, section, domain, split, label, index, cfg.seed, cfg.n_samples, cfg.sample_rate)


_MANIFEST_FIELDS = ("file", "section", "domain", "split", "label", "anomaly", "severity",
                    "speed_hz", "load", "snr_db", "rms_dbfs")


def _write_job(job_and_dir: tuple[ClipJob, str]) -> dict[str, str]:
    """Render and write one clip (runs in a worker process); return its manifest row."""
    job, machine_dir = job_and_dir
    r = render_clip(job)
    name = r.file_name(job)
    pcm = np.round(np.clip(r.samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    sf.write(os.path.join(machine_dir, job.split, name), pcm, job.sample_rate, subtype="PCM_16")
    return {
        "file": f"{job.split}/{name}",
        "section": f"{job.section:02d}",
        "domain": job.domain,
        "split": job.split,
        "label": job.label,
        "anomaly": r.anomaly.kind if r.anomaly else "",
        "severity": f"{r.anomaly.severity:.3f}" if r.anomaly else "",
        "speed_hz": f"{r.point.speed_hz:.3f}",
        "load": f"{r.point.load:g}",
        "snr_db": f"{r.snr_db:.2f}",
        "rms_dbfs": f"{r.rms_dbfs:.2f}",
    }


# --------------------------------------------------------------------------- entry point


def _prepare(out: Path, machines: Iterable[str]) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    for m in machines:
        folder = out / m
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UserError(f"{folder}: already exists and is not empty; remove it or choose another output folder")
    for m in machines:
        for split in ("train", "test"):
            try:
                (out / m / split).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{out / m / split}: cannot create folder ({exc.strerror})") from None


def _worker_count(cfg: SynthConfig, total: int) -> int:
    if cfg.workers:
        wanted = cfg.workers
    else:
        try:
            wanted = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            wanted = os.cpu_count() or 1
    # A pool costs a process start per worker: not worth it for a handful of clips.
    return max(1, min(wanted, total // 8))


class _Progress:
    """tqdm when it is installed (it is not a runtime dependency), else a line per machine."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar = None
        self._enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="clip", file=sys.stderr, leave=False)
            except ImportError:
                pass

    def machine(self, name: str, count: int) -> None:
        if self._bar is not None:
            self._bar.set_description(name)
        elif self._enabled:
            print(f"synth: {name}: {count} clips", file=sys.stderr, flush=True)

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def generate(out: Path, cfg: SynthConfig, progress: bool = False) -> int:
    """Write the data set ``cfg`` describes under ``out`` in the DCASE layout; return the clip count.

    Raises :class:`UserError` for a bad configuration or an output folder that
    cannot be written or already holds one of the machines.
    """
    cfg.validate()
    out = Path(out)
    _prepare(out, cfg.machines)
    per_machine = cfg.sections * cfg.clips_per_section()
    total = per_machine * len(cfg.machines)
    workers = _worker_count(cfg, total)
    bar = _Progress(progress, total)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    written = 0
    try:
        for machine in cfg.machines:
            bar.machine(machine, per_machine)
            machine_dir = str(out / machine)
            work = ((job, machine_dir) for job in _jobs(cfg, machine))
            results = pool.map(_write_job, work, chunksize=4) if pool else map(_write_job, work)
            rows = []
            for row in results:
                rows.append(row)
                bar.step()
            with open(out / machine / MANIFEST_NAME, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=_MANIFEST_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
            written += len(rows)
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write ({exc.strerror})") from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return written
