"""Stage-1 training objectives as plug-ins: what each adds to the extractor, which labels it trains on, its loss.

An objective is a class with the hooks of :class:`Objective`, named once in
``train.names.OBJECTIVES`` (name -> "module:Class", so the command line and the
configuration list the names without loading torch). The extractor always carries
the report's heads (its deployed graph reads the domain logit from them); an
objective may add a head of its own, built and owned by the extractor under
``head_name`` (its state-dict prefix, so checkpoints stay readable when
objectives are added).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .adacos import AdaCosCropDataset, SubClusterAdaCos, adacos_classes, initial_scale, subcluster_adacos_loss
from .data import CropDataset, PreparedData
from .losses import LossTerms, LossWeights, oe_loss, with_domain_loss
from .names import OBJECTIVES

# The hooks take the extractor (train.models.Extractor), its ModelConfig and the run's TrainConfig, typed Any
# here: train.models builds each objective's head, so naming its types here would close an import circle.
Extractor = ModelConfig = TrainConfig = Any


class Objective:
    """The hooks stage 1 calls; the defaults are those of an objective that adds nothing to the report's heads."""

    head_name: str | None = None  # the extractor's attribute for the objective's own head (None: it has none)
    trains_oe_heads: bool = True  # False: the section and machine heads get no gradient (DDP must be told)

    def check(self, cfg: ModelConfig) -> list[str]:
        """Problems with ``cfg`` for this objective, one line each (empty: none)."""
        return []

    def prepare(self, cfg: TrainConfig, data: PreparedData, model_cfg: ModelConfig) -> Any:
        """Labels the objective trains on (handed to :meth:`dataset`), written into ``model_cfg`` where the
        extractor needs them to build its head; None where it needs none."""
        return None

    def describe(self, cfg: TrainConfig, labels: Any) -> str | None:
        """One line for the training log about the labels :meth:`prepare` made (None: nothing to say)."""
        return None

    def head(self, cfg: ModelConfig) -> nn.Module | None:
        """The objective's own head; its ``outputs(embedding)`` dict joins the extractor's outputs."""
        return None

    def dataset(self, data: PreparedData, segment_samples: int, labels: Any) -> CropDataset:
        return CropDataset(data.table, len(data.sections), segment_samples)

    def loss(self, model: Extractor, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             d: torch.Tensor | None, weights: LossWeights) -> LossTerms:
        raise NotImplementedError


class OutlierExposure(Objective):
    """The report's Eq. 3 / Eq. 6: machine (normal against pseudo-anomalous) and section losses, plus the
    domain loss where the extractor has the domain head."""

    def loss(self, model, out, batch, d, weights):
        return oe_loss(out, batch["t"], batch["section"], d, weights)


class SubClusterAdaCosObjective(Objective):
    """Wilkinghoff's sub-cluster AdaCos (``train.adacos``) in place of Eq. 3's two terms, plus Eq. 5's domain
    loss when the domain head is trained. Logged in the ``l_section`` column (it is the class objective;
    ``l_machine`` is 0)."""

    head_name = "adacos"
    trains_oe_heads = False

    def check(self, cfg):
        if not cfg.adacos_classes:
            return []
        try:
            initial_scale(len(cfg.class_sections()) * cfg.n_subclusters)
        except ValueError as exc:
            return [f"{exc} (one class and n_subclusters 1 leave only one)"]
        return []

    def prepare(self, cfg, data, model_cfg):
        classes = adacos_classes(data, cfg.machine, cfg.adacos_pseudo_classes)
        model_cfg.adacos_classes, model_cfg.adacos_class_sections = classes.names, classes.sections
        return classes

    def describe(self, cfg, labels):
        return f"sub-cluster AdaCos: {len(labels.names)} classes x {cfg.n_subclusters} sub-clusters"

    def head(self, cfg):
        return SubClusterAdaCos(cfg.embedding_size, cfg.class_sections(), cfg.n_sections, cfg.n_subclusters,
                                cfg.adacos_trainable_centres)

    def dataset(self, data, segment_samples, labels):
        return AdaCosCropDataset(data.table, len(data.sections), segment_samples, labels)

    def loss(self, model, out, batch, d, weights):
        t = batch["t"]
        l_class = subcluster_adacos_loss(model.objective_head, out["class_cosine"], batch["label"],
                                         update_scale=model.training)
        total, l_domain = with_domain_loss(l_class, out, t, d, weights)
        return LossTerms(total=total, machine=torch.zeros((), device=t.device), section=l_class, domain=l_domain)


def objective(name: str) -> Objective:
    """The objective ``name`` of ``train.names.OBJECTIVES`` (a new instance: objectives hold no state)."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
