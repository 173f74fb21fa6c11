"""Drift monitoring: has the machine entered a condition the bundle was never taught?

Two signals per machine, published with the heartbeat:

* the domain classifier's mean p_target over recent clips (report Eq. 7): a
  source-trained machine drifting towards 1 is running in "target-like"
  conditions, which enrollment (``edge-asd enroll``) can teach;
* the Kolmogorov-Smirnov distance between the recent scores and the bundle's
  out-of-fold scores of held-out normals (stored as quantiles in the manifest),
  plus the share of recent clips above the reference 95th percentile (5 % when
  nothing changed). A shift of the whole distribution, not single anomalies,
  is what an operator needs to see here.
"""

from __future__ import annotations

from collections import deque

import numpy as np

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 41)


def reference_quantiles(scores: np.ndarray) -> list[float]:
    """What the manifest stores of a section's normal score distribution."""
    return [float(v) for v in np.quantile(np.asarray(scores, dtype=np.float64), QUANTILE_LEVELS)]


def reference_cdf(quantiles: list[float], x: np.ndarray) -> np.ndarray:
    """The reference CDF at ``x``, piecewise linear between the stored quantiles."""
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))
    # np.interp needs increasing x; equal quantiles (ties) are made strictly increasing
    q = q + np.arange(len(q)) * 1e-12
    return np.interp(x, q, levels, left=0.0, right=1.0)


class DriftMonitor:
    def __init__(self, quantiles: list[float] | None, window: int = 60):
        self.quantiles = quantiles
        self.scores: deque[float] = deque(maxlen=window)
        self.p_target: deque[float] = deque(maxlen=window)

    def add(self, score: float, p_target: float) -> None:
        self.scores.append(float(score))
        self.p_target.append(float(p_target))

    def summary(self) -> dict:
        n = len(self.scores)
        out: dict = {"window": n, "p_target_mean": float(np.mean(self.p_target)) if n else None, "ks": None, "above_ref_p95": None}
        if n and self.quantiles:
            s = np.sort(np.asarray(self.scores))
            ref = reference_cdf(self.quantiles, s)
            emp_hi = np.arange(1, n + 1) / n
            emp_lo = np.arange(0, n) / n
            out["ks"] = float(max(np.max(emp_hi - ref), np.max(ref - emp_lo)))
            p95 = float(np.interp(0.95, np.linspace(0, 1, len(self.quantiles)), self.quantiles))
            out["above_ref_p95"] = float(np.mean(s > p95))
        return out
