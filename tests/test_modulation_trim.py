"""The envelope spectrum without its loudest window (``modulation_trim``): a short event that passes through one or
two of a clip's 2 s windows barely moves it, a fault that goes on moves it as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_asd.io.features import LogMelStats, LogMelStatsConfig, window_average

SR = 16000
# the transient gate off: what the trim does alone
BASE = LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128, dynamics=True)
TRIMMED = replace(BASE, modulation_trim=1)


def _machine(seed: int, fault_hz: float = 0.0) -> np.ndarray:
    """A hum with harmonics over noise, slowly modulated at 7 Hz; ``fault_hz``: a knock at that rate all along."""
    rng = np.random.default_rng(seed)
    t = np.arange(10 * SR) / SR
    hum = sum(np.sin(2 * np.pi * 120 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 6))
    x = (1 + 0.2 * np.sin(2 * np.pi * 7 * t)) * hum + 0.5 * rng.standard_normal(t.size)
    if fault_hz:
        x *= 1 + 0.5 * (np.sin(2 * np.pi * fault_hz * t) > 0.95)
    return x.astype(np.float32)


def _slam(n: int, at_s: float, level: float) -> np.ndarray:
    """A door slam: broadband noise that rings down over ~0.1 s, at ``at_s`` seconds."""
    ring = np.random.default_rng(9).standard_normal(4000) * np.exp(-np.arange(4000) / 600.0)
    out = np.zeros(n, dtype=np.float32)
    at = int(at_s * SR)
    out[at : at + ring.size] = level * ring
    return out


def _modulation(cfg: LogMelStatsConfig, f: LogMelStats, x: np.ndarray) -> np.ndarray:
    edges = np.cumsum([0] + [n for _, n in cfg.blocks()])
    i = [name for name, _ in cfg.blocks()].index("modulation")
    return f(x)[edges[i] : edges[i + 1]]


@pytest.mark.parametrize("trim", [0, 1, 2, 3])
def test_window_average_is_the_mean_without_each_values_largest_windows(trim):
    rng = np.random.default_rng(trim)
    power = rng.exponential(size=(9, 4, 33)).astype(np.float32)
    power[3, 1, 5] = 1e6  # one window's spike
    expected = np.sort(power, axis=0)[: 9 - trim].mean(axis=0)
    np.testing.assert_allclose(window_average(power, trim), expected, rtol=1e-6)
    if trim:
        assert window_average(power, trim)[1, 5] < 10  # the spike is gone


def test_window_average_keeps_every_window_where_too_few_would_remain():
    power = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(window_average(power, 1), power.mean(axis=0))  # 2 windows: one would be left
    three = np.arange(36, dtype=np.float32).reshape(3, 3, 4)
    np.testing.assert_allclose(window_average(three, 1), three[:2].mean(axis=0))
    np.testing.assert_array_equal(window_average(three, 2), three.mean(axis=0))


@pytest.mark.parametrize("at_s", [4.0, 4.5])
def test_a_slam_barely_moves_the_trimmed_modulation_spectrum_and_a_steady_knock_moves_both(at_s):
    """One slam 10 dB over the machine (the transient gate off): the trimmed modulation spectrum moves half as far as
    the Welch mean's or less (0.1x where one window holds the slam, 0.5x where two share it), in units of two clean
    recordings' difference. A knock at 11 Hz all along moves the trimmed one at least 80 % as far (about twice as
    far here: the trim also steadies the clean recordings' own values)."""
    plain, trimmed = LogMelStats(BASE), LogMelStats(TRIMMED)
    clean, other = _machine(0), _machine(1)
    slammed = clean + _slam(clean.size, at_s, 3.0 * float(clean.std()))
    knock = _machine(0, fault_hz=11.0)
    moved = {}
    for name, cfg, f in (("mean", BASE, plain), ("trimmed", TRIMMED, trimmed)):
        base = _modulation(cfg, f, clean)
        spread = np.abs(base - _modulation(cfg, f, other)) + 1e-3
        moved[name] = [float((np.abs(_modulation(cfg, f, x) - base) / spread).mean()) for x in (slammed, knock)]
    assert moved["trimmed"][0] < 0.55 * moved["mean"][0], moved
    assert moved["trimmed"][1] > 0.8 * moved["mean"][1], moved
    assert moved["mean"][1] > 5  # the knock is a change the features are for


def test_the_trim_changes_the_values_not_the_vector():
    assert TRIMMED.blocks() == BASE.blocks() and TRIMMED.dim == BASE.dim
    x = _machine(3)
    a, b = LogMelStats(BASE)(x), LogMelStats(TRIMMED)(x)
    edges = np.cumsum([0] + [n for _, n in BASE.blocks()])
    for (name, _), lo, hi in zip(BASE.blocks(), edges, edges[1:]):
        if name in ("modulation", "lines"):
            assert not np.allclose(a[lo:hi], b[lo:hi]), name
        else:  # only the envelope spectra are trimmed
            np.testing.assert_array_equal(a[lo:hi], b[lo:hi], err_msg=name)


def test_a_clip_shorter_than_three_windows_gets_the_mean():
    short = _machine(4)[: int(2.5 * SR)]  # 2 s windows, half-overlapped: 1 or 2 of them
    np.testing.assert_array_equal(LogMelStats(BASE)(short), LogMelStats(TRIMMED)(short))


@pytest.mark.parametrize("value", [-1, 1.5, True, "1"])
def test_bad_trims_are_refused(value):
    with pytest.raises(ValueError, match="modulation_trim"):
        replace(BASE, modulation_trim=value)


def test_the_trim_needs_the_modulation_spectrum_and_old_configs_read_back_without_it():
    with pytest.raises(ValueError, match="modulation_trim needs"):
        LogMelStatsConfig(modulation_trim=1)
    old = {k: v for k, v in TRIMMED.to_dict().items() if k != "modulation_trim"}
    assert LogMelStatsConfig.from_dict(old).modulation_trim == 0
    assert LogMelStatsConfig.from_dict(TRIMMED.to_dict()) == TRIMMED


def test_the_default_plain_features_are_the_gated_ones_trimmed():
    from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES

    assert PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES] == replace(PLAIN_FEATURES["transients"], modulation_trim=1)
