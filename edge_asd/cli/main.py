"""``edge-asd``: the runtime's command line (synth, score, evaluate, run, ...).

Heavy modules are imported inside each command so that ``edge-asd --help`` is
instant on a small device, and so a missing optional back end only matters to
the command that needs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_asd.cli.parser import CliParser, run_cli
from edge_asd.errors import UserError
from edge_asd.io.dcase import DOMAINS, LABELS, SPLITS
from edge_asd.cli.watch import add_watch_arguments, run_watch


def _cmd_synth(args: argparse.Namespace) -> int:
    from edge_asd.synth import SynthConfig, generate

    cfg = SynthConfig(
        machines=tuple(m.strip() for m in args.machines.split(",") if m.strip()),
        sections=args.sections,
        train_source=args.train_source,
        train_target=args.train_target,
        test=args.test,
        seconds=args.seconds,
        seed=args.seed,
    )
    written = generate(Path(args.out), cfg, progress=not args.quiet)
    print(f"wrote {written} clips to {args.out}")
    return 0


def _import_options(args: argparse.Namespace):
    """Where ``import`` and ``record`` put clips, from the options they share."""
    from edge_asd.io.clipset import ImportOptions

    # Passed only when given, so that the defaults live in clipset.py alone.
    given = {k: getattr(args, k) for k in ("section", "domain", "split", "label", "clip_seconds", "hop_seconds",
                                            "channel")}
    return ImportOptions(data=Path(args.data), machine=args.machine, **{k: v for k, v in given.items() if v is not None})


def _cmd_import(args: argparse.Namespace) -> int:
    from edge_asd.io.importer import import_recordings

    import_recordings([Path(p) for p in args.recordings], _import_options(args), progress=not args.quiet,
                      on_recording=lambda r: print(r.summary(), flush=True))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge_asd.daemon.record import RecordSettings, record

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame) -> None:  # a stop between two reads: no clip is cut in half
        received.append(signum)
        stop.set()

    device = int(args.mic) if args.mic.isdigit() else args.mic
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = record(_import_options(args), RecordSettings(device, args.minutes), stop, progress=not args.quiet)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(result.clips.summary(), flush=True)
    if result.stopped:
        name = "Ctrl-C" if received and received[0] == signal.SIGINT else "a stop signal"
        print(f"stopped by {name} after {result.seconds:.1f} s of {args.minutes:g} min: every finished clip is kept",
              file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from edge_asd.scoring.metrics import evaluate_dir, format_table

    result = evaluate_dir(Path(args.dir), data_root=Path(args.data) if args.data else None)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from edge_asd.offline.score import score_paths
    from edge_asd.offline.replay import ReplaySettings

    # Passed only when given, so that the default lives in offline.py alone.
    limit = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    given = {k: getattr(args, k) for k in ("section", "machine", "clip_seconds", "hop_seconds", "threshold",
                                            "raise_after", "clear_after", "start", "channel", "evidence_max_mb")}
    replay = ReplaySettings(
        **{k: v for k, v in given.items() if v is not None},  # the defaults live in replay.py
        evidence=Path(args.evidence) if args.evidence else None, plot=args.plot, json_lines=args.json,
    )
    score_paths(
        Path(args.bundle),
        [Path(p) for p in args.paths],
        Path(args.out),
        backend=args.backend,
        batch_clips=args.batch_clips,
        threads=args.threads,
        progress=not args.quiet,
        replay=replay,
        **limit,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_asd.daemon.app import main as daemon_main

    return daemon_main(Path(args.config), validate_only=args.validate_config)


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from edge_asd.runtime.trt import build_engine_in_bundle

    build_engine_in_bundle(Path(args.bundle), precision=args.precision, out=Path(args.out) if args.out else None)
    return 0


def _cmd_enroll(args: argparse.Namespace) -> int:
    from edge_asd.runtime.bundle import open_bundle
    from edge_asd.runtime.enroll import enroll, read_clips, record_clips
    from edge_asd.runtime.scorer import load_scorer

    bundle = Path(args.bundle)
    if bool(args.mic) == bool(args.paths):
        raise UserError("give either --mic DEVICE or clip files/folders to enroll")
    if args.mic:
        scorer = load_scorer(bundle, backend="onnx-cpu")
        clips = record_clips(args.mic, args.clips, scorer.clip_seconds, scorer.sample_rate)
    else:
        spec = open_bundle(bundle).manifest.audio.spec()  # the bundle's own rate and segment length
        clips = read_clips([Path(p) for p in args.paths], spec.sample_rate, spec.segment_seconds)
        if args.clips and len(clips) < args.clips:
            raise UserError(f"--clips {args.clips} asked for, but only {len(clips)} clip files were given")
        clips = clips[: args.clips] if args.clips else clips
    rep = enroll(bundle, clips, Path(args.out), section=args.section, domain=args.domain, accept_anomalous=args.accept_anomalous)
    for name, score, thr in rep.flagged:
        print(f"warning: enrolled {name} although it scored {score:.2f} > threshold {thr:.2f} (--accept-anomalous)", file=sys.stderr)
    print(
        f"enrolled {rep.n_clips} clips into section {rep.section}, domain {rep.domain}: threshold "
        f"{rep.threshold_before:.3f} -> {rep.threshold_after:.3f}; wrote {rep.out}"
        + (f" (previous version kept as {rep.previous})" if rep.previous else "")
    )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from edge_asd.runtime.enroll import rollback

    print(f"rolled back {rollback(Path(args.bundle))}")
    return 0


def _add_clip_options(s: argparse.ArgumentParser) -> None:
    """The options ``import`` and ``record`` share: where clips go and how the audio is cut."""
    s.add_argument("--section", metavar="ID", help="two-digit section id (default 00)")
    s.add_argument("--domain", choices=DOMAINS, help="source or target (default source)")
    s.add_argument("--split", choices=SPLITS, help="train or test (default train)")
    s.add_argument("--label", choices=LABELS, help="normal or anomaly (default normal; anomaly only with --split test)")
    s.add_argument("--clip-seconds", type=float, metavar="S", help="clip length (default 10)")
    s.add_argument("--hop-seconds", type=float, metavar="S", help="from one clip's start to the next (default: the clip length)")
    s.add_argument("--channel", type=int, metavar="N", help="channel of multi-channel audio, counted from 0 (default 0)")


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edge-asd", description="Machine-condition monitoring by sound (runtime).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic machine-sound data set in the DCASE layout")
    s.add_argument("out")
    s.add_argument("--machines", default="fan,gearbox,bearing,valve")
    s.add_argument("--sections", type=int, default=2)
    s.add_argument("--train-source", type=int, default=40, help="normal source-domain training clips per section")
    s.add_argument("--train-target", type=int, default=10, help="normal target-domain training clips per section")
    s.add_argument("--test", type=int, default=10, help="test clips per section, domain and label")
    s.add_argument("--seconds", type=float, default=10.0, help="clip length")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser(
        "import", help="cut your own recordings into 16 kHz DCASE clips of a data set, ready for training",
        description="Cut recordings into clips, resample them to 16 kHz mono and write them in the DCASE layout "
                    "under DATA/TYPE/{train|test}, numbered after the clips already there (nothing is overwritten); "
                    "DATA/TYPE/import.csv records where each clip came from. Silent or clipped windows and a tail "
                    "shorter than a clip are skipped and counted.")
    s.add_argument("recordings", nargs="+", metavar="RECORDING",
                   help="audio file of any name, length, rate and format soundfile reads (a folder: its .wav and "
                        ".flac files)")
    s.add_argument("--data", required=True, help="data set folder (created if missing)")
    s.add_argument("--machine", required=True, metavar="TYPE", help="machine type: the folder DATA/TYPE")
    _add_clip_options(s)
    s.add_argument("--quiet", action="store_true", help="no progress bar for long recordings")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser(
        "record", help="record training (or labelled test) clips from a microphone into a data set",
        description="Capture a microphone into 16 kHz DCASE clips under DATA/TYPE/{train|test}, cut, skipped and "
                    "numbered as edge-asd import does (DATA/TYPE/import.csv says mic:NAME). A level meter and "
                    "clipping warnings show on stderr; Ctrl-C stops early and keeps every finished clip (exit status 130).")
    s.add_argument("--data", required=True, help="data set folder (created if missing)")
    s.add_argument("--machine", required=True, metavar="TYPE", help="machine type: the folder DATA/TYPE")
    s.add_argument("--mic", required=True, metavar="NAME",
                   help="input device: 'default', an index, or (part of) a name, as the daemon's mic: sources")
    s.add_argument("--minutes", required=True, type=float, metavar="M", help="how long to record")
    _add_clip_options(s)
    s.add_argument("--quiet", action="store_true", help="no progress bar or level meter")
    s.set_defaults(func=_cmd_record)

    s = sub.add_parser("score", help="score WAV files or folders: DCASE-named clips into submission files, "
                                     "other recordings window by window")
    s.add_argument("bundle")
    s.add_argument("paths", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--backend", default="auto", help="auto, onnx-cpu, onnx-cuda, onnx-tensorrt or tensorrt")
    s.add_argument("--batch-clips", type=int, default=8)
    s.add_argument("--threads", type=int, default=0,
                   help="inference threads per clip (0: all cores); 1 also scores one clip at a time (else two side by side)")
    s.add_argument("--max-seconds", type=float,
                   help="refuse DCASE-named files longer than this (default 600): each is scored as one clip")
    r = s.add_argument_group(
        "own recordings", "files without a DCASE name are replayed window by window, as the daemon's file: source "
                          "would, into OUT/windows.csv (one row per window)")
    r.add_argument("--section", help="section of the bundle the recordings belong to (needed when it has several)")
    r.add_argument("--machine", help="machine id, as in the daemon's [[machines]] id (default: the bundle's machine "
                                     "type); names the evidence folder")
    r.add_argument("--clip-seconds", type=float, help="window length (default: the bundle's clip length, as the daemon)")
    r.add_argument("--hop-seconds", type=float, help="window hop (default: one window, as the daemon)")
    r.add_argument("--threshold", type=float, help="decision threshold (default: the bundle's for the section)")
    r.add_argument("--raise-after", type=int, help="[alerts] raise_after: anomalous windows in a row that raise "
                                                   "an alert (default: the daemon's, 3)")
    r.add_argument("--clear-after", type=int, help="[alerts] clear_after: normal windows in a row that clear it "
                                                   "(default: the daemon's, 3)")
    r.add_argument("--start", help="wall time (ISO-8601) of the first recording whose name gives none; "
                                   "further ones follow it back to back")
    r.add_argument("--channel", type=int, help="channel of multi-channel recordings (default 0)")
    r.add_argument("--evidence", help="write the audio of every anomalous window here, as the daemon's evidence store")
    r.add_argument("--evidence-max-mb", type=float, help="size cap of --evidence (default 200)")
    r.add_argument("--plot", action="store_true", help="a PNG timeline per recording in OUT (needs matplotlib)")
    r.add_argument("--json", action="store_true", help="also print each window as a JSON line on stdout")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("evaluate", help="DCASE 2022 Task 2 metrics of the submission files in DIR")
    s.add_argument("dir")
    s.add_argument("--data", help="data root, to find ground truth when DIR has no copy of it")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("run", help="the monitoring daemon")
    s.add_argument("--config", required=True)
    s.add_argument("--validate-config", action="store_true", help="check the configuration and bundles, then exit")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("build-engine", help="build a TensorRT engine for this device into a bundle")
    s.add_argument("bundle")
    s.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"])
    s.add_argument("--out", help="write a new bundle here instead of replacing BUNDLE")
    s.set_defaults(func=_cmd_build_engine)

    s = sub.add_parser("enroll", help="teach a bundle a new operating condition from a few normal clips")
    s.add_argument("bundle")
    s.add_argument("paths", nargs="*", help="clip files or folders (or use --mic)")
    s.add_argument("--mic", help="record from this microphone (name or index) instead")
    s.add_argument("--clips", type=int, default=0, help="number of clips to record or to take (0: all given)")
    s.add_argument("--out", required=True, help="new bundle (may be BUNDLE itself: the old one is kept as BUNDLE.prev)")
    s.add_argument("--domain", help="source or target (default target: the new condition)")
    s.add_argument("--section", help="section of the bundle (default: its first)")
    s.add_argument("--accept-anomalous", action="store_true", help="enroll clips the current model finds anomalous")
    s.set_defaults(func=_cmd_enroll)

    s = sub.add_parser("rollback", help="restore the version of a bundle that enroll replaced")
    s.add_argument("bundle")
    s.set_defaults(func=_cmd_rollback)

    s = sub.add_parser("watch", help="print the scores and alerts a daemon publishes")
    add_watch_arguments(s)
    s.set_defaults(func=run_watch)
    return p


def _quiet_faiss(args: argparse.Namespace) -> None:
    if args.command in ("score", "run", "enroll"):
        from edge_asd.runtime.scorer import quiet_faiss_threads

        quiet_faiss_threads()


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, setup=_quiet_faiss)


if __name__ == "__main__":
    sys.exit(main())
