"""Stage-2 inlier models: anomaly detectors fitted on embeddings of normal sound.

Eq. 4 of the report scores a clip by running an inlier model ``h`` on each of
its S segment embeddings and pooling the S scores with an aggregator ``A``.
This module holds the three inlier models the report uses -- k-nearest
neighbours (:class:`KNNDetector`), a Gaussian mixture (:class:`GMMDetector`) and
the local outlier factor (:class:`LOFDetector`) -- and the aggregators
(:func:`aggregate`).

The detectors run on the device, so they depend on numpy and faiss only. Their
interface is PyOD-like: ``fit(X)`` on embeddings of normal segments, then
``score_samples(X)`` gives one ANOMALY score per row, HIGHER = MORE ANOMALOUS
(the opposite sign to scikit-learn's ``score_samples``). A fitted detector is
saved as plain arrays -- ``get_state()`` returns a ``dict[str, np.ndarray]``
holding the hyper-parameters (0-d arrays), a ``"kind"`` and a ``"version"``
entry and the fitted arrays, so ``np.savez`` writes it and
``np.load(allow_pickle=False)`` reads it back -- and ``from_state`` (or
:func:`detector_from_state`) rebuilds it from nothing else.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import faiss
import numpy as np

__all__ = [
    "AGGREGATORS",
    "DETECTORS",
    "GMMDetector",
    "InlierDetector",
    "KNNDetector",
    "LOFDetector",
    "STATE_VERSION",
    "aggregate",
    "detector_from_state",
    "make_detector",
]

# Bumped when the layout of get_state() changes, so that an old bundle is
# rejected with a clear message instead of being misread.
STATE_VERSION = 1

_D = TypeVar("_D", bound="InlierDetector")


# --- input checks ------------------------------------------------------------------


def _as_matrix(X: Any, dtype: type, *, dim: int | None = None, min_rows: int = 0, what: str = "X") -> np.ndarray:
    """``X`` as a C-contiguous 2-D array of ``dtype``; ValueError if it is not a finite real matrix."""
    arr = np.asarray(X)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D [n_samples, n_features], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what} has {arr.shape[1]} features, but the detector was fitted on {dim}")
    if arr.shape[1] == 0:
        raise ValueError(f"{what} has no features")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{what} has {arr.shape[0]} rows; at least {min_rows} are needed")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} contains NaN or infinite values" + (" (or values too large for float32)" if dtype is np.float32 else ""))
    return out


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return str(value)


# --- state helpers ----------------------------------------------------------------


def _state_item(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state:
        raise ValueError(f"detector state has no {key!r} entry")
    return np.asarray(state[key])


def _state_scalar(state: Mapping[str, np.ndarray], key: str) -> Any:
    arr = _state_item(state, key)
    if arr.ndim != 0:
        raise ValueError(f"detector state entry {key!r} must be a scalar, got shape {arr.shape}")
    return arr.item()


def _state_array(state: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    arr = _state_item(state, key)
    if arr.ndim != ndim or arr.dtype.kind not in "fiu":
        raise ValueError(f"detector state entry {key!r} must be a {ndim}-D numeric array, got {arr.dtype} {arr.shape}")
    return arr


def _check_state_header(state: Mapping[str, np.ndarray], kind: str) -> None:
    found = str(_state_scalar(state, "kind"))
    if found != kind:
        raise ValueError(f"detector state is of kind {found!r}, expected {kind!r}")
    version = int(_state_scalar(state, "version"))
    if version != STATE_VERSION:
        raise ValueError(f"detector state version {version} is not supported (this build reads version {STATE_VERSION})")


# --- the common interface ------------------------------------------------------------


class InlierDetector(ABC):
    """An anomaly detector fitted on normal embeddings; higher score = more anomalous."""

    kind: ClassVar[str]

    @abstractmethod
    def fit(self: _D, X: np.ndarray) -> _D:
        """Fit on ``X`` [n_samples, n_features] of normal embeddings; returns self."""

    @abstractmethod
    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row of ``X``, float64 [n_samples]; HIGHER = MORE ANOMALOUS.

        Note the sign: scikit-learn's ``score_samples`` is higher for normal
        points; this one, like PyOD's ``decision_function``, is higher for
        anomalies.
        """

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The hyper-parameters, JSON-able; ``make_detector(d.kind, **d.params())`` rebuilds an unfitted copy."""

    @abstractmethod
    def get_state(self) -> dict[str, np.ndarray]:
        """Hyper-parameters and fitted arrays as numpy arrays (numeric or str only)."""

    @classmethod
    @abstractmethod
    def from_state(cls: type[_D], state: Mapping[str, np.ndarray]) -> _D:
        """Rebuild a fitted detector from :meth:`get_state`'s output alone."""

    @property
    @abstractmethod
    def n_features_in_(self) -> int:
        """Dimensionality of the fitted embeddings."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool: ...

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def _header(self) -> dict[str, np.ndarray]:
        state = {"kind": np.array(self.kind), "version": np.array(STATE_VERSION, dtype=np.int64)}
        for key, value in self.params().items():
            # flags as integers: states hold numbers and strings only
            state[key] = np.array(int(value) if isinstance(value, bool) else value)
        return state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


# --- exact nearest-neighbour search on faiss -------------------------------------------------

_METRICS = ("l2", "cosine")
# Rows of the candidate block gathered at once when re-computing distances
# exactly: bounds the temporary [rows, k, d] float64 block to ~32 MB.
_EXACT_BLOCK_ELEMENTS = 1 << 22


def _gpu_available() -> bool:
    # faiss-cpu builds have get_num_gpus() (it returns 0) but no GPU classes.
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class _FlatSearch:
    """Exact k-NN search over a growable bank of float32 vectors.

    Candidates come from faiss's exhaustive search: on the CPU ``faiss.knn``, the
    kernel behind ``IndexFlatL2.search`` / ``IndexFlatIP.search``, run directly on
    the bank so that the vectors are not held twice in memory (an IndexFlat
    copies them); on a GPU a ``GpuIndexFlatL2`` / ``GpuIndexFlatIP``.

    For large query batches (``faiss.cvar.distance_compute_blas_threshold``) and
    always on a GPU, faiss computes squared distances as ``|x|^2 + |y|^2 - 2 x.y``
    in float32, which loses every digit when neighbours are close compared with
    their norms -- the common case for embeddings of one machine's sound, which
    share a large common component. Two things guard against it: for the L2
    metric the bank is stored minus an ``offset`` (the mean of the first vectors
    fitted; distances do not change under a translation), which removes that
    common component; and the distances of the candidates faiss returns are
    re-computed in float64 and re-sorted, which costs O(n_queries * k * d),
    nothing next to the search. What remains is that faiss picks the candidates
    in float32 after centring: exact unless clusters that are far apart compared
    with their own spread fill the bank.

    For the cosine metric the bank holds L2-normalised vectors (offset 0), the
    search uses inner products, and distance = 1 - cos, clipped to [0, 2]. A zero
    vector stays zero (cosine 0 with everything, distance 1).
    """

    def __init__(self, metric: str, offset: np.ndarray, use_gpu: bool) -> None:
        self.metric = metric
        self.offset = np.asarray(offset, dtype=np.float64)
        self.dim = self.offset.shape[0]
        self._buffer = np.empty((0, self.dim), dtype=np.float32)
        self._size = 0
        self._gpu_index = None
        self._gpu_resources = None
        if use_gpu and _gpu_available():
            self._gpu_resources = faiss.StandardGpuResources()
            index_type = faiss.GpuIndexFlatL2 if metric == "l2" else faiss.GpuIndexFlatIP
            self._gpu_index = index_type(self._gpu_resources, self.dim)

    @classmethod
    def fitted_on(cls, metric: str, X: np.ndarray, use_gpu: bool) -> _FlatSearch:
        offset = X.mean(axis=0, dtype=np.float64) if metric == "l2" else np.zeros(X.shape[1])
        search = cls(metric, offset, use_gpu)
        search.add(X)
        return search

    @property
    def bank(self) -> np.ndarray:
        """The stored vectors: minus ``offset`` (l2) or L2-normalised (cosine), float32."""
        return self._buffer[: self._size]

    @property
    def on_gpu(self) -> bool:
        return self._gpu_index is not None

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """Vectors as the bank stores them: centred (l2) or normalised (cosine) in float64, then float32.

        Queries go through the same rounding as the bank so that a query equal
        to a bank vector lands on it exactly (distance 0, which LOF's handling
        of duplicates relies on).
        """
        X = np.asarray(X, dtype=np.float64)
        if self.metric == "cosine":
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            X = X / np.where(norms > 0.0, norms, 1.0)
        else:
            X = X - self.offset
        return np.ascontiguousarray(X, dtype=np.float32)

    def add(self, X: np.ndarray) -> None:
        """Append rows given in the caller's coordinates (already checked)."""
        self.add_prepared(self.prepare(X))

    def add_prepared(self, rows: np.ndarray) -> None:
        """Append rows already as the bank stores them (e.g. from a saved state)."""
        needed = self._size + rows.shape[0]
        if needed > self._buffer.shape[0]:
            # Geometric growth: on-device enrollment adds a clip's few segments
            # at a time, and copying the whole bank each time would be quadratic.
            grown = np.empty((max(needed, 2 * self._buffer.shape[0], 1024), self.dim), dtype=np.float32)
            grown[: self._size] = self.bank
            self._buffer = grown
        self._buffer[self._size : needed] = rows
        self._size = needed
        if self._gpu_index is not None:
            self._gpu_index.add(np.ascontiguousarray(rows, dtype=np.float32))

    def get_state(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank.copy(), "offset": self.offset.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], metric: str, min_rows: int, use_gpu: bool) -> _FlatSearch:
        bank = _as_matrix(_state_array(state, "bank", 2), np.float32, min_rows=min_rows, what="state entry 'bank'")
        offset = _state_array(state, "offset", 1)
        if offset.shape != (bank.shape[1],) or not np.all(np.isfinite(offset)):
            raise ValueError(f"detector state entry 'offset' must be {bank.shape[1]} finite numbers, got shape {offset.shape}")
        search = cls(metric, offset, use_gpu)
        search.add_prepared(bank)  # stored already centred / normalised
        return search

    def search(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances [n, k] (float64, ascending) and bank indices [n, k] of the k nearest."""
        return self.search_prepared(self.prepare(X), k)

    def search_prepared(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for float32 queries already in the bank's coordinates."""
        if k > self._size:
            raise ValueError(f"{k} neighbours requested but the bank holds only {self._size} vectors")
        n = queries.shape[0]
        if n == 0:
            return np.empty((0, k)), np.empty((0, k), dtype=np.int64)
        q32 = np.ascontiguousarray(queries, dtype=np.float32)
        queries = q32.astype(np.float64)
        if self._gpu_index is not None:
            _, idx = self._gpu_index.search(q32, k)
        else:
            metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
            _, idx = faiss.knn(q32, self.bank, k, metric=metric)
        idx = idx.astype(np.int64, copy=False)
        dist = self._exact_distances(queries, idx)
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def _exact_distances(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        n, k = idx.shape
        out = np.empty((n, k), dtype=np.float64)
        rows = max(1, _EXACT_BLOCK_ELEMENTS // (k * self.dim))
        bank = self.bank
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            neighbours = bank[idx[start:stop]].astype(np.float64)  # [r, k, d]
            q = queries[start:stop]
            if self.metric == "l2":
                diff = neighbours - q[:, None, :]
                out[start:stop] = np.sqrt(np.einsum("rkd,rkd->rk", diff, diff))
            else:
                # Re-normalise in float64: float32 rounding of the normalised
                # vectors would leave identical vectors ~1e-8 apart, not ~1e-16.
                norms = np.linalg.norm(neighbours, axis=2) * np.linalg.norm(q, axis=1)[:, None]
                cos = np.einsum("rkd,rd->rk", neighbours, q) / np.where(norms > 0.0, norms, 1.0)
                out[start:stop] = np.clip(1.0 - cos, 0.0, 2.0)
        return out


# --- KNN ------------------------------------------------------------------------------


class KNNDetector(InlierDetector):
    """k-nearest-neighbour distance to the bank of normal embeddings.

    Score = distance to the k-th nearest bank vector (``method="largest"``, PyOD's
    default) or the mean distance to the k nearest (``"mean"``). ``metric="l2"``
    is the Euclidean distance; ``"cosine"`` is 1 - cosine similarity. The search
    is exact (see :class:`_FlatSearch`); with ``use_gpu=True`` and a faiss build
    that sees a GPU the bank is searched there, otherwise silently on the CPU.
    ``use_gpu`` is a run-time choice, not part of the model: it is not saved in
    the state.

    The bank is the fitted state; :meth:`add` grows it (on-device enrollment of
    new normal sound). Scoring a vector that is itself in the bank gives
    distance 0 to it: the bank is not a leave-one-out model.
    """

    kind = "knn"
    METHODS = ("largest", "mean")

    def __init__(
        self, k: int = 1, metric: str = "l2", method: str = "largest", standardize: bool = False, *, use_gpu: bool = False
    ) -> None:
        self.k = _positive_int("k", k)
        self.metric = _choice("metric", metric, _METRICS)
        self.method = _choice("method", method, self.METHODS)
        self.standardize = bool(standardize)
        self.use_gpu = bool(use_gpu)
        self._search: _FlatSearch | None = None
        # per-feature z-scoring fitted on the bank: hand-made features (dB means
        # next to dB deviations) have scales that differ by orders of magnitude
        self._scale_mean: np.ndarray | None = None
        self._scale_std: np.ndarray | None = None

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "metric": self.metric, "method": self.method, "standardize": self.standardize}

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        if self._scale_mean is None:
            return X
        return ((X - self._scale_mean) / self._scale_std).astype(np.float32)

    @property
    def is_fitted(self) -> bool:
        return self._search is not None

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        assert self._search is not None
        return self._search.dim

    @property
    def n_bank(self) -> int:
        """Number of vectors in the bank."""
        self._require_fitted()
        assert self._search is not None
        return self._search.bank.shape[0]

    @property
    def on_gpu(self) -> bool:
        return self._search is not None and self._search.on_gpu

    def fit(self, X: np.ndarray) -> KNNDetector:
        X = _as_matrix(X, np.float32, min_rows=1)
        if self.k > X.shape[0]:
            raise ValueError(f"k={self.k} neighbours need at least {self.k} fitted vectors, got {X.shape[0]}")
        self._scale_mean = self._scale_std = None
        if self.standardize:
            self._scale_mean = X.mean(axis=0, dtype=np.float64)
            std = X.std(axis=0, dtype=np.float64)
            self._scale_std = np.where(std > 1e-12, std, 1.0)
        self._search = _FlatSearch.fitted_on(self.metric, self._scaled(X), self.use_gpu)
        return self

    def add(self, X: np.ndarray) -> KNNDetector:
        """Append normal embeddings to the bank (on the scale fitted first); returns self."""
        self._require_fitted()
        assert self._search is not None
        self._search.add(self._scaled(_as_matrix(X, np.float32, dim=self._search.dim)))
        return self

    def kneighbors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances [n, k] (ascending) and bank indices [n, k] of each row's k nearest bank vectors."""
        self._require_fitted()
        assert self._search is not None
        return self._search.search(self._scaled(_as_matrix(X, np.float32, dim=self._search.dim)), self.k)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """k-NN distance per row; HIGHER = MORE ANOMALOUS (unlike scikit-learn's sign)."""
        dist, _ = self.kneighbors(X)
        return dist[:, -1].copy() if self.method == "largest" else dist.mean(axis=1)

    def get_state(self) -> dict[str, np.ndarray]:
        """Header, hyper-parameters, ``bank`` and ``offset`` (see :meth:`_FlatSearch.bank`)."""
        self._require_fitted()
        assert self._search is not None
        scale = {} if self._scale_mean is None else {"scale_mean": self._scale_mean.copy(), "scale_std": self._scale_std.copy()}
        return {**self._header(), **self._search.get_state(), **scale}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> KNNDetector:
        _check_state_header(state, cls.kind)
        detector = cls(
            k=int(_state_scalar(state, "k")),
            metric=str(_state_scalar(state, "metric")),
            method=str(_state_scalar(state, "method")),
            # states written before the option existed are unscaled
            standardize=bool(_state_scalar(state, "standardize")) if "standardize" in state else False,
            use_gpu=use_gpu,
        )
        detector._search = _FlatSearch.from_state(state, detector.metric, detector.k, use_gpu)
        if detector.standardize:
            mean, std = _state_array(state, "scale_mean", 1), _state_array(state, "scale_std", 1)
            dim = detector._search.dim
            if mean.shape != (dim,) or std.shape != (dim,) or not np.all(std > 0) or not np.all(np.isfinite(mean)):
                raise ValueError(f"detector state entries 'scale_mean'/'scale_std' must be {dim} finite numbers (std > 0)")
            detector._scale_mean, detector._scale_std = mean.astype(np.float64), std.astype(np.float64)
        return detector


# --- LOF ------------------------------------------------------------------------------


class LOFDetector(InlierDetector):
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
        self.k = _positive_int("k", k)
        self.metric = _choice("metric", metric, _METRICS)
        self.use_gpu = bool(use_gpu)
        self._search: _FlatSearch | None = None
        self._k_distance = np.empty(0)
        self._lrd = np.empty(0)
        self.training_scores_ = np.empty(0)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "metric": self.metric}

    @property
    def is_fitted(self) -> bool:
        return self._search is not None

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        assert self._search is not None
        return self._search.dim

    def fit(self, X: np.ndarray) -> LOFDetector:
        X = _as_matrix(X, np.float32, min_rows=1)
        n = X.shape[0]
        if self.k >= n:
            raise ValueError(f"k={self.k} neighbours need at least {self.k + 1} fitted vectors (each point's own is excluded), got {n}")
        search = _FlatSearch.fitted_on(self.metric, X, self.use_gpu)
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
        self._require_fitted()
        assert self._search is not None
        dist, idx = self._search.search(_as_matrix(X, np.float32, dim=self._search.dim), self.k)
        lrd = _local_reachability_density(dist, idx, self._k_distance)
        return np.mean(self._lrd[idx] / lrd[:, None], axis=1)

    def get_state(self) -> dict[str, np.ndarray]:
        """Header, hyper-parameters, ``bank``, ``offset``, ``k_distance``, ``lrd`` and ``training_scores``."""
        self._require_fitted()
        assert self._search is not None
        state = {**self._header(), **self._search.get_state()}
        state["k_distance"] = self._k_distance.copy()
        state["lrd"] = self._lrd.copy()
        state["training_scores"] = self.training_scores_.copy()
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> LOFDetector:
        _check_state_header(state, cls.kind)
        detector = cls(k=int(_state_scalar(state, "k")), metric=str(_state_scalar(state, "metric")), use_gpu=use_gpu)
        search = _FlatSearch.from_state(state, detector.metric, detector.k + 1, use_gpu)
        n = search.bank.shape[0]
        arrays = {}
        for key in ("k_distance", "lrd", "training_scores"):
            arr = np.asarray(_state_array(state, key, 1), dtype=np.float64)
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


# --- GMM ------------------------------------------------------------------------------

_COVARIANCE_TYPES = ("full", "diag")
_LOG_2PI = math.log(2.0 * math.pi)
# k-means iterations that seed EM; they only need to separate the components
# roughly, EM does the rest.
_KMEANS_MAX_ITER = 20


@dataclass(frozen=True)
class _Mixture:
    """Parameters of a fitted mixture plus the factors scoring needs."""

    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, d]
    covariances: np.ndarray  # full: [K, d, d]; diag: [K, d]
    prec_chol: np.ndarray  # full: [K, d, d] U with precision = U U^T; diag: [K, d] 1 / sigma
    log_det_prec_chol: np.ndarray  # [K] log det U = -0.5 log det covariance

    @classmethod
    def build(cls, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, reg_covar: float) -> _Mixture:
        if covariances.ndim == 3:
            prec_chol = np.empty_like(covariances)
            log_det = np.empty(covariances.shape[0])
            eye = np.eye(covariances.shape[1])
            for j, cov in enumerate(covariances):
                try:
                    lower = np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    raise ValueError(
                        f"covariance of GMM component {j} is not positive definite "
                        f"(a collapsed component or duplicated samples); increase reg_covar (now {reg_covar:g})"
                    ) from None
                # cov = L L^T, so precision = L^-T L^-1 = U U^T with U = L^-T.
                prec_chol[j] = np.linalg.solve(lower, eye).T
                log_det[j] = -np.sum(np.log(np.diag(lower)))
        else:
            if np.any(covariances <= 0.0):
                raise ValueError(f"a GMM variance is zero (a constant feature?); increase reg_covar (now {reg_covar:g})")
            prec_chol = 1.0 / np.sqrt(covariances)
            log_det = np.sum(np.log(prec_chol), axis=1)
        return cls(weights, means, covariances, prec_chol, log_det)

    def weighted_log_prob(self, X: np.ndarray) -> np.ndarray:
        """log(w_j N(x | mu_j, Sigma_j)) for every row and component, [n, K]."""
        n, d = X.shape
        out = np.empty((n, self.weights.size))
        full = self.covariances.ndim == 3
        for j in range(self.weights.size):
            diff = X - self.means[j]
            y = diff @ self.prec_chol[j] if full else diff * self.prec_chol[j]
            out[:, j] = -0.5 * (d * _LOG_2PI + np.einsum("nd,nd->n", y, y)) + self.log_det_prec_chol[j]
        with np.errstate(divide="ignore"):  # a weight of exactly 0 is a legitimate -inf
            return out + np.log(self.weights)


