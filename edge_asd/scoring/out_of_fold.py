"""Out-of-fold clip scores of a section's normals and the standardization statistics drawn from them.

The held-out normals are split by clip into folds and each fold is scored by a
detector fitted on the other folds: scoring a detector's own training points
would make a 1-NN distance zero and every statistic meaningless.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge_asd.scoring.aggregate import clip_raw_scores
from edge_asd.scoring.banks import BankBuilder, all_segments, row_domains
from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.detectors import make_detector

__all__ = ["fit_detector", "out_of_fold_raw", "score_stats", "shrunk_stats"]


def _capped_params(kind: str, params: dict[str, Any], n_points: int) -> dict[str, Any]:
    """Neighbour and component counts cannot exceed the points a fold has.

    DCASE gives only a handful of target clips per section, so a k=32 KNN on a
    4-clip target bank would be undefined in the leave-one-out folds; capping
    keeps the rule "the report's k where there is data for it".
    """
    p = dict(params)
    for key in ("k", "n_components"):
        if key in p:
            p[key] = max(1, min(int(p[key]), n_points - (1 if kind == "lof" else 0)))
    return p


def fit_detector(kind: str, params: dict[str, Any], x: np.ndarray, domains: np.ndarray | None = None) -> InlierDetector:
    """``domains``: each row's domain, for a detector that models domains apart (``fits_domains``); None where the
    rows mix domains (k-means centres, Mixup points)."""
    det = make_detector(kind, **_capped_params(kind, params, len(x)))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if det.fits_domains and domains is not None:
        det.fit(x, domains=domains)
    else:
        det.fit(x)
    return det


def _fold_ids(n_clips: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    k = max(2, min(n_folds, n_clips))
    ids = np.arange(n_clips) % k
    rng.shuffle(ids)
    return ids


def out_of_fold_raw(
    kind: str,
    params: dict[str, Any],
    emb: np.ndarray,
    *,
    aggregator: str,
    n_folds: int,
    rng: np.random.Generator,
    extra_fit: np.ndarray | None = None,
    domains: np.ndarray | None = None,
    build_bank: BankBuilder | None = None,
) -> np.ndarray:
    """Raw clip scores of each clip from a detector that never saw that clip.

    The detector of a fold is fitted on ``build_bank(emb, domains)`` of the other
    folds' clips (default: all their segments), plus ``extra_fit``.
    """
    n = emb.shape[0]
    if n < 2:
        raise ValueError("standardization needs at least two normal clips per section and domain")
    domains = np.full(n, "source") if domains is None else np.asarray(domains)
    build_bank = build_bank or all_segments
    folds = _fold_ids(n, n_folds, rng)
    out = np.empty(n)
    for f in np.unique(folds):
        train = build_bank(emb[folds != f], domains[folds != f])
        n_extra = 0 if extra_fit is None else len(extra_fit)
        if n_extra:
            train = np.concatenate([train, extra_fit])
        det = fit_detector(kind, params, train, row_domains(build_bank, emb[folds != f], domains[folds != f], n_extra))
        out[folds == f] = clip_raw_scores(det, emb[folds == f], aggregator)
    return out


def score_stats(raw: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of raw scores; a spread of zero becomes 1 so dividing stays defined."""
    std = float(np.std(raw))
    return float(np.mean(raw)), (std if std > 1e-12 else 1.0)


def shrunk_stats(own: tuple[float, float], n_own: int, prior: tuple[float, float], prior_clips: float) -> tuple[float, float]:
    """A few clips' mean and spread pulled towards another model's, as ``prior_clips`` clips of it.

    The mean is the clips' own (the two models' score levels differ with their
    banks' densities and must be removed as measured). The spread is what a
    handful of leave-one-out scores estimate worst, so it is pooled: for
    positive scores (distances, LOF) as a coefficient of variation, since a
    sparser bank scales every distance up alike; otherwise as a variance.
    """
    (m, s), (mp, sp) = own, prior
    w = n_own / (n_own + prior_clips) if n_own + prior_clips > 0 else 1.0
    if m > 0 and mp > 0:
        cv = w * (s / m) + (1.0 - w) * (sp / mp)
        std = cv * m
    else:
        std = math.sqrt(w * s * s + (1.0 - w) * sp * sp)
    return m, (std if std > 1e-12 else 1.0)
