"""Per-clip cost on the device side: the bundle a CPU user gets, against torch eager of the same weights.

    .venv/bin/python benchmarks/bench_runtime.py [--threads 2] [--repeats 20] [--runs 3] [--clips 200]

Two extractors, each beside torch eager of the very weights its bundles hold:

* the default CPU bundle: `edge-asd synth` data (fan + gearbox), `edge-asd-train --preset cpu
  --steps 20` (the preset's small Transformer; 20 steps because speed does not depend on the
  weights), `edge-asd-export RUN RUN/baseline/plain` (the learned + plain bundle, named explicitly: at
  20 steps the no-regret check would deploy the plain system alone): fp32 with the plain member (the default),
  fp32 without it (``--no-plain``), the plain system alone (``edge-asd-export RUN/baseline/plain``: what the
  check deployed on every machine of the development benchmark's test seeds), the same learned member with the front-end graph instead of the rFFT (what
  bundles written before issue 28 run), and ``--precision int8``;
* EfficientNet-B0 (random init), exported fp32 (split graphs, rFFT front end) and int8.

Each variant runs ``--runs`` times, each time in a fresh process pinned to ``--threads``
cores (so resident memory is that process's alone), scoring one 10 s clip ``--repeats``
times after one untimed clip: the median ms per clip of each run, split into front end
(standardization, log-mel, the plain member's features), of which the plain member ("plain"),
extractor (the encoder) and detector; the table gives the median over runs and the range of the runs'
medians, the peak resident memory and its anonymous part (benchmarks/procmem.py: the rest is shared
libraries' pages, and how many of them the kernel keeps varies between machines). Where the plain member runs
beside the learned one (``ClipScorer.side_members``), the parts overlap and add up to more than the clip's time.

Then, for the default bundle: `edge-asd score` of a folder of ``--clips`` 10 s clips (clips
per second, end to end, ``--runs`` times), and the daemon's peak resident memory with one
machine (benchmarks/bench_daemon.py on 4 clips of a real-time file source).

Prints the table and writes benchmarks/results/runtime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmem import machine, memory_mb  # noqa: E402  (benchmarks/ is not a package)
CLIP_SECONDS = 10.0


def package_versions() -> dict[str, str]:
    """What the figures depend on: numpy 2's float32 FFT alone moved the front end by 2x (BENCHMARKS, 2026-12-06)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("numpy", "onnxruntime", "faiss-cpu", "ducc0", "torch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def _clip() -> np.ndarray:
    return np.random.default_rng(0).normal(size=int(CLIP_SECONDS * 16000)).astype(np.float32)


def _memory() -> dict[str, float]:
    """Peak resident memory, and the anonymous part of it at the end (after the repeats: onnxruntime's arena and
    numpy's buffers at their largest), in MB: benchmarks/procmem.py says why both."""
    m = memory_mb()
    return {"peak_rss_mb": m["peak_rss_mb"], "anon_mb": m.get("anon_mb", float("nan"))}


def child_runtime(bundle: str, threads: int, repeats: int, t_start: float) -> dict:
    """Runs in a fresh interpreter: edge_asd only, never torch."""
    from edge_asd.runtime.scorer import load_scorer, quiet_faiss_threads

    quiet_faiss_threads()  # as the edge-asd commands do
    scorer = load_scorer(bundle, backend="onnx-cpu", threads=threads)
    clip = _clip()
    first = scorer.score(clip)
    first_score_s = time.time() - t_start
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = scorer.score(clip)
        total = (time.perf_counter() - t0) * 1e3
        rows.append([r.timings_ms["frontend"], r.timings_ms["extractor"], r.timings_ms["detector"], total,
                     r.timings_ms.get("plain", 0.0)])
    med = np.median(np.array(rows), axis=0)
    assert "torch" not in sys.modules
    return {
        "frontend_ms": med[0], "extractor_ms": med[1], "detector_ms": med[2], "total_ms": med[3], "plain_ms": med[4],
        "plain_beside": bool(scorer.side_members),
        **_memory(), "first_score_s": first_score_s, "score_finite": bool(np.isfinite(first.score)),
        "frontends": sorted({getattr(getattr(m.backend, "frontend", None), "name", type(m.backend).__name__)
                             for m in scorer.members}),
    }


