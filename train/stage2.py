"""Stage 2 on the desktop: embed the held-out normals and fit the inlier models.

The models, standardization and thresholds are :mod:`edge_asd.scoring` itself;
this module only feeds it embeddings from the trained extractor and stores the
result in the run folder, for ``report`` and ``edge-asd-export``:

    RUN/stage2/<approach>/detectors.npz   detector state (plain arrays)
    RUN/stage2/<approach>/stage2.json     config, per-section standardization and threshold
    RUN/stage2/<approach>/oof.npz         out-of-fold scores of the held-out normals (ensembles)
    RUN/stage2/heldout_embeddings.npz     the embeddings themselves (enrollment and ensembles reuse them)
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_asd.audio import SegmentSpec
from edge_asd.scoring import APPROACHES, Stage2Config, fit_section, section_from_state, section_state
from edge_asd.scoring import SectionModel


def heldout_clips(run_dir: Path) -> list[dict]:
    split = json.loads((run_dir / "split.json").read_text())
    return [c for c in split["clips"] if c["split"] == "heldout"]


def embed_heldout(run_dir: Path, data_root: Path, device: str = "cpu", progress: bool = True) -> dict[str, np.ndarray]:
    """Embeddings of the held-out normal clips, cached in the run folder."""
    from .embed import embed_clips, load_extractor

    cache = run_dir / "stage2" / "heldout_embeddings.npz"
    clips = heldout_clips(run_dir)
    names = np.array([c["name"] for c in clips])
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if z["names"].tolist() == names.tolist():
                return {k: z[k] for k in z.files}
    model = load_extractor(run_dir, device=device)
    paths = [data_root / c["path"] for c in clips]
    emb, logit = embed_clips(model, paths, SegmentSpec(), device=device, progress=progress)
    out = {
        "names": names,
        "sections": np.array([c["section"] for c in clips]),
        "domains": np.array([c["domain"] for c in clips]),
        "embeddings": emb.astype(np.float32),
        "domain_logits": logit.astype(np.float32),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def fit_stage2(run_dir: Path, held: dict[str, np.ndarray], cfg: Stage2Config) -> Path:
    """Fit every section's models for one approach and save them under the run."""
    out = run_dir / "stage2" / cfg.approach
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
    np.savez(out / "detectors.npz", **arrays)
    np.savez(out / "oof.npz", **oof)
    (out / "stage2.json").write_text(json.dumps({"config": asdict(cfg), "sections": numbers}, indent=2))
    return out


def load_stage2(run_dir: Path, approach: str) -> tuple[Stage2Config, dict[str, SectionModel]]:
    folder = run_dir / "stage2" / approach
    meta = json.loads((folder / "stage2.json").read_text())
    cfg = Stage2Config(**meta["config"])
    with np.load(folder / "detectors.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    sections = {s: section_from_state(s, arrays, n) for s, n in meta["sections"].items()}
    return cfg, sections


def fit_all(run_dir: Path, data_root: Path, base: Stage2Config, device: str = "cpu", progress: bool = True) -> None:
    """Both approaches from one extractor: the report's DG and DS rows side by side.

    ``base.approach`` is recorded as the run's default, the one ``edge-asd-export`` deploys.
    """
    held = embed_heldout(run_dir, data_root, device=device, progress=progress)
    for approach in APPROACHES:
        cfg = Stage2Config(**{**asdict(base), "approach": approach})
        fit_stage2(run_dir, held, cfg)
    (run_dir / "stage2" / "default.json").write_text(json.dumps({"approach": base.approach}))


def default_approach(run_dir: Path) -> str:
    return json.loads((run_dir / "stage2" / "default.json").read_text())["approach"]