class GMMDetector(InlierDetector):
    """Gaussian mixture fitted by EM in numpy; score = negative log-likelihood.

    Initialisation: greedy k-means++ seeding (as scikit-learn's, ``2 + ln K``
    candidates per centre), then up to 20 Lloyd iterations, stopping when the
    assignments stop changing; the hard assignments are the first
    responsibilities, from which the first M-step computes weights, means and
    covariances. EM then alternates E- and M-steps until the mean per-sample
    log-likelihood changes by less than ``tol`` or ``max_iter`` M-steps have
    run. ``reg_covar`` is added to every covariance diagonal. With ``n_init > 1``
    the fit with the highest log-likelihood is kept. Everything random draws from
    ``numpy.random.default_rng(seed)``, so a fit is reproducible.

    Log-densities go through Cholesky factors and the log-sum-exp, so they stay
    finite far from the data. After :meth:`fit`, ``lower_bound_`` is the mean
    log-likelihood of the training data under the returned parameters and
    ``lower_bound_history_`` that of each EM iterate (index 0: the
    initialisation); these are not part of the state.
    """

    kind = "gmm"

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-3,
        n_init: int = 1,
        seed: int = 0,
    ) -> None:
        self.n_components = _positive_int("n_components", n_components)
        self.covariance_type = _choice("covariance_type", covariance_type, _COVARIANCE_TYPES)
        self.reg_covar = _non_negative("reg_covar", reg_covar)
        self.max_iter = _positive_int("max_iter", max_iter)
        self.tol = _non_negative("tol", tol)
        self.n_init = _positive_int("n_init", n_init)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._mixture: _Mixture | None = None
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf
        self.lower_bound_history_: list[float] = []

    def params(self) -> dict[str, Any]:
        return {
            "n_components": self.n_components,
            "covariance_type": self.covariance_type,
            "reg_covar": self.reg_covar,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "n_init": self.n_init,
            "seed": self.seed,
        }

    @property
    def is_fitted(self) -> bool:
        return self._mixture is not None

    def _fitted(self) -> _Mixture:
        self._require_fitted()
        assert self._mixture is not None
        return self._mixture

    @property
    def n_features_in_(self) -> int:
        return self._fitted().means.shape[1]

    @property
    def weights_(self) -> np.ndarray:
        return self._fitted().weights

    @property
    def means_(self) -> np.ndarray:
        return self._fitted().means

    @property
    def covariances_(self) -> np.ndarray:
        return self._fitted().covariances

    # -- fitting --

    def fit(self, X: np.ndarray) -> GMMDetector:
        X = _as_matrix(X, np.float64, min_rows=1)
        if X.shape[0] < self.n_components:
            raise ValueError(f"n_components={self.n_components} needs at least {self.n_components} samples, got {X.shape[0]}")
        rng = np.random.default_rng(self.seed)
        best: _EMRun | None = None
        for _ in range(self.n_init):
            run = self._em(X, rng)
            if best is None or run.log_likelihood > best.log_likelihood:
                best = run
        assert best is not None
        self._mixture = best.mixture
        self.converged_, self.n_iter_ = best.converged, best.n_iter
        self.lower_bound_, self.lower_bound_history_ = best.log_likelihood, best.history
        return self

    def _em(self, X: np.ndarray, rng: np.random.Generator) -> _EMRun:
        labels = _kmeans_labels(X, self.n_components, rng)
        resp = np.zeros((X.shape[0], self.n_components))
        resp[np.arange(X.shape[0]), labels] = 1.0
        mixture = self._m_step(X, resp)
        ll, log_resp = _e_step(mixture, X)
        history = [ll]
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            mixture = self._m_step(X, np.exp(log_resp))
            new_ll, log_resp = _e_step(mixture, X)
            history.append(new_ll)
            change, ll = new_ll - ll, new_ll
            if abs(change) < self.tol:
                converged = True
                break
        return _EMRun(mixture, ll, converged, n_iter, history)

    def _m_step(self, X: np.ndarray, resp: np.ndarray) -> _Mixture:
        d = X.shape[1]
        # The tiny floor keeps an emptied component's mean finite (scikit-learn does the same).
        nk = resp.sum(axis=0) + 10.0 * np.finfo(np.float64).eps
        means = (resp.T @ X) / nk[:, None]
        if self.covariance_type == "full":
            covariances = np.empty((self.n_components, d, d))
            for j in range(self.n_components):
                diff = X - means[j]
                cov = (resp[:, j, None] * diff).T @ diff / nk[j]
                cov.flat[:: d + 1] += self.reg_covar
                covariances[j] = cov
        else:
            covariances = np.empty((self.n_components, d))
            for j in range(self.n_components):
                diff = X - means[j]
                covariances[j] = resp[:, j] @ (diff * diff) / nk[j] + self.reg_covar
        return _Mixture.build(nk / nk.sum(), means, covariances, self.reg_covar)

    # -- scoring --

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """Log-density of the mixture at each row of ``X`` [n_samples]."""
        mixture = self._fitted()
        X = _as_matrix(X, np.float64, dim=mixture.means.shape[1])
        return _logsumexp(mixture.weighted_log_prob(X))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Negative log-likelihood per row; HIGHER = MORE ANOMALOUS (unlike scikit-learn's sign)."""
        return -self.log_likelihood(X)

    # -- state --

    def get_state(self) -> dict[str, np.ndarray]:
        """Header, hyper-parameters, ``weights`` [K], ``means`` [K, d], ``covariances`` [K, d, d] or [K, d]."""
        mixture = self._fitted()
        state = self._header()
        state["weights"] = mixture.weights.copy()
        state["means"] = mixture.means.copy()
        state["covariances"] = mixture.covariances.copy()
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> GMMDetector:
        _check_state_header(state, cls.kind)
        detector = cls(
            n_components=int(_state_scalar(state, "n_components")),
            covariance_type=str(_state_scalar(state, "covariance_type")),
            reg_covar=float(_state_scalar(state, "reg_covar")),
            max_iter=int(_state_scalar(state, "max_iter")),
            tol=float(_state_scalar(state, "tol")),
            n_init=int(_state_scalar(state, "n_init")),
            seed=int(_state_scalar(state, "seed")),
        )
        weights = np.asarray(_state_array(state, "weights", 1), dtype=np.float64)
        means = np.asarray(_state_array(state, "means", 2), dtype=np.float64)
        full = detector.covariance_type == "full"
        covariances = np.asarray(_state_array(state, "covariances", 3 if full else 2), dtype=np.float64)
        n_comp, dim = means.shape
        expected = (n_comp, dim, dim) if full else (n_comp, dim)
        if weights.shape != (n_comp,) or covariances.shape != expected or n_comp != detector.n_components or dim == 0:
            raise ValueError(
                f"GMM state shapes disagree: weights {weights.shape}, means {means.shape}, "
                f"covariances {covariances.shape} for n_components={detector.n_components}"
            )
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
            raise ValueError("GMM state contains NaN or infinite values")
        if np.any(weights < 0.0) or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError("GMM state weights must be non-negative and sum to 1")
        detector._mixture = _Mixture.build(weights, means, covariances, detector.reg_covar)
        return detector


@dataclass(frozen=True)
class _EMRun:
    mixture: _Mixture
    log_likelihood: float  # mean per sample, under ``mixture``
    converged: bool
    n_iter: int
    history: list[float]


def _e_step(mixture: _Mixture, X: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean log-likelihood and log-responsibilities [n, K]."""
    weighted = mixture.weighted_log_prob(X)
    log_norm = _logsumexp(weighted)
    return float(np.mean(log_norm)), weighted - log_norm[:, None]


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(value) and value >= 0.0
    ):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=1)) without overflow or underflow."""
    top = np.max(a, axis=1)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top[:, None]), axis=1)) + top


