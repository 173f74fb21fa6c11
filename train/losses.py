"""Outlier-exposure heads and losses of the feature extractor (report Eq. 1-3, 5-7).

Notation as in the report: ``t`` is 1 for the target machine type and 0 for
pseudo-anomalous data (a Mixup ratio in between), ``y`` the one-hot section ID,
``d`` 1 for the target domain and 0 for the source domain (a Mixup ratio for the
pseudo-target data of Section 2.4). Every loss is computed in fp32 whatever
precision the encoder ran in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KAPPA = 0.15  # Eq. 7's temperature of the domain classifier, as the report sets it


class NormAffine(nn.Module):
    """g_affine of Eq. 2: an affine map of the squared embedding norm to the machine logit.

    Initialised with a positive slope so that, as in the report's Fig. 2, the
    pseudo-anomalous data collapse towards the centre of the hypersphere and the
    target machine's sounds lie away from it. The slope starts at 1/D so the
    initial logits are O(1) for unit-scale embeddings.
    """

    def __init__(self, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0 / embedding_dim))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        sq_norm = embedding.float().square().sum(dim=-1)
        return self.weight * sq_norm + self.bias


class OEHeads(nn.Module):
    """g_section (Eq. 1), g_affine (Eq. 2) and the optional g_domain (Eq. 5) on top of f(x)."""

    def __init__(self, embedding_dim: int, n_sections: int, domain_head: bool = True):
        super().__init__()
        self.section = nn.Linear(embedding_dim, n_sections)
        self.machine = NormAffine(embedding_dim)
        self.domain = nn.Linear(embedding_dim, 1) if domain_head else None

    def forward(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "embedding": embedding,
            "section_logits": self.section(embedding),
            "machine_logit": self.machine(embedding),
            "domain_logit": self.domain_logit(embedding),
        }

    def domain_logit(self, embedding: torch.Tensor) -> torch.Tensor:
        """g_domain(f(x)) ``[B]``; zeros (p_target = 0.5) when the model has no domain head."""
        if self.domain is None:
            return embedding.new_zeros(embedding.shape[0])
        return self.domain(embedding).squeeze(-1)


def section_loss(section_logits: torch.Tensor, section_target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eq. 1: per-section binary cross-entropy, averaged over the K sections and weighted by t.

    ``section_target`` is y (one-hot), or ``lambda * y`` for a Mixup sample whose
    normal part has weight lambda; pseudo-anomalous samples (t = 0) do not count.
    """
    k = section_logits.shape[-1]
    bce = F.binary_cross_entropy_with_logits(section_logits.float(), section_target.float(), reduction="none")
    t = t.float()
    return (t[:, None] * bce).sum() / (k * t.sum()).clamp_min(torch.finfo(torch.float32).eps)


def machine_loss(machine_logit: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eq. 2: target machine type (t = 1) vs pseudo-anomalous data (t = 0), mean over the batch."""
    return F.binary_cross_entropy_with_logits(machine_logit.float(), t.float())


def domain_loss(domain_logit: torch.Tensor, d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with per-sample weights (t_i in the report; see :func:`oe_loss`)."""
    bce = F.binary_cross_entropy_with_logits(domain_logit.float(), d.float(), reduction="none")
    weight = weight.float()
    return (weight * bce).sum() / weight.sum().clamp_min(torch.finfo(torch.float32).eps)


def target_probability(domain_logit: torch.Tensor, kappa: float = KAPPA) -> torch.Tensor:
    """Eq. 7: probability that a sample is from the target domain, ``sigmoid(g_domain / kappa)``."""
    return torch.sigmoid(domain_logit / kappa)


@dataclass(frozen=True)
class LossWeights:
    lambda_section: float = 10.0
    lambda_domain: float = 1.0
    # Eq. 5 weights each sample by t_i, which removes pseudo-anomalous clips from
    # L_domain although the text assigns them d = 0. We follow the equation: d = 0
    # for them only makes every term of the sum defined, and the domain head is only
    # ever asked about the target machine's own sounds (normal or anomalous), so
    # training it on other sounds would spend capacity on a question never posed.
    # False weights every sample equally (the text's literal reading).
    domain_weight_by_t: bool = True


@dataclass
class LossTerms:
    total: torch.Tensor
    machine: torch.Tensor
    section: torch.Tensor
    domain: torch.Tensor  # zero when the domain head is off

    def stacked(self) -> torch.Tensor:
        """``[total, machine, section, domain]``, detached: logged without a device sync per step."""
        return torch.stack([self.total, self.machine, self.section, self.domain]).detach()


def oe_loss(
    out: dict[str, torch.Tensor],
    t: torch.Tensor,
    section_target: torch.Tensor,
    d: torch.Tensor | None,
    weights: LossWeights,
) -> LossTerms:
    """Eq. 3 (``d`` None or no domain head) or Eq. 6: ``L_machine + l_s L_section [+ l_d L_domain]``."""
    l_machine = machine_loss(out["machine_logit"], t)
    l_section = section_loss(out["section_logits"], section_target, t)
    total, l_domain = with_domain_loss(l_machine + weights.lambda_section * l_section, out, t, d, weights)
    return LossTerms(total=total, machine=l_machine, section=l_section, domain=l_domain)


def with_domain_loss(
    total: torch.Tensor, out: dict[str, torch.Tensor], t: torch.Tensor, d: torch.Tensor | None, weights: LossWeights
) -> tuple[torch.Tensor, torch.Tensor]:
    """``total`` plus Eq. 5's weighted domain loss where the domain head is trained (``d`` given, lambda_domain > 0),
    and that loss (zero otherwise): the one place every objective adds it."""
    if d is None or weights.lambda_domain <= 0:
        return total, torch.zeros((), device=t.device)
    l_domain = domain_loss(out["domain_logit"], d, t if weights.domain_weight_by_t else torch.ones_like(t))
    return total + weights.lambda_domain * l_domain, l_domain