def child_torch(weights: str, threads: int, repeats: int, t_start: float, stft: bool = False) -> dict:
    """torch eager of the same weights, the report's way: standardize, segment, ``embed`` the 10 segments.

    ``stft``: the front end by torch.stft (an FFT, as training may run it) instead of the deployed DFT.
    """
    import torch

    from edge_asd.io.audio import SegmentSpec, segment, standardize
    from train.embed import load_extractor

    torch.set_num_threads(threads)
    model = load_extractor(weights)
    model.frontend.use_fft = stft
    clip = _clip()
    spec = SegmentSpec()
    times = []
    with torch.no_grad():
        model.embed(torch.from_numpy(segment(standardize(clip), spec)))
        first_score_s = time.time() - t_start
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.embed(torch.from_numpy(segment(standardize(clip), spec)))
            times.append((time.perf_counter() - t0) * 1e3)
    return {"total_ms": float(np.median(times)), **_memory(), "first_score_s": first_score_s}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


def _exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def build_cpu_bundles(work: Path) -> dict[str, str]:
    """The default CPU preset's run and the bundles a user exports from it."""
    data, run = work / "data", work / "runs" / "fan" / "cpu"
    _run([_exe("edge-asd"), "synth", str(data), "--machines", "fan,gearbox", "--sections", "1",
          "--train-source", "24", "--train-target", "4", "--test", "2", "--quiet"])
    _run([_exe("edge-asd-train"), "--data", str(data), "--machine", "fan", "--out", str(run), "--preset", "cpu",
          "--steps", "20", "--quiet"])
    out = {"weights": str(run)}
    # The learned + plain bundle named explicitly: with 20 steps the no-regret check would (rightly) deploy the
    # plain system alone, and this benchmark times the two-member bundle a trained run gets.
    both = [str(run), str(run / "baseline" / "plain")]
    for name, members, flags in (("fp32", both, []), ("fp32-learned", [str(run)], ["--no-plain"]),
                                 ("fp32-plain", [str(run / "baseline" / "plain")], []),
                                 ("int8", both, ["--precision", "int8"])):
        _run([_exe("edge-asd-export"), *members, "--out", str(work / f"cpu-{name}.asd"), *flags])
        out[name] = str(work / f"cpu-{name}.asd")
    out["fp32-learned-graph"] = str(without_rfft(Path(out["fp32-learned"]), work / "cpu-fp32-learned-graph.asd"))
    return out


def without_rfft(bundle: Path, out: Path) -> Path:
    """A copy of a bundle without the rFFT front end's numbers: what a bundle written before issue 28 runs."""
    from edge_asd.runtime.bundle import open_bundle, write_bundle

    b = open_bundle(bundle)
    manifest = b.manifest.to_dict()
    drop = set()
    for m in manifest["members"]:
        split = m.get("split") or {}
        if "input_norm" in split:
            drop.add(split.pop("input_norm"))
            split.pop("logmel", None)
    files = {n: b.read(n) for n in b.manifest.to_dict()["files"] if n not in drop}
    return write_bundle(out, manifest, files)


