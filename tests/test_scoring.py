"""Stage-2 scoring: Eq. 7 and 8, standardization, DG/DS fitting, state round trip."""

import numpy as np
import pytest

from edge_asd.scoring.banks import mixup_pseudo_normals
from edge_asd.scoring.combine import combine_parts, mix_eq8, p_target
from edge_asd.scoring.section import Standardization, section_from_state, section_parts, section_state
from edge_asd.scoring.stage2 import Stage2Config, fit_section


def test_eq7_p_target_hand_values():
    # sigmoid(0.15 / 0.15) = sigmoid(1) = 0.7310585786
    assert p_target(np.array([0.15]), 0.15)[0] == pytest.approx(0.7310585786, abs=1e-9)
    # clip-level p is the mean of the segments' probabilities, not of the logits
    got = p_target(np.array([[0.0, 0.3]]), 0.15)
    assert got[0] == pytest.approx((0.5 + 1 / (1 + np.exp(-2.0))) / 2, abs=1e-12)
    assert np.all(np.isfinite(p_target(np.array([[-1e4, 1e4]]), 0.15)))


def test_eq8_hand_values():
    zs, zt = np.array([2.0, -1.0, 0.5]), np.array([0.0, 3.0, 0.5])
    p = np.array([0.25, 1.0, 0.0])
    assert np.allclose(mix_eq8(zs, zt, p), [1.5, 3.0, 0.5])


def test_ensemble_means_per_domain_then_mixes():
    m1 = {"source": np.array([1.0, 3.0]), "target": np.array([0.0, 0.0])}
    m2 = {"source": np.array([3.0, 1.0]), "target": np.array([2.0, 4.0])}
    p = np.array([0.5, 0.0])
    # source mean [2, 2], target mean [1, 2] -> [(2 + 1) / 2, 2]
    assert np.allclose(combine_parts([m1, m2], p, "specialization"), [1.5, 2.0])
    assert np.allclose(combine_parts([{"all": np.array([1.0])}, {"all": np.array([3.0])}], p[:1], "generalization"), [2.0])


def _blobs(rng, n, center, s=10, d=8):
    return (center + rng.normal(size=(n, s, d)) * 0.3).astype(np.float32)


@pytest.mark.parametrize("approach", ["generalization", "specialization"])
@pytest.mark.parametrize("detector, params", [("knn", {"k": 2}), ("gmm", {"n_components": 1}), ("lof", {"k": 4})])
def test_fit_section_standardizes_held_out_normals(approach, detector, params):
    rng = np.random.default_rng(0)
    src = _blobs(rng, 30, 0.0)
    tgt = _blobs(rng, 6, 2.0)
    emb = np.concatenate([src, tgt])
    domains = np.array(["source"] * 30 + ["target"] * 6)
    logits = np.r_[np.full((30, 10), -1.0), np.full((6, 10), 1.0)]
    cfg = Stage2Config(approach=approach, detector=detector, detector_params=params, threshold_rule="quantile:0.9")
    res = fit_section("00", emb, domains, logits, cfg)
    model = res.model
    assert set(model.domains) == ({"all"} if approach == "generalization" else {"source", "target"})
    # out-of-fold scores of each domain's own clips are standardized to mean 0, std 1
    for name, z in res.oof_parts.items():
        own = z if name == "all" else z[domains == name]
        assert abs(own.mean()) < 1e-9 and abs(own.std() - 1) < 1e-9
    # clips far from both domains score far above the threshold
    far = _blobs(rng, 5, 6.0)
    parts = section_parts(model, far, cfg.aggregator)
    scores = combine_parts([parts], p_target(np.zeros((5, 10)), cfg.kappa), approach)
    assert np.all(scores > model.threshold + 3)
    # and the state survives plain arrays
    arrays, numbers = section_state(model)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    std = {d: Standardization(**v) for d, v in numbers["standardization"].items()}
    again = section_from_state("00", arrays, std, numbers["threshold"])
    parts2 = section_parts(again, far, cfg.aggregator)
    for k in parts:
        assert np.allclose(parts[k], parts2[k])
    assert again.threshold == model.threshold


def test_knn_k_is_capped_by_the_few_target_clips():
    rng = np.random.default_rng(1)
    emb = np.concatenate([_blobs(rng, 20, 0.0, s=2), _blobs(rng, 3, 1.0, s=2)])
    domains = np.array(["source"] * 20 + ["target"] * 3)
    cfg = Stage2Config(approach="specialization", detector="knn", detector_params={"k": 32})
    res = fit_section("01", emb, domains, np.zeros((23, 2)), cfg)
    assert np.isfinite(res.model.threshold)


def test_specialization_needs_two_clips_per_domain():
    rng = np.random.default_rng(2)
    emb = np.concatenate([_blobs(rng, 10, 0.0), _blobs(rng, 1, 1.0)])
    with pytest.raises(ValueError, match="at least 2 target-domain normal clips"):
        fit_section("00", emb, np.array(["source"] * 10 + ["target"]), np.zeros((11, 10)), Stage2Config())


def test_mixup_pseudo_normals_lie_between_domains():
    rng = np.random.default_rng(3)
    a = np.zeros((5, 4), np.float32)
    b = np.ones((5, 4), np.float32)
    m = mixup_pseudo_normals(a, b, 50, rng)
    assert m.shape == (50, 4)
    assert np.all((m >= 0) & (m <= 1)) and np.allclose(m, m[:, :1])
    assert m.std() > 0.1
