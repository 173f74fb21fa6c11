"""Stage-2 inlier models and aggregators against references with known answers.

KNN against brute-force numpy distances, LOF against scikit-learn's
LocalOutlierFactor, the GMM's log-density against scipy.stats.multivariate_normal
and its fit against scikit-learn's GaussianMixture.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor

from edge_asd.scoring.aggregate import AGGREGATORS, aggregate
from edge_asd.scoring.base import STATE_VERSION
from edge_asd.scoring.detectors import DETECTORS, detector_from_state, make_detector
from edge_asd.scoring.gmm import GMMDetector
from edge_asd.scoring.groups import FeatureGroupGaussian
from edge_asd.scoring.knn import KNNDetector
from edge_asd.scoring.lof import LOFDetector

K_VALUES = (1, 2, 4, 16, 32)


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    x[20] = x[21] = x[22]  # duplicates: LOF's degenerate case
    return x


@pytest.fixture(scope="module")
def queries(bank: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    q = (rng.normal(size=(40, 12)) * 1.5).astype(np.float32)
    q[0] = bank[5]  # a query that is in the bank
    q[1] = 0.0  # a zero vector (cosine: distance 1 to everything)
    return q


def brute_force_distances(queries: np.ndarray, bank: np.ndarray, metric: str) -> np.ndarray:
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return 1.0 - qn @ bn.T


# --- KNN -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("method", ["largest", "mean"])
@pytest.mark.parametrize("k", K_VALUES)
def test_knn_matches_brute_force(bank, queries, metric, method, k):
    detector = KNNDetector(k=k, metric=metric, method=method).fit(bank)
    nearest = np.sort(brute_force_distances(queries, bank, metric), axis=1)[:, :k]
    expected = nearest[:, -1] if method == "largest" else nearest.mean(axis=1)
    scores = detector.score_samples(queries)
    assert scores.dtype == np.float64 and scores.shape == (len(queries),)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)
    dist, idx = detector.kneighbors(queries)
    np.testing.assert_allclose(dist, nearest, rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(dist, axis=1) >= 0.0)
    np.testing.assert_allclose(brute_force_distances(queries, bank, metric)[np.arange(len(queries))[:, None], idx], dist, atol=1e-6)


def test_knn_query_in_bank_scores_zero(bank):
    scores = KNNDetector(k=1).fit(bank).score_samples(bank[:7])
    np.testing.assert_array_equal(scores, 0.0)


def test_knn_distances_exact_where_faiss_blas_path_cancels():
    # Tight cluster far from the origin: |x|^2 + |y|^2 - 2x.y in float32 loses
    # every digit. Force faiss onto that path for any batch size, restore after.
    rng = np.random.default_rng(2)
    centre = rng.normal(size=16) * 300.0
    bank = (centre + rng.normal(size=(200, 16)) * 0.01).astype(np.float32)
    queries = (centre + rng.normal(size=(30, 16)) * 0.01).astype(np.float32)
    expected = np.sort(brute_force_distances(queries, bank, "l2"), axis=1)[:, :4].mean(axis=1)
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    try:
        raw, _ = faiss.knn(queries, bank, 4)
        scores = KNNDetector(k=4, method="mean").fit(bank).score_samples(queries)
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved
    assert not np.allclose(np.sqrt(np.maximum(raw, 0.0)).mean(axis=1), expected, rtol=1e-2)  # the hazard is real
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_knn_add_equals_fit_on_union(bank, queries):
    grown = KNNDetector(k=4, metric="cosine").fit(bank[:10])
    for start in range(10, len(bank), 7):  # many small adds exercise the buffer growth
        grown.add(bank[start : start + 7])
    full = KNNDetector(k=4, metric="cosine").fit(bank)
    assert grown.n_bank == full.n_bank == len(bank)
    np.testing.assert_array_equal(grown.score_samples(queries), full.score_samples(queries))
    np.testing.assert_array_equal(grown.get_state()["bank"], full.get_state()["bank"])


def test_knn_local_scale_is_the_ratio_to_each_normals_own_neighbour_distance(bank, queries):
    """Brute force: score = min over bank rows of distance / that row's distance to its nearest other row."""
    det = KNNDetector(k=2, local_scale=True, method="mean").fit(bank)
    d = brute_force_distances(bank, bank, "l2")
    np.fill_diagonal(d, np.inf)
    own = d.min(axis=1)
    positive = own[own > 0]
    own = np.maximum(own, 1e-6 * np.median(positive))  # bank[20:23] are duplicates: floored, not zero
    ratio = np.sort(brute_force_distances(queries, bank, "l2") / own[None, :], axis=1)[:, :2]
    np.testing.assert_allclose(det.score_samples(queries), ratio.mean(axis=1), rtol=1e-5)
    # growing the bank rescales every row: the same as fitting on the union
    grown = KNNDetector(k=1, local_scale=True).fit(bank[:150]).add(bank[150:])
    np.testing.assert_allclose(grown.score_samples(queries), KNNDetector(k=1, local_scale=True).fit(bank).score_samples(queries),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="local_scale needs at least 2"):
        KNNDetector(local_scale=True).fit(bank[:1])


