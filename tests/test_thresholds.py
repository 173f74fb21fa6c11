"""Decision thresholds and the numpy gamma functions against scipy.stats.gamma."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from edge_asd.scoring.thresholds import ThresholdRule, fit_gamma, fit_threshold, gamma_cdf, gamma_ppf, parse_rule

SHAPES = (1e-3, 0.05, 0.5, 1.0, 2.5, 10.0, 100.0, 1e3, 1e4)


@pytest.mark.parametrize("shape", SHAPES)
def test_gamma_cdf_matches_scipy(shape):
    scale, loc = 1.7, -0.3
    x = stats.gamma.ppf(np.linspace(1e-6, 1 - 1e-6, 41), shape, loc=loc, scale=scale)
    x = x[x > loc]  # tiny shapes put the lowest quantiles at loc itself
    np.testing.assert_allclose(gamma_cdf(x, shape, scale, loc), stats.gamma.cdf(x, shape, loc=loc, scale=scale), rtol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_gamma_ppf_matches_scipy_and_inverts_cdf(shape):
    q = np.concatenate([[1e-12, 1e-8, 1e-3], np.linspace(0.01, 0.99, 15), [0.999, 1 - 1e-8]])
    expected = stats.gamma.ppf(q, shape, loc=2.0, scale=0.5)
    ours = gamma_ppf(q, shape, 0.5, 2.0)
    positive = expected > 2.0  # where scipy's answer is above loc, i.e. resolvable
    np.testing.assert_allclose(ours[positive] - 2.0, expected[positive] - 2.0, rtol=1e-8)
    np.testing.assert_allclose(ours[~positive], 2.0, atol=1e-300)
    # Round trip at loc 0: with a loc, tiny shapes put quantiles within an ulp of it.
    x = gamma_ppf(q, shape, 0.5)
    expected = stats.gamma.ppf(q, shape, scale=0.5)
    normal = expected > 1e-300  # tiny shapes put low quantiles below the smallest double
    np.testing.assert_allclose(x[normal], expected[normal], rtol=1e-8)
    mid = normal & (q > 1e-6) & (q < 1 - 1e-6)
    np.testing.assert_allclose(gamma_cdf(x[mid], shape, 0.5), q[mid], rtol=1e-10)


def test_gamma_functions_edge_cases():
    assert gamma_ppf(0.0, 2.0, 3.0, 1.0) == 1.0
    assert gamma_ppf(1.0, 2.0) == math.inf
    assert math.isnan(gamma_ppf(1.5, 2.0)) and math.isnan(gamma_ppf(-0.1, 2.0))
    assert gamma_cdf(-5.0, 2.0) == 0.0 and gamma_cdf(math.inf, 2.0) == 1.0
    assert isinstance(gamma_ppf(0.5, 2.0), float)
    assert gamma_cdf(np.zeros((2, 3)) + 1.0, 2.0).shape == (2, 3)
    for bad in ((0.5, 0.0, 1.0), (0.5, 2.0, -1.0), (0.5, math.nan, 1.0)):
        with pytest.raises(ValueError):
            gamma_ppf(*bad)


@pytest.mark.parametrize("shape", [0.3, 1.0, 3.0, 50.0])
def test_fit_gamma_with_fixed_loc_matches_scipy(shape):
    x = np.random.default_rng(int(shape * 10)).gamma(shape, 2.0, size=500)
    ours = fit_gamma(x, loc=0.0)
    a, loc, scale = stats.gamma.fit(x, floc=0)
    assert ours.loc == loc == 0.0
    assert ours.shape == pytest.approx(a, rel=1e-7)
    assert ours.scale == pytest.approx(scale, rel=1e-7)


def test_fit_gamma_three_parameters_recovers_a_shifted_gamma():
    x = np.random.default_rng(8).gamma(3.0, 2.0, size=4000) - 7.0
    ours = fit_gamma(x)
    assert ours.shape == pytest.approx(3.0, rel=0.15)
    assert ours.scale == pytest.approx(2.0, rel=0.15)
    assert ours.loc == pytest.approx(-7.0, abs=0.5)
    # Where scipy's unconstrained fit is well behaved, the two agree and ours is
    # at least as likely.
    a, loc, scale = stats.gamma.fit(x)
    assert ours.shape == pytest.approx(a, rel=1e-3)
    assert ours.loc == pytest.approx(loc, abs=1e-3 * x.std())
    ours_ll = np.sum(stats.gamma.logpdf(x, ours.shape, loc=ours.loc, scale=ours.scale))
    assert ours_ll >= np.sum(stats.gamma.logpdf(x, a, loc=loc, scale=scale)) - 1e-6


def test_gamma_threshold_on_standardized_normal_scores_is_near_the_true_quantile():
    # Symmetric, negative-valued scores: the bounded location lets the gamma
    # become nearly normal instead of piling up at the minimum.
    x = np.random.default_rng(9).normal(size=2000)
    threshold = fit_threshold(x, "gamma:0.9")
    assert threshold == pytest.approx(stats.norm.ppf(0.9), abs=0.1)
    assert fit_threshold(x, "gamma:0.99") > threshold > fit_threshold(x, "gamma:0.5")


def test_threshold_rules_against_references():
    x = np.random.default_rng(10).gamma(2.0, 1.5, size=300)
    assert fit_threshold(x, "quantile:0.95") == pytest.approx(np.quantile(x, 0.95), rel=1e-12)
    assert fit_threshold(x, "zscore:3.0") == pytest.approx(x.mean() + 3.0 * x.std(ddof=1), rel=1e-12)
    a, loc, scale = stats.gamma.fit(x, floc=0)
    assert fit_threshold(x, "gamma:0.9:0") == pytest.approx(stats.gamma.ppf(0.9, a, loc=loc, scale=scale), rel=1e-7)
    assert fit_threshold(list(x), " Quantile : 0.5 ") == pytest.approx(np.median(x))


def test_parse_rule_round_trip_and_errors():
    for text in ("gamma:0.9", "gamma:0.9:-2.5", "quantile:0.95", "zscore:3.0", "zscore:-1.0"):
        rule = parse_rule(text)
        assert parse_rule(str(rule)) == rule
    assert parse_rule("gamma:0.9:0") == ThresholdRule("gamma", 0.9, 0.0)
    for bad in ("gamma", "gamma:1.5", "gamma:0", "quantile:x", "quantile:1.2", "zscore:1:2", "quantile:0.5:1", "median:0.5", "", "zscore:nan"):
        with pytest.raises(ValueError, match="accepted forms"):
            parse_rule(bad)
    with pytest.raises(ValueError, match="accepted forms"):
        fit_threshold(np.ones(5), "gamma:0.9:abc")


def test_threshold_rejects_unusable_scores():
    with pytest.raises(ValueError, match="all scores are equal"):
        fit_threshold(np.full(10, 3.0), "gamma:0.9")
    with pytest.raises(ValueError, match="greater than the gamma location"):
        fit_threshold(np.array([0.0, 1.0, 2.0]), "gamma:0.9:0")
    with pytest.raises(ValueError, match="NaN"):
        fit_threshold(np.array([1.0, np.nan]), "quantile:0.5")
    with pytest.raises(ValueError, match="at least 2"):
        fit_threshold(np.array([1.0]), "zscore:3")
    assert fit_threshold(np.array([4.0]), "quantile:0.9") == 4.0
    assert fit_threshold(np.full(4, 2.0), "zscore:3") == 2.0
