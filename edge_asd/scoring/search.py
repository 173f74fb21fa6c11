"""Exact nearest-neighbour search over a growable bank of vectors (KNN's and LOF's).

Candidates come from numpy for the small searches of the device (a clip's few
segments against a bank of hundreds) and from faiss for the large ones of
stage-2 fitting and on a GPU; either way their distances are re-computed in
float64 so that close neighbours keep their digits. faiss is imported only
when a search needs it: its library costs a scorer 14 MB of its ~100 MB.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from types import ModuleType

import numpy as np

from edge_asd.scoring.checks import as_matrix, state_array

__all__ = ["METRICS", "NUMPY_MAX_PAIRS", "FlatSearch", "limit_faiss_threads"]

METRICS = ("l2", "cosine")
# Rows of the candidate block gathered at once when re-computing distances
# exactly: bounds the temporary [rows, k, d] float64 block to ~32 MB.
_EXACT_BLOCK_ELEMENTS = 1 << 22
# Query x bank pairs up to which numpy picks the candidates on the CPU: a clip's 10 segments against 10^5 bank
# vectors, at most a few milliseconds; above it faiss's blocked kernels win (stage-2 fitting's out-of-fold searches).
NUMPY_MAX_PAIRS = 1 << 20
_faiss_threads: int | None = None  # the thread count limit_faiss_threads asked for, applied when faiss loads


def _faiss() -> ModuleType:
    if "faiss" not in sys.modules:
        module = importlib.import_module("faiss")
        if _faiss_threads is not None:
            module.omp_set_num_threads(_faiss_threads)
    return sys.modules["faiss"]


def limit_faiss_threads(n: int) -> None:
    """faiss's OpenMP threads, now if it is loaded, else when a search first loads it (process-wide, as OpenMP's)."""
    global _faiss_threads
    _faiss_threads = int(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(_faiss_threads)


def _gpu_available() -> bool:
    faiss = _faiss()
    # faiss-cpu builds have get_num_gpus() (it returns 0) but no GPU classes.
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FlatSearch:
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
            faiss = _faiss()
            self._gpu_resources = faiss.StandardGpuResources()
            index_type = faiss.GpuIndexFlatL2 if metric == "l2" else faiss.GpuIndexFlatIP
            self._gpu_index = index_type(self._gpu_resources, self.dim)

    @classmethod
    def fitted_on(cls, metric: str, X: np.ndarray, use_gpu: bool) -> FlatSearch:
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
    def from_state(cls, state: Mapping[str, np.ndarray], metric: str, min_rows: int, use_gpu: bool) -> FlatSearch:
        bank = as_matrix(state_array(state, "bank", 2), np.float32, min_rows=min_rows, what="state entry 'bank'")
        offset = state_array(state, "offset", 1)
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
        elif n * self._size <= NUMPY_MAX_PAIRS:
            idx = self._numpy_candidates(queries, k)
        else:
            faiss = _faiss()
            metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
            _, idx = faiss.knn(q32, self.bank, k, metric=metric)
        idx = idx.astype(np.int64, copy=False)
        dist = self._exact_distances(queries, idx)
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def _numpy_candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Indices [n, k] of the k nearest bank vectors (unsorted), by float64 products of the stored vectors."""
        bank = self.bank.astype(np.float64)
        if self.metric == "l2":
            key = (bank * bank).sum(axis=1)[None, :] - 2.0 * queries @ bank.T  # |q - b|^2 - |q|^2
        else:
            key = -(queries @ bank.T)  # the bank is normalised: the largest inner product is the nearest
        if k >= key.shape[1]:
            return np.broadcast_to(np.arange(key.shape[1]), key.shape).copy()
        return np.argpartition(key, k - 1, axis=1)[:, :k]

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
