"""Scoring a run's test clips with the torch extractor (the desktop reference).

``edge-asd score`` does the same with the exported bundle; the export tests
compare the two. Test embeddings are cached per run so both approaches and
every report reuse one pass of the extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.io.dcase import list_clips
from edge_asd.scoring.clip_scores import score_parts
from edge_asd.scoring.section import section_parts
from edge_asd.io.submission import write_section

from .data import run_spec
from .plain import is_plain_run, plain_embeddings
from .stage2 import load_stage2
from .rundir import RunDir


def embed_test(run_dir: Path, data_root: Path, machine: str, device: str = "cpu", progress: bool = True) -> dict[str, np.ndarray]:
    clips = list_clips(data_root, machine, "test")
    names = np.array([c.name for c in clips])
    cache = RunDir(run_dir).test_embeddings
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            if z["names"].tolist() == names.tolist():
                return {k: z[k] for k in z.files}
    emb, logit = embed_paths(run_dir, [c.path for c in clips], device, progress)
    out = {
        "names": names,
        "sections": np.array([c.section for c in clips]),
        "domains": np.array([c.domain or "" for c in clips]),
        "embeddings": emb.astype(np.float32),
        "domain_logits": logit.astype(np.float32),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def embed_paths(run_dir: Path, paths: list[Path], device: str = "cpu", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [n, S, D], domain logits [n, S])`` of clip files by a run's extractor (or plain features)."""
    from .embed import embed_clips, load_extractor

    if is_plain_run(run_dir):
        return plain_embeddings(run_dir, paths)
    model = load_extractor(run_dir, device=device)
    return embed_clips(model, paths, run_spec(run_dir), device=device, progress=progress)


def score_embedded(run_dir: Path, test: dict[str, np.ndarray], approach: str) -> dict[str, np.ndarray]:
    """Scores, p_target and decisions of embedded test clips under one approach."""
    cfg, sections = load_stage2(run_dir, approach)
    n = len(test["names"])
    scores, p, decisions = np.zeros(n), np.zeros(n), np.zeros(n, dtype=int)
    all_parts: dict[str, np.ndarray] = {}
    for section, model in sections.items():
        sel = test["sections"] == section
        if not sel.any():
            continue
        parts = section_parts(model, test["embeddings"][sel], cfg.aggregator)
        scores[sel], p[sel] = score_parts([parts], [test["domain_logits"][sel]], cfg.kappa, cfg.approach)
        decisions[sel] = scores[sel] > model.threshold
        for key, z in parts.items():
            all_parts.setdefault(key, np.zeros(n))[sel] = z
    # the plain system has no domain head: its logits are zeros and mean nothing in an ensemble's Eq. 7
    logits = None if is_plain_run(run_dir) else test["domain_logits"]
    return {"names": test["names"], "sections": test["sections"], "domains": test["domains"], "scores": scores,
            "p_target": p, "decisions": decisions, "parts": all_parts, "approach": cfg.approach, "logits": logits,
            "kappa": cfg.kappa}


def ensemble_scored(members: list[dict]) -> dict[str, np.ndarray]:
    """Report 2.5 on scored test clips, as the device scores them: the standardized parts averaged, Eq. 8 by the
    members with a domain head.

    The decisions are left out: an ensemble's threshold is fitted at export.
    """
    first = members[0]
    scores, _ = score_parts([m["parts"] for m in members], [m["logits"] for m in members], first["kappa"], first["approach"])
    return {**first, "scores": scores, "decisions": np.zeros(len(scores), dtype=int)}


def write_submission(out_dir: Path, machine: str, scored: dict[str, np.ndarray]) -> None:
    for section in sorted(set(scored["sections"].tolist())):
        sel = scored["sections"] == section
        write_section(out_dir, machine, section, scored["names"][sel].tolist(), scored["scores"][sel], scored["decisions"][sel])
