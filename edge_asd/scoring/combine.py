"""Combining a section's standardized scores into one: Eq. 7 and 8 (domain mixing) and ensembles (report 2.5).

A clip's parts are its standardized scores under each domain model of a
section, keyed ``"source"`` / ``"target"`` for domain specialization or
``"all"`` (:data:`DG_DOMAIN`) for domain generalization.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["DG_DOMAIN", "combine_parts", "mix_eq8", "p_target"]

DG_DOMAIN = "all"


def p_target(domain_logits: np.ndarray, kappa: float) -> np.ndarray:
    """Eq. 7 per clip: sigmoid(g_domain / kappa), averaged over the clip's segments.

    ``domain_logits`` is ``[n_clips, S]``. Averaging probabilities (not logits)
    keeps one confident segment from dominating the clip's domain decision.
    """
    z = np.asarray(domain_logits, dtype=np.float64) / kappa
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # a sigmoid that cannot overflow
    return p.mean(axis=-1) if p.ndim > 1 else p


def mix_eq8(z_source: np.ndarray, z_target: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Eq. 8: a = (1 - p) * a_source + p * a_target, on standardized scores."""
    return (1.0 - p) * z_source + p * z_target


def combine_parts(member_parts: list[Mapping[str, np.ndarray]], p: np.ndarray, approach: str) -> np.ndarray:
    """Ensemble (2.5) and Eq. 8: average members per domain key, then mix by ``p``.

    A member with one model for both domains (``"all"``: domain generalization,
    the plain system) joins a domain-specialization ensemble with that score on
    both sides of Eq. 8; a DS member joins a DG ensemble with its Eq. 8 score.
    """

    def key(m: Mapping[str, np.ndarray], name: str) -> np.ndarray:
        return m[name] if name in m else m[DG_DOMAIN]

    if approach == "generalization":
        return np.mean([m[DG_DOMAIN] if DG_DOMAIN in m else mix_eq8(m["source"], m["target"], p) for m in member_parts], axis=0)
    zs = np.mean([key(m, "source") for m in member_parts], axis=0)
    zt = np.mean([key(m, "target") for m in member_parts], axis=0)
    return mix_eq8(zs, zt, p)
