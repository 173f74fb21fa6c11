"""A fitted section: its domain models with their standardization, its threshold, and its state as plain arrays.

Bundle members are ``.npz`` files loaded with ``allow_pickle=False``: a section
is stored as its detectors' arrays under ``<section>/<domain>/<key>`` plus the
numbers (standardization, threshold) that go into the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_asd.scoring.aggregate import clip_raw_scores
from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.detectors import detector_from_state

__all__ = ["DomainModel", "SectionModel", "Standardization", "section_from_state", "section_parts", "section_state"]


@dataclass(frozen=True)
class Standardization:
    """The mean and standard deviation that put one domain model's clip scores on the common scale."""

    mean: float
    std: float


@dataclass
class DomainModel:
    """One inlier model and the statistics that standardize its clip scores."""

    detector: InlierDetector
    mean: float
    std: float

    def standardized(self, emb: np.ndarray, aggregator: str) -> np.ndarray:
        """Standardized clip scores of ``emb`` (``[n_clips, S, D]``)."""
        raw = clip_raw_scores(self.detector, emb, aggregator)
        return (raw - self.mean) / self.std


@dataclass
class SectionModel:
    section: str
    domains: dict[str, DomainModel]  # {"all"} for DG, {"source", "target"} for DS
    threshold: float = math.nan


def section_parts(model: SectionModel, emb: np.ndarray, aggregator: str) -> dict[str, np.ndarray]:
    """Standardized clip scores of each domain model of a section."""
    return {name: dm.standardized(emb, aggregator) for name, dm in model.domains.items()}


def section_state(model: SectionModel) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Detector arrays (for the .npz) and the numbers for the manifest."""
    arrays: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, float]] = {}
    for name, dm in model.domains.items():
        for key, value in dm.detector.get_state().items():
            arrays[f"{model.section}/{name}/{key}"] = np.asarray(value)
        stats[name] = {"mean": dm.mean, "std": dm.std}
    return arrays, {"standardization": stats, "threshold": model.threshold}


def section_from_state(section: str, arrays: Mapping[str, np.ndarray], standardization: Mapping[str, Standardization],
                       threshold: float) -> SectionModel:
    """A section model from its detectors' arrays and its numbers (the manifest's, or stage2.json's parsed)."""
    domains: dict[str, DomainModel] = {}
    for name, st in standardization.items():
        prefix = f"{section}/{name}/"
        state = {k[len(prefix) :]: arrays[k] for k in arrays.keys() if k.startswith(prefix)}
        if not state:
            raise KeyError(f"no detector state for section {section}, domain {name}")
        domains[name] = DomainModel(detector=detector_from_state(state), mean=float(st.mean), std=float(st.std))
    return SectionModel(section=section, domains=domains, threshold=float(threshold))
