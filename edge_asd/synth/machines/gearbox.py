"""The gearbox: a pinion of z1 teeth at f_1 drives a wheel of z2 teeth at f_2 = f_1*z1/z2.

The gear-mesh frequency GMF = z1*f_1 and its harmonics dominate (tooth
stiffness varies as teeth come in and out of contact); small eccentricity and
pitch errors of each gear modulate the mesh in amplitude and phase once per
revolution, which puts sidebands at GMF +- k*f_1 and GMF +- k*f_2. Load raises
the mesh level and its harmonics. Anomalies: a *damaged tooth* on one gear (a
short drop of the mesh each time that tooth meshes plus an impact exciting the
casing resonances, once per revolution of that gear: a comb of sidebands and
an impulse train) and *wear* (sidebands, harmonics and broadband noise grow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.machines.base import Machine, finish, kind_and_severity, pick, rpm_point, speed_or_load_target
from edge_asd.synth.signal import TWO_PI, db_gain, mean_square, rotation, scale_to, tones, vary, von_mises


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
        z1 = int(pick((19, 27, 23, 15, 31, 17, 25, 13), index))
        ratio = float(pick((2.6, 1.8, 3.3, 4.1, 1.5, 2.9, 2.2, 3.7), index))
        z2 = int(round(z1 * ratio))
        if math.gcd(z1, z2) > 1:  # a hunting-tooth design meets every tooth pair evenly
            z2 += 1
        rpm = float(pick((1500, 1200, 1000, 1800, 1350, 1650, 900, 2000), index)) + 20.0 * (index // 8)
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
        base_load = int(pick((50, 40, 60, 50, 30, 70, 45, 55), index))
        # Loads are named in percent.
        src = tuple(rpm_point(rpm, "load", ld, ld / 100.0) for ld in (base_load - 20, base_load, base_load + 20))
        tgt = speed_or_load_target(rng, rpm, [0.75, 1.3], base_load, 95 if base_load <= 50 else 5, 100.0)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _GearDesign = section.design
        rot = rotation(clip, rng, point.speed_hz, jitter=0.01, wander=0.003)
        kind, s = kind_and_severity(anomaly)
        load = point.load
        ratio = d.z1 / d.z2
        ph2 = rot.harmonic_phase(ratio)

        am1, am2, fm = d.am1, d.am2, d.fm
        amps = vary(rng, d.mesh_amps)
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
            dip = von_mises(gear_phase - np.float32(TWO_PI * angle), (teeth / TWO_PI) ** 2)
            mesh *= np.float32(1.0) - np.float32(0.1 + 0.5 * s) * dip
            pos = rot.crossings(order, angle)
            hits = clip.impulses(pos, rng.lognormal(0.0, 0.2, pos.size)) * clip.resonances(d.casing_modes)
            hits = scale_to(hits, clip.power(hits), mean_square(mesh), -28.0 + 24.0 * s)
        x = mesh
        x += tones(rot.harmonic_phase, [(1, 0.05, rng.uniform(0, TWO_PI)), (2, 0.03, rng.uniform(0, TWO_PI))], clip.n)
        x += tones(lambda o: ph2 * np.float32(o), [(1, 0.04, rng.uniform(0, TWO_PI))], clip.n)
        noise = clip.noise(rng, clip.band(d.noise_hz, 1.5)) * np.float32(
            d.noise_level * math.sqrt(0.3 + load) * db_gain(noise_db + rng.normal(0.0, 1.0))
        )
        return finish(clip, section, x, noise, added_spectral=hits)
