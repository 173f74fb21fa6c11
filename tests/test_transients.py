"""A passing transient (a door, a dropped tool) left out of the plain system's statistics, a machine's own recurring
loud parts kept (``edge_asd.io.transients``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_asd.io.features import LogMelStats, LogMelStatsConfig
from edge_asd.io.transients import envelope_mask, fill, transient_frames

SR = 16000
GATED = LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128, dynamics=True,
                          transient_sigmas=3.0)


def _machine(seed: int, seconds: float = 10.0) -> np.ndarray:
    """A steady machine: a hum with harmonics over broadband noise, a slow modulation at 7 Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    hum = sum(np.sin(2 * np.pi * 120 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
    return ((1 + 0.2 * np.sin(2 * np.pi * 7 * t)) * hum + 0.5 * rng.standard_normal(t.size)).astype(np.float32)


def _slam(n: int, at: int, level: float, seed: int = 9) -> np.ndarray:
    """A door slam: broadband noise that rings down over ~0.1 s."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=np.float32)
    ring = rng.standard_normal(4000) * np.exp(-np.arange(4000) / 600.0)
    out[at : at + ring.size] = level * ring
    return out


def test_a_door_slam_barely_moves_the_gated_features_and_moves_the_ungated_ones():
    """One slam 10 dB over the machine: with the gate, the groups a slam moves (the levels, their spread, the
    modulation spectrum, the comodulation) move a third as far from the clean clip's or less (0.08-0.26 here), in
    units of how far two clean recordings of the machine lie apart. The levels too: the clip is standardized as if
    the slam's samples were not there."""
    off = LogMelStats(replace(GATED, transient_sigmas=0.0))
    on = LogMelStats(GATED)
    clean, other = _machine(0), _machine(1)
    slammed = clean + _slam(clean.size, 70000, 3.0 * float(clean.std()))
    spread = np.abs(off(clean) - off(other)) + 1e-3  # the machine's own recording-to-recording difference
    moved_off = np.abs(off(slammed) - off(clean)) / spread
    moved_on = np.abs(on(slammed) - on(clean)) / spread
    edges = np.cumsum([0] + [n for _, n in GATED.blocks()])
    for (name, _), lo, hi in zip(GATED.blocks(), edges, edges[1:]):
        if name in ("level", "level spread", "modulation", "comodulation"):  # what a slam moves
            assert moved_on[lo:hi].mean() < 0.35 * moved_off[lo:hi].mean(), name
    taken = on.transients(on.logmel(slammed))
    frames = np.flatnonzero(taken)
    assert 1 <= frames.size <= 12 and abs(frames.mean() - 70000 / 512) < 6  # the slam's frames, none elsewhere
    assert not on.transients(on.logmel(clean)).any()
    np.testing.assert_array_equal(on(clean), off(clean))  # nothing taken: the same features to the bit


def test_a_machines_own_recurring_loud_parts_are_kept():
    """An on-off machine (a valve: loud for 0.3 s every 0.8 s, 38 % of its frames) or one that clicks every cycle:
    every loud frame recurs, so at most a few of the valve's switching frames are taken (3 here, 9 with their
    neighbours); by loudness alone (novelty 0) the 10 % cap would cut the 31 loudest frames of the machine away."""
    x = _machine(2)
    t = np.arange(x.size) / SR
    valve = x * np.where((t % 0.8) < 0.3, 4.0, 1.0).astype(np.float32)
    f = LogMelStats(GATED)
    assert f.transients(f.logmel(valve)).sum() <= 0.03 * 311
    loud_only = LogMelStats(replace(GATED, transient_novelty=0.0, transient_dilate=0))
    taken = loud_only.transients(loud_only.logmel(valve))
    assert taken.sum() == int(0.1 * taken.size)
    clicks = x + sum(_slam(x.size, int(s * SR), 2.0 * float(x.std()), seed=3) for s in np.arange(0.2, 9.5, 0.5))
    assert f.transients(f.logmel(clicks)).sum() <= 2


def test_the_frames_taken_the_cap_and_the_dilation():
    rng = np.random.default_rng(0)
    loud, spec = rng.normal(0, 0.1, 300), rng.normal(0, 0.1, (300, 16))
    loud[100] += 5.0
    spec[100] += 3.0
    np.testing.assert_array_equal(np.flatnonzero(transient_frames(loud, spec, 3.0, 3.0, 0.1, 0)), [100])
    np.testing.assert_array_equal(np.flatnonzero(transient_frames(loud, spec, 3.0, 3.0, 0.1, 2)), [98, 99, 100, 101, 102])
    loud[:60] = np.linspace(6, 8, 60)  # 60 loud frames: the 30 loudest are taken (10 %)
    spec[:60] += rng.normal(0, 3.0, (60, 16))
    taken = transient_frames(loud, spec, 3.0, 0.0, 0.1, 0)
    np.testing.assert_array_equal(np.flatnonzero(taken), np.arange(30, 60))
    assert not transient_frames(loud[:8], spec[:8], 3.0, 3.0, 0.1, 1).any()  # too few frames to tell: none


def test_the_envelope_samples_inside_a_taken_frame_brute_force():
    taken = np.zeros(40, dtype=bool)
    taken[[3, 17, 18, 39]] = True
    mask = envelope_mask(taken, 300, 64, 512, 512, 1024)
    for j in range(300):
        c = 64 * j + 256
        covered = [t for t in range(40) if 512 * t <= c < 512 * t + 1024]
        assert mask[j] == any(taken[t] for t in covered), j
    env = np.arange(20.0).reshape(10, 2)
    m = np.zeros(10, dtype=bool)
    m[[2, 3]] = True
    filled = fill(env, m)
    np.testing.assert_array_equal(filled[[2, 3]], np.median(env[~m], axis=0)[None].repeat(2, 0))
    np.testing.assert_array_equal(filled[~m], env[~m])
    assert fill(env, np.zeros(10, bool)) is env and fill(env, np.ones(10, bool)) is env


def test_the_gate_is_the_same_on_a_db_log_and_ignores_gain():
    x = _machine(4) + _slam(160000, 30000, 4.0)
    ln = LogMelStats(GATED)
    db = LogMelStats(replace(GATED, log="db", log_eps=1e-8))
    np.testing.assert_array_equal(ln.transients(ln.logmel(x)), db.transients(db.logmel(x)))
    np.testing.assert_allclose(ln(0.1 * x), ln(x), rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(ln(x[:24000])))  # a short clip: too few frames to judge novelty, nothing taken


@pytest.mark.parametrize("field, value", [("transient_sigmas", -1.0), ("transient_novelty", -0.5),
                                          ("transient_cap", 0.0), ("transient_cap", 1.0), ("transient_dilate", -1)])
def test_bad_gate_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match="transient_"):
        replace(GATED, **{field: value})


def test_bundles_from_before_the_gate_read_back_without_it():
    old = {k: v for k, v in GATED.to_dict().items() if not k.startswith("transient")}
    assert LogMelStatsConfig.from_dict(old).transient_sigmas == 0.0
    assert LogMelStatsConfig.from_dict(GATED.to_dict()) == GATED
    assert GATED.blocks() == replace(GATED, transient_sigmas=0.0).blocks()  # the same features, other frames


@pytest.mark.parametrize("frames", [12, 40, 311])
def test_frame_novelty_brute_force(frames):
    """Each frame's RMS distance to its 5th nearest frame more than 3 frames away, by brute force: the product
    computed in row blocks (under OpenBLAS's threading size) covers every row and column."""
    from edge_asd.io.transients import NEIGHBOURS, OWN_REACH, frame_novelty

    lm = np.random.default_rng(frames).normal(size=(frames, 64)).astype(np.float32) * 3.0 - 20.0
    expected = []
    for i in range(frames):
        d = [np.sqrt(np.mean((lm[i].astype(np.float64) - lm[j]) ** 2)) for j in range(frames) if abs(i - j) > OWN_REACH]
        expected.append(np.sort(d)[NEIGHBOURS - 1])
    np.testing.assert_allclose(frame_novelty(lm), expected, rtol=1e-4, atol=1e-4)
