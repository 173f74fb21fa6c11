"""Stage 2 for little data: the plain features, z-scored KNN, k-means source centres,
shrunk target standardization, mixed ensembles and metrics of one-domain sections,
each against a reference computed another way."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_asd.io.features import LogMelStats, LogMelStatsConfig, mel_filterbank
from edge_asd.scoring.banks import centres_bank, kmeans_centres
from edge_asd.scoring.combine import combine_parts
from edge_asd.scoring.detectors import detector_from_state
from edge_asd.scoring.knn import KNNDetector
from edge_asd.scoring.metrics import labelled_metrics, official_result
from edge_asd.scoring.out_of_fold import shrunk_stats
from edge_asd.scoring.stage2 import Stage2Config, check_fittable, fit_section


# --- the plain features ------------------------------------------------------------------


def test_logmel_stats_equal_a_frame_by_frame_reference():
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(16000 * 2) + 0.02).astype(np.float32)
    cfg = LogMelStatsConfig()
    got = LogMelStats(cfg)(clip)
    # the textbook way: the clip standardized, frame by frame, a symmetric Hann window, |DFT|^2, mel, ln
    x = (clip - clip.mean()) / clip.std()
    n = cfg.n_fft
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
    fb = mel_filterbank(16000, n, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale)
    frames = [x[i : i + n].astype(np.float64) for i in range(0, x.size - n + 1, cfg.hop_length)]
    ln = np.array([np.log(fb @ np.abs(np.fft.fft(f * window)[: n // 2 + 1]) ** 2 + cfg.log_eps) for f in frames])
    want = np.concatenate([ln.mean(axis=0), ln.std(axis=0)])
    assert got.shape == (2 * cfg.n_mels,)
    np.testing.assert_allclose(got, want, atol=1e-4)


# --- z-scored KNN -------------------------------------------------------------------------


def test_standardized_knn_equals_brute_force_on_z_scores():
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((60, 5)) * np.array([1.0, 100.0, 0.01, 5.0, 1.0]) + 3.0
    queries = rng.standard_normal((7, 5)) * np.array([1.0, 100.0, 0.01, 5.0, 1.0]) + 3.0
    det = KNNDetector(k=2, standardize=True).fit(bank)
    mu, sd = bank.mean(axis=0), bank.std(axis=0)
    zb, zq = (bank - mu) / sd, (queries - mu) / sd
    d = np.sqrt(((zq[:, None, :] - zb[None]) ** 2).sum(-1))
    np.testing.assert_allclose(det.score_samples(queries), np.sort(d, axis=1)[:, 1], rtol=1e-5)
    # the scale travels with the state; an unscaled detector on the same bank differs
    again = detector_from_state({k: np.asarray(v) for k, v in det.get_state().items()})
    np.testing.assert_allclose(again.score_samples(queries), det.score_samples(queries))
    assert not np.allclose(KNNDetector(k=2).fit(bank).score_samples(queries), det.score_samples(queries))


# --- k-means source centres ----------------------------------------------------------------


def test_kmeans_centres_are_a_fixed_point_of_lloyd():
    rng = np.random.default_rng(3)
    blobs = np.concatenate([rng.normal(c, 0.1, size=(50, 4)) for c in (0.0, 3.0, -3.0, 6.0)]).astype(np.float32)
    centres = kmeans_centres(blobs, 4, seed=0)
    assert centres.shape == (4, 4)
    # brute-force assignment: every point to its nearest centre; each centre is the mean of its points
    assign = np.argmin(((blobs[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    for j in range(4):
        np.testing.assert_allclose(centres[j], blobs[assign == j].mean(axis=0), atol=1e-4)
    # four well-separated blobs: one centre each
    assert sorted(np.bincount(assign, minlength=4).tolist()) == [50, 50, 50, 50]
    # no more points than centres: the points themselves
    np.testing.assert_array_equal(kmeans_centres(blobs[:3], 8), blobs[:3])


def test_centres_bank_keeps_every_target_segment():
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((12, 3, 2)).astype(np.float32)  # 12 clips x 3 segments
    domains = np.array(["source"] * 10 + ["target"] * 2)
    bank = centres_bank(5, seed=0)(emb, domains)
    assert bank.shape == (5 + 2 * 3, 2)
    np.testing.assert_array_equal(bank[5:], emb[10:].reshape(-1, 2))
    # no target clips: nothing to balance, every source segment stays
    assert centres_bank(5, seed=0)(emb[:10], domains[:10]).shape == (30, 2)


def test_centres_bank_scores_both_domains_on_one_scale():
    # source: 200 clips in a tight cloud; target: 4 clips elsewhere. With every source
    # segment in the bank, a source normal's nearest neighbour is far closer than a
    # target normal's; with 8 centres the two domains' scores are of one size.
    rng = np.random.default_rng(5)
    src = rng.normal(0.0, 1.0, size=(200, 2, 8))
    tgt = rng.normal(0.0, 1.0, size=(4, 2, 8)) + 6.0
    emb = np.concatenate([src, tgt]).astype(np.float32)
    domains = np.array(["source"] * 200 + ["target"] * 4)
    cfg = Stage2Config(approach="generalization", mixup_pseudo_normals=0, n_folds=4)
    full = fit_section("00", emb, domains, np.zeros((204, 2)), cfg).oof_parts["all"]
    cent = fit_section("00", emb, domains, np.zeros((204, 2)), Stage2Config(**{**cfg.__dict__, "source_centres": 8})).oof_parts["all"]

    def gap(z):
        return abs(np.median(z[domains == "target"]) - np.median(z[domains == "source"]))

    assert gap(cent) < gap(full)


# --- standardization of a few target clips ---------------------------------------------------


def test_shrunk_stats_hand_case():
    # own: mean 2, std 1 (cv 0.5) from 2 clips; prior: mean 1, std 0.1 (cv 0.1), worth 8 clips
    m, s = shrunk_stats((2.0, 1.0), 2, (1.0, 0.1), 8.0)
    assert m == 2.0
    assert s == pytest.approx((0.2 * 0.5 + 0.8 * 0.1) * 2.0)
    # scores that may be negative (GMM): the variances are pooled
    m, s = shrunk_stats((-2.0, 1.0), 2, (-1.0, 3.0), 2.0)
    assert s == pytest.approx(math.sqrt(0.5 * 1.0 + 0.5 * 9.0))
    # no prior weight: the clips' own figures
    assert shrunk_stats((2.0, 1.0), 2, (1.0, 0.1), 0.0) == (2.0, 1.0)


def test_specialization_with_shrunk_target_standardization_fits_two_target_clips():
    rng = np.random.default_rng(6)
    emb = np.concatenate([rng.normal(0, 1, (30, 3, 4)), rng.normal(5, 1, (2, 3, 4))]).astype(np.float32)
    domains = np.array(["source"] * 30 + ["target"] * 2)
    own = fit_section("00", emb, domains, np.zeros((32, 3)), Stage2Config(detector_params={"k": 1}))
    shr = fit_section("00", emb, domains, np.zeros((32, 3)), Stage2Config(detector_params={"k": 1}, target_std="shrunk"))
    assert own.model.domains["target"].mean == shr.model.domains["target"].mean
    assert own.model.domains["target"].std != shr.model.domains["target"].std
    assert np.isfinite(shr.model.threshold)


@pytest.mark.parametrize(
    ("approach", "n_source", "n_target", "ok"),
    [
        ("generalization", 10, 0, True),
        ("generalization", 1, 1, True),
        ("generalization", 1, 0, False),
        ("specialization", 10, 1, False),
        ("specialization", 10, 2, True),
        ("specialization", 1, 10, False),
    ],
)
def test_check_fittable_names_what_is_missing(approach, n_source, n_target, ok):
    cfg = Stage2Config(approach=approach)
    if ok:
        check_fittable("03", n_source, n_target, cfg)
    else:
        with pytest.raises(ValueError, match=r"section 03: .*at least 2"):
            check_fittable("03", n_source, n_target, cfg)


# --- mixed ensembles ----------------------------------------------------------------------------


def test_one_model_member_joins_a_specialization_ensemble_on_both_sides():
    ds = {"source": np.array([1.0, 3.0]), "target": np.array([5.0, 1.0])}
    plain = {"all": np.array([3.0, -1.0])}
    p = np.array([0.0, 1.0])
    # clip 0: source side (1 + 3) / 2; clip 1: target side (1 - 1) / 2
    np.testing.assert_allclose(combine_parts([ds, plain], p, "specialization"), [2.0, 0.0])
    # and a DS member in a DG ensemble contributes its Eq. 8 score
    np.testing.assert_allclose(combine_parts([plain, ds], p, "generalization"), [(3.0 + 1.0) / 2, (-1.0 + 1.0) / 2])


# --- metrics of a section recorded in one domain -----------------------------------------------


def test_metrics_of_a_section_without_target_normals_leave_that_auc_out():
    anomaly = np.array([0, 0, 0, 1, 1], bool)
    target = np.zeros(5, bool)
    m = labelled_metrics(anomaly, target, np.array([0.1, 0.2, 0.3, 0.25, 0.9]))
    assert math.isnan(m.auc_target) and m.official()["auc_target"] is None
    assert m.auc_source == pytest.approx(5 / 6)
    result = official_result({("fan", "00"): m})
    # hmean of AUC(source) and pAUC only
    assert result["official_score"] == pytest.approx(2 / (1 / m.auc_source + 1 / m.pauc))
    with pytest.raises(Exception, match="no anomalous clips"):
        labelled_metrics(np.zeros(3, bool), target[:3], np.zeros(3))
