"""The pump: a centrifugal pump.

Shaft harmonics, the vane-pass tone Z*f_r and its harmonics, hydraulic flow
noise whose level follows the delivery head, and the motor's cooling fan.
Anomalies: *cavitation* (vapour bubbles collapsing as a crackle of very short
high-frequency impulses, denser when a vane passes the cut-water) and
*clogging* (a partly blocked impeller: the vane-pass tone modulated at the
shaft rate and a slow surge of the flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.machines.base import Machine, finish, kind_and_severity, pick, rounded_rpm, rpm_point
from edge_asd.synth.signal import TWO_PI, db_gain, mean_square, rotation, scale_to, tones, vary


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
        vanes = int(pick((7, 5, 6, 8, 9, 5, 7, 6), index))
        rpm = float(pick((2900, 1450, 2400, 1750, 3400, 980, 2100, 1200), index)) + 20.0 * (index // 8)
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
        base_head = int(pick((30, 20, 40, 25, 50, 15, 35, 45), index))
        src = tuple(rpm_point(rpm, "head", h, h / base_head) for h in (base_head - 5, base_head, base_head + 5))
        if rng.uniform() < 0.5:
            # Head falls with the square of speed (affinity laws).
            tgt = (rpm_point(rounded_rpm(rpm * 0.8), "head", int(base_head * 0.64), 0.64),)
        else:
            tgt = (rpm_point(rpm, "head", int(base_head * 1.6), 1.6),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _PumpDesign = section.design
        rot = rotation(clip, rng, point.speed_hz, jitter=0.008, wander=0.003)
        rel_speed = point.speed_hz / (d.rpm / 60.0)
        kind, s = kind_and_severity(anomaly)

        shaft = [(k + 1, a, rng.uniform(0, TWO_PI)) for k, a in enumerate(vary(rng, d.shaft_amps))]
        x = tones(rot.harmonic_phase, shaft, clip.n)
        # Off the best-efficiency point the vane-pass pulsation grows.
        vpf_gain = 0.7 + 0.3 * point.load
        vpf = tones(
            rot.harmonic_phase,
            [(d.vanes * (k + 1), a * vpf_gain, rng.uniform(0, TWO_PI)) for k, a in enumerate(vary(rng, d.vpf_amps))],
            clip.n,
        )
        if kind == "clog":
            vpf *= np.float32(1.0) + np.float32(0.1 + 0.6 * s) * np.cos(rot.phase + np.float32(rng.uniform(0, TWO_PI)))
        x += vpf
        x += tones(rot.harmonic_phase, [(d.cooling_blades, d.cooling_level, rng.uniform(0, TWO_PI))], clip.n)

        flow_level = d.flow_level * math.sqrt(point.load) * rel_speed**1.5 * db_gain(rng.normal(0.0, 1.0))
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
            return finish(clip, section, x, spectral)
        # Bubble collapses: a Poisson crackle, denser as each vane passes the cut-water.
        rate = (400.0 + 2500.0 * s) * rel_speed
        cand = np.sort(rng.uniform(0.0, clip.seconds, rng.poisson(2.0 * rate * clip.seconds)))
        pos = (cand * clip.sr).astype(np.int64)
        vane_phase = rot.harmonic_phase(d.vanes)[np.minimum(pos, clip.n - 1)]
        keep = rng.uniform(size=pos.size) < 0.5 * (1.0 + np.cos(vane_phase))
        pos = pos[keep]
        crackle = clip.impulses(pos, rng.exponential(1.0, pos.size)) * clip.resonances(d.cavitation_modes)
        healthy = mean_square(x) + clip.power(spectral)
        crackle = scale_to(crackle, clip.power(crackle), healthy, -26.0 + 22.0 * s)
        return finish(clip, section, x, spectral, added_spectral=crackle)