def build_b0_bundles(work: Path) -> dict[str, str]:
    """A random-init EfficientNet-B0, its fp32 (split graphs, rFFT numbers) and int8 bundles, KNN detectors."""
    import torch

    from edge_asd.runtime.bundle import npz_bytes, write_bundle
    from edge_asd.scoring.section import section_state
    from edge_asd.scoring.stage2 import Stage2Config, fit_section
    from export.onnx_export import export_onnx, export_split, input_norm_affine
    from export.precision import to_int8
    from train.checkpoints import save_extractor
    from train.models import ModelConfig, build_extractor

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="efficientnet_b0", sections=["00", "01"], machine="bench")
    model = build_extractor(cfg).eval()
    weights = work / "b0.pt"
    save_extractor(model, weights)
    fp32 = export_onnx(model, cfg.segment_samples)
    fe, enc, frames = export_split(model, cfg.segment_samples)
    scale, shift = input_norm_affine(model)
    rng = np.random.default_rng(1)
    segs = rng.normal(size=(40, cfg.segment_samples)).astype(np.float32)
    int8 = to_int8(fp32, segs[:16])
    with torch.no_grad():
        emb, _ = (t.numpy() for t in model.embed(torch.from_numpy(segs)))
    # a bank of the size a DCASE section gives (~100 held-out clips x 10 segments)
    bank = (np.repeat(emb, 25, axis=0) + rng.normal(scale=0.01, size=(1000, emb.shape[1])).astype(np.float32)).reshape(100, 10, -1)
    domains = np.array(["source"] * 90 + ["target"] * 10)
    out = {"weights": str(weights)}
    for name, onnx_bytes in (("fp32", fp32), ("int8", int8)):
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
        if name == "fp32":  # as edge-asd-export writes it: the front end once per clip, by rFFT on a CPU
            files.update({"m0.fe.onnx": fe, "m0.enc.onnx": enc, "m0.norm.npz": npz_bytes({"scale": scale, "shift": shift})})
            manifest["members"][0]["split"] = {
                "frontend": "m0.fe.onnx", "encoder": "m0.enc.onnx", "frames_per_segment": frames, "hop_length": 256,
                "logmel": model.frontend.config(), "input_norm": "m0.norm.npz",
            }
        out[name] = str(write_bundle(work / f"b0-{name}.asd", manifest, files))
    return out


