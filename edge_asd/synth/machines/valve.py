"""The valve: a solenoid valve cycling with a fixed period and a section-specific
pattern of pulses (single, double, long-short, triple).

Each opening and closing is a click: an impulse ringing the valve body's modes
(open and close ring differently); while open, gas flow makes band-limited hiss
whose pitch and level follow the supply pressure; an AC solenoid buzzes at
twice the mains frequency while energized; closing may vent an exhaust puff.
Anomalies: a *leak* (a hiss and a faint whistle that never stops), *timing*
faults (late, early or missed pulses, a sticking valve that closes late),
*chatter* (the disc oscillates against its seat for part of the opening: a
20-60 Hz rattle of small impacts ringing its higher modes, and a fluttering
flow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.synth.machines.base import Machine, OperatingPoint, finish, join_attributes, kind_and_severity, pick
from edge_asd.synth.signal import TWO_PI, add_at, db_gain, mean_square, ringing, scale_to, tones


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
        cycle = float(pick((0.8, 1.2, 0.6, 1.6, 1.0, 2.0, 0.7, 1.4), index)) + 0.05 * (index // 8)
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
        base_bar = int(pick((4, 3, 5, 4, 6, 3, 5, 4), index))
        def point(cycle_s, bar):
            ms = int(round(cycle_s * 1000.0))
            return OperatingPoint(1000.0 / ms, float(bar), join_attributes(("cyc", ms), ("bar", bar)))
        src = tuple(point(cycle, b) for b in (base_bar - 1, base_bar, base_bar + 1))
        if rng.uniform() < 0.5:
            tgt = (point(cycle * 0.7, base_bar),)
        else:
            tgt = (point(cycle, base_bar + 3 if base_bar < 5 else base_bar - 2),)
        return d, src, tgt

    def render(self, clip, rng, section, point, anomaly):
        d: _ValveDesign = section.design
        kind, s = kind_and_severity(anomaly)
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
        k_open = ringing(clip.sr, d.open_modes)
        k_close = ringing(clip.sr, d.close_modes)
        chatter_hz = rng.uniform(20.0, 60.0)
        # Small, fast impacts of the fluttering disc ring its higher modes.
        k_tick = ringing(clip.sr, [(f * rng.uniform(1.4, 2.0), tau * 0.5, a) for f, tau, a in d.close_modes])
        for o, c in zip(opens, closes):
            add_at(x, int(o * clip.sr), k_open, click_gain * rng.lognormal(0.0, 0.15))
            add_at(x, int(c * clip.sr), k_close, click_gain * d.close_gain * rng.lognormal(0.0, 0.15))
            if kind == "chatter":
                # A worn spring or low supply lets the disc oscillate against its seat
                # for part of the opening: a rattle of small seat impacts.
                stop = o + (c - o) * (0.2 + 0.8 * s)
                hit = o + 1.0 / chatter_hz
                while hit < stop:
                    amp = click_gain * d.close_gain * (0.15 + 0.85 * s) * rng.lognormal(0.0, 0.3)
                    add_at(x, int(hit * clip.sr), k_tick, amp)
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
        level = d.flow_level * pressure * db_gain(rng.normal(0.0, 1.0))
        if kind == "chatter":
            flutter = 1.0 + (0.2 + 0.6 * s) * np.sin(np.float32(TWO_PI * chatter_hz) * t)
            gate *= flutter.astype(np.float32)
        x += flow * gate * np.float32(level)
        if d.puff_level > 0:
            # Exhaust vented as the valve closes.
            puff = np.zeros(clip.n, dtype=np.float32)
            kernel = np.exp(-np.arange(int(0.25 * clip.sr)) / (0.05 * clip.sr)).astype(np.float32)
            for c in closes:
                add_at(puff, int(c * clip.sr), kernel, 1.0)
            x += np.roll(flow, clip.n // 3) * puff * np.float32(d.puff_level * level * 2.0)
        if d.buzz_hz:
            buzz_phase = clip.phase(d.buzz_hz)
            buzz = tones(lambda k: buzz_phase * np.float32(k),
                          [(1, 0.05, rng.uniform(0, TWO_PI)), (2, 0.02, rng.uniform(0, TWO_PI))], clip.n)
            x += buzz * energized

        added = None
        if kind == "leak":
            # Gas escaping past the seat hisses, and often whistles, all the time.
            hiss = clip.noise_time(rng, clip.band(rng.uniform(3500.0, 6500.0), 0.3))
            whistle = tones(clip.phase,
                             [(rng.uniform(2500.0, 6000.0), 0.3 * rng.uniform(), 0.0)], clip.n)
            # Level set by the hiss (unit power); the whistle comes on top of it.
            added = scale_to(hiss + whistle, 1.0, mean_square(x), -26.0 + 22.0 * s)
        return finish(clip, section, x, added=added)