def test_knn_local_scale_does_not_call_a_sparse_conditions_normals_anomalous():
    """A dense source domain and a 4-clip target domain: a new target normal against a near miss of the source."""
    rng = np.random.default_rng(3)
    source = rng.normal(0.0, 0.1, size=(40, 8))
    target = 10.0 + rng.normal(0.0, 1.0, size=(4, 8))
    bank = np.vstack([source, target]).astype(np.float32)
    target_normal = (10.0 + rng.normal(0.0, 1.0, size=(1, 8))).astype(np.float32)
    source_fault = np.full((1, 8), 0.35, np.float32)  # just outside the tight source cloud
    plain, local = KNNDetector().fit(bank), KNNDetector(local_scale=True).fit(bank)
    assert plain.score_samples(target_normal)[0] > plain.score_samples(source_fault)[0]
    assert local.score_samples(target_normal)[0] < local.score_samples(source_fault)[0]
    # the state keeps the scales; a state written before the option loads unscaled
    state = local.get_state()
    np.testing.assert_array_equal(detector_from_state(state).score_samples(source_fault), local.score_samples(source_fault))
    with pytest.raises(ValueError, match="row_scale"):
        detector_from_state({**state, "row_scale": np.zeros(len(bank))})
    old = {k: v for k, v in plain.get_state().items() if k != "local_scale"}
    assert detector_from_state(old).local_scale is False


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", (1, 4, 300))
def test_numpy_and_faiss_candidates_give_the_same_neighbours(bank, queries, metric, k, monkeypatch):
    """The device's small searches pick candidates with numpy, stage-2 fitting's large ones with faiss: same answer."""
    from edge_asd.scoring import search

    small = KNNDetector(k=k, metric=metric).fit(bank).kneighbors(queries)
    monkeypatch.setattr(search, "NUMPY_MAX_PAIRS", 0)
    large = KNNDetector(k=k, metric=metric).fit(bank).kneighbors(queries)
    np.testing.assert_allclose(small[0], large[0], rtol=1e-12, atol=1e-12)
    # indices agree except between duplicates (bank[20:23]), whose distances are equal
    same = (small[1] == large[1]) | np.isclose(small[0], large[0], rtol=0, atol=1e-12)
    assert same.all()


def test_knn_use_gpu_without_gpu_falls_back_silently(bank, queries):
    cpu = KNNDetector(k=2).fit(bank)
    maybe_gpu = KNNDetector(k=2, use_gpu=True).fit(bank)
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "StandardGpuResources"):
        assert not maybe_gpu.on_gpu
    np.testing.assert_allclose(maybe_gpu.score_samples(queries), cpu.score_samples(queries), rtol=1e-6)


