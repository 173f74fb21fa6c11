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


# -- each domain its own mean (per_domain) --


def _two_domains(seed: int, n_target: int = 4):
    """Source normals, a handful of target normals whose microphone lifts 20 of 60 features by 3 of their standard
    deviations, new normals of both domains, and anomalies of both domains (a shift of 1.2 sd in one group)."""
    X, T, units = _data(seed, n=44 + 200)
    mic = np.zeros(X.shape[1])
    mic[:20] = 3.0 * X[:, :20].std(0)
    train = np.vstack([X[:44 - n_target], X[44 - n_target:44] + mic])
    domains = np.array(["source"] * (44 - n_target) + ["target"] * n_target)
    fault = np.zeros(X.shape[1])
    fault[50:55] = 1.2 * X[:, 50:55].std(0)
    new_source, new_target = X[44:144], X[144:244] + mic
    anomalies = np.vstack([T[:100] + fault, T[100:] + mic + fault])
    return train, domains, new_source, new_target, anomalies


def test_per_domain_a_target_normal_no_longer_outscores_the_anomalies():
    """DCASE's target AUC (target normals against all anomalies): pooled, the microphone's shift makes every new
    target normal look anomalous; each domain its own mean scores it like a source normal."""
    pooled_auc, own_auc, gap_pooled, gap_own = [], [], [], []
    for seed in (1, 2, 3):
        train, domains, src, tgt, anom = _two_domains(seed)
        pooled = FeatureGroupGaussian("0,20,50,60").fit(train, domains)  # per_domain off: the domains are ignored
        own = FeatureGroupGaussian("0,20,50,60", per_domain=True).fit(train, domains)
        pooled_auc.append(_auc(pooled.score_samples(anom), pooled.score_samples(tgt)))
        own_auc.append(_auc(own.score_samples(anom), own.score_samples(tgt)))
        # new target normals against new source normals: 0.5 when the two domains are on one scale
        gap_pooled.append(_auc(pooled.score_samples(tgt), pooled.score_samples(src)))
        gap_own.append(_auc(own.score_samples(tgt), own.score_samples(src)))
    assert np.mean(own_auc) > np.mean(pooled_auc) + 0.15, (own_auc, pooled_auc)
    assert np.mean(gap_pooled) > 0.8 and abs(np.mean(gap_own) - 0.5) < 0.2, (gap_pooled, gap_own)


def test_per_domain_is_its_definition_computed_by_hand():
    """Whole vector only, two domains: each domain's mean, one shrunk covariance of the deviations, distances
    divided by 1 + 1/n, each domain's held-out normals (dealt over the folds domain by domain) standardizing its
    own distances, the smaller of the two."""
    train, domains, src, tgt, anom = _two_domains(4)
    T = np.vstack([src[:20], tgt[:20], anom[::10]])
    det = FeatureGroupGaussian("", folds=5, per_domain=True).fit(train, domains)
    centre, scale = train.mean(0), train.std(0)
    Z, ZT = (train - centre) / scale, (T - centre) / scale
    codes = (domains == "target").astype(int)
    fold = np.empty(len(Z), int)
    for j in (0, 1):
        fold[codes == j] = np.arange((codes == j).sum()) % 5

    def fit(A, c):
        means = np.stack([A[c == j].mean(0) for j in (0, 1)])
        g = GMMDetector(1, "full", shrinkage="ledoit-wolf").fit(A - means[c])
        return g, means, np.array([1 + 1 / (c == j).sum() for j in (0, 1)])

    def dist(model, B, j):
        g, means, infl = model
        return np.log(g.mahalanobis_sq(B - means[j] + g.means_[0])[:, 0] / infl[j])

    held = np.empty(len(Z))
    for f in range(5):
        h = fold == f
        model = fit(Z[~h], codes[~h])
        for j in (0, 1):
            held[h & (codes == j)] = dist(model, Z[h & (codes == j)], j)
    own = np.array([held[codes == j].mean() for j in (0, 1)])
    sd = (held - own[codes]).std()
    model = fit(Z, codes)
    per_domain = np.array([(dist(model, ZT, j) - own[j]) / sd for j in (0, 1)])  # source, target
    np.testing.assert_allclose(det.score_samples(T), per_domain.min(axis=0), rtol=1e-9, atol=1e-9)
    # each domain's own column, in the labels' sorted order: the target normals nearer the target domain
    np.testing.assert_allclose(det.domain_block_scores(T)[:, :, 0], per_domain, rtol=1e-9, atol=1e-9)
    assert (per_domain[1, 20:40] < per_domain[0, 20:40]).mean() > 0.9


