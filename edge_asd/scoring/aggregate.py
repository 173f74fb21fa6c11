"""Eq. 4 of the report: a clip's score pools the inlier model's scores of its S segments.

:func:`aggregate` is the pooling ``A``; :func:`clip_raw_scores` runs a detector
on every segment of a batch of clips and pools them.
"""

from __future__ import annotations

import numpy as np

from edge_asd.scoring.base import InlierDetector

__all__ = ["AGGREGATORS", "aggregate", "clip_raw_scores"]

AGGREGATORS = ("mean", "max", "median", "mean_above_median")


def aggregate(scores: np.ndarray, how: str) -> np.ndarray:
    """Pool the segment scores of each clip, [n_clips, S] -> [n_clips] (the A of Eq. 4).

    ``"mean"``, ``"max"``, ``"median"`` (numpy's: the average of the two middle
    values when S is even), or ``"mean_above_median"``: the mean of the segment
    scores that are >= the clip's median. Ties count in: every score equal to the
    median is included, so S = 1 or all-equal scores give that score, and for
    odd S the median segment itself is always included.
    """
    if how not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {how!r}; choose one of {', '.join(AGGREGATORS)}")
    s = np.asarray(scores)
    if s.dtype.kind not in "fiu":
        raise ValueError(f"segment scores must be real numbers, got dtype {s.dtype}")
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"segment scores must be 2-D [n_clips, n_segments] with n_segments >= 1, got shape {s.shape}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError("segment scores contain NaN or infinite values")
    if how == "mean":
        return s.mean(axis=1)
    if how == "max":
        return s.max(axis=1)
    median = np.median(s, axis=1)
    if how == "median":
        return median
    above = s >= median[:, None]
    return np.sum(np.where(above, s, 0.0), axis=1) / np.sum(above, axis=1)


def clip_raw_scores(detector: InlierDetector, emb: np.ndarray, aggregator: str) -> np.ndarray:
    """Aggregate the detector's segment scores of each clip: ``[n, S, D] -> [n]``."""
    n, s, d = emb.shape
    seg = detector.score_samples(emb.reshape(n * s, d).astype(np.float32))
    return aggregate(seg.reshape(n, s), aggregator)
