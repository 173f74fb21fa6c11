"""The score of a clip, in one place: members' section parts, the domain mix (Eq. 7/8) and the ensemble (2.5).

Every score the product computes goes through :func:`score_parts`: the device's scorer, stage-2 fitting (whose
out-of-fold scores fit the threshold), the report, export's proxy AUC and reference scores, and on-device
enrollment. A threshold fitted on the training side and a score the device computes therefore come from the same
arithmetic, which ``tests/test_export.py`` holds to float precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edge_asd.scoring.combine import combine_parts, p_target
from edge_asd.scoring.section import SectionModel, section_parts

__all__ = ["ensemble_p_target", "score_clips", "score_parts"]


def ensemble_p_target(logits: Sequence[np.ndarray | None], kappa: float, n: int) -> np.ndarray:
    """Eq. 7 per clip, averaged over the members that have a domain head (``None`` for one that has not).

    0 where no member has one: such a bundle scores both domains with one model, so p only picks the source
    side of Eq. 8.
    """
    ps = [p_target(lg, kappa) for lg in logits if lg is not None]
    return np.mean(ps, axis=0) if ps else np.zeros(n)


def score_parts(
    member_parts: Sequence[Mapping[str, np.ndarray]], logits: Sequence[np.ndarray | None], kappa: float, approach: str
) -> tuple[np.ndarray, np.ndarray]:
    """Final scores and p_target of clips from each member's standardized parts and domain logits ``[n, S]``."""
    n = len(next(iter(member_parts[0].values())))
    p = ensemble_p_target(logits, kappa, n)
    return combine_parts(list(member_parts), p, approach), p


def score_clips(
    models: Sequence[SectionModel],
    embeddings: Sequence[np.ndarray],
    logits: Sequence[np.ndarray | None],
    *,
    aggregator: str,
    kappa: float,
    approach: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Final scores and p_target of clips, one section model and ``[n, S_m, D_m]`` embeddings per member."""
    parts = [section_parts(model, emb, aggregator) for model, emb in zip(models, embeddings, strict=True)]
    return score_parts(parts, logits, kappa, approach)