def test_knn_rejects_bad_input(bank):
    with pytest.raises(ValueError, match="k=16 neighbours need at least 16"):
        KNNDetector(k=16).fit(bank[:10])
    detector = KNNDetector(k=2).fit(bank)
    with pytest.raises(ValueError, match="has 5 features, but the detector was fitted on 12"):
        detector.score_samples(np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="has 5 features"):
        detector.add(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        detector.score_samples(np.zeros(12))
    nan = np.zeros((2, 12))
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detector.score_samples(nan)
    with pytest.raises(ValueError, match="real numbers"):
        detector.score_samples(np.array([["a"] * 12]))
    with pytest.raises(RuntimeError, match="not fitted"):
        KNNDetector().score_samples(bank)
    for bad in ({"k": 0}, {"metric": "manhattan"}, {"method": "median"}, {"k": 2.5}):
        with pytest.raises(ValueError):
            KNNDetector(**bad)
    assert detector.score_samples(np.empty((0, 12))).shape == (0,)


# --- LOF -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", K_VALUES)
def test_lof_matches_sklearn(bank, queries, metric, k):
    # Not the zero query: under cosine it is equidistant from every point, so its
    # neighbours -- and LOF -- depend on how each library breaks ties.
    queries = np.delete(queries, 1, axis=0)
    ours = LOFDetector(k=k, metric=metric).fit(bank)
    reference = LocalOutlierFactor(
        n_neighbors=k, novelty=True, metric="euclidean" if metric == "l2" else "cosine"
    ).fit(bank.astype(np.float64))
    np.testing.assert_allclose(ours.score_samples(queries), -reference.score_samples(queries.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(ours.training_scores_, -reference.negative_outlier_factor_, rtol=1e-5)


def test_lof_more_duplicates_than_k_stay_finite():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    x[:8] = x[0]  # 8 copies with k = 3: k-distance 0 inside the group
    ours = LOFDetector(k=3).fit(x)
    reference = LocalOutlierFactor(n_neighbors=3, novelty=True).fit(x.astype(np.float64))
    q = np.vstack([x[:2], rng.normal(size=(5, 4))]).astype(np.float32)
    assert np.all(np.isfinite(ours.score_samples(q)))
    np.testing.assert_allclose(ours.score_samples(q), -reference.score_samples(q.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(ours.training_scores_, -reference.negative_outlier_factor_, rtol=1e-5)


def test_lof_flags_an_outlier(bank):
    detector = LOFDetector(k=10).fit(bank)
    inlier, outlier = detector.score_samples(np.vstack([np.zeros(12), np.full(12, 8.0)]))
    assert outlier > 3.0 > 1.5 > inlier


def test_lof_rejects_k_not_below_n(bank):
    with pytest.raises(ValueError, match="at least 11 fitted vectors"):
        LOFDetector(k=10).fit(bank[:10])
    with pytest.raises(ValueError, match="fitted on 12"):
        LOFDetector(k=2).fit(bank).score_samples(np.zeros((1, 3)))


# --- GMM -----------------------------------------------------------------------------

BLOB_MEANS = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 2.0], [0.0, 9.0, -3.0], [-7.0, -7.0, 7.0]])


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    rng = np.random.default_rng(4)
    scales = [0.5, 1.0, 0.8, 1.3]
    parts = [m + rng.normal(size=(250, 3)) @ (s * np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 1.0]])) for m, s in zip(BLOB_MEANS, scales)]
    return np.vstack(parts)


