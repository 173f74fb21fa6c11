"""The interface every stage-2 inlier model implements, in the manner of PyOD's ``BaseDetector``.

``fit(X)`` on embeddings of normal segments, then ``score_samples(X)`` (or its
PyOD name ``decision_function``) gives one ANOMALY score per row, HIGHER = MORE
ANOMALOUS -- the opposite sign to scikit-learn's ``score_samples``.

The hyper-parameters are the constructor's positional-or-keyword arguments,
each kept as an attribute of the same name: :meth:`InlierDetector.get_params`
reads them off the signature. Keyword-only arguments (``use_gpu``) say where a
detector runs, not what it is, and are left out of the parameters and the state.

A fitted detector is saved as plain arrays: ``get_state()`` returns a
``dict[str, np.ndarray]`` holding a ``"kind"`` and a ``"version"`` entry, the
hyper-parameters (0-d arrays) and the fitted arrays, so ``np.savez`` writes it
and ``np.load(allow_pickle=False)`` reads it back; ``from_state`` rebuilds the
detector from nothing else.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from edge_asd.scoring.checks import state_scalar

__all__ = ["STATE_VERSION", "InlierDetector", "check_state_header"]

# Bumped when the layout of get_state() changes, so that an old bundle is
# rejected with a clear message instead of being misread.
STATE_VERSION = 1

_D = TypeVar("_D", bound="InlierDetector")


def check_state_header(state: Mapping[str, np.ndarray], kind: str) -> None:
    found = str(state_scalar(state, "kind"))
    if found != kind:
        raise ValueError(f"detector state is of kind {found!r}, expected {kind!r}")
    version = int(state_scalar(state, "version"))
    if version != STATE_VERSION:
        raise ValueError(f"detector state version {version} is not supported (this build reads version {STATE_VERSION})")


class InlierDetector(ABC):
    """An anomaly detector fitted on normal embeddings; higher score = more anomalous."""

    kind: ClassVar[str]
    # Parameters added after states were first written: a state without one
    # gets the constructor's default, which is what those states were fitted with.
    LATER_PARAMS: ClassVar[frozenset[str]] = frozenset()
    # True where ``fit`` takes ``domains=`` (each row's recording condition) and models the domains apart
    fits_domains: ClassVar[bool] = False

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

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """PyOD's name for :meth:`score_samples`."""
        return self.score_samples(X)

    @abstractmethod
    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays of the state, in the order the state lists them (a fitted detector only)."""

    def get_state(self) -> dict[str, np.ndarray]:
        """Header, hyper-parameters and fitted arrays as numpy arrays (numeric or str only)."""
        self._require_fitted()
        return {**self._header(), **{key: np.array(value) for key, value in self._fitted_arrays().items()}}

    @classmethod
    @abstractmethod
    def from_state(cls: type[_D], state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> _D:
        """Rebuild a fitted detector from :meth:`get_state`'s output alone.

        ``use_gpu`` moves the detector to the GPU where it has a GPU path (faiss banks).
        """

    @property
    @abstractmethod
    def n_features_in_(self) -> int:
        """Dimensionality of the fitted embeddings."""

    @property
    @abstractmethod
    def is_fitted(self) -> bool: ...

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        signature = inspect.signature(cls.__init__)
        return tuple(p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self")

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters, JSON-able; ``make_detector(d.kind, **d.get_params())`` rebuilds an unfitted copy."""
        return {name: getattr(self, name) for name in self._param_names()}

    def params(self) -> dict[str, Any]:
        """:meth:`get_params`, under the name the bundle code and its tests have always used."""
        return self.get_params()

    @classmethod
    def _params_from_state(cls, state: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The constructor arguments a state records, after checking its header."""
        check_state_header(state, cls.kind)
        params: dict[str, Any] = {}
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind is not p.POSITIONAL_OR_KEYWORD or p.name == "self":
                continue
            if p.name in cls.LATER_PARAMS and p.name not in state:
                continue
            # the default's type: flags are stored as integers, numbers as 0-d arrays
            params[p.name] = type(p.default)(state_scalar(state, p.name))
        return params

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def _header(self) -> dict[str, np.ndarray]:
        state = {"kind": np.array(self.kind), "version": np.array(STATE_VERSION, dtype=np.int64)}
        for key, value in self.get_params().items():
            # flags as integers: states hold numbers and strings only
            state[key] = np.array(int(value) if isinstance(value, bool) else value)
        return state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
