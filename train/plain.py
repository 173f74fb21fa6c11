"""The plain system as a run folder: log-mel statistics and a nearest neighbour, no stage 1.

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
# development seed of both generators and equal on the real samples (BENCHMARKS.md, "Detection quality III").
PLAIN_FEATURES = {"reference": LogMelStatsConfig(), "modulation": LogMelStatsConfig(modulation_bands=8)}
DEFAULT_PLAIN_FEATURES = "modulation"
# How the plain system scores by its nearest normal (--plain-neighbours): "nearest" is the reference's Euclidean
# distance; "local" divides each normal's distance by that normal's own distance to its nearest other normal, so
# the few clips of a new operating condition, far apart from each other, do not make its normal clips look
# anomalous. Alone, "local" scored above "nearest" on the validation seed of both generators and on the real
# samples; in the ensemble with the learned member it lost on one generator, so it is an option, not the default
# (BENCHMARKS.md, "Detection quality III").
PLAIN_NEIGHBOURS = {"nearest": False, "local": True}
DEFAULT_PLAIN_NEIGHBOURS = "nearest"


def plain_stage2(seed: int = 0, threshold_rule: str = "gamma:0.9", neighbours: str = DEFAULT_PLAIN_NEIGHBOURS) -> Stage2Config:
    """The reference scorer: 1-NN Euclidean distance on per-section z-scored features (locally scaled: ``local``)."""
    return Stage2Config(
        approach="generalization",
        detector="knn",
        detector_params={"k": 1, "metric": "l2", "standardize": True, "local_scale": PLAIN_NEIGHBOURS[neighbours]},
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
    cfg = cfg or plain_stage2()
    fcfg = features or PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]
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
