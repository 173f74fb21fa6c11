"""One shrunk Gaussian of the whole feature vector and one of each group of features: the plain system's scorer.

A clip's features come in groups that each describe one aspect of the sound
(the plain system's: the band levels, their spread over time, the envelope
modulation spectrum, its lines, the frame-to-frame change, the envelopes'
spread, the bands' comodulation; :meth:`edge_asd.io.features.LogMelStatsConfig.blocks`).
A fault often shows in one of them: a bearing's impacts in the lines, a rub in
the comodulation. One Gaussian of all 393 features sums that evidence with the
noise of every other feature, tens of clips cannot say which correlations
matter, and the fault drowns. So each group gets a Gaussian of its own, and a
clip's score is

    joint_weight * z(whole vector) + max over the groups of z(group)

where ``z`` is the log of the squared Mahalanobis distance, standardized by the
same statistic of the training normals out of fold (each normal scored by a
Gaussian fitted without it). The log tames the heavy tail of held-out
distances when a Gaussian is fitted on a dozen clips; out of fold, a group
whose Gaussian overfits its few clips does not look quiet on the normals and
loud on every new clip. The joint term keeps a change spread thinly over all
groups (a real fan's imbalance moved every group a little) from being lost to
the max. Measured on the validation seeds of both generators and the real
samples (BENCHMARKS.md, "One Gaussian per group of features").

The features are z-scored with the training normals' mean and standard
deviation first, so the Ledoit-Wolf shrinkage of each Gaussian
(:class:`edge_asd.scoring.gmm.GMMDetector`) sees unit-free features.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.checks import as_matrix, non_negative, positive_int, state_array
from edge_asd.scoring.gmm import GMMDetector

__all__ = ["FeatureGroupGaussian", "parse_edges"]

_MIN_STD = 1e-6  # a feature or a score that does not vary among the normals: divided by this instead of 0


def parse_edges(edges: str) -> tuple[int, ...]:
    """``"0,64,128"`` -> ``(0, 64, 128)``: the groups' boundaries, increasing from 0; "" is no groups."""
    if not isinstance(edges, str):
        raise ValueError(f"edges must be a string of comma-separated feature indices, got {edges!r}")
    if not edges.strip():
        return ()
    try:
        out = tuple(int(e) for e in edges.split(","))
    except ValueError:
        raise ValueError(f"edges must be comma-separated integers, got {edges!r}") from None
    if len(out) < 3 or out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"edges must start at 0, increase, and make at least two groups; got {edges!r}")
    return out


