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

    ``local_scale``: each bank vector's distance is divided by that vector's own
    distance to its nearest other bank vector (self-tuning, as LOF's local
    density), and the score is taken over these ratios. A clip is then judged
    against the spread of normal sound where it lands: the few clips of a new
    operating condition lie far apart, and a normal clip of that condition is
    not called anomalous for falling in their sparse neighbourhood. Scoring then
    ranks every bank vector per query (the banks it is used on hold hundreds).
    """

    kind = "knn"
    METHODS = ("largest", "mean")
    # states written before the option existed are unscaled
    LATER_PARAMS = frozenset({"standardize", "local_scale"})

    def __init__(
        self, k: int = 1, metric: str = "l2", method: str = "largest", standardize: bool = False,
        local_scale: bool = False, *, use_gpu: bool = False,
    ) -> None:
        super().__init__(k, metric, use_gpu=use_gpu)
        self.method = choice("method", method, self.METHODS)
        self.standardize = bool(standardize)
        self.local_scale = bool(local_scale)
        self._row_scale: np.ndarray | None = None
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
        if self.local_scale and X.shape[0] < 2:
            raise ValueError(f"local_scale needs at least 2 fitted vectors, got {X.shape[0]}")
        self._search = FlatSearch.fitted_on(self.metric, self._scaled(X), self.use_gpu)
        self._row_scale = self._neighbourhood_sizes() if self.local_scale else None
        return self

    def _neighbourhood_sizes(self) -> np.ndarray:
        """Each bank vector's distance to its nearest other one, floored so that duplicates divide by no zero."""
        search = self._bank()
        dist, _ = search.search_prepared(search.bank, 2)
        nearest = dist[:, 1]  # column 0 is the vector itself (or a duplicate: 0 either way)
        positive = nearest[nearest > 0]
        floor = 1e-6 * (float(np.median(positive)) if positive.size else 1.0)
        return np.maximum(nearest, floor)

    def add(self, X: np.ndarray) -> KNNDetector:
        """Append normal embeddings to the bank (on the scale fitted first); returns self."""
        search = self._bank()
        search.add(self._scaled(as_matrix(X, np.float32, dim=search.dim)))
        if self.local_scale:  # new vectors are neighbours of old ones too
            self._row_scale = self._neighbourhood_sizes()
        return self

    def kneighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances [n, k] (ascending) and bank indices [n, k] of each row's k nearest bank vectors.

        With ``local_scale`` the "distances" are the scaled ones the score is made of, nearest by that measure.
        """
        search = self._bank()
        queries = self._scaled(as_matrix(X, np.float32, dim=search.dim))
        if self._row_scale is None:
            return search.search(queries, self.k)
        dist, idx = search.search(queries, self.n_bank)
        ratio = dist / self._row_scale[idx]
        order = np.argsort(ratio, axis=1, kind="stable")[:, : self.k]
        return np.take_along_axis(ratio, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """k-NN distance per row; HIGHER = MORE ANOMALOUS (unlike scikit-learn's sign)."""
        dist, _ = self.kneighbors(X)
        return dist[:, -1].copy() if self.method == "largest" else dist.mean(axis=1)

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``bank``, ``offset`` and, when standardized, ``scale_mean`` and ``scale_std``."""
        arrays = super()._fitted_arrays()
        if self._scale_mean is not None:
            arrays.update(scale_mean=self._scale_mean, scale_std=self._scale_std)
        if self._row_scale is not None:
            arrays.update(row_scale=self._row_scale)
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
        if detector.local_scale:
            scale = state_array(state, "row_scale", 1)
            if scale.shape != (detector.n_bank,) or not np.all(scale > 0) or not np.all(np.isfinite(scale)):
                raise ValueError(f"detector state entry 'row_scale' must be {detector.n_bank} finite numbers > 0")
            detector._row_scale = scale.astype(np.float64)
        return detector
