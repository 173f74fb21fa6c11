"""``edge-asd-train grid GRID.toml --out DIR``: a grid of ordinary runs, launched by an existing engine.

The grid file (TOML)::

    data = "/data/dcase2022"          # relative paths are read from the grid file's folder
    [grid]                            # every combination is one run; a scalar is one value
    machine = ["fan", "valve"]        # required
    backbone = ["efficientnet_b0", "conformer"]
    seed = [0, 1, 2]
    r_train = [0.8, 0.85, 0.9]        # any TrainConfig field, or any edge-asd-train option (detector, k, ...)
    [config]                          # TrainConfig fields shared by every run (each run's --config file)
    epochs = 150
    [flags]                           # edge-asd-train options shared by every run
    preset = "report"
    baseline_epochs = 0

Each run is ``DIR/<machine>/<key>-<value>_...``: what ``edge-asd-train --data DATA --machine M
--out RUN --config ...`` writes, plus ``train.log`` (its output) and ``grid_done.json`` (written
when it exits 0; a run holding it is skipped when the grid is run again). A run started before
and not finished is resumed from its last checkpoint.

Expansion is pure (:func:`load_grid`, :func:`expand`); each run is one ``python -m train.cli``
process (:func:`run_point`), so a crash stays in that run and its log. The launchers only decide
where those processes run: a local pool (:func:`run_local`), Ray (:func:`run_ray`), or a Slurm
array script (:func:`write_slurm`).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_asd.errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
    import tomli as tomllib  # type: ignore[no-redef]

DONE_MARKER = "grid_done.json"
LOG_NAME = "train.log"
POINT_CONFIG = "grid_point.json"
# Each run's own: the grid sets them, a grid file may not.
RESERVED = ("data", "out", "machine", "config", "resume", "quiet", "func")
# training-config fields the command line always sets, so in a grid they are options
CLI_FIELDS = ("device",)
TOP_KEYS = ("data", "grid", "config", "flags")


class GridError(UserError):
    """A grid file that cannot be expanded; the message names the file and the key."""


@dataclass(frozen=True)
class GridSpec:
    source: Path
    data: Path
    axes: dict[str, list[Any]]  # in the file's order; "machine" among them
    config: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunPoint:
    name: str  # "<machine>/<key>-<value>_..." : the run folder under DIR
    data: Path
    machine: str
    config: dict[str, Any]  # TrainConfig fields: the run's --config file
    flags: dict[str, Any]  # edge-asd-train options (argparse dest -> value)

    def run_dir(self, out: Path) -> Path:
        return out / self.name

    def argv(self, out: Path) -> list[str]:
        """The ``edge-asd-train`` arguments of this run (a started, unfinished run resumes)."""
        run = self.run_dir(out)
        args = ["--data", str(self.data), "--machine", self.machine, "--out", str(run),
                "--config", str(run / POINT_CONFIG), "--quiet"]
        if any(run.glob("**/checkpoints/last.pt")):
            args.append("--resume")
        return args + flag_args(self.flags)


@dataclass(frozen=True)
class RunResult:
    name: str
    returncode: int
    log: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# --- the grid file -> runs (pure) ----------------------------------------------------------------


def _train_fields() -> set[str]:
    from .config import TrainConfig

    return {f.name for f in fields(TrainConfig)} - set(RESERVED) - set(CLI_FIELDS)


@functools.cache
def _train_options() -> dict[str, argparse.Action]:
    from .options import build_parser

    return {a.dest: a for a in build_parser()._actions if a.dest not in RESERVED and a.option_strings and a.dest != "help"}


def load_grid(path: Path) -> GridSpec:
    """Read and check a grid file; every mistake is one :class:`GridError` naming it."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GridError(f"{path}: cannot read the grid file ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GridError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown key(s) {', '.join(unknown)} (expected {', '.join(TOP_KEYS)})")
    if not isinstance(raw.get("data"), str) or not raw["data"]:
        raise GridError(f"{path}: 'data' must name the DCASE-layout data folder")
    for table in ("grid", "config", "flags"):
        if not isinstance(raw.get(table, {}), dict):
            raise GridError(f"{path}: [{table}] must be a table")
    axes = {k: v if isinstance(v, list) else [v] for k, v in raw.get("grid", {}).items()}
    if "machine" not in axes:
        raise GridError(f"{path}: [grid] needs 'machine' (the machine types to train)")
    for key, values in axes.items():
        if not values:
            raise GridError(f"{path}: [grid] {key} is an empty list")
        if len({json.dumps(v) for v in values}) != len(values):
            raise GridError(f"{path}: [grid] {key} lists a value twice")
    data = Path(raw["data"]).expanduser()
    spec = GridSpec(path, data if data.is_absolute() else path.parent / data, axes, raw.get("config", {}), raw.get("flags", {}))
    _check_keys(spec)
    _check_data(spec)
    return spec


