"""k-nearest-neighbour distance to the bank of normal embeddings (the report's default inlier model)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_asd.scoring.checks import as_matrix, choice, state_array
from edge_asd.scoring.memory_bank import MemoryBankDetector
from edge_asd.scoring.search import FlatSearch

__all__ = ["KNNDetector"]


class KNNDetector(MemoryBankDetector):
    """k-nearest-neighbour distance to the bank of normal embeddings.

    Score = distance to the k-th nearest bank vector (``method="largest"``, PyOD's
    default) or the mean distance to the k nearest (``"mean"``). ``metric="l2"``
    is the Euclidean distance; ``"cosine"`` is 1 - cosine similarity. The search
    is exact (see :class:`FlatSearch`).

    The bank is the fitted state; :meth:`add` grows it (on-device enrollment of
    new normal sound). Scoring a vector that is itself in the bank gives
    distance 0 to it: the bank is not a leave-one-out model.
    """

    kind = "knn"
    METHODS = ("largest", "mean")
    # states written before the option existed are unscaled
    LATER_PARAMS = frozenset({"standardize"})

    def __init__(
        self, k: int = 1, metric: str = "l2", method: str = "largest", standardize: bool = False, *, use_gpu: bool = False
    ) -> None:
        super().__init__(k, metric, use_gpu=use_gpu)
        self.method = choice("method", method, self.METHODS)
        self.standardize = bool(standardize)
        # per-feature z-scoring fitted on the bank: hand-made features (dB means
        # next to dB deviations) have scales that differ by orders of magnitude
        self._scale_mean: np.ndarray | None = None
        self._scale_std: np.ndarray | None = None

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        if self._scale_mean is None:
            return X
        return ((X - self._scale_mean) / self._scale_std).astype(np.float32)

    def fit(self, X: np.ndarray) -> KNNDetector:
        X = as_matrix(X, np.float32, min_rows=1)
        if self.k > X.shape[0]:
            raise ValueError(f"k={self.k} neighbours need at least {self.k} fitted vectors, got {X.shape[0]}")
        self._scale_mean = self._scale_std = None
        if self.standardize:
            self._scale_mean = X.mean(axis=0, dtype=np.float64)
            std = X.std(axis=0, dtype=np.float64)
            self._scale_std = np.where(std > 1e-12, std, 1.0)
        self._search = FlatSearch.fitted_on(self.metric, self._scaled(X), self.use_gpu)
        return self

    def add(self, X: np.ndarray) -> KNNDetector:
        """Append normal embeddings to the bank (on the scale fitted first); returns self."""
        search = self._bank()
        search.add(self._scaled(as_matrix(X, np.float32, dim=search.dim)))
        return self

    def kneighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances [n, k] (ascending) and bank indices [n, k] of each row's k nearest bank vectors."""
        search = self._bank()
        return search.search(self._scaled(as_matrix(X, np.float32, dim=search.dim)), self.k)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """k-NN distance per row; HIGHER = MORE ANOMALOUS (unlike scikit-learn's sign)."""
        dist, _ = self.kneighbors(X)
        return dist[:, -1].copy() if self.method == "largest" else dist.mean(axis=1)

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``bank``, ``offset`` and, when standardized, ``scale_mean`` and ``scale_std``."""
        arrays = super()._fitted_arrays()
        if self._scale_mean is not None:
            arrays.update(scale_mean=self._scale_mean, scale_std=self._scale_std)
        return arrays

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> KNNDetector:
        detector = cls(**cls._params_from_state(state), use_gpu=use_gpu)
        detector._search = FlatSearch.from_state(state, detector.metric, detector.k, use_gpu)
        if detector.standardize:
            mean, std = state_array(state, "scale_mean", 1), state_array(state, "scale_std", 1)
            dim = detector._search.dim
            if mean.shape != (dim,) or std.shape != (dim,) or not np.all(std > 0) or not np.all(np.isfinite(mean)):
                raise ValueError(f"detector state entries 'scale_mean'/'scale_std' must be {dim} finite numbers (std > 0)")
            detector._scale_mean, detector._scale_std = mean.astype(np.float64), std.astype(np.float64)
        return detector
