"""The plain system as a run folder: log-mel statistics scored against the section's normals, no stage 1.

It is written in the same layout as a trained run (``config.json``,
``split.json``, ``stage2/``), so that ``report``, ``edge-asd-export`` and
ensembles treat it as any other system; its "embeddings" are the numpy features
of :mod:`edge_asd.io.features`, one per clip, and its stage 2 is
:mod:`edge_asd.scoring.stage2` as for the learned systems. Every normal training clip
is in the bank (there is no stage 1 to hold clips out from); standardization
is out of fold as always.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_asd.io.audio import read_audio
from edge_asd.io.dcase import list_clips
from edge_asd.io.features import LogMelStats, LogMelStatsConfig
from edge_asd.scoring.stage2 import Stage2Config

from .stage2 import check_normals, fit_stage2
from .rundir import RunDir

PLAIN_SYSTEM = "plain"
# The plain system's features by name (--plain-features): "reference" is shared/reference/plain_baseline.py
# number for number; "modulation" appends the envelope modulation spectrum, which scored above it on every
# development seed of both generators and equal on the real samples; "lines" appends to that each modulation
# bin's most prominent line, of the modulation spectrum's envelopes and of a faster envelope that reaches 250 Hz,
# which scored above "modulation" on every validation seed of both generators; "dynamics" appends to that the
# sound's dynamics (each band's frame-to-frame change, each envelope band's spread, how the fast envelope's
# bands move together), which scored above "lines" on every validation seed of both generators; "transients"
# computes the same features without the frames of a passing transient (a door, a dropped tool: loud and like
# nothing else in the clip, edge_asd.io.transients), which scored above "dynamics" on the mean of the validation
# seeds of both generators (+4.0 on machines_b, +0.9 on edge-asd synth; BENCHMARKS.md, "Detection quality III");
# "trimmed" takes each envelope spectrum's windows without the largest one at each frequency (modulation_trim 1: a
# door or a beep touches one or two of a 10 s clip's nine 2 s windows, a fault all of them), which scored above "transients" on the
# mean of the validation seeds of both generators (+0.2 on machines_b, +0.3 on edge-asd synth) and on the real samples
# (BENCHMARKS.md, "The envelope spectrum without its loudest window").
PLAIN_FEATURES = {"reference": LogMelStatsConfig(), "modulation": LogMelStatsConfig(modulation_bands=8),
                  "lines": LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128),
                  "dynamics": LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128,
                                                dynamics=True),
                  "transients": LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128,
                                                  dynamics=True, transient_sigmas=3.0),
                  "trimmed": LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128,
                                               dynamics=True, transient_sigmas=3.0, modulation_trim=1)}
DEFAULT_PLAIN_FEATURES = "trimmed"
# How the plain system scores a clip against the section's normals (--plain-scorer):
#   "nearest": the reference's Euclidean distance to the nearest normal (z-scored features);
#   "local": that distance divided by the normal's own distance to its nearest other normal, so the few clips of
#     a new operating condition, far apart from each other, do not make its normal clips look anomalous;
#   "gaussian": the negative log-likelihood under one Gaussian of the section's normals with a Ledoit-Wolf
#     shrunk covariance (a Mahalanobis distance). Tens of clips do not pin down a hundred features' joint
#     spread, and the nearest normal's distance is mostly that noise; the shrunk covariance keeps each feature's
#     variance and the few correlations the clips do show. It scored above "nearest" on every validation seed of
#     both generators, alone and as the ensemble's plain member (BENCHMARKS.md, "Detection quality III").
#   "groups": that Gaussian of all the features, and one of each group of them (the level, its spread, the
#     modulation spectrum, its lines, the change, the envelopes' spread, the comodulation): 2 x the whole vector's
#     standardized log distance + the largest group's. A fault that shows in one group is not drowned by the
#     noise of all the others. It scored above "gaussian" on every validation seed of both generators
#     (BENCHMARKS.md, "One Gaussian per group of features").
#   "groups-per-domain": "groups" with each domain its own mean and standardization and one shared covariance
#     (FeatureGroupGaussian(per_domain=True)): a handful of target clips recorded with another microphone no
#     longer makes every target normal score above the source anomalies. It scored above "groups" on every
#     validation seed of both generators, and lifted the lowest section's target AUC (BENCHMARKS.md, "Each
#     domain its own mean").
PLAIN_SCORERS = {
    "nearest": ("knn", {"k": 1, "metric": "l2", "standardize": True, "local_scale": False}),
    "local": ("knn", {"k": 1, "metric": "l2", "standardize": True, "local_scale": True}),
    "gaussian": ("gmm", {"n_components": 1, "covariance_type": "full", "shrinkage": "ledoit-wolf", "reg_covar": 1e-6}),
    "groups": ("gauss-groups", {"joint_weight": 2.0, "folds": 10, "reg_covar": 1e-6}),
    "groups-per-domain": ("gauss-groups", {"joint_weight": 2.0, "folds": 10, "reg_covar": 1e-6, "per_domain": True}),
}
DEFAULT_PLAIN_SCORER = "groups-per-domain"


def plain_stage2(seed: int = 0, threshold_rule: str = "gamma:0.9", scorer: str = DEFAULT_PLAIN_SCORER,
                 features: LogMelStatsConfig | None = None) -> Stage2Config:
    """The plain system's stage 2: one model per section of both domains' normals, scored by ``scorer``;
    ``features`` (default: the default plain features) says where the groups of the "groups" scorer lie."""
    detector, params = PLAIN_SCORERS[scorer]
    params = dict(params)
    if detector == "gauss-groups":
        params["edges"] = (features or PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]).block_edges()
    return Stage2Config(
        approach="generalization",
        detector=detector,
        detector_params=params,
        aggregator="mean",
        threshold_rule=threshold_rule,
        mixup_pseudo_normals=0,
        bank="all",
        seed=seed,
    )


def is_plain_run(run_dir: Path) -> bool:
    cfg = RunDir(run_dir).config
    return cfg.is_file() and json.loads(cfg.read_text()).get("system") == PLAIN_SYSTEM


def clip_features(paths: list[Path], features: LogMelStats, threads: int = 2) -> np.ndarray:
    """``[n, 1, D]``: one feature vector per clip (S = 1 for the aggregator)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # numpy's FFT releases the GIL
        feats = list(pool.map(lambda p: features(read_audio(p)), paths))
    return np.stack(feats)[:, None, :].astype(np.float32)


