"""``edge-asd-train report``: Tables 1-4 of the report for every run under a folder.

Rows are systems (the DCASE autoencoder reference, the plain log-mel-statistics
nearest-neighbour reference, and the domain
generalization and specialization approaches of every run), columns are
machine types and the all/har-mean (Table 4: all/mean), exactly as the report
lays them out. Written as Markdown and CSV, with ROC curves and per-domain
score histograms as PNG beside them.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_asd.io.dcase import list_clips
from edge_asd.errors import UserError
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present, roc_auc, roc_curve
from edge_asd.scoring.stage2 import APPROACHES

from .evaluate import embed_test, ensemble_scored, score_embedded, write_submission
from .plain import is_plain_run
from .rundir import RunDir

SHORT = {"generalization": "DG", "specialization": "DS"}
PLAIN_ROW = "Plain baseline (log-mel statistics, 1-NN)"
REFERENCE_ROWS = ("Official autoencoder baseline", PLAIN_ROW)
TABLES = {
    "table1_source": ("Harmonic mean of AUC and pAUC (p=0.1) [%] of the source domain", ("auc_source", "pauc_source")),
    "table2_target": ("Harmonic mean of AUC and pAUC (p=0.1) [%] of the target domain", ("auc_target", "pauc_target")),
    "table3_all": ("Harmonic mean of AUC(source), AUC(target) and pAUC [%] (the official score)", ("auc_source", "auc_target", "pauc")),
}


def find_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob(RunDir(root).config.name) if RunDir(p.parent).stage2_root.is_dir())


def _system_scores(data: Path, runs: list[Path], device: str, progress: bool) -> dict[str, dict[str, dict]]:
    """system -> machine -> scored test clips (names, sections, domains, scores, p_target)."""
    systems: dict[str, dict[str, dict]] = defaultdict(dict)
    baseline_done: set[str] = set()
    for run in runs:
        folder = RunDir(run)
        cfg = folder.read_config()
        machine = cfg["machine"]
        if is_plain_run(run):
            # the same features and scorer for every run of a machine: one row
            if machine not in systems[PLAIN_ROW]:
                test = embed_test(run, data, machine, device=device, progress=progress)
                systems[PLAIN_ROW][machine] = {**score_embedded(run, test, "generalization"), "p_target": None}
            continue
        test = embed_test(run, data, machine, device=device, progress=progress)
        plain = folder.plain
        plain_scored = None
        if is_plain_run(plain):
            plain_scored = score_embedded(plain, embed_test(plain, data, machine, device=device, progress=progress), "generalization")
        for approach in APPROACHES:
            if folder.stage2(approach).is_dir():
                scored = score_embedded(run, test, approach)
                systems[f"{SHORT[approach]} {run.name}"][machine] = scored
                if plain_scored is not None:
                    # what edge-asd-export deploys by default: the run and the plain system, standardized and averaged
                    systems[f"{SHORT[approach]} {run.name} + plain"][machine] = ensemble_scored([scored, plain_scored])
        ae_path = folder.ae
        if ae_path.exists() and machine not in baseline_done:
            from .baseline import AEBaseline

            clips = list_clips(data, machine, "test")
            ae = AEBaseline.load(ae_path)
            scores = ae.score_paths([c.path for c in clips])
            systems["Official autoencoder baseline"][machine] = {
                "names": np.array([c.name for c in clips]),
                "sections": np.array([c.section for c in clips]),
                "domains": np.array([c.domain for c in clips]),
                "scores": np.asarray(scores, dtype=float),
                "p_target": None,
                "decisions": np.zeros(len(clips), dtype=int),
            }
            baseline_done.add(machine)
    return systems


def _metrics(scored: dict) -> dict[str, object]:
    out = {}
    for section in sorted(set(scored["sections"].tolist())):
        sel = scored["sections"] == section
        names = scored["names"][sel]
        anomaly = np.array(["_anomaly_" in n for n in names])
        target = scored["domains"][sel] == "target"
        out[section] = labelled_metrics(anomaly, target, scored["scores"][sel])
    return out


def _domain_auc(scored: dict) -> float | None:
    if scored.get("p_target") is None:
        return None
    aucs = []
    for section in sorted(set(scored["sections"].tolist())):
        sel = scored["sections"] == section
        y = scored["domains"][sel] == "target"
        if y.any() and (~y).any():
            aucs.append(roc_auc(y, scored["p_target"][sel]))
    return float(np.mean(aucs)) if aucs else None


def make_report(data: Path, root: Path, device: str = "cpu", progress: bool = True) -> Path:
    runs = find_runs(root)
    if not runs:
        raise UserError(f"{root}: holds no finished runs (folders with config.json and stage2/)")
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    systems = _system_scores(data, runs, device, progress)
    machines = sorted({m for per in systems.values() for m in per})
    order = sorted(systems, key=lambda s: (s not in REFERENCE_ROWS, REFERENCE_ROWS.index(s) if s in REFERENCE_ROWS else 0, s))
    metrics = {s: {m: _metrics(systems[s][m]) for m in systems[s]} for s in order}

    md = [f"# Evaluation of {len(runs)} run(s) on {data}", ""]
    for key, (title, fields) in TABLES.items():
        rows = []
        for s in order:
            row, everything = [s], []
            for m in machines:
                vals = present(getattr(sm, f) for sm in metrics[s].get(m, {}).values() for f in fields)
                everything += vals
                row.append(f"{100 * harmonic_mean(vals):.2f}" if vals else "")
            row.append(f"{100 * harmonic_mean(everything):.2f}" if everything else "")
            rows.append(row)
        _write_table(out, key, title, ["Method", *machines, "all/har-mean"], rows, md)
    rows = []
    for s in order:
        per = [_domain_auc(systems[s][m]) if m in systems[s] else None for m in machines]
        vals = [v for v in per if v is not None]
        if vals:
            rows.append([s, *[f"{100 * v:.2f}" if v is not None else "" for v in per], f"{100 * np.mean(vals):.2f}"])
    _write_table(out, "table4_domain", "Domain classification AUC [%] (mean over sections)", ["Method", *machines, "all/mean"], rows, md)

    for s in order:
        for m, scored in systems[s].items():
            write_submission(out / "submissions" / s.replace(" ", "_"), m, scored)
    _plots(out, systems, order, machines, md)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "metrics.json").write_text(
        json.dumps(
            {s: {m: {sec: vars(v) for sec, v in per.items()} for m, per in metrics[s].items()} for s in order}, indent=2
        )
    )
    return out / "report.md"


def _write_table(out: Path, key: str, title: str, header: list[str], rows: list[list[str]], md: list[str]) -> None:
    with open(out / f"{key}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md.append("")


def _plots(out: Path, systems: dict, order: list[str], machines: list[str], md: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md += ["## Plots", ""]
    for m in machines:
        fig, ax = plt.subplots(figsize=(5, 5))
        for s in order:
            if m not in systems[s]:
                continue
            sc = systems[s][m]
            y = np.array(["_anomaly_" in n for n in sc["names"]])
            fpr, tpr = roc_curve(y, sc["scores"])
            ax.plot(fpr, tpr, label=f"{s} (AUC {100 * roc_auc(y, sc['scores']):.1f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {m} (all sections)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / f"roc_{m}.png", dpi=110)
        plt.close(fig)
        md.append(f"![ROC {m}](roc_{m}.png)")
        shown = [s for s in order if m in systems[s]]
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), squeeze=False)
        for ax, s in zip(axes[0], shown):
            sc = systems[s][m]
            anomaly = np.array(["_anomaly_" in n for n in sc["names"]])
            for label, sel in (
                ("source normal", (sc["domains"] == "source") & ~anomaly),
                ("target normal", (sc["domains"] == "target") & ~anomaly),
                ("anomaly", anomaly),
            ):
                ax.hist(sc["scores"][sel], bins=20, alpha=0.5, label=label)
            ax.set_title(s, fontsize=8)
            ax.set_xlabel("anomaly score")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Score distributions per domain, {m}")
        fig.tight_layout()
        fig.savefig(out / f"hist_{m}.png", dpi=110)
        plt.close(fig)
        md.append(f"![Histograms {m}](hist_{m}.png)")
    md.append("")