def _squared_distances(X: np.ndarray, X_sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = X_sq[:, None] - 2.0 * (X @ centres.T) + np.einsum("kd,kd->k", centres, centres)[None, :]
    return np.maximum(d2, 0.0)


def _kmeans_labels(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels from greedy k-means++ seeding and a few Lloyd iterations."""
    n = X.shape[0]
    X_sq = np.einsum("nd,nd->n", X, X)
    centres = np.empty((k, X.shape[1]))
    first = int(rng.integers(n))
    centres[0] = X[first]
    closest = _squared_distances(X, X_sq, centres[:1])[:, 0]
    trials = 2 + int(math.log(k))
    for c in range(1, k):
        potential = closest.sum()
        if potential > 0.0:
            candidates = np.searchsorted(np.cumsum(closest), rng.uniform(size=trials) * potential)
            candidates = np.minimum(candidates, n - 1)
        else:  # every point coincides with a centre already: any choice is as good
            candidates = rng.integers(n, size=trials)
        cand_dist = np.minimum(closest[None, :], _squared_distances(X, X_sq, X[candidates]).T)
        best = int(np.argmin(cand_dist.sum(axis=1)))
        centres[c] = X[candidates[best]]
        closest = cand_dist[best]
    labels = np.argmin(_squared_distances(X, X_sq, centres), axis=1)
    for _ in range(_KMEANS_MAX_ITER):
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, X)
        occupied = counts > 0
        # An emptied cluster keeps its centre; EM can still revive or starve it.
        centres[occupied] = sums[occupied] / counts[occupied, None]
        new_labels = np.argmin(_squared_distances(X, X_sq, centres), axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels


# --- registry ----------------------------------------------------------------------------

DETECTORS: Mapping[str, type[InlierDetector]] = MappingProxyType(
    {"knn": KNNDetector, "gmm": GMMDetector, "lof": LOFDetector}
)


def make_detector(name: str, **params: Any) -> InlierDetector:
    """An unfitted detector by name (``"knn"``, ``"gmm"``, ``"lof"``) with hyper-parameters.

    ``make_detector("knn", k=4, metric="cosine")``. Unknown names or parameters
    raise ValueError listing what is accepted.
    """
    cls = DETECTORS.get(name)
    if cls is None:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    signature = inspect.signature(cls)
    unknown = [key for key in params if key not in signature.parameters]
    if unknown:
        accepted = ", ".join(signature.parameters)
        raise ValueError(f"detector {name!r} has no parameter {', '.join(unknown)}; accepted: {accepted}")
    return cls(**params)


def detector_from_state(state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> InlierDetector:
    """Rebuild a fitted detector from its ``get_state()`` arrays (e.g. an ``np.load`` result).

    ``use_gpu`` moves a KNN or LOF bank to the GPU when faiss can; the GMM runs in numpy.
    """
    kind = str(_state_scalar(state, "kind"))
    cls = DETECTORS.get(kind)
    if cls is None:
        raise ValueError(f"detector state of unknown kind {kind!r}; known: {', '.join(DETECTORS)}")
    if cls is GMMDetector:
        return GMMDetector.from_state(state)
    return cls.from_state(state, use_gpu=use_gpu)  # type: ignore[call-arg]


# --- aggregators -----------------------------------------------------------------------------

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
