"""Validation of what reaches a detector: input matrices, hyper-parameters and saved state entries.

Every check raises ValueError with a message that names the offending value, so
that a bad bundle or a bad option ends in one line for the user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def as_matrix(X: Any, dtype: type, *, dim: int | None = None, min_rows: int = 0, what: str = "X") -> np.ndarray:
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


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(value) and value >= 0.0
    ):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return str(value)


def state_item(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state:
        raise ValueError(f"detector state has no {key!r} entry")
    return np.asarray(state[key])


def state_scalar(state: Mapping[str, np.ndarray], key: str) -> Any:
    arr = state_item(state, key)
    if arr.ndim != 0:
        raise ValueError(f"detector state entry {key!r} must be a scalar, got shape {arr.shape}")
    return arr.item()


def state_array(state: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    arr = state_item(state, key)
    if arr.ndim != ndim or arr.dtype.kind not in "fiu":
        raise ValueError(f"detector state entry {key!r} must be a {ndim}-D numeric array, got {arr.dtype} {arr.shape}")
    return arr