def mixture_logpdf_scipy(detector: GMMDetector, X: np.ndarray) -> np.ndarray:
    covariances = detector.covariances_
    if detector.covariance_type == "diag":
        covariances = [np.diag(c) for c in covariances]
    per_component = [np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(detector.weights_, detector.means_, covariances)]
    return logsumexp(np.stack(per_component), axis=0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("n_components", [1, 2, 4])
def test_gmm_log_likelihood_matches_scipy(blobs, covariance_type, n_components):
    detector = GMMDetector(n_components=n_components, covariance_type=covariance_type).fit(blobs)
    rng = np.random.default_rng(5)
    X = np.vstack([blobs[::7], rng.normal(size=(20, 3)) * 10.0])
    expected = mixture_logpdf_scipy(detector, X)
    np.testing.assert_allclose(detector.log_likelihood(X), expected, rtol=1e-8)
    np.testing.assert_allclose(detector.score_samples(X), -expected, rtol=1e-8)
    assert detector.lower_bound_ == pytest.approx(float(np.mean(mixture_logpdf_scipy(detector, blobs))), rel=1e-10)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_em_increases_log_likelihood_monotonically(blobs, covariance_type):
    detector = GMMDetector(n_components=6, covariance_type=covariance_type, tol=1e-10, max_iter=60).fit(blobs)
    history = np.asarray(detector.lower_bound_history_)
    assert history.size > 5  # EM actually iterated from the k-means start
    assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))
    assert history[-1] > history[0]


def test_gmm_recovers_blob_means_and_agrees_with_sklearn(blobs):
    detector = GMMDetector(n_components=4).fit(blobs)
    assert detector.converged_
    for true_mean in BLOB_MEANS:
        assert np.min(np.linalg.norm(detector.means_ - true_mean, axis=1)) < 0.2
    np.testing.assert_allclose(np.sort(detector.weights_), 0.25, atol=1e-3)
    reference = GaussianMixture(n_components=4, covariance_type="full", random_state=0).fit(blobs)
    assert detector.lower_bound_ == pytest.approx(reference.score(blobs), rel=1e-3)
    # A point far from everything: a finite, large negative log-likelihood (log-sum-exp).
    far = detector.score_samples(np.array([[1e4, -1e4, 1e4]]))
    assert np.isfinite(far[0]) and far[0] > 1e6


def test_gmm_is_deterministic_and_n_init_keeps_the_best(blobs):
    a = GMMDetector(n_components=8, seed=3).fit(blobs)
    b = GMMDetector(n_components=8, seed=3).fit(blobs)
    np.testing.assert_array_equal(a.means_, b.means_)
    np.testing.assert_array_equal(a.score_samples(blobs), b.score_samples(blobs))
    best_of_3 = GMMDetector(n_components=8, seed=3, n_init=3).fit(blobs)
    assert best_of_3.lower_bound_ >= a.lower_bound_  # its first run is the same as a's


def test_gmm_high_dimensional_few_samples_per_component():
    # Embedding-like: more dimensions than samples per component, so the sample
    # covariances are singular and reg_covar alone keeps them invertible.
    rng = np.random.default_rng(6)
    X = rng.normal(size=(200, 64))
    detector = GMMDetector(n_components=16, reg_covar=1e-3).fit(X)
    assert np.all(np.isfinite(detector.score_samples(rng.normal(size=(5, 64)))))


