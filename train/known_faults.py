"""The official score of a trained run on the user's own labelled clips: recordings of known faults.

A user who imported recordings of a fault (``edge-asd import --split test --label
anomaly``) beside normal ones (``--split test``) holds the only labelled evidence there
is before deploying. ``edge-asd-train`` scores them with every system it fitted (the
plain one, the learned one and their ensemble, as ``edge-asd-export`` would combine
them) and says which one the bundle will be. Only clips import.csv lists count: a
benchmark's test set in the same folder is never looked at here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_asd.io.clipset import known_fault_clips
from edge_asd.io.dcase import parse_name
from edge_asd.scoring.metrics import official_result, section_metrics

from .evaluate import embed_paths, ensemble_scored, score_embedded
from .plain import is_plain_run
from .stage2 import load_stage2
from .rundir import RunDir


def known_fault_report(run_dir: Path, data: Path, machine: str, approach: str, device: str = "cpu") -> str | None:
    """One line with each system's official score on the imported labelled test clips; None when there are none."""
    clips = known_fault_clips(data, machine)
    if not clips:  # the usual case, DCASE data included: nothing to load
        return None
    _, sections = load_stage2(run_dir, approach)
    clips = [p for p in clips if parse_name(p, machine).section in sections]
    if not clips:
        return None
    infos = [parse_name(p, machine) for p in clips]
    test = {"names": np.array([i.name for i in infos]), "sections": np.array([i.section for i in infos]),
            "domains": np.array([i.domain or "source" for i in infos])}

    def scored(run: Path, how: str) -> dict:
        emb, logit = embed_paths(run, clips, device)
        return score_embedded(run, {**test, "embeddings": emb, "domain_logits": logit}, how)

    systems: dict[str, dict] = {}
    if is_plain_run(run_dir):
        systems["plain"] = scored(run_dir, approach)
        deployed = "plain"
    else:
        systems["learned"] = scored(run_dir, approach)
        plain_dir = RunDir(run_dir).plain
        deployed = "learned"
        if is_plain_run(plain_dir):
            systems["plain"] = scored(plain_dir, "generalization")
            systems["ensemble"] = ensemble_scored([systems["learned"], systems["plain"]])
            gate = RunDir(run_dir).read_gate()
            deployed = "plain" if gate and gate["decision"] == "plain" else "ensemble"
    figures = ", ".join(f"{name} {_official(s, infos, machine):.3f}" for name, s in systems.items())
    n_anomaly = sum(i.label == "anomaly" for i in infos)
    return (f"known faults: official score on the {len(clips)} imported test clips of {data / machine / 'test'} "
            f"({len(clips) - n_anomaly} normal, {n_anomaly} anomalous): {figures}; "
            f"edge-asd-export deploys the {deployed if deployed != 'plain' else 'plain system'}")


def _official(scored: dict, infos: list, machine: str) -> float:
    by_section = {}
    for section in sorted({i.section for i in infos}):
        idx = [k for k, i in enumerate(infos) if i.section == section]
        by_section[(machine, section)] = section_metrics([infos[k] for k in idx], scored["scores"][idx])
    return float(official_result(by_section)["official_score"])
