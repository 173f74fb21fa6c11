"""Wall time of a small grid: the local pool (``--jobs 2``) against the same runs one after another.

    python benchmarks/bench_grid.py                 # 2 machine types x 2 seeds, tiny Transformer
    python benchmarks/bench_grid.py --seeds 3 --epochs 6

Both are ``edge-asd-train grid`` on the same grid file and data, into fresh folders: ``--jobs 1``
(one run at a time, with every core) and ``--jobs N`` (N runs at a time, the cores shared out
between them). Each run is a whole ``edge-asd-train`` process: imports, data preparation,
stage 1, stage 2 and the plain reference. Writes ``benchmarks/results/grid.json`` and prints a
Markdown table. On a shared machine the figures are upper bounds: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "backbone": "transformer", "embedding_dim": 32, "d_model": 32, "n_layers": 2, "n_heads": 2, "batch_size": 16,
    "num_workers": 0, "r_train": 0.8, "n_target_train": 3,
}


def grid_file(path: Path, data: Path, machines: list[str], seeds: int, epochs: int) -> Path:
    config = {**CONFIG, "epochs": epochs}
    lines = [f"data = {json.dumps(str(data))}", "[grid]", f"machine = {json.dumps(machines)}",
             f"seed = {json.dumps(list(range(seeds)))}", "[config]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    lines += ["[flags]", "baseline_epochs = 0", 'device = "cpu"']
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_grid(grid: Path, out: Path, jobs: int) -> dict:
    load = os.getloadavg()[0]
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "train.cli", "grid", str(grid), "--out", str(out), "--jobs", str(jobs), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    if res.returncode:
        raise SystemExit(f"grid --jobs {jobs} failed:\n{res.stderr}")
    runs = [json.loads(p.read_text())["seconds"] for p in sorted(out.rglob("grid_done.json"))]
    return {"jobs": jobs, "wall_s": round(wall, 1), "runs": len(runs), "run_s": runs,
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--machines", default="fan,gearbox")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--train-source", type=int, default=24)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grid.json"))
    args = p.parse_args()
    machines = args.machines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from edge_asd.synth import SynthConfig, generate

        generate(tmp / "data", SynthConfig(machines=tuple(machines), sections=2, train_source=args.train_source,
                                           train_target=4, test=1, seconds=4.0, seed=11), progress=False)
        grid = grid_file(tmp / "grid.toml", tmp / "data", machines, args.seeds, args.epochs)
        sequential = timed_grid(grid, tmp / "sequential", 1)
        pooled = timed_grid(grid, tmp / "pooled", args.jobs)
    result = {"machine": f"{os.cpu_count()} CPU cores (shared with other jobs)", "grid": f"{len(machines)} machine types x "
              f"{args.seeds} seeds, {args.epochs} epochs, {args.train_source} source clips per section",
              "sequential": sequential, "pool": pooled, "speedup": round(sequential["wall_s"] / pooled["wall_s"], 2)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| launcher | runs | wall time | mean time per run | load average (before, after) |\n|---|---|---|---|---|")
    for name, r in (("one after another (`--jobs 1`)", sequential), (f"local pool (`--jobs {args.jobs}`)", pooled)):
        mean = sum(r["run_s"]) / len(r["run_s"])
        print(f"| {name} | {r['runs']} | {r['wall_s']:.0f} s | {mean:.0f} s | {r['load_before']}, {r['load_after']} |")
    print(f"\nspeed-up {result['speedup']}x; {result['grid']}; written {args.out}")


if __name__ == "__main__":
    main()
