"""Stage-1 training throughput: the reference configuration against the fast one, same run.

    python benchmarks/bench_train.py                       # CUDA if present: batch 128, EfficientNet-B0
    python benchmarks/bench_train.py --device cpu --steps 3   # smoke test

* reference: eager fp32 (TF32 convolutions as PyTorch defaults them), NCHW, the
  DFT-convolution front end, foreach AdamW -- the way the report's extractor is
  commonly trained;
* fast: bf16 autocast of the encoder (front end and losses in fp32), channels_last,
  torch.compile of the encoder, fused AdamW, FFT front end.

Both run the real training step (:class:`train.stage1.Trainer`: front end, encoder,
the three heads, Eq. 6's loss, backward, AdamW + OneCycleLR) on synthetic random
batches held in pinned host memory, so the host-to-device copy is counted but no
data set is read. Throughput is segments (2 s crops) per second; the table shows the
median and range over ``--repeats`` timed windows of ``--steps`` steps each, after
``--warmup`` untimed steps (which include compilation).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import TrainConfig  # noqa: E402
from train.models import BACKBONES, build_extractor  # noqa: E402
from train.distributed import resolve_device  # noqa: E402
from train.stage1 import Trainer, prepare_model  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    amp: bool
    channels_last: bool
    compile: bool
    fused_adamw: bool
    frontend_fft: bool


def variants(compile_fast: bool, cuda: bool) -> list[Variant]:
    # bf16 autocast, channels_last and fused AdamW are CUDA-only in the trainer;
    # the label says what actually ran.
    parts = (["bf16", "NHWC"] if cuda else []) + (["compile"] if compile_fast else []) + (["fused"] if cuda else []) + ["FFT"]
    return [
        Variant("reference (eager fp32)", False, False, False, False, False),
        Variant(f"fast ({'+'.join(parts)})", True, True, compile_fast, True, True),
    ]


def synthetic_batch(batch: int, n_sections: int, samples: int, pin: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(batch) % 2 == 0).float()
    section = torch.nn.functional.one_hot(torch.randint(0, n_sections, (batch,), generator=g), n_sections).float()
    out = {
        "wave": torch.randn(batch, samples, generator=g),
        "t": t,
        "section": section * t[:, None],
        "d": torch.rand(batch, generator=g) * t,
    }
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: Variant, args: argparse.Namespace, device: torch.device) -> list[float]:
    cfg = TrainConfig(
        data=Path("."), machine="bench", out=Path("."), backbone=args.backbone, batch_size=args.batch,
        amp=variant.amp, channels_last=variant.channels_last, compile=variant.compile,
        fused_adamw=variant.fused_adamw, frontend_fft=variant.frontend_fft, device=device.type,
    )
    sections = [f"{i:02d}" for i in range(args.sections)]
    torch.manual_seed(0)
    model = prepare_model(build_extractor(cfg.model_config(sections)), cfg, device)
    model.train()
    total = args.warmup + args.repeats * args.steps + 1
    trainer = Trainer(model, cfg, device, total_steps=total)
    batch = synthetic_batch(args.batch, len(sections), cfg.segment_samples, pin=device.type == "cuda")
    for _ in range(args.warmup):
        trainer.step(batch)
    sync(device)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            losses = trainer.step(batch)
        sync(device)
        elapsed = time.perf_counter() - start
        if not torch.isfinite(losses).all():
            raise RuntimeError(f"{variant.name}: non-finite loss {losses.tolist()}")
        rates.append(args.batch * args.steps / elapsed)
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backbone", default="efficientnet_b0", choices=BACKBONES)
    p.add_argument("--batch", type=int, default=None, help="segments per step (default 128 on CUDA, 4 on CPU)")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the table reports their median")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--sections", type=int, default=6)
    p.add_argument("--compile", dest="compile", action="store_true", default=None, help="compile the fast variant (default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (128 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    compile_fast = cuda if args.compile is None else args.compile
    if args.batch % 4:
        p.error("--batch must be a multiple of 4 (the domain-classifier batch composition)")

    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"stage-1 training throughput: {args.backbone}, batch {args.batch}, {args.steps} steps x {args.repeats} "
          f"windows after {args.warmup} warm-up steps, on {name}, torch {torch.__version__}")
    results = {}
    for v in variants(compile_fast, cuda):
        rates = measure(v, args, device)
        results[v.name] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    ref = results[variants(compile_fast, cuda)[0].name]["median"]
    width = max(len(k) for k in results)
    print(f"{'configuration':<{width}}  {'segments/s':>11}  {'range':>19}  {'speed-up':>8}")
    for k, r in results.items():
        print(f"{k:<{width}}  {r['median']:11.1f}  {r['min']:9.1f}-{r['max']:<9.1f}  {r['median'] / ref:7.2f}x")
    if args.json:
        print(json.dumps({"device": name, "backbone": args.backbone, "batch": args.batch, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
