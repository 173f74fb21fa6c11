"""``edge-asd-train``: stage 1 + stage 2 (+ the autoencoder reference) for one machine type.

    edge-asd-train --data DATA --machine M --out RUN [--backbone ...] [--epochs N] ...
    edge-asd-train report --data DATA --out DIR     # the report's Tables 1-4 for every run under DIR
    edge-asd-train grid GRID.toml --out DIR         # every run of a grid (train/grid.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edge_asd.cli.parser import CliParser, run_cli
from edge_asd.errors import UserError
from edge_asd.scoring.stage2 import APPROACHES, Stage2Config

from . import options
from .plain import PLAIN_FEATURES
from .presets import PRESETS
from .rundir import RunDir

log = logging.getLogger(__name__)

def stage2_config(args: argparse.Namespace, seed: int, approach: str) -> Stage2Config:
    """The stage-2 configuration the command line asks for (one place for every flag)."""
    params = options.detector_params(args.detector, args.k, args.metric, args.knn_score, args.shrinkage)
    try:
        return Stage2Config(
            approach=approach,
            detector=args.detector,
            detector_params=params,
            aggregator=args.aggregator,
            threshold_rule=args.threshold,
            seed=seed,
            bank=args.bank,
            source_centres=args.source_centres,
            mixup_pseudo_normals=args.pseudo_normals,
            target_std=args.target_std,
            target_smote=args.target_smote,
            target_genrep=args.target_genrep,
        )
    except ValueError as exc:
        raise UserError(f"stage 2: {exc}") from None


def _train(args: argparse.Namespace) -> int:
    from .plain import fit_plain, plain_stage2
    from .stage1 import train_extractor
    from .stage2 import fit_all

    data, out = Path(args.data), Path(args.out)
    if not (data / args.machine / "train").is_dir():
        raise UserError(f"{data / args.machine / 'train'}: no such folder (expected the DCASE layout DATA/<machine>/train/)")
    if args.config and not args.resume:
        _read_config(Path(args.config))  # a bad config file is the first thing to hear about
    misapplied = options.misapplied_detector_flags(args.detector, args.metric, args.knn_score, args.shrinkage)
    if misapplied:
        raise UserError(misapplied)
    if not args.resume:
        from .preflight import MIN_LEARNED_CLIPS, count_normals

        n_normals = count_normals(data, args.machine)  # refuses a folder of silent clips for every system
        if args.system != "plain" and n_normals < MIN_LEARNED_CLIPS:
            log.info("%s: %d normal training clip(s) are too few to train a feature extractor (%d or more are needed): "
                     "fitting the plain system alone", args.machine, n_normals, MIN_LEARNED_CLIPS)
            args.system = "plain"
    if args.system == "plain":
        s2 = plain_stage2(seed=args.seed or 0, threshold_rule=args.threshold, scorer=args.plain_scorer,
                          features=PLAIN_FEATURES[args.plain_features])
        fit_plain(data, args.machine, out, s2, PLAIN_FEATURES[args.plain_features])
        if not args.quiet:
            print(f"plain system ready: {out} (export with: edge-asd-export {out} --out {args.machine}.asd)")
        _known_faults(out, data, args.machine, s2.approach, "cpu")
        return 0
    _stage2_defaults(args)
    if args.approach == "auto":
        from .preflight import choose_approach

        from .config import TrainConfig

        r_train = TrainConfig.r_train if args.r_train is None else args.r_train
        args.approach = choose_approach(data, args.machine, args.bank, r_train, TrainConfig.n_target_train, args.seed or 0)
    approaches = list(APPROACHES) if args.approach == "both" else [args.approach]
    # --approach both: one extractor per approach, side by side (RUN/generalization, RUN/specialization)
    outs = {a: (out / a if len(approaches) > 1 else out) for a in approaches}
    plans = [_plan(args, data, outs[a], a) for a in approaches]  # every data check before any training
    _warn_unjudgeable(plans[0][0], data)
    device = _device(args.device)
    for cfg, s2 in plans:
        run_dir = Path(train_extractor(cfg, progress=not args.quiet))
        if int(os.environ.get("RANK", "0")):
            continue  # under torchrun stage 2 and the references are one process's work: rank 0's
        # An extractor with a domain head serves both approaches (the report compares
        # them on one extractor); without one, only generalization. s2.approach is
        # the one edge-asd-export deploys by default.
        fit_all(run_dir, data, s2, device=device, progress=not args.quiet,
                approaches=APPROACHES if cfg.domain_head else ("generalization",))
        _references(args, data, run_dir, cfg.seed, device)
        if not args.no_plain:
            _gate(run_dir, data, s2.approach, device, cfg.seed)
        if not args.quiet:
            print(f"run ready: {run_dir} (export with: edge-asd-export {run_dir} --out {args.machine}.asd)")
        _known_faults(run_dir, data, args.machine, s2.approach, device)
    return 0


def _known_faults(run_dir: Path, data: Path, machine: str, approach: str, device: str) -> None:
    """The official score on the user's imported labelled test clips, when there are some (a result: never quiet)."""
    from .known_faults import known_fault_report

    line = known_fault_report(run_dir, data, machine, approach, device)
    if line:
        print(line, flush=True)


