"""Offline replay throughput: `edge-asd score` in clips per second, against torch eager on the same weights.

    .venv/bin/python benchmarks/bench_score.py [--clips 40] [--threads 2] [--repeats 3]

Writes `edge-asd synth` clips (10 s, the DCASE layout), builds an EfficientNet-B0
bundle as benchmarks/bench_runtime.py does (random init: speed does not depend on
the weights), then times, each pinned to the same cores:

* the `edge-asd score` command end to end (process start, bundle load, reading,
  scoring, submission files), the way a user runs it;
* torch eager scoring the same clips in the same process layout (read,
  standardize, segment, extractor in batches of 8 clips), the report's way.

Prints medians over the repeats and writes benchmarks/results/score.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmem import PeakMemory, machine  # noqa: E402  (benchmarks/ is not a package)


def _pinned(cmd: list[str], threads: int) -> list[str]:
    return ["taskset", "-c", ",".join(str(i) for i in range(threads))] + cmd if threads else cmd


def time_score(bundle: str, clips: Path, threads: int) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `edge-asd score` run and its memory (:class:`procmem.PeakMemory`: peak RSS and anonymous)."""
    out = Path(tempfile.mkdtemp())
    exe = str(Path(sys.executable).with_name("edge-asd"))
    t0 = time.perf_counter()
    # taskset execs the command in place, so the pid is edge-asd's own
    proc = subprocess.Popen(_pinned([exe, "score", bundle, str(clips), "--out", str(out), "--quiet"], threads),
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    watch = PeakMemory(proc.pid)
    proc.wait()
    wall = time.perf_counter() - t0
    memory = watch.stop()
    if proc.returncode != 0:
        raise SystemExit(f"edge-asd score failed with status {proc.returncode}")
    shutil.rmtree(out, ignore_errors=True)
    return wall, memory


def child_torch(weights: str, clips: str, threads: int) -> dict:
    import torch

    from edge_asd.io.audio import SegmentSpec, clip_segments
    from train.embed import load_extractor

    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    model = load_extractor(weights)
    files = sorted(Path(clips).glob("*.wav"))
    spec = SegmentSpec()
    with torch.no_grad():
        for lo in range(0, len(files), 8):
            segs = np.concatenate([clip_segments(f, spec) for f in files[lo : lo + 8]])
            model.embed(torch.from_numpy(segs))
    return {"wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import bench_runtime

    from edge_asd.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        art = bench_runtime.build_b0_bundles(work)
        per_cell = max(1, -(-args.clips // 8))  # 2 sections x 2 domains x normal/anomaly
        generate(work / "data", SynthConfig(machines=("fan",), sections=2, train_source=1, train_target=1,
                                            test=per_cell, seed=0), progress=False)
        clips = work / "clips"
        clips.mkdir()
        for p in sorted((work / "data" / "fan" / "test").glob("*.wav"))[: args.clips]:
            shutil.copy(p, clips / p.name)
        n = len(list(clips.glob("*.wav")))
        walls, memories = [], []
        for _ in range(args.repeats):
            wall, memory = time_score(art["fp32"], clips, args.threads)
            walls.append(wall)
            memories.append(memory)
        torch_walls = []
        for _ in range(args.repeats):
            code = (
                "import json, sys; sys.path.insert(0, %r); import bench_score as b; "
                "print(json.dumps(b.child_torch(%r, %r, %d)))" % (str(HERE), art["weights"], str(clips), args.threads)
            )
            r = subprocess.run(_pinned([sys.executable, "-c", code], args.threads), capture_output=True, text=True,
                               check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            torch_walls.append(json.loads(r.stdout.strip().splitlines()[-1])["wall_s"])
    wall, twall = float(np.median(walls)), float(np.median(torch_walls))
    memory = {k: max(m[k] for m in memories) for k in memories[0]}
    result = {
        "date": time.strftime("%Y-%m-%d"), **machine(), "cpus": os.cpu_count(), "threads": args.threads,
        "repeats": args.repeats, "backbone": "efficientnet_b0",
        "clips": n, "clip_seconds": 10.0,
        "edge_asd_score": {"wall_s": wall, "clips_per_s": n / wall, **memory},
        "torch_eager": {"wall_s": twall, "clips_per_s": n / twall, "note": "scoring loop only, no process start or model load"},
        "speedup": twall / wall,
    }
    print(f"edge-asd score: {n} clips in {wall:.1f} s = {n / wall:.2f} clips/s (x{n * 10 / wall:.0f} real time), "
          f"peak RSS {memory['peak_rss_mb']:.0f} MB, of it anonymous {memory['peak_anon_mb']:.0f} MB")
    print(f"torch eager:    {n} clips in {twall:.1f} s = {n / twall:.2f} clips/s; edge-asd is {twall / wall:.2f}x")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "score.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
