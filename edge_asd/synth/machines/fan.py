"""The fan: a motor turning an impeller of B blades at shaft rate f_r (rpm/60).

The sound is a few shaft harmonics k*f_r (residual imbalance and misalignment,
weak), the blade-pass tone BPF = B*f_r with its harmonics (the pressure pulse
each blade sends past the cut-off, strong), and aerodynamic broadband noise
from turbulence whose spectral hump moves with tip speed and whose level grows
steeply with speed; the turbulence is amplitude modulated at BPF because every
passing blade sheds it. Anomalies: *imbalance* (the 1x shaft harmonic grows,
the loosened mounting rattles at every shaft harmonic, the whole sound is
modulated once per revolution), a *damaged blade* (one blade's pulse differs,
so the blade-pass tone gets sidebands at BPF +- k*f_r, its harmonics change and
more turbulence is shed), *rubbing* (a scrape burst of high-frequency noise at
one angle of the revolutions where the impeller touches the housing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.machines.base import (
    Machine, OperatingPoint, finish, kind_and_severity, pick, rounded_rpm, rpm_point,
)
from edge_asd.synth.signal import TWO_PI, db_gain, mean_square, rotation, scale_to, tones, vary, von_mises


def _speed_points(base_rpm: float, extra: str, src_extra: str, tgt_extra: str, rng: np.random.Generator) -> tuple:
    """Source at three speeds around nominal; target at one speed well outside them."""
    def point(rpm: float, tag: str) -> OperatingPoint:
        return rpm_point(rounded_rpm(rpm), extra, tag, 1.0)

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
        blades = int(pick((7, 5, 9, 11, 6, 13, 8, 4), index))
        rpm = float(pick((1380, 960, 1740, 1170, 1560, 1020, 1860, 1260), index)) + 30.0 * (index // 8)
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
        src, tgt = _speed_points(rpm, "loc", "A", "B", rng)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _FanDesign = section.design
        rot = rotation(clip, rng, point.speed_hz, jitter=0.012, wander=0.004)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        kind, s = kind_and_severity(anomaly)

        shaft = vary(rng, d.shaft_amps)
        bpf = vary(rng, d.bpf_amps)
        turbulence_db = 0.0
        if kind == "imbalance":
            shaft[0] *= db_gain(6.0 + 18.0 * s)
            # The shaken mounting works loose and rattles at every shaft harmonic.
            rattle = d.bpf_amps[0] * db_gain(-30.0 + 24.0 * s)
            shaft += [0.0] * (8 - len(shaft))
            for k in range(1, 8):
                shaft[k] += rattle / math.sqrt(k + 1) * rng.lognormal(0.0, 0.3)
        if kind == "blade":
            # A bent or chipped blade changes the shape of the blade-pass pulse
            # (its harmonics) and sheds more turbulence.
            bpf = [a * db_gain(rng.uniform(-1.0, 1.0) * (2.0 + 6.0 * s)) if k else a for k, a in enumerate(bpf)]
            turbulence_db = 1.0 + 4.0 * s
        x = tones(rot.harmonic_phase, [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(shaft)], clip.n)
        blade_pass = tones(
            rot.harmonic_phase, [(d.blades * (k + 1), a, rng.uniform(0, TWO_PI)) for k, a in enumerate(bpf)], clip.n
        )
        if kind == "blade":
            # One blade's pressure pulse differs: the blade-pass tone is modulated over
            # one blade spacing per revolution, which puts sidebands at BPF +- k*f_r.
            width = TWO_PI / d.blades
            pulse = von_mises(rot.phase - np.float32(rng.uniform(0, TWO_PI)), 1.0 / width**2)
            blade_pass *= np.float32(1.0) + np.float32(0.15 + 0.65 * s) * (pulse - pulse.mean())
        x += blade_pass

        level = d.turbulence_level * rel_speed**1.5 * db_gain(turbulence_db + rng.normal(0.0, 1.0))
        turb = clip.noise_time(rng, clip.band(d.turbulence_hz * rel_speed, d.turbulence_octaves))
        shedding = np.cos(rot.harmonic_phase(d.blades) + np.float32(rng.uniform(0, TWO_PI)))
        turb *= np.float32(level) * (np.float32(1.0) + np.float32(d.turbulence_am) * shedding)
        x += turb

        if kind == "imbalance":
            # The shaken housing modulates everything once per revolution.
            x *= np.float32(1.0) + np.float32(0.03 + 0.3 * s) * np.cos(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
        added = self._rub(clip, rng, rot, d, s, mean_square(x)) if kind == "rub" else None
        return finish(clip, section, x, added=added)

    @staticmethod
    def _rub(clip, rng, rot, d, s, healthy_power):
        # Contact at one angle, not on every revolution; each contact a few ms of scrape.
        width = TWO_PI * rot.rate_hz * rng.uniform(0.002, 0.006)
        env = von_mises(rot.phase - np.float32(rng.uniform(0, TWO_PI)), 1.0 / width**2)
        revs = np.floor(rot.cycles).astype(np.int64)
        revs -= revs[0]
        contact = (rng.uniform(size=revs[-1] + 1) < 0.4 + 0.5 * s) * rng.lognormal(0.0, 0.4, revs[-1] + 1)
        env *= contact[revs].astype(np.float32)
        scrape = clip.noise_time(rng, clip.band(d.rub_hz, 0.5)) * env
        return scale_to(scrape, mean_square(scrape), healthy_power, -24.0 + 22.0 * s)