def _stage2_defaults(args: argparse.Namespace) -> None:
    """Fill the stage-2 flags the command line left unset: the preset's, else the report's."""
    from .presets import STAGE2_DEFAULTS, STAGE2_PRESETS, choose_preset

    name = None
    if not args.resume:
        name, _ = choose_preset(args.preset, cuda=_device(args.device) == "cuda", has_config=bool(args.config))
    chosen = {**STAGE2_DEFAULTS, **(STAGE2_PRESETS.get(name, {}) if name else {})}
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _plan(args: argparse.Namespace, data: Path, out: Path, approach: str):
    """The stage-1 and stage-2 configurations of one run, checked against the data."""
    from .config import TrainConfig
    from .preflight import preflight

    # Only what the command line states overrides the --config file, or on
    # --resume the run's own config.json (a resumed run must not change what it computes).
    overrides = {"data": str(data), "machine": args.machine, "out": str(out), "device": args.device}
    if args.epochs is not None and args.steps is None:
        overrides["steps"] = None  # --epochs on the command line means epochs, over a preset's step budget
    for key in ("backbone", "epochs", "steps", "seed", "outliers", "batch_size", "embedding_dim", "r_train", "num_workers", "lr",
                "amplitude", "pretrained_weights", "channel_db"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.mixup:
        overrides["mixup"] = True
    for key in ("objective", "n_subclusters", "fft_branch"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    base: dict = {}
    if args.resume and RunDir(out).config.is_file():
        base = _read_config(RunDir(out).config)
        overrides["resume"] = True
    elif args.resume:
        raise UserError(f"{out}: nothing to resume (no config.json)")
    elif args.config:
        base = _read_config(Path(args.config))
        if "epochs" in base and "steps" not in base:
            base["steps"] = None  # a file that says epochs means epochs, over a preset's step budget
    chosen = None
    if not args.resume:  # a resumed run's config.json already holds everything it computes
        preset, chosen = _preset(args)
        base = {**preset, **base}
    if "domain_head" not in base:
        # The extractor the approach needs: specialization's Eq. 8 needs the domain
        # classifier; generalization trains without it, at t 1:1 (report 2.3), so
        # that Eq. 6 does not pull the domains apart in the embedding.
        overrides["domain_head"] = approach == "specialization"
    cfg = TrainConfig.from_dict({**base, **overrides}, ignore_unknown=bool(args.resume))
    s2 = stage2_config(args, cfg.seed, approach)
    cfg.validate()  # a mistake stays the one line on stderr, before the preset's
    if chosen:
        log.info("%s", chosen)
    if approach == "specialization" and not cfg.domain_head:
        raise UserError("domain specialization needs the domain head (domain_head is false in the preset or the --config file)")
    return preflight(cfg, [approach], s2), s2


def _references(args: argparse.Namespace, data: Path, run_dir: Path, seed: int, device: str) -> None:
    """The plain system and the DCASE autoencoder beside the run: the reference rows of every report."""
    from .plain import fit_plain, plain_stage2

    if not args.no_plain:
        # also an ensemble member: edge-asd-export RUN RUN/baseline/plain
        features = PLAIN_FEATURES[args.plain_features]
        fit_plain(data, args.machine, RunDir(run_dir).plain,
                  plain_stage2(seed, args.threshold, args.plain_scorer, features), features)
    if args.baseline_epochs > 0:
        from edge_asd.io.dcase import list_clips

        from .baseline import AEBaselineConfig, train_ae_baseline

        paths = [c.path for c in list_clips(data, args.machine, "train")]
        ae = train_ae_baseline(paths, AEBaselineConfig(epochs=args.baseline_epochs, seed=seed, device=device), progress=not args.quiet)
        RunDir(run_dir).baseline.mkdir(exist_ok=True)
        ae.save(RunDir(run_dir).ae)


def _warn_unjudgeable(cfg, data: Path) -> None:
    """Say before the minutes of stage 1 when its extractor cannot be deployed by default."""
    from .gate import MIN_CHECKED
    from .preflight import heldout_for_check

    held = heldout_for_check(data, cfg.machine, cfg.r_train, cfg.n_target_train, cfg.seed)
    if held < MIN_CHECKED:
        log.warning("%s: stage 1 holds out at most %d normal clip(s) per section and the no-regret check needs %d, so "
                    "edge-asd-export will deploy the plain system (the extractor only with --no-plain); more clips per "
                    "section, or a lower --r-train, let it be checked", cfg.machine, held, MIN_CHECKED)


def _gate(run_dir: Path, data: Path, approach: str, device: str, seed: int) -> None:
    """No regret (train/gate.py): whether the learned member joins the plain one in the exported bundle."""
    from .gate import MIN_CHECKED, check_learned_member, write_gate

    result = check_learned_member(run_dir, RunDir(run_dir).plain, data, approach, device=device, seed=seed)
    write_gate(run_dir, result)
    if result.auc_plain is None:
        log.info("no-regret check: fewer than %d normal clips held out from stage 1 in every section, so the learned "
                 "member cannot be checked: edge-asd-export deploys the plain system alone", MIN_CHECKED)
        return
    verdict = ("the learned member joins the plain one" if result.decision == "ensemble"
               else "the learned member does not help: edge-asd-export deploys the plain system alone")
    log.info("no-regret check (held-out normals against %d altered copies, AUC): plain %.3f, learned %.3f, "
             "ensemble %.3f: %s", result.n_pseudo, result.auc_plain, result.auc_learned, result.auc_ensemble, verdict)


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
    p = options.build_parser()
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
    if argv and argv[0] == "grid":
        from .grid import build_grid_parser

        return run_cli(build_grid_parser(), argv[1:])
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
