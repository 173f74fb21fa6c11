"""``edge-asd-export RUN --out BUNDLE [--format onnx|tensorrt] [--precision fp32|fp16|int8]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge_asd.cli.parser import CliParser, run_cli
from edge_asd.errors import UserError

from .pack import (DEFAULT_REFERENCE_CLIPS, FORMATS, MAX_REFERENCE_CLIPS, REFERENCE_SECONDS, SELECT_BY, build_bundle,
                   check_reference_clips)
from .precision import PRECISIONS


log = logging.getLogger(__name__)


def _export(args: argparse.Namespace) -> int:
    if args.precision == "int8" and args.format == "onnx":
        # measured, BENCHMARKS.md "Device side": int8 bundles have no split graphs, so a CPU runs the DFT per segment
        log.warning("an int8 ONNX bundle is slower and larger than fp32 on a CPU (for the cpu preset about three times the "
                    "time and twice the memory per clip, BENCHMARKS.md); int8 pays off with --format tensorrt on a GPU")
    build_bundle(
        [Path(r) for r in args.run] if len(args.run) > 1 else Path(args.run[0]),
        Path(args.out),
        fmt=args.format,
        precision=args.precision,
        approach=args.approach,
        data_root=Path(args.data) if args.data else None,
        select=args.select,
        select_by=args.select_by,
        validation=[Path(v) for v in args.validation] if args.validation else None,
        with_plain=args.with_plain,
        reference_clips=args.reference_clips,
    )
    return 0


def _reference_count(text: str) -> int:
    """argparse's type for --reference-clips: its error is the parser's one line and exit status 2."""
    try:
        return check_reference_clips(int(text))
    except (ValueError, UserError):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 0 (none) to {MAX_REFERENCE_CLIPS}") from None


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge-asd-export", description="Export a trained run as one deployment bundle.")
    p.add_argument("run", nargs="+", help="run folder written by edge-asd-train; several runs of one machine type make an ensemble bundle")
    p.add_argument("--out", required=True, help="bundle file to write (e.g. pump.asd)")
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default; the fastest on a CPU), fp16 or int8 (for TensorRT: on a CPU int8 is slower than fp32)")
    p.add_argument("--approach", choices=["generalization", "specialization"], help="default: the run's")
    p.add_argument("--data", help="data root, if it moved since training")
    p.add_argument("--select", type=int, metavar="K", help="ensemble: keep only the K best of the runs given")
    p.add_argument("--select-by", choices=SELECT_BY,
                   help="how --select ranks runs: validation (official score on the validation clips; the default "
                   "when there are some) or proxy (label-free: held-out normals against other machines' clips)")
    p.add_argument("--validation", nargs="+", metavar="PATH",
                   help="labelled clips (files or folders, DCASE test naming) for --select and the bundle's official "
                   "score; never the test set you report on. Default: the test clips edge-asd import/record wrote "
                   "(DATA/TYPE/import.csv) in sections that hold both normal and anomalous ones")
    p.add_argument("--no-plain", dest="with_plain", action="store_false",
                   help="leave out the plain log-mel-statistics member that edge-asd-train fits beside the run "
                   "(by default it joins the bundle as an ensemble member: better in every measured case, BENCHMARKS.md)")
    p.add_argument("--reference-clips", type=_reference_count, default=DEFAULT_REFERENCE_CLIPS, metavar="N",
                   help=f"pack N typical normal training clips of each section ({REFERENCE_SECONDS:g} s of FLAC each) so the device's "
                   f"page can play normal beside an alert's clip; 0 for none, at most {MAX_REFERENCE_CLIPS} "
                   f"(default {DEFAULT_REFERENCE_CLIPS})")
    p.set_defaults(func=_export)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