def fit_plain(
    data: Path, machine: str, out: Path, cfg: Stage2Config | None = None, features: LogMelStatsConfig | None = None
) -> Path:
    """Fit the plain system for ``machine`` from ``DATA/<machine>/train`` into the run folder ``out``."""
    fcfg = features or PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]
    cfg = cfg or plain_stage2(features=fcfg)
    edges = cfg.detector_params.get("edges")
    if edges and edges != fcfg.block_edges():
        raise ValueError(f"the scorer's feature groups {edges} are not the features' {fcfg.block_edges()}")
    clips = [c for c in list_clips(data, machine, "train") if c.label in (None, "normal")]
    normals = {
        "names": np.array([c.name for c in clips]),
        "sections": np.array([c.section for c in clips]),
        "domains": np.array([c.domain or "source" for c in clips]),
    }
    check_normals(normals, cfg, str(data / machine / "train"))
    normals["embeddings"] = clip_features([c.path for c in clips], LogMelStats(fcfg))
    normals["domain_logits"] = np.zeros((len(clips), 1), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    run.config.write_text(
        json.dumps({"system": PLAIN_SYSTEM, "data": str(data), "machine": machine, "features": fcfg.to_dict()}, indent=2)
    )
    split = {
        "machine": machine,
        "sections": sorted(set(normals["sections"].tolist())),
        "clips": [
            {"name": c.name, "path": c.path.relative_to(data).as_posix() if c.path.is_relative_to(data) else str(c.path),
             "section": c.section, "domain": c.domain or "source", "split": "train"}
            for c in clips
        ],
    }
    run.split.write_text(json.dumps(split, indent=1))
    run.stage2_root.mkdir(exist_ok=True)
    np.savez(run.normal_embeddings, **{k: normals[k] for k in ("names", "embeddings", "domain_logits")})
    fit_stage2(out, normals, cfg)
    run.default_approach_file.write_text(json.dumps({"approach": cfg.approach}))
    return out


def plain_embeddings(run_dir: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Features of any clips with a plain run's feature settings, and the (absent) domain logits."""
    fcfg = LogMelStatsConfig.from_dict(RunDir(run_dir).read_config()["features"])
    emb = clip_features(paths, LogMelStats(fcfg))
    return emb, np.zeros(emb.shape[:2], dtype=np.float32)