def test_per_domain_with_one_domain_is_the_pooled_scorer():
    """One domain (or none given, or a domain of a single clip, which joins the largest): the pooled scores."""
    train, _, src, tgt, anom = _two_domains(5)
    T = np.vstack([src[:30], tgt[:30], anom[:30]])
    pooled = FeatureGroupGaussian("0,20,50,60").fit(train).score_samples(T)
    for domains in (None, np.array(["source"] * 44), np.array(["a"] * 43 + ["b"])):
        own = FeatureGroupGaussian("0,20,50,60", per_domain=True).fit(train, domains).score_samples(T)
        np.testing.assert_allclose(own, pooled, rtol=1e-9, atol=1e-9)


def test_per_domain_state_round_trip_and_earlier_states_read_back_pooled():
    train, domains, src, tgt, anom = _two_domains(6)
    T = np.vstack([src[:30], tgt[:30], anom[:30]])
    det = FeatureGroupGaussian("0,20,50,60", per_domain=True).fit(train, domains)
    state = det.get_state()
    assert state["log_mean"].shape == (2, 4) and state["mean_1"].shape == (2, 20)
    np.testing.assert_allclose(FeatureGroupGaussian.from_state(state).score_samples(T), det.score_samples(T),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(FeatureGroupGaussian.from_state(state).block_scores(T), det.block_scores(T),
                               rtol=1e-12, atol=1e-12)
    # a state written before the option: no per_domain entry, pooled layout
    old = FeatureGroupGaussian("0,20,50,60").fit(train)
    legacy = {k: v for k, v in old.get_state().items() if k != "per_domain"}
    back = FeatureGroupGaussian.from_state(legacy)
    assert back.per_domain is False
    np.testing.assert_allclose(back.score_samples(T), old.score_samples(T), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="block 1"):
        FeatureGroupGaussian.from_state({**state, "mean_1": np.zeros((3, 20))})
    with pytest.raises(ValueError, match="2-D"):
        FeatureGroupGaussian.from_state({**state, "log_mean": np.zeros(4)})
    with pytest.raises(ValueError, match="per_domain must be true or false"):
        FeatureGroupGaussian("", per_domain="yes")
    with pytest.raises(ValueError, match="3 domains for 44 rows"):
        FeatureGroupGaussian("", per_domain=True).fit(train, domains[:3])


def test_stage2_hands_each_clip_its_domain_where_a_bank_row_is_one_clip():
    """The plain system's stage 2 (one row per clip) fits the per-domain scorer with the clips' domains, and its
    section scores rank as the detector's own; with Mixup pseudo-normals in the bank there is no row domain to give,
    and the domains are pooled."""
    from edge_asd.scoring.section import section_parts
    from edge_asd.scoring.stage2 import fit_section

    train, domains, src, tgt, anom = _two_domains(7)
    T = np.vstack([src[:30], tgt[:30], anom[:30]])
    cfg = plain_stage2(scorer="groups-per-domain")
    cfg.detector_params["edges"] = "0,20,50,60"
    fit = fit_section("00", train[:, None].astype(np.float32), domains, np.zeros((44, 1), np.float32), cfg)
    det = fit.model.domains["all"].detector
    assert det.per_domain and det.get_state()["log_mean"].shape == (2, 4)
    z = section_parts(fit.model, T[:, None].astype(np.float32), "mean")["all"]
    direct = FeatureGroupGaussian("0,20,50,60", per_domain=True).fit(train.astype(np.float32), domains)
    np.testing.assert_array_equal(np.argsort(z), np.argsort(direct.score_samples(T.astype(np.float32))))
    cfg.mixup_pseudo_normals = 10
    mixed = fit_section("00", train[:, None].astype(np.float32), domains, np.zeros((44, 1), np.float32), cfg)
    assert mixed.model.domains["all"].detector.get_state()["log_mean"].shape == (1, 4)
