"""The local outlier factor (Breunig et al. 2000) over a bank of normal embeddings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_asd.scoring.checks import as_matrix, state_array
from edge_asd.scoring.memory_bank import MemoryBankDetector
from edge_asd.scoring.search import FlatSearch

__all__ = ["LOFDetector"]


class LOFDetector(MemoryBankDetector):
    """Local outlier factor (Breunig et al. 2000) with exact faiss neighbours.

    Matches scikit-learn's ``LocalOutlierFactor(n_neighbors=k, novelty=True)``:
    ``score_samples(X)`` equals its ``-score_samples(X)`` -- the LOF itself, about
    1 for inliers and larger for outliers -- and :attr:`training_scores_` equals
    its ``-negative_outlier_factor_``. As there, the k-distance of a fitted point
    and the neighbourhoods of fitted points exclude the point itself (when
    duplicates crowd it out of its own k+1 nearest, the nearest one is dropped
    instead), the reachability distance is ``max(d(x, o), k-distance(o))`` and the
    local reachability density is ``1 / (mean reach-dist + 1e-10)``, which keeps
    groups of more than k duplicates finite. New points are not excluded from
    anything: a new point equal to a fitted one has it as a neighbour at 0.

    ``metric="cosine"`` uses 1 - cosine similarity as the distance (scikit-learn's
    ``metric="cosine"``).
    """

    kind = "lof"

    def __init__(self, k: int = 20, metric: str = "l2", *, use_gpu: bool = False) -> None:
        super().__init__(k, metric, use_gpu=use_gpu)
        self._k_distance = np.empty(0)
        self._lrd = np.empty(0)
        self.training_scores_ = np.empty(0)

    def fit(self, X: np.ndarray) -> LOFDetector:
        X = as_matrix(X, np.float32, min_rows=1)
        n = X.shape[0]
        if self.k >= n:
            raise ValueError(f"k={self.k} neighbours need at least {self.k + 1} fitted vectors (each point's own is excluded), got {n}")
        search = FlatSearch.fitted_on(self.metric, X, self.use_gpu)
        dist, idx = search.search_prepared(search.bank, self.k + 1)
        keep = idx != np.arange(n)[:, None]
        crowded = keep.all(axis=1)  # self not among its k+1 nearest: duplicates
        keep[crowded, 0] = False
        dist = dist[keep].reshape(n, self.k)
        idx = idx[keep].reshape(n, self.k)
        k_distance = dist[:, -1].copy()
        lrd = _local_reachability_density(dist, idx, k_distance)
        self._search = search
        self._k_distance = k_distance
        self._lrd = lrd
        self.training_scores_ = np.mean(lrd[idx] / lrd[:, None], axis=1)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """LOF per row; HIGHER = MORE ANOMALOUS (scikit-learn's ``-score_samples``)."""
        search = self._bank()
        dist, idx = search.search(as_matrix(X, np.float32, dim=search.dim), self.k)
        lrd = _local_reachability_density(dist, idx, self._k_distance)
        return np.mean(self._lrd[idx] / lrd[:, None], axis=1)

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``bank``, ``offset``, ``k_distance``, ``lrd`` and ``training_scores``."""
        return {**super()._fitted_arrays(), "k_distance": self._k_distance, "lrd": self._lrd, "training_scores": self.training_scores_}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> LOFDetector:
        detector = cls(**cls._params_from_state(state), use_gpu=use_gpu)
        # a fitted point's k neighbours exclude itself: k + 1 vectors at least
        search = FlatSearch.from_state(state, detector.metric, detector.k + 1, use_gpu)
        n = search.bank.shape[0]
        arrays = {}
        for key in ("k_distance", "lrd", "training_scores"):
            arr = np.asarray(state_array(state, key, 1), dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"detector state entry {key!r} has shape {arr.shape}, expected ({n},)")
            arrays[key] = arr
        detector._search = search
        detector._k_distance = arrays["k_distance"]
        detector._lrd = arrays["lrd"]
        detector.training_scores_ = arrays["training_scores"]
        return detector


def _local_reachability_density(dist: np.ndarray, idx: np.ndarray, k_distance: np.ndarray) -> np.ndarray:
    reach = np.maximum(dist, k_distance[idx])
    return 1.0 / (np.mean(reach, axis=1) + 1e-10)
