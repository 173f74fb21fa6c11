"""AUC(target) before and after on-device enrollment, against retraining on the desktop.

    .venv/bin/python benchmarks/bench_enroll.py [--machine fan] [--counts 5,10,20] [--work DIR]

On `edge-asd synth` data with a pool of extra target-domain normal clips:

1. train a run as usual (6 target clips per section for stage 1, the rest of the
   pool unseen), export it, and measure AUC(target) of the test set;
2. enroll N more target clips per section into the bundle (`edge-asd enroll`,
   no retraining) and measure again, for each N;
3. retrain the extractor on the desktop with those N clips added to its
   target training data (stage 1 trains on 6 + N target clips per section,
   stage 2 keeps the same 4 held-out ones) and measure.

Prints a table and writes benchmarks/results/enroll.json. Uses the demo's
training configuration (deploy/demo_train.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def auc_target(bundle: Path, data: Path, machine: str) -> float:
    from edge_asd.io.dcase import list_clips
    from edge_asd.scoring.metrics import labelled_metrics
    from edge_asd.offline.score import score_files
    from edge_asd.runtime.scorer import load_scorer

    scorer = load_scorer(bundle, backend="onnx-cpu")
    clips = list_clips(data, machine, "test")
    results, _ = score_files(scorer, [c.path for c in clips], progress=False)
    vals = []
    for section in sorted({c.section for c in clips}):
        sel = [c for c in clips if c.section == section]
        m = labelled_metrics([c.is_anomaly for c in sel], [c.domain == "target" for c in sel], [results[c.path][1] for c in sel])
        vals.append(m.auc_target)
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", default="fan")
    ap.add_argument("--counts", default="5,10,20")
    ap.add_argument("--work", default="/tmp/edge-asd-bench-enroll")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    from edge_asd.io.dcase import list_clips
    from edge_asd.runtime.enroll import enroll
    from edge_asd.io.audio import read_audio
    from edge_asd.synth import SynthConfig, generate
    from export.pack import build_bundle
    from train.cli import main as train_main

    pool = 6 + max(counts)
    data = work / "data"
    generate(data, SynthConfig(machines=(args.machine, "gearbox" if args.machine != "gearbox" else "fan"), sections=2,
                               train_source=40, train_target=pool + 4, test=10, seed=args.seed), progress=False)
    # Stage 1 uses 6 target clips per section and holds out the rest; the enrollment pool is
    # moved out of train/ so that neither the base run nor its stage 2 ever sees it.
    extra = work / "extra"
    extra.mkdir()
    for section in ("00", "01"):
        tgt = [c for c in list_clips(data, args.machine, "train") if c.section == section and c.domain == "target"]
        for c in tgt[10:]:
            shutil.move(str(c.path), extra / c.name)
    demo_cfg = json.loads((ROOT / "deploy" / "demo_train.json").read_text())

    def train(out: Path, n_target: int) -> Path:
        # the retrained extractor trains on its 6 target clips plus the new ones
        cfg = work / f"cfg_{n_target}.json"
        cfg.write_text(json.dumps({**demo_cfg, "n_target_train": 6 + n_target}))
        t0 = time.time()
        rc = train_main(["--data", str(data), "--machine", args.machine, "--out", str(out), "--config", str(cfg),
                         "--device", "cpu", "--baseline-epochs", "0", "--quiet", "--seed", str(args.seed)])
        assert rc == 0
        bundle = build_bundle(out, out.with_suffix(".asd"), progress=False)
        print(f"  trained {out.name} with {n_target} extra target clips per section in {time.time() - t0:.0f} s")
        return bundle

    rows = []
    base = train(work / "runs" / "base", 0)
    rows.append({"clips": 0, "enrolled": auc_target(base, data, args.machine), "retrained": None})
    extra_clips = sorted(extra.iterdir())
    for n in counts:
        chosen = {s: [p for p in extra_clips if p.name.startswith(f"section_{s}_")][:n] for s in ("00", "01")}
        bundle = work / f"enrolled_{n}.asd"
        shutil.copy(base, bundle)
        for s, paths in chosen.items():
            enroll(bundle, [(p.name, read_audio(p)) for p in paths], bundle, section=s, domain="target", accept_anomalous=True)
        enrolled = auc_target(bundle, data, args.machine)
        # desktop retraining with the same clips in the training data
        for paths in chosen.values():
            for p in paths:
                shutil.copy(p, data / args.machine / "train" / p.name)
        retrained = auc_target(train(work / "runs" / f"retrained_{n}", n), data, args.machine)
        for paths in chosen.values():
            for p in paths:
                (data / args.machine / "train" / p.name).unlink()
        rows.append({"clips": n, "enrolled": enrolled, "retrained": retrained})
    print(f"\nAUC(target) on {args.machine} test clips (mean over sections)")
    print(f"{'extra target clips':>20s} {'enrolled':>9s} {'retrained':>10s}")
    for r in rows:
        re = f"{r['retrained']:.3f}" if r["retrained"] is not None else "-"
        print(f"{r['clips']:>20d} {r['enrolled']:9.3f} {re:>10s}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "enroll.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": args.machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
