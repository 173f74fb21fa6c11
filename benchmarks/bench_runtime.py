"""Per-clip cost on the device side: the exported bundle against torch eager, same weights.

    .venv/bin/python benchmarks/bench_runtime.py [--threads 2] [--repeats 20] [--backbone efficientnet_b0]

Builds an EfficientNet-B0 extractor (random init: speed does not depend on the
weights), exports it as the product does (fp32 and int8), packs a real bundle
with KNN detectors, then measures each variant in a fresh process of its own so
resident memory is that process's alone:

* milliseconds per 10 s clip (S = 10 segments of 2 s), split into preparation
  (standardize + segment, numpy), extractor (front end + encoder) and detector;
* real-time factor (processing time / audio time);
* peak resident memory (VmHWM) and the time from process start to the first score.

Prints a table of medians and writes benchmarks/results/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLIP_SECONDS = 10.0


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_runtime(bundle: str, threads: int, repeats: int, t_start: float) -> dict:
    """Runs in a fresh interpreter: edge_asd only, never torch."""
    from edge_asd.runtime.scorer import load_scorer, quiet_faiss_threads

    quiet_faiss_threads()  # as the edge-asd commands do
    scorer = load_scorer(bundle, backend="onnx-cpu", threads=threads)
    rng = np.random.default_rng(0)
    clip = rng.normal(size=int(CLIP_SECONDS * 16000)).astype(np.float32)
    first = scorer.score(clip)
    first_score_s = time.time() - t_start
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = scorer.score(clip)
        total = (time.perf_counter() - t0) * 1e3
        rows.append([r.timings_ms["frontend"], r.timings_ms["extractor"], r.timings_ms["detector"], total])
    med = np.median(np.array(rows), axis=0)
    assert "torch" not in sys.modules
    return {
        "prepare_ms": med[0], "extractor_ms": med[1], "detector_ms": med[2], "total_ms": med[3],
        "rtf": med[3] / 1e3 / CLIP_SECONDS, "peak_rss_mb": _peak_rss_mb(), "first_score_s": first_score_s,
        "score_finite": bool(np.isfinite(first.score)),
    }


def child_torch(weights: str, threads: int, repeats: int, t_start: float) -> dict:
    import torch

    from edge_asd.io.audio import SegmentSpec, segment, standardize
    from train.models import ModelConfig, build_extractor

    torch.set_num_threads(threads)
    state = torch.load(weights, weights_only=True)
    model = build_extractor(ModelConfig.from_dict(state["config"])).eval()
    model.load_state_dict(state["weights"])
    clip = np.random.default_rng(0).normal(size=int(CLIP_SECONDS * 16000)).astype(np.float32)
    spec = SegmentSpec()
    times = []
    with torch.no_grad():
        model.embed(torch.from_numpy(segment(standardize(clip), spec)))
        first_score_s = time.time() - t_start
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.embed(torch.from_numpy(segment(standardize(clip), spec)))
            times.append((time.perf_counter() - t0) * 1e3)
    med = float(np.median(times))
    return {"total_ms": med, "rtf": med / 1e3 / CLIP_SECONDS, "peak_rss_mb": _peak_rss_mb(), "first_score_s": first_score_s}


def build_artifacts(work: Path, backbone: str) -> dict[str, str]:
    """An extractor, its fp32 and int8 bundles (KNN detectors on real embeddings)."""
    import torch

    from edge_asd.runtime.bundle import npz_bytes, write_bundle
    from edge_asd.scoring.section import section_state
    from edge_asd.scoring.stage2 import Stage2Config, fit_section
    from export.onnx_export import export_onnx, export_split
    from export.precision import to_int8
    from train.models import ModelConfig, build_extractor

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, sections=["00", "01"], machine="bench")
    model = build_extractor(cfg).eval()
    torch.save({"config": cfg.to_dict(), "weights": model.state_dict()}, work / "extractor.pt")
    fp32 = export_onnx(model, cfg.segment_samples)
    fe, enc, frames = export_split(model, cfg.segment_samples)
    rng = np.random.default_rng(1)
    segs = rng.normal(size=(40, cfg.segment_samples)).astype(np.float32)
    int8 = to_int8(fp32, segs[:16])
    with torch.no_grad():
        emb, logit = (t.numpy() for t in model.embed(torch.from_numpy(segs)))
    # a bank of the size a DCASE section gives (~100 held-out clips x 10 segments)
    bank = np.repeat(emb, 25, axis=0) + rng.normal(scale=0.01, size=(1000, emb.shape[1])).astype(np.float32)
    bank = bank.reshape(100, 10, -1)
    domains = np.array(["source"] * 90 + ["target"] * 10)
    out = {"weights": str(work / "extractor.pt")}
    for name, onnx_bytes in (("fp32-segments", fp32), ("fp32", fp32), ("int8", int8)):
        arrays, sections = {}, {}
        for s in cfg.sections:
            res = fit_section(s, bank, domains, np.zeros((100, 10)), Stage2Config(detector="knn", detector_params={"k": 1}))
            a, n = section_state(res.model)
            arrays.update(a)
            sections[s] = n
        manifest = {
            "machine_type": "bench", "sections": cfg.sections,
            "audio": {"sample_rate": 16000, "clip_seconds": CLIP_SECONDS, "segment_seconds": 2.0, "n_segments": 10, "segment_align": 256},
            "frontend": model.frontend.config(), "embedding_dim": cfg.embedding_dim, "approach": "specialization", "aggregator": "mean",
            "kappa": 0.15, "threshold_rule": "gamma:0.9", "thresholds": {s: sections[s]["threshold"] for s in cfg.sections},
            "members": [{"name": "m0", "model": "m0.onnx", "state": "m0.npz", "precision": name, "sections": sections}],
        }
        files = {"m0.onnx": onnx_bytes, "m0.npz": npz_bytes(arrays)}
        if name == "fp32":  # as edge-asd-export writes it: the front end once per clip
            files.update({"m0.fe.onnx": fe, "m0.enc.onnx": enc})
            manifest["members"][0]["split"] = {
                "frontend": "m0.fe.onnx", "encoder": "m0.enc.onnx", "frames_per_segment": frames, "hop_length": 256,
            }
        path = write_bundle(work / f"{name}.asd", manifest, files)
        out[name] = str(path)
    return out


def run_child(kind: str, target: str, threads: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = (
        "import json, sys, time; t0 = time.time(); sys.path.insert(0, %r); import bench_runtime as b; "
        "print(json.dumps(b.child_%s(%r, %d, %d, t0)))" % (str(HERE), kind, target, threads, repeats)
    )
    cmd = [sys.executable, "-c", code]
    if threads:
        cmd = ["taskset", "-c", ",".join(str(i) for i in range(threads))] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backbone", default="efficientnet_b0")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        art = build_artifacts(Path(tmp), args.backbone)
        results = {
            "torch eager (fp32)": run_child("torch", art["weights"], args.threads, args.repeats),
            "edge-asd fp32, per segment": run_child("runtime", art["fp32-segments"], args.threads, args.repeats),
            "edge-asd fp32 (default)": run_child("runtime", art["fp32"], args.threads, args.repeats),
            "edge-asd onnxruntime int8": run_child("runtime", art["int8"], args.threads, args.repeats),
        }
    ref = results["torch eager (fp32)"]["total_ms"]
    print(f"{'variant':28s} {'ms/clip':>8s} {'vs torch':>8s} {'front':>6s} {'extract':>8s} {'detect':>7s} {'RTF':>6s} {'RSS MB':>7s} {'1st score s':>11s}")
    for name, r in results.items():
        print(
            f"{name:28s} {r['total_ms']:8.1f} {r['total_ms'] / ref:8.2f} {r.get('prepare_ms', float('nan')):6.1f} "
            f"{r.get('extractor_ms', float('nan')):8.1f} {r.get('detector_ms', float('nan')):7.2f} {r['rtf']:6.3f} "
            f"{r['peak_rss_mb']:7.0f} {r['first_score_s']:11.2f}"
        )
    record = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "threads": args.threads, "repeats": args.repeats, "backbone": args.backbone, "results": results,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "runtime.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
