"""The stage-2 inlier models by name: the table that turns a ``--detector`` choice or a saved state into a detector.

Eq. 4 of the report scores a clip by running an inlier model ``h`` on each of
its S segment embeddings and pooling the S scores (:mod:`edge_asd.scoring.aggregate`).
The report's three inlier models are k-nearest neighbours
(:mod:`edge_asd.scoring.knn`), a Gaussian mixture (:mod:`edge_asd.scoring.gmm`)
and the local outlier factor (:mod:`edge_asd.scoring.lof`); the plain system's
is one Gaussian per group of features (:mod:`edge_asd.scoring.groups`). All are behind
:class:`edge_asd.scoring.base.InlierDetector`. They run on the device, so they
depend on numpy and faiss only.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.checks import state_scalar
from edge_asd.scoring.gmm import GMMDetector
from edge_asd.scoring.groups import FeatureGroupGaussian
from edge_asd.scoring.knn import KNNDetector
from edge_asd.scoring.lof import LOFDetector

__all__ = ["DETECTORS", "detector_from_state", "make_detector"]

DETECTORS: Mapping[str, type[InlierDetector]] = MappingProxyType(
    {"knn": KNNDetector, "gmm": GMMDetector, "lof": LOFDetector, "gauss-groups": FeatureGroupGaussian}
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
    kind = str(state_scalar(state, "kind"))
    cls = DETECTORS.get(kind)
    if cls is None:
        raise ValueError(f"detector state of unknown kind {kind!r}; known: {', '.join(DETECTORS)}")
    return cls.from_state(state, use_gpu=use_gpu)
