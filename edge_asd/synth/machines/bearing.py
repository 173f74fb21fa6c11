"""The bearing: a motor shaft at f_r in a rolling-element bearing of n balls,
ball to pitch diameter ratio d/D and contact angle phi.

The healthy sound is shaft harmonics, the rotor slot-pass tone, and rolling
noise: countless tiny impacts filtered by the structural resonances of the
housing. A defect makes one impact per contact, which rings the resonances as
a decaying sinusoid: an *outer-race* defect at BPFO = n/2*f_r*(1 - d/D*cos phi)
with steady amplitude (the outer race is still and the defect sits in the load
zone), an *inner-race* defect at BPFI = n/2*f_r*(1 + d/D*cos phi) whose
amplitude is modulated as the defect turns through the load zone once per
revolution, a *ball* defect at 2*BSF modulated at the cage rate FTF. Impact
times slip by about a percent, as real rolling elements do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.machines.base import Machine, finish, pick, rounded_rpm, rpm_point, speed_or_load_target
from edge_asd.synth.signal import TWO_PI, db_gain, mean_square, rotation, scale_to, tones, vary


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
        rpm = float(pick((1800, 1200, 2400, 1500, 2100, 900, 2700, 1350), index)) + 30.0 * (index // 8)
        d = _BearingDesign(
            balls=int(pick((9, 7, 12, 8, 10, 13, 11, 6), index)),
            d_over_D=rng.uniform(0.18, 0.32),
            contact_deg=rng.uniform(0.0, 15.0),
            rpm=rpm,
            slots=int(pick((28, 36, 44, 24, 32, 40, 30, 48), index)),
            slot_level=rng.uniform(0.3, 0.6),
            shaft_amps=(rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.4), rng.uniform(0.1, 0.2)),
            rolling_level=rng.uniform(0.6, 1.0),
            modes=tuple(sorted((rng.uniform(1800.0, 6500.0), rng.uniform(0.001, 0.004)) for _ in range(3))),
        )
        base_load = int(pick((2, 4, 3, 5, 2, 6, 3, 4), index))
        # Loads are named in kN.
        src = tuple(rpm_point(rounded_rpm(rpm * f), "load", base_load, base_load) for f in (0.92, 1.0, 1.08))
        tgt = speed_or_load_target(rng, rpm, [0.7, 1.35], base_load, base_load * 3, 1.0)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _BearingDesign = section.design
        rot = rotation(clip, rng, point.speed_hz, jitter=0.01, wander=0.002)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        load = point.load / 3.0  # kN relative to a typical design load
        orders = d.orders()

        comps = [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(vary(rng, d.shaft_amps))]
        comps += [(d.slots * h, d.slot_level / h, rng.uniform(0, TWO_PI)) for h in (1, 2)]
        x = tones(rot.harmonic_phase, comps, clip.n)
        # Waviness of any real race leaves a faint component at the defect rates.
        x += tones(rot.harmonic_phase, [(orders["bpfo"], 0.03, rng.uniform(0, TWO_PI)),
                                         (orders["bpfi"], 0.02, rng.uniform(0, TWO_PI))], clip.n)
        h_modes = clip.resonances(d.modes)
        mag = np.abs(h_modes)
        shape = mag / mag.max() + 0.15 * np.sqrt(300.0 / clip.f_safe)
        rolling = clip.noise(rng, shape) * np.float32(
            d.rolling_level * rel_speed * math.sqrt(0.5 + load) * db_gain(rng.normal(0.0, 1.0))
        )
        if anomaly is None:
            return finish(clip, section, x, rolling)

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
        hits = scale_to(hits, clip.power(hits), mean_square(x) + clip.power(rolling), level_db)
        return finish(clip, section, x, rolling, added_spectral=hits)
