"""Cost of the full-segment FFT-spectrum branch (train/fft_branch.py) and of sub-cluster AdaCos.

    python benchmarks/bench_fft_branch.py --threads 2            # CPU, EfficientNet-B0, batch 4
    python benchmarks/bench_fft_branch.py --config deploy/demo_train.json --batch 16   # the demo's Transformer

* training throughput (segments/s) of the real training step (:class:`train.stage1.Trainer`,
  the same synthetic batches as ``bench_train.py``) for the log-mel extractor alone, with
  the FFT branch, and with the FFT branch under sub-cluster AdaCos;
* onnxruntime CPU inference per 10 s clip (10 segments of 2 s, fp32): the FFT branch alone,
  its spectrum alone (the factorised 32000-point DFT), and the whole deployed graph
  (``waveform -> embedding, domain_logit``) without and with the branch.

Medians over ``--repeats`` timed windows (x5 for inference) after one untimed warm-up, the
variants' windows taken in turn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import synthetic_batch  # noqa: E402
from export.onnx_export import OPSET, _export, export_onnx  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.models import BACKBONES, build_extractor  # noqa: E402
from train.stage1 import Trainer, prepare_model  # noqa: E402

SECTIONS = [f"{i:02d}" for i in range(6)]
CLIP_SEGMENTS = 10


# what a --config file may not set: the variants and the batch are this script's
_FIXED = ("data", "machine", "out", "device", "batch_size", "fft_branch", "objective")


def _config(args: argparse.Namespace, fft_branch: bool, objective: str) -> TrainConfig:
    base = {k: v for k, v in args.model.items() if k not in _FIXED}
    base.setdefault("backbone", args.backbone)
    return TrainConfig(
        data=Path("."), machine="bench", out=Path("."), batch_size=args.batch, fft_branch=fft_branch,
        objective=objective, device="cpu", **base,
    )


def _trainer(args: argparse.Namespace, fft_branch: bool, objective: str):
    cfg = _config(args, fft_branch, objective)
    torch.manual_seed(0)
    model = prepare_model(build_extractor(cfg.model_config(SECTIONS)), cfg, torch.device("cpu")).train()
    trainer = Trainer(model, cfg, torch.device("cpu"), total_steps=1 + args.repeats * args.steps + 1)
    batch = synthetic_batch(args.batch, len(SECTIONS), cfg.segment_samples, pin=False)
    batch["label"] = batch["section"]  # one AdaCos class per section, as a model built from sections has
    trainer.step(batch)
    return trainer, batch


def interleaved(runs: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """``(wall, CPU)`` seconds of each variant's window, taken in turn for ``repeats`` rounds: load from
    other processes on a shared machine then falls on every variant alike instead of on whichever ran
    during a busy minute. The CPU time (all of this process's threads) hardly depends on that load."""
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, window in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            window()
            out[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def training_rates(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    def window(trainer, batch):
        def run() -> None:
            for _ in range(args.steps):
                losses = trainer.step(batch)
            if not torch.isfinite(losses).all():
                raise RuntimeError(f"non-finite loss {losses.tolist()}")
        return run

    variants = {"log-mel only (oe)": (False, "oe"), "+ FFT branch (oe)": (True, "oe"),
                "+ FFT branch (subcluster_adacos)": (True, "subcluster_adacos")}
    return interleaved({k: window(*_trainer(args, *v)) for k, v in variants.items()}, args.repeats)


class _Call(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.fn(waveform)


def _session(model: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def clip_window(model: bytes, threads: int):
    sess = _session(model, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((CLIP_SEGMENTS, 32000)).astype(np.float32)
    sess.run(None, {name: x})

    def run() -> None:
        sess.run(None, {name: x})
    return run


def inference_costs(args: argparse.Namespace) -> dict[str, list[float]]:
    torch.manual_seed(0)
    with_branch = build_extractor(_config(args, True, "oe").model_config(SECTIONS)).eval()
    torch.manual_seed(0)
    without = build_extractor(_config(args, False, "oe").model_config(SECTIONS)).eval()
    branch = with_branch.fft_branch
    dyn = {"waveform": {0: "batch"}, "out": {0: "batch"}}
    graphs = {
        "FFT branch alone": _export(_Call(branch), torch.zeros(2, 32000), "waveform", ["out"], dyn, OPSET),
        "its spectrum alone (factorised DFT)": _export(_Call(branch.frontend), torch.zeros(2, 32000), "waveform", ["out"], dyn, OPSET),
        "whole graph, log-mel only": export_onnx(without, 32000),
        "whole graph, + FFT branch": export_onnx(with_branch, 32000),
    }
    return interleaved({k: clip_window(g, args.threads) for k, g in graphs.items()}, args.repeats * 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_b0", choices=BACKBONES)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", help="JSON file of TrainConfig fields for the extractor (e.g. deploy/demo_train.json)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.model = json.loads(Path(args.config).read_text()) if args.config else {}
    torch.set_num_threads(args.threads)
    label = args.config or args.backbone
    print(f"FFT branch cost: {label}, batch {args.batch}, {args.threads} CPU threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    segments = args.batch * args.steps
    train = training_rates(args)
    base = statistics.median(segments / w for w, _ in train["log-mel only (oe)"])
    print(f"\n{'training step':<36} {'segments/s':>10} {'vs log-mel only':>16} {'CPU ms / segment':>17}")
    summary: dict[str, dict[str, float]] = {}
    for k, r in train.items():
        rate = statistics.median(segments / w for w, _ in r)
        cpu = statistics.median(1e3 * c / segments for _, c in r)
        summary[k] = {"segments_per_s": rate, "cpu_ms_per_segment": cpu}
        print(f"{k:<36} {rate:10.2f} {rate / base:15.2f}x {cpu:17.1f}")
    infer = inference_costs(args)
    print(f"\n{'onnxruntime fp32, one 10 s clip':<40} {'ms / clip':>10} {'range':>15} {'CPU ms / clip':>14}")
    for k, t in infer.items():
        walls = [1e3 * w for w, _ in t]
        cpu = statistics.median(1e3 * c for _, c in t)
        summary[k] = {"ms_per_clip": statistics.median(walls), "cpu_ms_per_clip": cpu}
        print(f"{k:<40} {statistics.median(walls):10.1f} {min(walls):7.1f}-{max(walls):<7.1f} {cpu:14.1f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        print(json.dumps({"extractor": label, "batch": args.batch, "threads": args.threads, "median": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
