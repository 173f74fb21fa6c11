"""Where a machine is heard: the microphone at its place, the factory background,
the housing's resonances, and how a section's two domains differ in them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.signal import TWO_PI, Clip, add_at, db_gain, ringing, tones


@dataclass(frozen=True)
class MicResponse:
    """Magnitude response of a microphone at its place: band limits, a presence peak, a tilt."""

    highpass_hz: float
    lowpass_hz: float
    peak_hz: float
    peak_db: float
    tilt_db_per_octave: float

    def gain(self, clip: Clip) -> np.ndarray:
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

    def render(self, clip: Clip, rng: np.random.Generator) -> np.ndarray:
        """Unit-power spectrum of one clip of this background."""
        f = clip.f_safe
        pink = 1.0 / f
        brown = (100.0 / f) ** 2 / 100.0
        # Rooms do not carry much below 20 Hz; sound below that is not in a microphone either.
        shape = np.sqrt((pink / pink[1:].mean() + self.brown * brown / brown[1:].mean()) * (f > 15.0))
        spec = clip.noise(rng, shape)

        # Mains hum: odd harmonics stronger (transformer magnetostriction, rectifiers), slight drift.
        hum = db_gain(self.hum_db + rng.normal(0.0, 2.0))
        mains = clip.phase(self.mains_hz * (1.0 + rng.normal(0.0, 0.002)))
        x = tones(lambda k: mains * np.float32(k), [
            (k, hum * (1.0 if k % 2 else 0.5) / k * db_gain(rng.normal(0.0, 2.0)), rng.uniform(0, TWO_PI))
            for k in range(1, 9)
        ], clip.n)
        # Distant machinery: its low harmonics come through the walls, beating slowly.
        dist = db_gain(self.distant_db + rng.normal(0.0, 2.0))
        distant = clip.phase(self.distant_hz * (1.0 + rng.normal(0.0, 0.01)))
        tone = tones(lambda k: distant * np.float32(k),
                      [(k, dist / k, rng.uniform(0, TWO_PI)) for k in range(1, 7)], clip.n)
        beat = np.sin(np.float32(TWO_PI * rng.uniform(0.1, 0.8)) * clip.t32 + np.float32(rng.uniform(0, TWO_PI)))
        x += tone * (np.float32(1.0) + np.float32(0.3) * beat)
        # Impacts: something dropped or struck somewhere in the hall.
        for _ in range(rng.poisson(self.impacts_per_s * clip.seconds)):
            modes = [
                (rng.uniform(250.0, 4000.0), rng.uniform(0.01, 0.08), rng.uniform(0.3, 1.0))
                for _ in range(rng.integers(1, 4))
            ]
            add_at(x, int(rng.integers(0, clip.n)), ringing(clip.sr, modes), db_gain(rng.uniform(0.0, 14.0)))
        spec = spec + clip.spectrum(x)
        return spec / np.float32(math.sqrt(clip.power(spec)))


def domain_acoustics(
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


def housing_peaks(rng: np.random.Generator, lo: float = 200.0, hi: float = 5000.0, count: int = 3) -> tuple:
    """Resonant peaks of a machine's housing: part of what makes an individual sound like itself."""
    return tuple(
        (float(math.exp(rng.uniform(math.log(lo), math.log(hi)))), rng.uniform(0.15, 0.4), rng.uniform(3.0, 9.0))
        for _ in range(count)
    )
