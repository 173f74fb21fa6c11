"""The plain system's scorer: a shrunk Gaussian of all the features and one of each group of them."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.io.features import LogMelStats
from edge_asd.scoring.gmm import GMMDetector
from edge_asd.scoring.groups import FeatureGroupGaussian, parse_edges
from edge_asd.scoring.metrics import roc_auc
from train.plain import PLAIN_FEATURES, plain_stage2


def _auc(anomalous: np.ndarray, normal: np.ndarray) -> float:
    return roc_auc(np.r_[np.ones(len(anomalous)), np.zeros(len(normal))], np.r_[anomalous, normal])


def _data(seed: int = 0, n: int = 44, d: int = 60):
    rng = np.random.default_rng(seed)
    # features of very different units, correlated inside each group, as the plain system's are
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d)) * (np.arange(d)[:, None] // 20 == np.arange(d)[None] // 20)
    units = np.geomspace(1e-3, 1e3, d)
    draw = lambda m: (rng.normal(size=(m, d)) @ mix) * units  # noqa: E731
    return draw(n), draw(200), units


def test_the_score_is_its_definition_computed_by_hand():
    """2 x the whole vector's standardized log distance + the largest group's, each standardized by the normals'
    own out-of-fold statistic: recomputed here from GMMDetector fits alone."""
    X, T, _ = _data()
    edges = (0, 20, 50, 60)
    det = FeatureGroupGaussian("0,20,50,60", joint_weight=2.0, folds=5).fit(X)
    centre, scale = X.mean(0), X.std(0)
    Z, ZT = (X - centre) / scale, (T - centre) / scale
    blocks = [slice(0, 60)] + [slice(a, b) for a, b in zip(edges, edges[1:])]
    fold = np.arange(len(X)) % 5
    z = []
    for b in blocks:
        fit = lambda A: GMMDetector(1, "full", shrinkage="ledoit-wolf").fit(A)  # noqa: E731
        held = np.empty(len(X))
        for f in range(5):
            held[fold == f] = np.log(fit(Z[fold != f][:, b]).mahalanobis_sq(Z[fold == f][:, b])[:, 0])
        z.append((np.log(fit(Z[:, b]).mahalanobis_sq(ZT[:, b])[:, 0]) - held.mean()) / held.std())
    expected = 2.0 * z[0] + np.max(z[1:], axis=0)
    np.testing.assert_allclose(det.score_samples(T), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(det.block_scores(T), np.stack(z, axis=1), rtol=1e-9, atol=1e-9)


def test_a_fault_in_one_group_stands_out_where_one_gaussian_of_everything_drowns_it():
    """A shift of 5 features among 60: the group's own Gaussian sees it above the noise of the other 55."""
    gains = []
    for seed in (1, 2, 3):
        X, T, _ = _data(seed)
        A = T.copy()
        A[:, 50:55] += 1.5 * X.std(0)[50:55]
        groups = FeatureGroupGaussian("0,20,50,60").fit(X)
        z = lambda M: (M - X.mean(0)) / X.std(0)  # noqa: E731
        one = GMMDetector(1, "full", shrinkage="ledoit-wolf").fit(z(X))
        gains.append(_auc(groups.score_samples(A), groups.score_samples(T))
                     - _auc(one.score_samples(z(A)), one.score_samples(z(T))))
        # and the group that departs is the one that says so
        assert np.argmax(groups.block_scores(A).mean(axis=0)[1:]) == 2
    assert np.mean(gains) > 0.03, gains


def test_without_groups_it_ranks_as_one_gaussian_of_the_z_scored_features():
    X, T, _ = _data(2)
    det = FeatureGroupGaussian("").fit(X)
    z = lambda M: (M - X.mean(0)) / X.std(0)  # noqa: E731
    one = GMMDetector(1, "full", shrinkage="ledoit-wolf").fit(z(X))
    np.testing.assert_array_equal(np.argsort(det.score_samples(T)), np.argsort(one.score_samples(z(T))))


def test_units_and_gain_do_not_change_the_scores():
    """Each feature is z-scored by the normals first: a feature in other units scores the same."""
    X, T, _ = _data(3)
    scale = np.geomspace(1e-2, 1e2, X.shape[1])
    a = FeatureGroupGaussian("0,20,50,60").fit(X).score_samples(T)
    b = FeatureGroupGaussian("0,20,50,60").fit(X * scale + 5.0).score_samples(T * scale + 5.0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_a_handful_of_normals_still_gives_finite_scores(n):
    X, T, _ = _data(4)
    det = FeatureGroupGaussian("0,20,50,60").fit(X[:n])
    assert np.all(np.isfinite(det.score_samples(T)))
    X[:, 7] = 3.0  # a feature that never varies among the normals
    assert np.all(np.isfinite(FeatureGroupGaussian("0,20,50,60").fit(X[:n]).score_samples(T)))


def test_bad_settings_and_input_are_refused_by_name():
    X, _, _ = _data()
    for edges, message in (("0,20", "at least two groups"), ("1,20,60", "start at 0"), ("0,30,20,60", "increase"),
                           ("0,a,60", "integers")):
        with pytest.raises(ValueError, match=message):
            FeatureGroupGaussian(edges)
    with pytest.raises(ValueError, match="end at feature 50 but the features have 60"):
        FeatureGroupGaussian("0,20,50").fit(X)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        FeatureGroupGaussian("", folds=1)
    with pytest.raises(ValueError, match="joint_weight"):
        FeatureGroupGaussian("", joint_weight=-1.0)
    det = FeatureGroupGaussian("0,20,50,60").fit(X)
    with pytest.raises(ValueError):
        det.score_samples(X[:, :50])
    state = det.get_state()
    with pytest.raises(ValueError, match="block 2"):
        FeatureGroupGaussian.from_state({**state, "mean_2": np.zeros(3)})
    with pytest.raises(ValueError, match="zero or negative spread"):
        FeatureGroupGaussian.from_state({**state, "log_std": np.zeros(4)})


def test_the_plain_features_declare_their_groups_and_the_plain_scorer_takes_them():
    """The groups are the feature configuration's, handed through: every plain feature set, its edges end at its
    dimension, and the default plain stage 2 scores with them."""
    for name, cfg in PLAIN_FEATURES.items():
        edges = parse_edges(cfg.block_edges())
        assert edges[-1] == cfg.dim == LogMelStats(cfg).dim, name
        assert plain_stage2(features=cfg).detector_params["edges"] == cfg.block_edges()
    assert plain_stage2().detector == "gauss-groups"
    assert plain_stage2(scorer="gaussian").detector == "gmm"
