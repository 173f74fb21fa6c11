"""Stage 2 of the report: from segment embeddings to one anomaly score per clip.

The pieces (sections 2.1, 2.3-2.5 of the report):

* an inlier model ``h`` (KNN, GMM or LOF, :mod:`edge_asd.scoring.detectors`) per section,
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
from typing import Callable, Mapping

import numpy as np

from edge_asd.scoring.detectors import aggregate, detector_from_state, make_detector
from edge_asd.scoring.thresholds import fit_threshold

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
    detector_params: dict = field(default_factory=lambda: {"k": 1})
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

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, not {self.approach!r}")
        if self.bank not in BANKS:
            raise ValueError(f"bank must be one of {BANKS}, not {self.bank!r}")
        if self.target_std not in TARGET_STANDARDIZATION:
            raise ValueError(f"target_std must be one of {TARGET_STANDARDIZATION}, not {self.target_std!r}")
        if self.source_centres < 0 or not self.shrink_clips >= 0:
            raise ValueError("source_centres and shrink_clips must not be negative")


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


BankBuilder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def out_of_fold_raw(
    kind: str,
    params: dict,
    emb: np.ndarray,
    aggregator: str,
    n_folds: int,
    rng: np.random.Generator,
    extra_fit: np.ndarray | None = None,
    *,
    domains: np.ndarray | None = None,
    build_bank: BankBuilder | None = None,
) -> np.ndarray:
    """Raw clip scores of each clip from a detector that never saw that clip.

    The detector of a fold is fitted on ``build_bank(emb, domains)`` of the other
    folds' clips (default: all their segments), plus ``extra_fit``.
    """
    n = emb.shape[0]
    if n < 2:
        raise ValueError("standardization needs at least two normal clips per section and domain")
    domains = np.full(n, "source") if domains is None else np.asarray(domains)
    build_bank = build_bank or _all_segments
    folds = _fold_ids(n, n_folds, rng)
    out = np.empty(n)
    for f in np.unique(folds):
        train = build_bank(emb[folds != f], domains[folds != f])
        if extra_fit is not None and len(extra_fit):
            train = np.concatenate([train, extra_fit])
        det = fit_detector(kind, params, train)
        out[folds == f] = clip_raw_scores(det, emb[folds == f], aggregator)
    return out


def _all_segments(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
    return emb.reshape(-1, emb.shape[-1])


def kmeans_centres(x: np.ndarray, k: int, seed: int = 0, niter: int = 25) -> np.ndarray:
    """``k`` k-means centres of the rows of ``x`` (faiss: Lloyd iterations from a seeded start).

    With no more rows than ``k`` the rows themselves are the centres.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) <= k:
        return x.copy()
    import faiss

    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, seed=int(seed) + 1, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def centres_bank(n_centres: int, seed: int) -> BankBuilder:
    """Source segments compressed to k-means centres, target segments kept whole.

    A section with no target normals keeps every source segment: compressing
    only pays when it balances the two domains' densities.
    """

    def build(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
        d = emb.shape[-1]
        src = emb[domains == "source"].reshape(-1, d)
        tgt = emb[domains == "target"].reshape(-1, d)
        if len(tgt) == 0 or len(src) == 0:
            return emb.reshape(-1, d)
        return np.concatenate([kmeans_centres(src, n_centres, seed), tgt])

    return build


def _stats(raw: np.ndarray) -> tuple[float, float]:
    std = float(np.std(raw))
    return float(np.mean(raw)), (std if std > 1e-12 else 1.0)


def shrunk_stats(own: tuple[float, float], n_own: int, prior: tuple[float, float], prior_clips: float) -> tuple[float, float]:
    """A few clips' mean and spread pulled towards another model's, as ``prior_clips`` clips of it.

    The mean is the clips' own (the two models' score levels differ with their
    banks' densities and must be removed as measured). The spread is what a
    handful of leave-one-out scores estimate worst, so it is pooled: for
    positive scores (distances, LOF) as a coefficient of variation, since a
    sparser bank scales every distance up alike; otherwise as a variance.
    """
    (m, s), (mp, sp) = own, prior
    w = n_own / (n_own + prior_clips) if n_own + prior_clips > 0 else 1.0
    if m > 0 and mp > 0:
        cv = w * (s / m) + (1.0 - w) * (sp / mp)
        std = cv * m
    else:
        std = math.sqrt(w * s * s + (1.0 - w) * sp * sp)
    return m, (std if std > 1e-12 else 1.0)


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
        build = centres_bank(cfg.source_centres, cfg.seed) if cfg.source_centres > 0 else _all_segments
        raw = out_of_fold_raw(
            cfg.detector, cfg.detector_params, emb, cfg.aggregator, cfg.n_folds, rng, pseudo,
            domains=domains, build_bank=build,
        )
        mean, std = _stats(raw)
        det = fit_detector(cfg.detector, cfg.detector_params, np.concatenate([build(emb, domains), pseudo]))
        models[DG_DOMAIN] = DomainModel(det, mean, std)
        parts[DG_DOMAIN] = (raw - mean) / std
    else:
        raws: dict[str, np.ndarray] = {}
        for name, sub in (("source", src), ("target", tgt)):
            raws[name] = out_of_fold_raw(cfg.detector, cfg.detector_params, sub, cfg.aggregator, cfg.n_folds, rng)
        for name, sub in (("source", src), ("target", tgt)):
            mean, std = _stats(raws[name])
            if name == "target" and cfg.target_std == "shrunk":
                mean, std = shrunk_stats((mean, std), len(sub), _stats(raws["source"]), cfg.shrink_clips)
            det = fit_detector(cfg.detector, cfg.detector_params, sub.reshape(-1, d))
            models[name] = DomainModel(det, mean, std)
            # Every clip's score under this domain's model, out of fold for the
            # clips the model was fitted on, plain for the others.
            z = np.empty(len(emb))
            z[domains == name] = (raws[name] - mean) / std
            other = domains != name
            if other.any():
                z[other] = models[name].standardized(emb[other], cfg.aggregator)
            parts[name] = z
    model = SectionModel(section, models)
    final = combine_parts([parts], p_target(domain_logits, cfg.kappa), cfg.approach)
    model.threshold = fit_threshold(final, cfg.threshold_rule)
    return FitResult(model, parts, domains)


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