def test_gmm_ledoit_wolf_shrinkage_is_sklearns_on_the_correlations_and_survives_its_state():
    """shrinkage="ledoit-wolf": the covariance is the Ledoit-Wolf estimate of the standardized features (scikit-learn's
    ledoit_wolf) put back in the features' units; so a feature's unit changes no score, the state keeps the option,
    and states written before it load unshrunk."""
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(7)
    # 40 clips, 60 correlated features on scales a thousand apart: the sample covariance is singular
    X = rng.normal(size=(40, 60)) @ rng.normal(size=(60, 60)) * np.geomspace(1e-2, 10.0, 60) + 5.0
    detector = GMMDetector(shrinkage="ledoit-wolf", reg_covar=0.0).fit(X)
    sd = X.std(axis=0)
    expected, intensity = ledoit_wolf((X - X.mean(axis=0)) / sd)
    assert 0.05 < intensity < 0.95  # neither the sample covariance nor the diagonal
    np.testing.assert_allclose(detector.covariances_[0], expected * np.outer(sd, sd), rtol=1e-9, atol=1e-12)
    queries = rng.normal(size=(8, 60)) * np.geomspace(1e-2, 10.0, 60) + 5.0
    rescaled = GMMDetector(shrinkage="ledoit-wolf", reg_covar=0.0).fit(X * 1000.0)
    np.testing.assert_allclose(np.diff(rescaled.score_samples(queries * 1000.0)), np.diff(detector.score_samples(queries)),
                               rtol=1e-7)
    restored = detector_from_state(detector.get_state())
    assert restored.shrinkage == "ledoit-wolf"
    np.testing.assert_array_equal(restored.score_samples(queries), detector.score_samples(queries))
    old = {k: v for k, v in GMMDetector().fit(X[:, :3]).get_state().items() if k != "shrinkage"}
    assert detector_from_state(old).shrinkage == "none"
    with pytest.raises(ValueError, match="needs covariance_type 'full'"):
        GMMDetector(covariance_type="diag", shrinkage="ledoit-wolf")
    with pytest.raises(ValueError, match="shrinkage"):
        GMMDetector(shrinkage="oas")


