"""Stage 2 of the report: from segment embeddings to one anomaly score per clip.

The pieces (sections 2.1, 2.3-2.5 of the report):

* an inlier model ``h`` (KNN, GMM or LOF, :mod:`edge_asd.detectors`) per section,
  fitted on held-out normal clips the extractor never trained on;
* an aggregator ``A`` over a clip's S segment scores (Eq. 4);
* per section (and, for domain specialization, per domain) standardization of
  the clip scores with statistics of held-out normals, so detectors, domains and
  ensemble members share one scale;
* domain generalization: one detector on source + target normals + 50 Mixup
  pseudo-normal embeddings (2.3); domain specialization: a source and a target
  detector mixed by the domain classifier, Eq. 8 (2.4);
* ensembles: the mean of members' standardized scores, per domain for DS (2.5).

Standardization statistics and thresholds come from *out-of-fold* scores: the
held-out normals are split by clip into folds, each fold is scored by a detector
fitted on the other folds. Scoring a detector's own training points would make a
1-NN distance zero and every statistic meaningless.

This module is numpy + faiss only: the device runs exactly this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .detectors import aggregate, detector_from_state, make_detector
from .thresholds import fit_threshold

APPROACHES = ("generalization", "specialization")
DG_DOMAIN = "all"
N_MIXUP_PSEUDO_NORMAL = 50  # report 2.3


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


@dataclass
class DomainModel:
    """One inlier model and the statistics that standardize its clip scores."""

    detector: object
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


@dataclass
class Stage2Config:
    approach: str = "specialization"
    detector: str = "knn"
    detector_params: dict = field(default_factory=lambda: {"k": 1})
    aggregator: str = "mean"
    kappa: float = 0.15
    threshold_rule: str = "gamma:0.9"
    n_folds: int = 5
    mixup_pseudo_normals: int = N_MIXUP_PSEUDO_NORMAL
    seed: int = 0

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, not {self.approach!r}")


def clip_raw_scores(detector, emb: np.ndarray, aggregator: str) -> np.ndarray:
    """Aggregate the detector's segment scores of each clip: ``[n, S, D] -> [n]``."""
    n, s, d = emb.shape
    seg = detector.score_samples(emb.reshape(n * s, d).astype(np.float32))
    return aggregate(seg.reshape(n, s), aggregator)


def _capped_params(kind: str, params: dict, n_points: int) -> dict:
    """Neighbour and component counts cannot exceed the points a fold has.

    DCASE gives only a handful of target clips per section, so a k=32 KNN on a
    4-clip target bank would be undefined in the leave-one-out folds; capping
    keeps the rule "the report's k where there is data for it".
    """
    p = dict(params)
    for key in ("k", "n_components"):
        if key in p:
            p[key] = max(1, min(int(p[key]), n_points - (1 if kind == "lof" else 0)))
    return p


def fit_detector(kind: str, params: dict, x: np.ndarray):
    det = make_detector(kind, **_capped_params(kind, params, len(x)))
    det.fit(np.ascontiguousarray(x, dtype=np.float32))
    return det


