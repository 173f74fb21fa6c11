"""More target domain for a bank with a handful of target clips: SMOTE and GenRep points, made per fold."""

from __future__ import annotations

import numpy as np
import pytest

from edge_asd.scoring.banks import all_segments, augmented_bank, genrep_mixup, target_smote
from edge_asd.scoring.stage2 import Stage2Config, fit_section


def _between(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """p on the segment a-b (collinear, within its ends)."""
    ab, ap = b - a, p - a
    t = float(ap @ ab) / max(float(ab @ ab), 1e-12)
    return -1e-5 <= t <= 1 + 1e-5 and np.allclose(a + t * ab, p, atol=1e-4)


def test_smote_points_lie_between_a_target_and_one_of_its_neighbours():
    rng = np.random.default_rng(0)
    tgt = rng.standard_normal((12, 4)).astype(np.float32)
    pts = target_smote(tgt, 40, np.random.default_rng(1), k=3)
    assert pts.shape == (40, 4) and pts.dtype == np.float32
    d = ((tgt[:, None] - tgt[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1)[:, :3]
    for p in pts:
        assert any(_between(p, tgt[i], tgt[j]) for i in range(12) for j in near[i]), p
    np.testing.assert_array_equal(pts, target_smote(tgt, 40, np.random.default_rng(1), k=3))  # seeded
    assert target_smote(tgt[:1], 5, rng).shape == (0, 4)  # one target embedding: nothing to interpolate


def test_genrep_points_mix_a_target_with_a_near_source_nearer_the_target():
    rng = np.random.default_rng(2)
    src = rng.standard_normal((30, 3)).astype(np.float32)
    tgt = (rng.standard_normal((5, 3)) + 4.0).astype(np.float32)
    pts = genrep_mixup(src, tgt, 25, np.random.default_rng(3), k=1)
    nearest_src = src[np.argmin(((tgt[:, None] - src[None]) ** 2).sum(-1), axis=1)]
    for p in pts:
        i = int(np.argmin([np.linalg.norm(np.cross(p - t, s - t)) / np.linalg.norm(s - t) for t, s in zip(tgt, nearest_src)]))
        assert _between(p, tgt[i], nearest_src[i])
        assert np.linalg.norm(p - tgt[i]) <= np.linalg.norm(p - nearest_src[i]) + 1e-5  # ratio >= 0.5 towards the target
    assert genrep_mixup(src[:0], tgt, 5, rng).shape == (0, 3)


def test_augmented_bank_uses_only_the_clips_it_is_given():
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((10, 2, 3)).astype(np.float32)
    emb[9] += 100.0  # the held-out target clip, far from every other: any point made from it would show
    domains = np.array(["source"] * 7 + ["target"] * 3)
    build = augmented_bank(all_segments, smote=6, genrep=4, seed=0)
    bank = build(emb, domains)
    assert bank.shape == (20 + 10, 3)
    assert np.abs(bank[20:]).max() > 10  # with clip 9 in, some new points lean towards it
    # a fold without clip 9: every new point lies within the other clips' extent
    fold = build(emb[:9], domains[:9])
    tgt_fold = emb[7:9].reshape(-1, 3)
    for p in fold[18:]:
        lo, hi = np.minimum(tgt_fold.min(0), emb[:7].reshape(-1, 3).min(0)), np.maximum(tgt_fold.max(0), emb[:7].reshape(-1, 3).max(0))
        assert np.all(p >= lo - 1e-5) and np.all(p <= hi + 1e-5)
    assert augmented_bank(all_segments, 0, 0, 0) is all_segments


def test_fit_section_takes_the_augmented_bank_and_refuses_negative_counts():
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((12, 3, 4)).astype(np.float32)
    domains = np.array(["source"] * 9 + ["target"] * 3)
    logits = np.zeros((12, 3), np.float32)
    base = Stage2Config(approach="generalization", mixup_pseudo_normals=0)
    plain = fit_section("00", emb, domains, logits, base).model
    more = fit_section("00", emb, domains, logits, Stage2Config(approach="generalization", mixup_pseudo_normals=0,
                                                                  target_smote=8, target_genrep=8)).model
    assert more.domains["all"].detector.get_state()["bank"].shape[0] == plain.domains["all"].detector.get_state()["bank"].shape[0] + 16
    with pytest.raises(ValueError, match="target_smote"):
        Stage2Config(target_smote=-1)
