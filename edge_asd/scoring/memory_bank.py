"""The base of the detectors that keep the normal embeddings themselves: a faiss memory bank.

KNN and LOF score a vector by its distances to its nearest bank vectors; what
they share -- the neighbour count, the metric, where the bank is searched, and
the bank in their state -- lives here (anomalib's ``MemoryBankMixin`` plays the
same part).
"""

from __future__ import annotations

import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.checks import choice, positive_int
from edge_asd.scoring.search import METRICS, FlatSearch

__all__ = ["MemoryBankDetector"]


class MemoryBankDetector(InlierDetector):
    """A detector over a bank of fitted vectors, searched exactly (see :class:`FlatSearch`).

    ``use_gpu`` is a run-time choice, not part of the model: with a faiss build
    that sees a GPU the bank is searched there, otherwise silently on the CPU,
    and it is not saved in the state.
    """

    def __init__(self, k: int, metric: str, *, use_gpu: bool) -> None:
        self.k = positive_int("k", k)
        self.metric = choice("metric", metric, METRICS)
        self.use_gpu = bool(use_gpu)
        self._search: FlatSearch | None = None

    @property
    def is_fitted(self) -> bool:
        return self._search is not None

    def _bank(self) -> FlatSearch:
        self._require_fitted()
        assert self._search is not None
        return self._search

    @property
    def n_features_in_(self) -> int:
        return self._bank().dim

    @property
    def n_bank(self) -> int:
        """Number of vectors in the bank."""
        return self._bank().bank.shape[0]

    @property
    def on_gpu(self) -> bool:
        return self._search is not None and self._search.on_gpu

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``bank`` and ``offset`` (see :attr:`FlatSearch.bank`)."""
        return self._bank().get_state()