def _fold_ids(n_clips: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    k = max(2, min(n_folds, n_clips))
    ids = np.arange(n_clips) % k
    rng.shuffle(ids)
    return ids


def out_of_fold_raw(
    kind: str,
    params: dict,
    emb: np.ndarray,
    aggregator: str,
    n_folds: int,
    rng: np.random.Generator,
    extra_fit: np.ndarray | None = None,
) -> np.ndarray:
    """Raw clip scores of each clip from a detector that never saw that clip."""
    n = emb.shape[0]
    if n < 2:
        raise ValueError("standardization needs at least two held-out normal clips per section and domain")
    folds = _fold_ids(n, n_folds, rng)
    out = np.empty(n)
    for f in np.unique(folds):
        train = emb[folds != f].reshape(-1, emb.shape[-1])
        if extra_fit is not None and len(extra_fit):
            train = np.concatenate([train, extra_fit])
        det = fit_detector(kind, params, train)
        out[folds == f] = clip_raw_scores(det, emb[folds == f], aggregator)
    return out


def _stats(raw: np.ndarray) -> tuple[float, float]:
    std = float(np.std(raw))
    return float(np.mean(raw)), (std if std > 1e-12 else 1.0)


def mixup_pseudo_normals(src: np.ndarray, tgt: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Report 2.3: ``n`` embeddings between random source and target segments.

    The report mixes in the detector's input space, i.e. the embeddings; the
    ratio is uniform in [0, 1] so the whole path between the domains is covered.
    """
    if n <= 0 or len(src) == 0 or len(tgt) == 0:
        return np.zeros((0, src.shape[-1]), dtype=np.float32)
    lam = rng.uniform(0.0, 1.0, size=(n, 1))
    a = src[rng.integers(0, len(src), n)]
    b = tgt[rng.integers(0, len(tgt), n)]
    return (lam * a + (1.0 - lam) * b).astype(np.float32)


@dataclass
class FitResult:
    """A fitted section model plus the out-of-fold scores of its held-out normals."""

    model: SectionModel
    oof_parts: dict[str, np.ndarray]  # standardized out-of-fold score parts per domain key
    oof_domains: np.ndarray  # "source"/"target" per held-out clip


def fit_section(
    section: str,
    emb: np.ndarray,
    domains: np.ndarray,
    domain_logits: np.ndarray,
    cfg: Stage2Config,
) -> FitResult:
    """Fit one section's inlier model(s) on its held-out normal clips.

    ``emb`` ``[n, S, D]`` and ``domains`` (``"source"``/``"target"``) are the
    held-out normals of the section; ``domain_logits`` ``[n, S]`` feed the
    out-of-fold Eq. 8 scores used for the threshold.
    """
    rng = np.random.default_rng(cfg.seed)
    domains = np.asarray(domains)
    d = emb.shape[-1]
    src, tgt = emb[domains == "source"], emb[domains == "target"]
    parts: dict[str, np.ndarray] = {}
    models: dict[str, DomainModel] = {}
    if cfg.approach == "generalization":
        pseudo = mixup_pseudo_normals(src.reshape(-1, d), tgt.reshape(-1, d), cfg.mixup_pseudo_normals, rng)
        raw = out_of_fold_raw(cfg.detector, cfg.detector_params, emb, cfg.aggregator, cfg.n_folds, rng, pseudo)
        mean, std = _stats(raw)
        det = fit_detector(cfg.detector, cfg.detector_params, np.concatenate([emb.reshape(-1, d), pseudo]))
        models[DG_DOMAIN] = DomainModel(det, mean, std)
        parts[DG_DOMAIN] = (raw - mean) / std
    else:
        for name, sub in (("source", src), ("target", tgt)):
            if len(sub) < 2:
                raise ValueError(
                    f"section {section}: domain specialization needs at least 2 held-out {name} clips, got {len(sub)}"
                )
            raw_own = out_of_fold_raw(cfg.detector, cfg.detector_params, sub, cfg.aggregator, cfg.n_folds, rng)
            mean, std = _stats(raw_own)
            det = fit_detector(cfg.detector, cfg.detector_params, sub.reshape(-1, d))
            models[name] = DomainModel(det, mean, std)
            # Every held-out clip's score under this domain's model, out of fold
            # for the clips the model was fitted on, plain for the others.
            z = np.empty(len(emb))
            z[domains == name] = (raw_own - mean) / std
            other = domains != name
            if other.any():
                z[other] = models[name].standardized(emb[other], cfg.aggregator)
            parts[name] = z
    model = SectionModel(section, models)
    final = combine_parts([parts], p_target(domain_logits, cfg.kappa), cfg.approach)
    model.threshold = fit_threshold(final, cfg.threshold_rule)
    return FitResult(model, parts, domains)


def combine_parts(member_parts: list[Mapping[str, np.ndarray]], p: np.ndarray, approach: str) -> np.ndarray:
    """Ensemble (2.5) and Eq. 8: average members per domain key, then mix by ``p``."""
    if approach == "generalization":
        return np.mean([m[DG_DOMAIN] for m in member_parts], axis=0)
    zs = np.mean([m["source"] for m in member_parts], axis=0)
    zt = np.mean([m["target"] for m in member_parts], axis=0)
    return mix_eq8(zs, zt, p)


def section_parts(model: SectionModel, emb: np.ndarray, aggregator: str) -> dict[str, np.ndarray]:
    """Standardized clip scores of each domain model of a section."""
    return {name: dm.standardized(emb, aggregator) for name, dm in model.domains.items()}


# --- state as plain arrays (bundle members are .npz loaded with allow_pickle=False) ---


def section_state(model: SectionModel) -> tuple[dict[str, np.ndarray], dict]:
    """Detector arrays (for the .npz) and the numbers for the manifest."""
    arrays: dict[str, np.ndarray] = {}
    stats: dict[str, dict] = {}
    for name, dm in model.domains.items():
        for key, value in dm.detector.get_state().items():
            arrays[f"{model.section}/{name}/{key}"] = np.asarray(value)
        stats[name] = {"mean": dm.mean, "std": dm.std}
    return arrays, {"standardization": stats, "threshold": model.threshold}


def section_from_state(section: str, arrays: Mapping[str, np.ndarray], numbers: Mapping) -> SectionModel:
    domains: dict[str, DomainModel] = {}
    for name, st in numbers["standardization"].items():
        prefix = f"{section}/{name}/"
        state = {k[len(prefix) :]: arrays[k] for k in arrays.keys() if k.startswith(prefix)}
        if not state:
            raise KeyError(f"no detector state for section {section}, domain {name}")
        domains[name] = DomainModel(detector_from_state(state), float(st["mean"]), float(st["std"]))
    return SectionModel(section, domains, float(numbers["threshold"]))
