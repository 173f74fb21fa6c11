"""Stage 2 of the report, per section: from the normals' segment embeddings to a fitted section model.

The pieces (sections 2.1, 2.3-2.5 of the report):

* an inlier model ``h`` (KNN, GMM or LOF, :mod:`edge_asd.scoring.detectors`) per section,
  fitted on held-out normal clips the extractor never trained on
  (:mod:`edge_asd.scoring.banks` builds what it is fitted on);
* an aggregator ``A`` over a clip's S segment scores (Eq. 4, :mod:`edge_asd.scoring.aggregate`);
* per section (and, for domain specialization, per domain) standardization of
  the clip scores with statistics of held-out normals, so detectors, domains and
  ensemble members share one scale (:mod:`edge_asd.scoring.out_of_fold`);
* domain generalization: one detector on source + target normals + 50 Mixup
  pseudo-normal embeddings (2.3); domain specialization: a source and a target
  detector mixed by the domain classifier, Eq. 8 (2.4, :mod:`edge_asd.scoring.combine`);
* ensembles: the mean of members' standardized scores, per domain for DS (2.5).

This module holds the choices (:class:`Stage2Config`) and the fit of one
section (:func:`fit_section`); the fitted model and its state are
:mod:`edge_asd.scoring.section`. It is numpy + faiss only: the device runs
exactly this code when it enrolls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_asd.scoring.banks import (
    N_MIXUP_PSEUDO_NORMAL, all_segments, augmented_bank, centres_bank, mixup_pseudo_normals, row_domains,
)
from edge_asd.scoring.clip_scores import score_parts
from edge_asd.scoring.combine import DG_DOMAIN
from edge_asd.scoring.detectors import make_detector
from edge_asd.scoring.out_of_fold import fit_detector, out_of_fold_raw, score_stats, shrunk_stats
from edge_asd.scoring.section import DomainModel, SectionModel
from edge_asd.scoring.thresholds import fit_threshold

__all__ = ["APPROACHES", "BANKS", "TARGET_STANDARDIZATION", "FitResult", "Stage2Config", "check_fittable", "fit_section"]

APPROACHES = ("generalization", "specialization")
BANKS = ("heldout", "all")
TARGET_STANDARDIZATION = ("own", "shrunk")


@dataclass
class Stage2Config:
    """Every stage-2 choice; the report's rule is ``bank="heldout", source_centres=0, target_std="own"``.

    The defaults are the product's, each chosen by measurement (BENCHMARKS.md).

    * ``bank``: which normal clips the inlier models are fitted on: the held-out
      ones only (the report), or ``"all"`` the normals of a section (those stage 1
      trained on too). Standardization stays out of fold either way. Used by the
      caller that picks the clips (``train.stage2``); recorded here so that the
      bundle says what was done.
    * ``source_centres`` K > 0 (domain generalization): the bank is the K k-means
      centres of the source segments plus every target segment, so both domains
      are equally dense in it and one minimum distance scores both (the DCASE
      2023/2024 systems' stage 2, no domain classifier needed).
    * ``target_std`` (domain specialization): ``"own"`` standardizes the target
      model by its own out-of-fold scores; ``"shrunk"`` pulls that estimate towards
      the source model's, weighted by ``shrink_clips`` pseudo-clips, which keeps it
      stable when a section has a handful of target clips.
    """

    approach: str = "specialization"
    detector: str = "knn"
    detector_params: dict[str, Any] = field(default_factory=lambda: {"k": 1})
    aggregator: str = "mean"
    kappa: float = 0.15
    threshold_rule: str = "gamma:0.9"
    n_folds: int = 5
    mixup_pseudo_normals: int = N_MIXUP_PSEUDO_NORMAL
    seed: int = 0
    bank: str = "all"  # by measurement (BENCHMARKS.md, detection quality); "heldout" is the report's rule
    source_centres: int = 0
    target_std: str = "own"
    shrink_clips: float = 10.0
    target_smote: int = 0  # generalization: SMOTE points between target embeddings added to each bank
    target_genrep: int = 0  # generalization: GenRep points between target embeddings and their nearest source ones

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, not {self.approach!r}")
        if self.bank not in BANKS:
            raise ValueError(f"bank must be one of {BANKS}, not {self.bank!r}")
        if self.target_std not in TARGET_STANDARDIZATION:
            raise ValueError(f"target_std must be one of {TARGET_STANDARDIZATION}, not {self.target_std!r}")
        if self.source_centres < 0 or not self.shrink_clips >= 0 or self.target_smote < 0 or self.target_genrep < 0:
            raise ValueError("source_centres, shrink_clips, target_smote and target_genrep must not be negative")
        # a detector or parameter it refuses (--k 0, --detector gauss-groups --k 1) is refused here, before stage 1
        # trains, not after it when stage 2 first builds the detector
        make_detector(self.detector, **self.detector_params)


@dataclass
class FitResult:
    """A fitted section model plus the out-of-fold scores of its normals."""

    model: SectionModel
    oof_parts: dict[str, np.ndarray]  # standardized out-of-fold score parts per domain key
    oof_domains: np.ndarray  # "source"/"target" per normal clip


def check_fittable(section: str, n_source: int, n_target: int, cfg: Stage2Config) -> None:
    """ValueError naming what is missing when these clip counts cannot be fitted.

    Called before the fit (and by ``edge-asd-train`` before stage 1), so that a
    data set that makes an approach impossible is refused before any work.
    """
    if cfg.approach == "generalization":
        if n_source + n_target < 2:
            raise ValueError(
                f"section {section}: standardization needs at least 2 normal clips, got {n_source + n_target}"
            )
        return
    for name, n in (("source", n_source), ("target", n_target)):
        if n < 2:
            raise ValueError(
                f"section {section}: domain specialization needs at least 2 {name}-domain normal clips "
                f"for stage 2, got {n}"
            )


def fit_section(
    section: str,
    emb: np.ndarray,
    domains: np.ndarray,
    domain_logits: np.ndarray,
    cfg: Stage2Config,
) -> FitResult:
    """Fit one section's inlier model(s) on its normal clips.

    ``emb`` ``[n, S, D]`` and ``domains`` (``"source"``/``"target"``) are the
    normals stage 2 is fitted on (held-out ones, or all, by ``cfg.bank``);
    ``domain_logits`` ``[n, S]`` feed the out-of-fold Eq. 8 scores used for the
    threshold.
    """
    rng = np.random.default_rng(cfg.seed)
    domains = np.asarray(domains)
    d = emb.shape[-1]
    src, tgt = emb[domains == "source"], emb[domains == "target"]
    check_fittable(section, len(src), len(tgt), cfg)
    parts: dict[str, np.ndarray] = {}
    models: dict[str, DomainModel] = {}
    if cfg.approach == "generalization":
        pseudo = mixup_pseudo_normals(src.reshape(-1, d), tgt.reshape(-1, d), cfg.mixup_pseudo_normals, rng)
        build = centres_bank(cfg.source_centres, cfg.seed) if cfg.source_centres > 0 else all_segments
        build = augmented_bank(build, cfg.target_smote, cfg.target_genrep, cfg.seed)
        raw = out_of_fold_raw(
            cfg.detector, cfg.detector_params, emb,
            aggregator=cfg.aggregator, n_folds=cfg.n_folds, rng=rng, extra_fit=pseudo, domains=domains, build_bank=build,
        )
        mean, std = score_stats(raw)
        det = fit_detector(cfg.detector, cfg.detector_params, np.concatenate([build(emb, domains), pseudo]),
                           row_domains(build, emb, domains, len(pseudo)))
        models[DG_DOMAIN] = DomainModel(detector=det, mean=mean, std=std)
        parts[DG_DOMAIN] = (raw - mean) / std
    else:
        raws: dict[str, np.ndarray] = {}
        for name, sub in (("source", src), ("target", tgt)):
            raws[name] = out_of_fold_raw(
                cfg.detector, cfg.detector_params, sub, aggregator=cfg.aggregator, n_folds=cfg.n_folds, rng=rng
            )
        for name, sub in (("source", src), ("target", tgt)):
            mean, std = score_stats(raws[name])
            if name == "target" and cfg.target_std == "shrunk":
                mean, std = shrunk_stats((mean, std), len(sub), score_stats(raws["source"]), cfg.shrink_clips)
            det = fit_detector(cfg.detector, cfg.detector_params, sub.reshape(-1, d))
            models[name] = DomainModel(detector=det, mean=mean, std=std)
            # Every clip's score under this domain's model, out of fold for the
            # clips the model was fitted on, plain for the others.
            z = np.empty(len(emb))
            z[domains == name] = (raws[name] - mean) / std
            other = domains != name
            if other.any():
                z[other] = models[name].standardized(emb[other], cfg.aggregator)
            parts[name] = z
    model = SectionModel(section=section, domains=models)
    final, _ = score_parts([parts], [domain_logits], cfg.kappa, cfg.approach)
    model.threshold = fit_threshold(final, cfg.threshold_rule)
    return FitResult(model=model, oof_parts=parts, oof_domains=domains)
