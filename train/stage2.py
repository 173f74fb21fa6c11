"""Stage 2 on the desktop: embed the normals of the bank and fit the inlier models.

The models, standardization and thresholds are the device's own code
(:mod:`edge_asd.scoring.stage2` fits a section, :mod:`edge_asd.scoring.section` holds it);
this module only feeds them embeddings from the trained extractor and stores the
result in the run folder, for ``report`` and ``edge-asd-export``:

    RUN/stage2/<approach>/detectors.npz   detector state (plain arrays)
    RUN/stage2/<approach>/stage2.json     config, per-section standardization and threshold
    RUN/stage2/<approach>/oof.npz         out-of-fold scores of the held-out normals (ensembles)
    RUN/stage2/normal_embeddings.npz      the embeddings of normal clips, by name (enrollment and ensembles reuse them)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .data import run_spec
from edge_asd.scoring.section import SectionModel, Standardization, section_from_state, section_state
from edge_asd.errors import DataError
from edge_asd.scoring.stage2 import APPROACHES, Stage2Config, check_fittable, fit_section
from .rundir import RunDir

log = logging.getLogger(__name__)


def split_clips(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).read_split()["clips"]


def heldout_clips(run_dir: Path) -> list[dict]:
    return [c for c in split_clips(run_dir) if c["split"] == "heldout"]


def bank_clips(run_dir: Path, bank: str) -> list[dict]:
    """The normal clips stage 2 is fitted on: the held-out ones (the report) or all of them."""
    return heldout_clips(run_dir) if bank == "heldout" else split_clips(run_dir)


def embed_normals(
    run_dir: Path, data_root: Path, bank: str = "heldout", device: str = "cpu", progress: bool = True
) -> dict[str, np.ndarray]:
    """Embeddings of the normal clips of ``bank``, in split.json's order.

    Cached in the run folder by clip name, so the held-out clips embedded for
    one approach are not embedded again for a bank of all normals.
    """
    clips = bank_clips(run_dir, bank)
    cache = RunDir(run_dir).normal_embeddings
    known: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            known = {n: (e, l) for n, e, l in zip(z["names"].tolist(), z["embeddings"], z["domain_logits"])}
    todo = [c for c in clips if c["name"] not in known]
    if todo:
        from .embed import embed_clips, load_extractor

        model = load_extractor(run_dir, device=device)
        emb, logit = embed_clips(model, [data_root / c["path"] for c in todo], run_spec(run_dir), device=device, progress=progress)
        for c, e, l in zip(todo, emb.astype(np.float32), logit.astype(np.float32)):
            known[c["name"]] = (e, l)
        names = sorted(known)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            names=np.array(names),
            embeddings=np.stack([known[n][0] for n in names]),
            domain_logits=np.stack([known[n][1] for n in names]),
        )
    return {
        "names": np.array([c["name"] for c in clips]),
        "sections": np.array([c["section"] for c in clips]),
        "domains": np.array([c["domain"] for c in clips]),
        "embeddings": np.stack([known[c["name"]][0] for c in clips]),
        "domain_logits": np.stack([known[c["name"]][1] for c in clips]),
    }


def fit_stage2(run_dir: Path, held: dict[str, np.ndarray], cfg: Stage2Config) -> Path:
    # ``held``: the normals of the bank (embed_normals), whatever cfg.bank chose
    """Fit every section's models for one approach and save them under the run."""
    run = RunDir(run_dir)
    out = run.stage2(cfg.approach)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    numbers: dict[str, dict] = {}
    oof: dict[str, np.ndarray] = {}
    for section in sorted(set(held["sections"].tolist())):
        sel = held["sections"] == section
        res = fit_section(section, held["embeddings"][sel], held["domains"][sel], held["domain_logits"][sel], cfg)
        a, n = section_state(res.model)
        arrays.update(a)
        numbers[section] = n
        for key, z in res.oof_parts.items():
            oof[f"{section}/{key}"] = z
        oof[f"{section}/names"] = held["names"][sel]
    np.savez(run.detectors(cfg.approach), **arrays)
    np.savez(run.oof(cfg.approach), **oof)
    run.stage2_json(cfg.approach).write_text(json.dumps({"config": asdict(cfg), "sections": numbers}, indent=2))
    return out


def load_stage2(run_dir: Path, approach: str) -> tuple[Stage2Config, dict[str, SectionModel]]:
    run = RunDir(run_dir)
    meta = json.loads(run.stage2_json(approach).read_text())
    cfg = Stage2Config(**meta["config"])
    with np.load(run.detectors(approach), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sections = {s: section_from_state(s, arrays, {d: Standardization(**v) for d, v in n["standardization"].items()},
                                      n["threshold"]) for s, n in meta["sections"].items()}
    return cfg, sections


def fit_all(
    run_dir: Path, data_root: Path, base: Stage2Config, device: str = "cpu", progress: bool = True, approaches=APPROACHES
) -> list[str]:
    """The approaches from one extractor: the report's DG and DS rows side by side.

    ``base.approach`` is recorded as the run's default, the one ``edge-asd-export``
    deploys. An approach this data cannot support (domain specialization
    without target clips) is skipped with one log line; the default must fit.
    """
    fitted = []
    for approach in approaches:
        cfg = Stage2Config(**{**asdict(base), "approach": approach})
        normals = embed_normals(run_dir, data_root, cfg.bank, device=device, progress=progress)
        try:
            check_normals(normals, cfg)
        except ValueError as exc:
            if approach == base.approach:
                raise
            log.info("%s: %s not fitted (%s)", run_dir, approach, exc)
            continue
        fit_stage2(run_dir, normals, cfg)
        fitted.append(approach)
    RunDir(run_dir).default_approach_file.write_text(json.dumps({"approach": base.approach}))
    return fitted


def check_normals(normals: dict[str, np.ndarray], cfg: Stage2Config, where: str = "") -> None:
    """:class:`DataError` (one line, exit status 2) when a section's clips cannot be fitted; ``where`` names the data."""
    for section in sorted(set(normals["sections"].tolist())):
        dom = normals["domains"][normals["sections"] == section]
        try:
            check_fittable(section, int(np.sum(dom == "source")), int(np.sum(dom == "target")), cfg)
        except ValueError as exc:
            raise DataError(f"{where + ': ' if where else ''}{exc}; no system can be fitted (record more normal clips)") from None

