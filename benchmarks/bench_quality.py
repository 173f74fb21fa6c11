"""Detection quality side by side: learned systems, stage-2 rules, the plain baseline and the autoencoder.

    .venv/bin/python benchmarks/bench_quality.py DATA... --out DIR [--machines a,b] [--systems NAME,...]
        [--variants NAME,...] [--epochs N] [--ae-epochs N] [--seed S]

For each data set and machine type it trains every named stage-1 system once
(``edge-asd-train``, which also fits the plain baseline and the autoencoder
into the run), then fits every named stage-2 variant on the same embeddings
with :mod:`edge_asd.scoring.stage2` (the code the device runs) and scores the test
clips; ensembles with the plain system average standardized scores (report
2.5). The plain baseline and the first system's ``--product`` variant are also
run through the whole product path (``edge-asd-export`` -> ``edge-asd score`` ->
``edge-asd evaluate``) as a check that the figures are the product's.

Prints one table per data set (official score, AUC source, AUC target, pAUC;
harmonic means over all sections, %), writes ``DIR/quality.json``,
``DIR/quality.md`` and ``DIR/quality.png`` (``quality-TAG.*`` with ``--tag``). Finished runs
under ``DIR/runs`` are reused, so invocations with other systems or machines add to one set of runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_asd.io.dcase import list_clips, list_machines  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402
from edge_asd.scoring.combine import combine_parts, p_target  # noqa: E402
from edge_asd.scoring.section import section_parts  # noqa: E402
from edge_asd.scoring.stage2 import Stage2Config, fit_section  # noqa: E402
from train.names import SUBCLUSTER_ADACOS  # noqa: E402
from train.presets import PRESETS  # noqa: E402

# Stage-1 systems (TrainConfig overrides). "epochs" is set by --epochs unless given here.
# The small Transformer is the cpu preset's (its size, batch and workers), read from
# train/presets.py so that the benchmark measures what the product trains.
_SMALL = {k: PRESETS["cpu"][k] for k in ("backbone", "embedding_dim", "d_model", "n_layers", "n_heads", "batch_size", "num_workers")}
_ADACOS = {"domain_head": False, "objective": SUBCLUSTER_ADACOS}
_LITE0 = {"backbone": "efficientnet_lite0", "pretrained_weights": "imagenet", "embedding_dim": 64, "batch_size": 32, "num_workers": 0}
SYSTEMS = {
    # the product's cpu preset as `edge-asd-train --preset cpu` trains it: its step budget, whatever --epochs says
    "cpu": dict(PRESETS["cpu"]),
    "transformer": {**_SMALL},
    "transformer-dg": {**_SMALL, "domain_head": False},
    "transformer-machine": {**_SMALL, "amplitude": "machine"},
    "transformer-adacos": {**_SMALL, **_ADACOS},
    "transformer-adacos-fft": {**_SMALL, **_ADACOS, "fft_branch": True},
    "transformer-adacos-machine": {**_SMALL, **_ADACOS, "amplitude": "machine"},
    "transformer-adacos-fft-machine": {**_SMALL, **_ADACOS, "amplitude": "machine", "fft_branch": True},
    "effnet_b0": {"backbone": "efficientnet_b0", "batch_size": 32, "num_workers": 0},
    # EfficientNet-Lite0 from the packaged ImageNet weights (the `pretrained` extra), the cpu preset's objective
    "lite0-imagenet-adacos-machine": {**_LITE0, **_ADACOS, "amplitude": "machine"},
    # the same at 30 epochs whatever --epochs says (the 40 + 4 rows' epochs, where --epochs 10 gives its wall time)
    "lite0-imagenet-adacos-machine-e30": {**_LITE0, **_ADACOS, "amplitude": "machine", "epochs": 30},
    # the same with the report's objective (OE losses, domain head) and the machine's scale
    "lite0-imagenet-machine": {**_LITE0, "amplitude": "machine"},
}

_KNN = {"k": 1, "metric": "l2", "method": "largest"}
_COS = {"k": 1, "metric": "cosine", "method": "largest"}
# Stage-2 variants: (Stage2Config fields, ensemble with the plain system?)
VARIANTS = {
    "report-DS": ({"approach": "specialization", "bank": "heldout", "detector_params": _KNN}, False),
    "report-DG": ({"approach": "generalization", "bank": "heldout", "detector_params": _KNN}, False),
    "all-DS-l2": ({"approach": "specialization", "bank": "all", "detector_params": _KNN}, False),
    "all-DS-cos": ({"approach": "specialization", "bank": "all", "detector_params": _COS}, False),
    "all-DS-cos-shrunk": ({"approach": "specialization", "bank": "all", "detector_params": _COS, "target_std": "shrunk"}, False),
    "all-DG-cos": ({"approach": "generalization", "bank": "all", "detector_params": _COS, "mixup_pseudo_normals": 0}, False),
    "all-DG-cos-kmeans16": ({"approach": "generalization", "bank": "all", "detector_params": _COS,
                             "mixup_pseudo_normals": 0, "source_centres": 16}, False),
    "all-DG-cos-kmeans16-mean4": ({"approach": "generalization", "bank": "all", "mixup_pseudo_normals": 0,
                                   "source_centres": 16, "detector_params": {"k": 4, "metric": "cosine", "method": "mean"}}, False),
    "all-DG-cos-kmeans16+plain": ({"approach": "generalization", "bank": "all", "detector_params": _COS,
                                   "mixup_pseudo_normals": 0, "source_centres": 16}, True),
    "all-DS-cos-shrunk+plain": ({"approach": "specialization", "bank": "all", "detector_params": _COS, "target_std": "shrunk"}, True),
}


def _test_truth(data: Path, machine: str):
    clips = list_clips(data, machine, "test")
    return clips, np.array([c.section for c in clips]), np.array([c.is_anomaly for c in clips]), np.array([c.domain == "target" for c in clips])


def _fit_parts(normals: dict, test: dict, cfg: Stage2Config) -> tuple[dict[str, dict], np.ndarray]:
    """Per section, standardized test-score parts of ``cfg`` fitted on ``normals``; and test p_target."""
    parts = {}
    for section in sorted(set(normals["sections"].tolist())):
        sel = normals["sections"] == section
        res = fit_section(section, normals["embeddings"][sel], normals["domains"][sel], normals["domain_logits"][sel], cfg)
        tsel = test["sections"] == section
        parts[section] = section_parts(res.model, test["embeddings"][tsel], cfg.aggregator)
    return parts, p_target(test["domain_logits"], cfg.kappa)


def _metrics(sections: np.ndarray, anomaly: np.ndarray, target: np.ndarray, scores: np.ndarray) -> dict:
    per = {}
    for s in sorted(set(sections.tolist())):
        sel = sections == s
        per[s] = labelled_metrics(anomaly[sel], target[sel], scores[sel]).official()
    return per


def summarize(per_machine: dict[str, dict]) -> dict[str, float | None]:
    """Harmonic means over every section of every machine, as the official score."""
    out = {}
    for key in ("auc_source", "auc_target", "pauc"):
        vals = present(sec[key] for m in per_machine.values() for sec in m.values())
        out[key] = harmonic_mean(vals) if vals else None
    out["official"] = harmonic_mean(present(v for m in per_machine.values() for sec in m.values() for v in sec.values()))
    out["min_target_auc"] = min(present(sec["auc_target"] for m in per_machine.values() for sec in m.values()), default=None)
    return out


def _train(data: Path, machine: str, out: Path, system: str, epochs: int, ae_epochs: int, seed: int) -> Path:
    from train.cli import main as train_main

    run = out / "runs" / data.name / machine / system
    if (run / "stage2" / "default.json").exists() and (ae_epochs == 0 or (run / "baseline" / "ae.pt").exists()):
        return run  # finished earlier: a benchmark may be resumed
    if run.exists():
        import shutil

        shutil.rmtree(run)  # an interrupted run starts again
    cfg = {"epochs": epochs, **SYSTEMS[system]}
    cfg_file = out / "runs" / f"{system}.json"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(json.dumps(cfg))
    has_target = any(c.domain == "target" for c in list_clips(data, machine, "train"))
    approach = "specialization" if has_target and cfg.get("domain_head", True) else "generalization"
    argv = ["--data", str(data), "--machine", machine, "--out", str(run), "--config", str(cfg_file), "--device", "cpu",
            "--seed", str(seed), "--approach", approach, "--bank", "all", "--baseline-epochs", str(ae_epochs), "--quiet"]
    rc = train_main(argv)
    if rc != 0:
        raise SystemExit(f"training {system} on {data}/{machine} failed ({rc})")
    return run


def _product_score(runs: list[Path], data: Path, machine: str, tmp: Path) -> float:
    """The official score of a bundle of ``runs`` as a user gets it: export, score, evaluate."""
    from edge_asd.scoring.metrics import evaluate_dir
    from edge_asd.offline.score import score_paths
    from export.pack import build_bundle

    bundle = build_bundle(runs, tmp / f"{machine}.asd", progress=False)
    sub = tmp / f"sub-{machine}"
    score_paths(bundle, [data / machine / "test"], sub, backend="onnx-cpu", progress=False)
    return float(evaluate_dir(sub)["official_score"])


def bench_dataset(data: Path, args, out: Path) -> dict:
    from train.baseline import AEBaseline
    from train.evaluate import embed_test
    from train.stage2 import embed_normals

    machines = args.machines.split(",") if args.machines else [
        m for m in list_machines(data) if (data / m / "test").is_dir()
    ]
    rows: dict[str, dict[str, dict]] = {}
    product: dict[str, dict] = {}
    walls: dict[str, float] = {}
    for machine in machines:
        clips, sections, anomaly, target = _test_truth(data, machine)
        machine_dir = out / "runs" / data.name / machine
        for si, system in enumerate(args.systems.split(",")):
            t0 = time.perf_counter()
            # the autoencoder reference once per machine, in the first run that trains it
            trained_ae = sorted(machine_dir.glob("*/baseline/ae.pt"))
            if args.reuse_only and not (machine_dir / system / "stage2" / "default.json").exists():
                print(f"  {data.name}/{machine}/{system}: no finished run, left out (--reuse-only)")
                continue
            run = _train(data, machine, out, system, args.epochs, 0 if trained_ae else args.ae_epochs, args.seed)
            walls[f"{system}/{machine}"] = time.perf_counter() - t0
            plain_run = run / "baseline" / "plain"
            if "plain" not in rows or machine not in rows["plain"]:
                pt = embed_test(plain_run, data, machine, progress=False)
                pn = embed_normals(plain_run, data, "all", progress=False)
                from train.plain import plain_stage2

                pparts, _ = _fit_parts(pn, pt, plain_stage2(args.seed))
                scores = np.zeros(len(clips))
                for s, part in pparts.items():
                    scores[sections == s] = part["all"]
                rows.setdefault("plain", {})[machine] = _metrics(sections, anomaly, target, scores)
                ae = AEBaseline.load(sorted(machine_dir.glob("*/baseline/ae.pt"))[0])
                rows.setdefault("autoencoder", {})[machine] = _metrics(
                    sections, anomaly, target, np.asarray(ae.score_paths([c.path for c in clips]), dtype=float))
                with tempfile.TemporaryDirectory() as tmp:
                    product.setdefault("plain", {})[machine] = _product_score([plain_run], data, machine, Path(tmp))
            test = embed_test(run, data, machine, progress=False)
            for variant in args.variants.split(","):
                fields, with_plain = VARIANTS[variant]
                cfg = Stage2Config(**{**fields, "seed": args.seed})
                normals = embed_normals(run, data, cfg.bank, progress=False)
                has_target = bool(np.any(normals["domains"] == "target"))
                if cfg.approach == "specialization" and not (has_target and SYSTEMS[system].get("domain_head", True)):
                    continue  # Eq. 8 needs target clips and a domain classifier
                try:
                    parts, p = _fit_parts(normals, test, cfg)
                except ValueError as exc:
                    print(f"  {system}/{variant} on {machine}: not fittable ({exc})")
                    continue
                scores = np.zeros(len(clips))
                for s, part in parts.items():
                    sel = sections == s
                    members = [part]
                    if with_plain:
                        members.append(pparts[s])
                    scores[sel] = combine_parts(members, p[sel], cfg.approach)
                rows.setdefault(f"{system} {variant}", {})[machine] = _metrics(sections, anomaly, target, scores)
                if si == 0 and variant == args.product:
                    # the same system as a user gets it: edge-asd-train's stage 2, edge-asd-export, score, evaluate
                    from train.stage2 import fit_all

                    fit_all(run, data, cfg, progress=False, approaches=(cfg.approach,))
                    with tempfile.TemporaryDirectory() as tmp:
                        product.setdefault(f"{system} {variant}", {})[machine] = _product_score(
                            [run, plain_run] if with_plain else [run], data, machine, Path(tmp))
        # progress: this machine's official scores so far
        done = {name: summarize({machine: per[machine]})["official"] for name, per in rows.items() if machine in per}
        print(f"  {data.name}/{machine}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(done.items(), key=lambda kv: -kv[1])), flush=True)
    table = {name: summarize(per) for name, per in rows.items()}
    return {"machines": machines, "systems": table, "per_machine": rows, "product_path": product, "train_wall_s": walls}


def _format(name: str, result: dict) -> str:
    base = result["systems"]["plain"]["official"]
    lines = [f"### {name}", "", "| system | official | vs plain | AUC source | AUC target | pAUC | min target AUC |", "|---|---|---|---|---|---|---|"]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    for sys_name, r in sorted(result["systems"].items(), key=lambda kv: -kv[1]["official"]):
        lines.append(f"| {sys_name} | {pct(r['official'])} | {r['official'] / base:.2f}x | {pct(r['auc_source'])} | "
                     f"{pct(r['auc_target'])} | {pct(r['pauc'])} | {pct(r['min_target_auc'])} |")
    lines.append("")
    for sys_name, per in result["product_path"].items():
        prod = ", ".join(f"{m} {100 * v:.2f}" for m, v in per.items())
        lines.append(f"Product path check ({sys_name}: edge-asd-export -> score -> evaluate, official per machine): {prod}")
    lines.append("")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        items = sorted(res["systems"].items(), key=lambda kv: kv[1]["official"])
        ax.barh([k for k, _ in items], [100 * v["official"] for _, v in items],
                color=["tab:gray" if k in ("plain", "autoencoder") else "tab:blue" for k, _ in items])
        ax.axvline(100 * res["systems"]["plain"]["official"], color="k", ls="--", lw=1, label="plain baseline")
        ax.axvline(125 * res["systems"]["plain"]["official"], color="tab:red", ls=":", lw=1, label="1.25x plain")
        ax.set_title(name)
        ax.set_xlabel("official score (%)")
        ax.legend(loc="lower right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--machines", help="comma-separated; default every machine type with test clips")
    p.add_argument("--systems", default="transformer", help=f"stage-1 systems: {', '.join(SYSTEMS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"stage-2 variants: {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ae-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--product", default="", help="variant of the first system also run through export, score and evaluate")
    p.add_argument("--reuse-only", action="store_true", help="only tabulate finished runs under --out; train nothing")
    p.add_argument("--tag", default="", help="suffix of the result files, so several invocations can share --out (and its runs)")
    args = p.parse_args(argv)
    stem = f"quality-{args.tag}" if args.tag else "quality"
    args.out.mkdir(parents=True, exist_ok=True)
    results, md = {}, []
    for data in args.data:
        t0 = time.perf_counter()
        res = bench_dataset(data, args, args.out)
        res["wall_s"] = time.perf_counter() - t0
        results[str(data)] = res
        text = _format(f"{data} ({', '.join(res['machines'])}; {res['wall_s']:.0f} s)", res)
        print(text, flush=True)
        md.append(text)
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{stem}.md").write_text("\n".join(md))
    _plot(results, args.out / f"{stem}.png")
    print(f"written: {args.out / f'{stem}.md'}, {args.out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