class FeatureGroupGaussian(InlierDetector):
    """``joint_weight * z(all features) + max_g z(group g)``, each ``z`` a standardized log Mahalanobis distance.

    ``edges``: the groups' boundaries (``"0,64,128,..."``, ending at the feature
    count); "" scores the whole vector alone. ``folds``: the out-of-fold split
    of the normals that standardizes each Gaussian's scores (leave-one-out when
    there are fewer normals). ``reg_covar``: added to each covariance's diagonal.
    """

    kind = "gauss-groups"

    def __init__(self, edges: str = "", joint_weight: float = 2.0, folds: int = 10, reg_covar: float = 1e-6) -> None:
        self.edges = edges
        self._edges = parse_edges(edges)
        self.joint_weight = non_negative("joint_weight", joint_weight)
        self.folds = positive_int("folds", folds)
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds!r}")
        self.reg_covar = non_negative("reg_covar", reg_covar)
        self._centre: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._models: list[GMMDetector] = []
        self._log_mean: np.ndarray | None = None
        self._log_std: np.ndarray | None = None

    # -- blocks --

    def _blocks(self, dim: int) -> list[slice]:
        """The whole vector, then each group."""
        if self._edges and self._edges[-1] != dim:
            raise ValueError(f"the groups end at feature {self._edges[-1]} but the features have {dim} dimensions")
        return [slice(0, dim)] + [slice(a, b) for a, b in zip(self._edges, self._edges[1:])]

    def _gaussian(self, X: np.ndarray) -> GMMDetector:
        return GMMDetector(1, "full", reg_covar=self.reg_covar, shrinkage="ledoit-wolf").fit(X)

    @staticmethod
    def _log_distance(model: GMMDetector, X: np.ndarray) -> np.ndarray:
        # the floor keeps the log finite for a clip at the very mean (a distance is never negative)
        return np.log(np.maximum(model.mahalanobis_sq(X)[:, 0], 1e-12))

    def _held_out(self, Z: np.ndarray, block: slice) -> np.ndarray:
        """Each normal's log distance under a Gaussian fitted on the other folds (every ``k``-th normal a fold)."""
        n = Z.shape[0]
        k = min(self.folds, n)
        fold = np.arange(n) % k
        out = np.empty(n)
        for f in range(k):
            held = fold == f
            out[held] = self._log_distance(self._gaussian(Z[~held][:, block]), Z[held][:, block])
        return out

    # -- fit / score --

    def fit(self, X: np.ndarray) -> FeatureGroupGaussian:
        X = as_matrix(X, np.float64, min_rows=2)
        blocks = self._blocks(X.shape[1])
        centre, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > _MIN_STD, scale, _MIN_STD)
        Z = (X - centre) / scale
        models, means, stds = [], [], []
        for block in blocks:
            held = self._held_out(Z, block)
            means.append(held.mean())
            stds.append(max(float(held.std()), _MIN_STD))
            models.append(self._gaussian(Z[:, block]))
        self._centre, self._scale, self._models = centre, scale, models
        self._log_mean, self._log_std = np.array(means), np.array(stds)
        return self

    def block_scores(self, X: np.ndarray) -> np.ndarray:
        """``[n, 1 + groups]``: each row's standardized log distance under the whole vector's Gaussian, then each
        group's (what :meth:`score_samples` combines; a group's column says where a clip departs)."""
        self._require_fitted()
        assert self._centre is not None and self._scale is not None
        X = as_matrix(X, np.float64, dim=self._centre.size)
        Z = (X - self._centre) / self._scale
        blocks = self._blocks(Z.shape[1])
        logs = np.stack([self._log_distance(m, Z[:, b]) for m, b in zip(self._models, blocks)], axis=1)
        return (logs - self._log_mean) / self._log_std

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        z = self.block_scores(X)
        if z.shape[1] == 1:
            return z[:, 0]
        return self.joint_weight * z[:, 0] + z[:, 1:].max(axis=1)

    # -- state --

    @property
    def is_fitted(self) -> bool:
        return self._centre is not None

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        assert self._centre is not None
        return int(self._centre.size)

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``centre``/``scale`` [D]; ``log_mean``/``log_std`` [B]; per block ``b``: ``mean_b`` [d_b], ``covariance_b``
        [d_b, d_b] (B = 1 + groups, the whole vector first)."""
        assert self._centre is not None and self._scale is not None
        out = {"centre": self._centre, "scale": self._scale, "log_mean": self._log_mean, "log_std": self._log_std}
        for i, m in enumerate(self._models):
            out[f"mean_{i}"] = m.means_[0]
            out[f"covariance_{i}"] = m.covariances_[0]
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> FeatureGroupGaussian:
        """Rebuild from :meth:`get_state`; ``use_gpu`` is accepted and ignored: it runs in numpy."""
        det = cls(**cls._params_from_state(state))
        centre = np.asarray(state_array(state, "centre", 1), dtype=np.float64)
        scale = np.asarray(state_array(state, "scale", 1), dtype=np.float64)
        blocks = det._blocks(centre.size)
        log_mean = np.asarray(state_array(state, "log_mean", 1), dtype=np.float64)
        log_std = np.asarray(state_array(state, "log_std", 1), dtype=np.float64)
        if scale.shape != centre.shape or log_mean.shape != (len(blocks),) or log_std.shape != (len(blocks),):
            raise ValueError(f"gauss-groups state shapes disagree: centre {centre.shape}, scale {scale.shape}, "
                             f"log_mean {log_mean.shape}, log_std {log_std.shape} for {len(blocks)} blocks")
        if np.any(scale <= 0) or np.any(log_std <= 0):
            raise ValueError("gauss-groups state holds a zero or negative spread")
        models = []
        for i, block in enumerate(blocks):
            d = block.stop - block.start
            mean = np.asarray(state_array(state, f"mean_{i}", 1), dtype=np.float64)
            cov = np.asarray(state_array(state, f"covariance_{i}", 2), dtype=np.float64)
            if mean.shape != (d,) or cov.shape != (d, d):
                raise ValueError(f"gauss-groups state block {i}: mean {mean.shape} and covariance {cov.shape} for "
                                 f"{d} features")
            models.append(GMMDetector.from_state({
                **GMMDetector(1, "full", reg_covar=det.reg_covar, shrinkage="ledoit-wolf")._header(),
                "weights": np.ones(1), "means": mean[None], "covariances": cov[None],
            }))
        if not all(np.all(np.isfinite(a)) for a in (centre, scale, log_mean, log_std)):
            raise ValueError("gauss-groups state contains NaN or infinite values")
        det._centre, det._scale, det._models = centre, scale, models
        det._log_mean, det._log_std = log_mean, log_std
        return det