def run_child(kind: str, target: str, threads: int, repeats: int, extra: str = "") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = (
        "import json, sys, time; t0 = time.time(); sys.path.insert(0, %r); import bench_runtime as b; "
        "print(json.dumps(b.child_%s(%r, %d, %d, t0%s)))" % (str(HERE), kind, target, threads, repeats, extra)
    )
    cmd = [sys.executable, "-c", code]
    if threads:
        cmd = ["taskset", "-c", ",".join(str(i) for i in range(threads))] + cmd
    out = _run(cmd, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def repeated(runs: int, *args, **kw) -> dict:
    """A child ``runs`` times in fresh processes: each figure's median over runs and the runs' range."""
    got = [run_child(*args, **kw) for _ in range(runs)]
    keys = [k for k, v in got[0].items() if isinstance(v, float)]
    summary = {k: float(np.median([g[k] for g in got])) for k in keys}
    summary["total_ms_range"] = [float(min(g["total_ms"] for g in got)), float(max(g["total_ms"] for g in got))]
    summary["runs"] = got
    return summary


def replay(bundle: str, work: Path, n_clips: int, threads: int, runs: int) -> dict:
    """`edge-asd score` of a folder of ``n_clips`` 10 s clips, end to end, ``runs`` times."""
    from bench_score import time_score

    from edge_asd.synth import SynthConfig, generate

    generate(work / "replay", SynthConfig(machines=("fan",), sections=1, train_source=1, train_target=1,
                                          test=-(-n_clips // 4), seed=3), progress=False)
    clips = work / "replay-clips"
    clips.mkdir()
    for p in sorted((work / "replay" / "fan" / "test").glob("*.wav"))[:n_clips]:
        shutil.copy(p, clips / p.name)
    n = len(list(clips.glob("*.wav")))
    walls, memories = zip(*(time_score(bundle, clips, threads) for _ in range(runs)))
    rates = [n / w for w in walls]
    return {"clips": n, "clips_per_s": float(np.median(rates)), "clips_per_s_range": [min(rates), max(rates)],
            **{k: float(max(m[k] for m in memories)) for k in memories[0]}, "wall_s": list(walls),
            "clips_dir": str(clips)}


def daemon_memory(bundle: str, clips: str, threads: int) -> dict:
    """The daemon with one machine: benchmarks/bench_daemon.py on 4 clips of a real-time file source."""
    _run([sys.executable, str(HERE / "bench_daemon.py"), bundle, clips, "--clips-count", "4", "--threads", str(threads),
          "--tag", "cpu_default"])
    return json.loads((HERE / "results" / "daemon_cpu_default.json").read_text())


ROWS = [
    # (group, label, child kind, artifact key, extra child argument)
    ("cpu", "torch eager fp32 (deployed DFT front end)", "torch", "weights", ""),
    ("cpu", "torch eager fp32, torch.stft front end", "torch", "weights", ", True"),
    ("cpu", "edge-asd fp32 default bundle (learned + plain)", "runtime", "fp32", ""),
    ("cpu", "edge-asd fp32, learned member only", "runtime", "fp32-learned", ""),
    ("cpu", "edge-asd, plain system alone (what the check deployed on the test runs)", "runtime", "fp32-plain", ""),
    ("cpu", "edge-asd fp32, learned only, graph front end (pre-#28 bundle)", "runtime", "fp32-learned-graph", ""),
    ("cpu", "edge-asd int8 bundle (learned + plain)", "runtime", "int8", ""),
    ("b0", "torch eager fp32 (deployed DFT front end)", "torch", "weights", ""),
    ("b0", "edge-asd fp32 (split graphs, rFFT front end)", "runtime", "fp32", ""),
    ("b0", "edge-asd int8 (whole-segment QDQ graph)", "runtime", "int8", ""),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per variant")
    ap.add_argument("--clips", type=int, default=200, help="clips of the offline replay")
    args = ap.parse_args()
    print("packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        art = {"cpu": build_cpu_bundles(work), "b0": build_b0_bundles(work)}
        results: dict[str, dict] = {"cpu": {}, "b0": {}}
        for group, label, kind, key, extra in ROWS:
            results[group][label] = repeated(args.runs, kind, art[group][key], args.threads, args.repeats, extra=extra)
            print(f"{group:3s} {label:62s} {results[group][label]['total_ms']:7.1f} ms", flush=True)
        rep = replay(art["cpu"]["fp32"], work, args.clips, args.threads, args.runs)
        daemon = daemon_memory(art["cpu"]["fp32"], rep.pop("clips_dir"), args.threads)
    print(f"\n{'variant':68s} {'ms/clip':>8s} {'range':>13s} {'vs torch':>8s} {'front':>6s} {'plain':>6s} "
          f"{'extract':>8s} {'detect':>7s} {'RSS MB':>7s} {'anon MB':>7s} {'1st s':>6s}")
    for group, rows in results.items():
        ref = next(iter(rows.values()))["total_ms"]
        for label, r in rows.items():
            lo, hi = r["total_ms_range"]
            print(f"{group + ': ' + label:68s} {r['total_ms']:8.1f} {f'{lo:.1f}-{hi:.1f}':>13s} {r['total_ms'] / ref:8.2f} "
                  f"{r.get('frontend_ms', float('nan')):6.1f} {r.get('plain_ms', float('nan')):6.1f} "
                  f"{r.get('extractor_ms', float('nan')):8.1f} "
                  f"{r.get('detector_ms', float('nan')):7.2f} {r['peak_rss_mb']:7.0f} {r['anon_mb']:7.0f} "
                  f"{r['first_score_s']:6.2f}")
    lo, hi = rep["clips_per_s_range"]
    print(f"\nedge-asd score, {rep['clips']} clips of 10 s, default CPU bundle: {rep['clips_per_s']:.1f} clips/s "
          f"(runs {lo:.1f}-{hi:.1f}), peak RSS {rep['peak_rss_mb']:.0f} MB (anonymous {rep['peak_anon_mb']:.0f})")
    print(f"edge-asd run, one machine, default CPU bundle: peak RSS {daemon['peak_rss_mb']:.0f} MB "
          f"(anonymous {daemon['peak_anon_mb']:.0f}), "
          f"latency median {daemon['latency_ms_median']:.0f} ms")
    record = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), **machine(), "cpus": os.cpu_count(),
        "threads": args.threads, "repeats": args.repeats, "runs": args.runs, "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(), "packages": package_versions(),
        "results": results, "replay": rep, "daemon": daemon,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "runtime.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