def _check_keys(spec: GridSpec) -> None:
    train_fields, options = _train_fields(), _train_options()
    for key in [k for k in spec.axes if k != "machine"]:
        if key not in train_fields and key not in options:
            raise GridError(f"{spec.source}: [grid] {key} is neither a training config field nor an edge-asd-train option")
    for key in spec.config:
        if key in CLI_FIELDS:
            raise GridError(f"{spec.source}: [config] {key} is set by the command line: put it in [flags]")
        if key not in train_fields:
            raise GridError(f"{spec.source}: [config] {key} is not a training config field")
    for key in spec.flags:
        if key not in options:
            raise GridError(f"{spec.source}: [flags] {key} is not an edge-asd-train option")


def _check_data(spec: GridSpec) -> None:
    if not spec.data.is_dir():
        raise GridError(f"{spec.source}: data folder {spec.data} does not exist")
    for machine in spec.axes["machine"]:
        if not isinstance(machine, str) or not (spec.data / machine / "train").is_dir():
            raise GridError(f"{spec.source}: [grid] machine {machine!r}: no folder {spec.data / str(machine) / 'train'}")


def _name_part(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-") or "none"


def point_name(machine: str, values: dict[str, Any]) -> str:
    parts = [f"{k}-{_name_part(v)}" for k, v in values.items()]
    return f"{machine}/{'_'.join(parts) if parts else 'run'}"


def expand(spec: GridSpec) -> list[RunPoint]:
    """Every combination of the axes, in the file's order (the last axis varies fastest)."""
    train_fields = _train_fields()
    keys = list(spec.axes)
    points = []
    for combo in itertools.product(*(spec.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        machine = values.pop("machine")
        config = {**spec.config, **{k: v for k, v in values.items() if k in train_fields}}
        flags = {**spec.flags, **{k: v for k, v in values.items() if k not in train_fields}}
        points.append(RunPoint(point_name(machine, values), spec.data.resolve(), machine, config, flags))
    for p in points:
        _check_flags(spec.source, p)
    return points


def flag_args(flags: dict[str, Any]) -> list[str]:
    """``{"baseline_epochs": 0, "mixup": True}`` -> ``["--baseline-epochs", "0", "--mixup"]``."""
    options = _train_options()
    args: list[str] = []
    for dest, value in flags.items():
        if not isinstance(value, bool):
            args += [options[dest].option_strings[-1], str(value)]
            continue
        # a switch (or a --no-X twin sharing its dest): the spelling that sets this value
        spell = [a.option_strings[-1] for a in _switches() if a.dest == dest and a.const is value]
        if spell:
            args.append(spell[0])
        elif not any(a.dest == dest for a in _switches()):
            raise GridError(f"option {dest} takes a value, not {str(value).lower()}")
    return args


@functools.cache
def _switches() -> tuple[argparse.Action, ...]:
    from .options import build_parser

    return tuple(a for a in build_parser()._actions if a.nargs == 0 and a.option_strings)


def _check_flags(source: Path, point: RunPoint) -> None:
    """Parse the run's command line now, so a bad choice is the grid file's error, not a failed run."""
    from .options import build_parser, misapplied_detector_flags

    parser = build_parser()

    def fail(message: str):
        raise GridError(f"{source}: run {point.name}: {message}")

    parser.error = fail  # type: ignore[method-assign]
    try:
        args = flag_args(point.flags)
    except GridError as exc:
        fail(str(exc))
    parsed = parser.parse_args(["--data", "x", "--machine", point.machine, "--out", "x", *args])
    misapplied = misapplied_detector_flags(parsed.detector, parsed.metric, parsed.knn_score, parsed.shrinkage)
    if misapplied:
        fail(misapplied)


def is_done(point: RunPoint, out: Path) -> bool:
    return (point.run_dir(out) / DONE_MARKER).is_file()


# --- one run -------------------------------------------------------------------------------------


def run_point(point: RunPoint, out: Path, env: dict[str, str] | None = None) -> RunResult:
    """Run one grid point as its own ``python -m train.cli`` process; its output goes to its log."""
    run = point.run_dir(out)
    run.mkdir(parents=True, exist_ok=True)
    (run / POINT_CONFIG).write_text(json.dumps(point.config, indent=2))
    log = run / LOG_NAME
    argv = [sys.executable, "-m", "train.cli", *point.argv(out)]
    start = time.monotonic()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}).returncode
    seconds = time.monotonic() - start
    if rc == 0:
        (run / DONE_MARKER).write_text(json.dumps({"argv": argv[3:], "seconds": round(seconds, 1)}, indent=2))
    return RunResult(point.name, rc, log, seconds)


def run_one_named(points: Sequence[RunPoint], out: Path, name: str) -> RunResult:
    """The Slurm array's task: one point by name (a finished one is not run again)."""
    match = [p for p in points if p.name == name]
    if not match:
        raise GridError(f"no run named {name!r} in the grid")
    if is_done(match[0], out):
        return RunResult(name, 0, match[0].run_dir(out) / LOG_NAME, 0.0)
    return run_point(match[0], out)


# --- launchers -------------------------------------------------------------------------------


class GridProgress:
    """Runs done / running / failed on one tqdm bar (the desktop's progress bar), from the launcher's threads."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="grid", unit="run", disable=not enabled)
        self.running = self.failed = 0
        self.lock = threading.Lock()
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(f"running {self.running}, failed {self.failed}")

    def started(self) -> None:
        with self.lock:
            self.running += 1
            self._show()

    def finished(self, result: RunResult) -> None:
        with self.lock:
            self.running -= 1
            self.failed += not result.ok
            self.bar.update(1)
            self._show()
            if not result.ok:
                self.bar.write(f"run {result.name} failed (exit {result.returncode}): see {result.log}")

    def close(self) -> None:
        self.bar.close()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def run_local(points: Sequence[RunPoint], out: Path, jobs: int | None = None, progress: bool = True) -> list[RunResult]:
    """A pool of local processes: one run per free GPU, or ``jobs`` runs at a time on the CPU.

    Threads only wait on the run processes, which hold the work."""
    gpus = visible_gpus()
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    if gpus:
        for g in gpus[: jobs or len(gpus)]:
            slots.put({"CUDA_VISIBLE_DEVICES": g})
    else:
        n = max(1, jobs or 1)
        # runs share the cores instead of each starting a thread per core
        threads = str(max(1, (os.cpu_count() or 1) // n))
        for _ in range(n):
            slots.put({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""})
    bar = GridProgress(len(points), progress)

    def one(point: RunPoint) -> RunResult:
        env = slots.get()
        try:
            bar.started()
            result = run_point(point, out, env)
            bar.finished(result)
            return result
        finally:
            slots.put(env)

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        results = [fut.result() for fut in as_completed([pool.submit(one, p) for p in points])]
    bar.close()
    return results


def _ray_task(point: RunPoint, out: str) -> RunResult:
    return run_point(point, Path(out))


def run_ray(
    points: Sequence[RunPoint], out: Path, address: str = "auto", gpus_per_run: float = 0, cpus_per_run: float = 1,
    progress: bool = True, init: Callable[..., Any] | None = None,
) -> list[RunResult]:
    """One Ray task per run; Ray places them (and sets CUDA_VISIBLE_DEVICES for ``gpus_per_run``).

    ``address``: ``auto`` (the cluster this machine belongs to), ``ray://HOST:10001``, or
    ``local`` (start a Ray instance on this machine for the grid). ``out`` must be a folder
    every node sees (a shared file system)."""
    try:
        import ray
    except ImportError:
        raise GridError("--launcher ray needs Ray: pip install '.[cluster]'") from None
    started = not ray.is_initialized()
    if started:
        (init or ray.init)(address=None if address == "local" else address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_ray_task)
        bar = GridProgress(len(points), progress)
        pending = {task.remote(p, str(out.resolve())): p for p in points}
        for _ in pending:
            bar.started()
        results = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                results.append(ray.get(ref))
                bar.finished(results[-1])
        bar.close()
        return results
    finally:
        if started:
            ray.shutdown()


SBATCH = """#!/bin/bash
# Written by edge-asd-train grid: one array task per run listed in {runs}
#SBATCH --job-name={job}
#SBATCH --array=0-{last}{throttle}
#SBATCH --output={out}/slurm-%A_%a.out
{resources}
set -euo pipefail
NAME=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {runs_q})
exec {python} -m train.cli grid {grid} --out {out_q} --only "$NAME"
"""


def write_slurm(
    points: Sequence[RunPoint], out: Path, grid_file: Path, gpus_per_run: int = 1, cpus_per_run: int = 4,
    time_limit: str | None = None, partition: str | None = None, max_parallel: int | None = None,
) -> Path | None:
    """``DIR/grid.sbatch`` (a job array over ``DIR/grid_runs.txt``, the runs not finished); None when none is left."""
    if not points:
        return None
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "grid_runs.txt"
    runs.write_text("".join(f"{p.name}\n" for p in points))
    resources = [f"#SBATCH --cpus-per-task={cpus_per_run}"]
    if gpus_per_run:
        resources.append(f"#SBATCH --gpus-per-task={gpus_per_run}")
    if time_limit:
        resources.append(f"#SBATCH --time={time_limit}")
    if partition:
        resources.append(f"#SBATCH --partition={partition}")
    script = out / "grid.sbatch"
    script.write_text(SBATCH.format(
        runs=runs, runs_q=shlex.quote(str(runs.resolve())), job="edge-asd-grid", last=len(points) - 1,
        throttle=f"%{max_parallel}" if max_parallel else "", out=out.resolve(), out_q=shlex.quote(str(out.resolve())),
        resources="\n".join(resources), python=shlex.quote(sys.executable), grid=shlex.quote(str(grid_file.resolve())),
    ))
    return script


# --- the command -------------------------------------------------------------------------------


def build_grid_parser() -> argparse.ArgumentParser:
    from edge_asd.cli.parser import CliParser

    p = CliParser(prog="edge-asd-train grid", description="Train every run of a grid file (see train/grid.py for its keys); "
                  "a finished run is skipped, an unfinished one resumed.")
    p.add_argument("grid", help="grid file (TOML)")
    p.add_argument("--out", required=True, help="folder of the runs: DIR/<machine>/<key>-<value>_...")
    p.add_argument("--launcher", default="local", choices=["local", "ray", "slurm"],
                   help="local: a process pool on this machine (default); ray: tasks on a Ray cluster; "
                   "slurm: write DIR/grid.sbatch, a job array to submit with sbatch")
    p.add_argument("--jobs", type=int, help="local: runs at a time (default: one per visible GPU, else 1)")
    p.add_argument("--address", default="auto", help="ray: cluster address (auto, ray://HOST:10001, or local)")
    p.add_argument("--gpus-per-run", type=float, help="ray and slurm: GPUs each run asks for (default 1 with slurm, 0 with ray)")
    p.add_argument("--cpus-per-run", type=float, help="ray and slurm: CPU cores each run asks for (default 1 with ray, 4 with slurm)")
    p.add_argument("--time", dest="time_limit", help="slurm: time limit of each array task (e.g. 12:00:00)")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--max-parallel", type=int, help="slurm: array tasks at a time (%%N)")
    p.add_argument("--only", metavar="NAME", help="run only the run NAME (what each Slurm array task does)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished; run nothing")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=grid_command)
    return p


def grid_command(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise GridError("--jobs must be at least 1")
    grid_file, out = Path(args.grid), Path(args.out).resolve()
    points = expand(load_grid(grid_file))
    if args.only:
        return 0 if run_one_named(points, out, args.only).ok else 1
    todo = [p for p in points if not is_done(p, out)]
    if args.dry_run:
        for p in points:
            print(f"{'done' if p not in todo else 'todo'} {p.name}")
        return 0
    if not args.quiet:
        print(f"grid {grid_file}: {len(points)} runs, {len(points) - len(todo)} finished already, {len(todo)} to run")
    if args.launcher == "slurm":
        script = write_slurm(todo, out, grid_file, int(args.gpus_per_run if args.gpus_per_run is not None else 1),
                             int(args.cpus_per_run or 4), args.time_limit, args.partition, args.max_parallel)
        print(f"submit with: sbatch {script}" if script else "every run is finished")
        return 0
    if args.launcher == "ray":
        results = run_ray(todo, out, args.address, args.gpus_per_run or 0, args.cpus_per_run or 1, progress=not args.quiet)
    else:
        results = run_local(todo, out, args.jobs, progress=not args.quiet)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"failed: {r.name} (exit {r.returncode}), log: {r.log}", file=sys.stderr)
    if not args.quiet:
        print(f"grid done: {len(results) - len(failed)} runs finished, {len(failed)} failed; runs in {out}")
    return 1 if failed else 0
