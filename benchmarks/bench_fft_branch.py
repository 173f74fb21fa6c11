"""Cost of the full-segment FFT-spectrum branch (train/fft_branch.py) and of sub-cluster AdaCos.

    python benchmarks/bench_fft_branch.py --threads 2            # CPU, EfficientNet-B0, batch 4
    python benchmarks/bench_fft_branch.py --backbone transformer --batch 16

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


def _config(args: argparse.Namespace, fft_branch: bool, objective: str) -> TrainConfig:
    return TrainConfig(
        data=Path("."), machine="bench", out=Path("."), backbone=args.backbone, batch_size=args.batch,
        fft_branch=fft_branch, objective=objective, device="cpu",
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


def interleaved(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Time each variant's window in turn, ``repeats`` rounds: load from other processes on a shared
    machine then falls on every variant alike instead of on whichever ran during a busy minute."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, window in runs.items():
            out[name].append(window())
    return out


def training_rates(args: argparse.Namespace) -> dict[str, list[float]]:
    def window(trainer, batch):
        def run() -> float:
            start = time.perf_counter()
            for _ in range(args.steps):
                losses = trainer.step(batch)
            if not torch.isfinite(losses).all():
                raise RuntimeError(f"non-finite loss {losses.tolist()}")
            return args.batch * args.steps / (time.perf_counter() - start)
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

    def run() -> float:
        start = time.perf_counter()
        sess.run(None, {name: x})
        return 1e3 * (time.perf_counter() - start)
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
        f"whole graph, {args.backbone}": export_onnx(without, 32000),
        f"whole graph, {args.backbone} + FFT branch": export_onnx(with_branch, 32000),
    }
    return interleaved({k: clip_window(g, args.threads) for k, g in graphs.items()}, args.repeats * 5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_b0", choices=BACKBONES)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"FFT branch cost: {args.backbone}, batch {args.batch}, {args.threads} CPU threads, torch {torch.__version__}")
    train = training_rates(args)
    base = statistics.median(train["log-mel only (oe)"])
    print(f"\n{'training step':<36} {'segments/s':>10} {'vs log-mel only':>16}")
    for k, r in train.items():
        print(f"{k:<36} {statistics.median(r):10.2f} {statistics.median(r) / base:15.2f}x")
    infer = inference_costs(args)
    print(f"\n{'onnxruntime fp32, one 10 s clip':<44} {'ms / clip':>10} {'range':>15}")
    for k, t in infer.items():
        print(f"{k:<44} {statistics.median(t):10.1f} {min(t):7.1f}-{max(t):<7.1f}")
    if args.json:
        summary = {k: statistics.median(v) for k, v in {**train, **infer}.items()}
        print(json.dumps({"backbone": args.backbone, "batch": args.batch, "threads": args.threads, "median": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