def test_gmm_rejects_bad_input(blobs):
    with pytest.raises(ValueError, match="n_components=32 needs at least 32 samples, got 10"):
        GMMDetector(n_components=32).fit(blobs[:10])
    detector = GMMDetector(n_components=2).fit(blobs)
    with pytest.raises(ValueError, match="has 4 features, but the detector was fitted on 3"):
        detector.score_samples(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="infinite"):
        GMMDetector().fit(np.array([[1.0, np.inf], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="increase reg_covar"):
        GMMDetector(reg_covar=0.0).fit(np.ones((10, 3)))
    for bad in ({"covariance_type": "tied"}, {"n_components": 0}, {"reg_covar": -1.0}, {"seed": -1}):
        with pytest.raises(ValueError):
            GMMDetector(**bad)


# --- state, registry -------------------------------------------------------------------


def fitted_detectors(bank: np.ndarray):
    blobs = bank[:, :3].astype(np.float64) * 2.0
    knn = KNNDetector(k=4, metric="cosine", method="mean").fit(bank[:200])
    knn.add(bank[200:])
    return [
        knn,
        KNNDetector(k=1).fit(bank),
        KNNDetector(k=1, standardize=True, local_scale=True).fit(bank),
        LOFDetector(k=16).fit(bank),
        GMMDetector(n_components=4, covariance_type="full").fit(blobs),
        GMMDetector(n_components=2, covariance_type="diag", reg_covar=1e-4).fit(blobs),
        FeatureGroupGaussian("0,4,12").fit(bank[:60]),
    ]


def test_state_round_trip_through_npz_gives_identical_scores(bank, queries, tmp_path):
    for i, detector in enumerate(fitted_detectors(bank)):
        X = queries if detector.kind != "gmm" else queries[:, :3].astype(np.float64)
        path = tmp_path / f"state{i}.npz"
        np.savez(path, **detector.get_state())
        with np.load(path, allow_pickle=False) as loaded:
            state = dict(loaded)
        assert all(v.dtype.kind in "fiuU" for v in state.values())
        assert str(state["kind"]) == detector.kind and int(state["version"]) == STATE_VERSION
        restored = detector_from_state(state)
        assert type(restored) is type(detector)
        assert restored.params() == detector.params()
        np.testing.assert_array_equal(restored.score_samples(X), detector.score_samples(X))
        assert type(detector).from_state(state).params() == detector.params()


def test_lof_state_keeps_training_scores(bank):
    detector = LOFDetector(k=4).fit(bank)
    restored = detector_from_state(detector.get_state())
    np.testing.assert_array_equal(restored.training_scores_, detector.training_scores_)


def test_from_state_rejects_wrong_or_damaged_state(bank):
    state = KNNDetector(k=2).fit(bank).get_state()
    with pytest.raises(ValueError, match="of kind 'knn', expected 'gmm'"):
        GMMDetector.from_state(state)
    with pytest.raises(ValueError, match="version 99"):
        detector_from_state({**state, "version": np.array(99)})
    with pytest.raises(ValueError, match="no 'bank' entry"):
        detector_from_state({k: v for k, v in state.items() if k != "bank"})
    with pytest.raises(ValueError, match="unknown kind 'svm'"):
        detector_from_state({**state, "kind": np.array("svm")})
    gmm_state = GMMDetector(n_components=2).fit(bank[:, :3]).get_state()
    with pytest.raises(ValueError, match="shapes disagree"):
        detector_from_state({**gmm_state, "weights": np.array([1.0])})


def test_make_detector_and_params(bank):
    assert set(DETECTORS) == {"knn", "gmm", "lof", "gauss-groups"}
    for detector in fitted_detectors(bank):
        params = detector.params()
        json.dumps(params)
        twin = make_detector(detector.kind, **params)
        assert type(twin) is type(detector) and twin.params() == params and not twin.is_fitted
    assert make_detector("knn", k=16).k == 16
    assert make_detector("gmm", n_components=4, covariance_type="diag").covariance_type == "diag"
    with pytest.raises(ValueError, match="unknown detector 'svm'; choose one of knn, gmm, lof, gauss-groups"):
        make_detector("svm")
    with pytest.raises(ValueError, match="no parameter n_components; accepted: k, metric"):
        make_detector("knn", n_components=3)


# --- aggregators -------------------------------------------------------------------------


def test_aggregators_on_hand_cases():
    even = np.array([[1.0, 4.0, 2.0, 3.0]])
    odd = np.array([[5.0, 1.0, 3.0]])
    ties = np.array([[2.0, 1.0, 2.0, 2.0]])
    assert aggregate(even, "mean").tolist() == [2.5]
    assert aggregate(even, "max").tolist() == [4.0]
    assert aggregate(even, "median").tolist() == [2.5]
    assert aggregate(even, "mean_above_median").tolist() == [3.5]  # (3 + 4) / 2
    assert aggregate(odd, "median").tolist() == [3.0]
    assert aggregate(odd, "mean_above_median").tolist() == [4.0]  # the median itself counts
    assert aggregate(ties, "mean_above_median").tolist() == [2.0]  # all three 2s are >= median 2
    assert aggregate(np.array([[7.0]]), "mean_above_median").tolist() == [7.0]
    both = aggregate(np.vstack([even, [[-1.0, -1.0, -1.0, 9.0]]]), "mean_above_median")
    np.testing.assert_array_equal(both, [3.5, (-1.0 * 3 + 9.0) / 4])


def test_aggregators_match_numpy_on_random_scores():
    scores = np.random.default_rng(7).normal(size=(50, 10))
    np.testing.assert_allclose(aggregate(scores, "mean"), scores.mean(axis=1))
    np.testing.assert_allclose(aggregate(scores, "max"), scores.max(axis=1))
    np.testing.assert_allclose(aggregate(scores, "median"), np.median(scores, axis=1))
    top_half = np.sort(scores, axis=1)[:, 5:]  # S even and no ties: the upper five
    np.testing.assert_allclose(aggregate(scores, "mean_above_median"), top_half.mean(axis=1))
    assert set(AGGREGATORS) == {"mean", "max", "median", "mean_above_median"}


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="choose one of mean, max, median, mean_above_median"):
        aggregate(np.zeros((2, 3)), "min")
    with pytest.raises(ValueError, match="2-D"):
        aggregate(np.zeros(3), "mean")
    with pytest.raises(ValueError, match="2-D"):
        aggregate(np.zeros((3, 0)), "mean")
    with pytest.raises(ValueError, match="NaN"):
        aggregate(np.array([[1.0, np.nan]]), "max")
