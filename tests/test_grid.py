"""``edge-asd-train grid``: expansion, bad grid files, and real runs by the local pool, Ray and a Slurm array script.

Every run is a real ``python -m train.cli`` process on a tiny synthetic data set; the
"broken" machine type has no source-domain clip, so its runs fail the way a user's would.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import build_parser, main as train_main
from train.grid import DONE_MARKER, LOG_NAME, expand, load_grid
from train.report import find_runs

TINY = {
    "backbone": "transformer", "embedding_dim": 16, "d_model": 16, "n_layers": 1, "n_heads": 2,
    "batch_size": 8, "epochs": 1, "num_workers": 0, "r_train": 0.8, "n_target_train": 3,
}


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory) -> Path:
    from edge_asd.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("griddata")
    generate(root, SynthConfig(machines=("fan", "pump", "valve"), sections=2, train_source=8, train_target=4, test=1,
                               seconds=3.0, seed=3, workers=1), progress=False)
    # target-domain clips only: a run of its own fails, while the other machine types'
    # runs still read its clips as pseudo-anomalous data
    (root / "valve").rename(root / "broken")
    for clip in (root / "broken" / "train").glob("*_source_*.wav"):
        clip.unlink()
    # enough clips (16) that a learned extractor is attempted: under 10 the plain system alone would fit
    for clip in sorted((root / "broken" / "train").glob("*_target_*.wav")):
        shutil.copyfile(clip, clip.with_name(clip.name.replace("_normal_000", "_normal_010")))
    return root


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_grid(path: Path, data: Path, grid: dict, config: dict | None = None, flags: dict | None = None) -> Path:
    lines = [f"data = {json.dumps(str(data))}", "[grid]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in grid.items()]
    lines += ["[config]"] + [f"{k} = {toml_value(v)}" for k, v in (config if config is not None else TINY).items()]
    lines += ["[flags]"] + [f"{k} = {toml_value(v)}" for k, v in (flags or {"baseline_epochs": 0, "device": "cpu"}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def grid_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.cli", "grid", *args], capture_output=True, text=True)


# --- expansion -----------------------------------------------------------------------------------


def test_expansion_is_the_product_of_the_axes(grid_data, tmp_path):
    spec = load_grid(write_grid(tmp_path / "g.toml", grid_data,
                                {"machine": ["fan", "pump"], "backbone": ["transformer", "conformer"], "seed": [0, 1, 2],
                                 "detector": ["knn", "gmm"], "mixup": [True, False]}))
    points = expand(spec)
    assert len(points) == 2 * 2 * 3 * 2 * 2
    assert len({p.name for p in points}) == len(points)
    p = next(p for p in points if p.name == "pump/backbone-conformer_seed-2_detector-gmm_mixup-true")
    # training-config keys go to the run's --config file, options to its command line
    assert p.config == {**TINY, "backbone": "conformer", "seed": 2, "mixup": True}
    assert p.flags == {"baseline_epochs": 0, "device": "cpu", "detector": "gmm"}
    args = build_parser().parse_args(p.argv(tmp_path / "runs"))
    assert (args.machine, args.detector, args.baseline_epochs, args.device) == ("pump", "gmm", 0, "cpu")
    assert Path(args.out) == tmp_path / "runs" / p.name and not args.resume


def test_switch_flags_take_their_own_spelling(grid_data, tmp_path):
    spec = load_grid(write_grid(tmp_path / "g.toml", grid_data, {"machine": "fan"}, {},
                                {"no_plain": True, "fft_branch": False, "k": 3}))
    args = build_parser().parse_args(expand(spec)[0].argv(tmp_path))
    assert args.no_plain is True and args.fft_branch is False and args.k == 3


@pytest.mark.parametrize(
    "text, problem",
    [
        ('data = "DATA"\n[grid]\nseed = [0]\n', "needs 'machine'"),
        ('data = "DATA"\nepochs = 3\n[grid]\nmachine = "fan"\n', "unknown key(s) epochs"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\n[config]\nepoch = 3\n', "[config] epoch is not a training config field"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\nwarp = [1, 2]\n', "[grid] warp is neither"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\n[config]\ndevice = "cpu"\n', "put it in [flags]"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\ndetector = ["knn", "svm"]\n', "invalid choice: 'svm'"),
        ('data = "DATA"\n[grid]\nmachine = ["fan", "gearbox"]\n', "machine 'gearbox': no folder"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\nseed = []\n', "seed is an empty list"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\n[flags]\nk = true\n', "option k takes a value"),
        ('data = "DATA"\n[grid]\nmachine = "fan"\ndetector = ["knn", "gmm"]\n[flags]\nmetric = "cosine"\n',
         "run fan/detector-gmm: --metric does not apply to --detector gmm (--metric is for knn, lof)"),
        ('data = "nowhere"\n[grid]\nmachine = "fan"\n', "does not exist"),
        ('data = "DATA"\n[grid\nmachine = "fan"\n', "not valid TOML"),
    ],
)
def test_bad_grid_file_is_one_line_and_status_2(grid_data, tmp_path, capsys, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text.replace('"DATA"', json.dumps(str(grid_data))))
    assert train_main(["grid", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and problem in err, err
    assert not (tmp_path / "runs").exists()


def test_bad_grid_file_exit_status_of_the_command(tmp_path):
    res = grid_cli(str(tmp_path / "missing.toml"), "--out", str(tmp_path / "runs"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "cannot read the grid file" in res.stderr


# --- real runs -------------------------------------------------------------------------------------


def _done(out: Path, name: str) -> bool:
    return (out / name / DONE_MARKER).is_file() and (out / name / "checkpoints" / "extractor.pt").is_file()


@pytest.mark.slow
def test_local_pool_runs_skips_finished_and_reports_failures(grid_data, tmp_path):
    grid = write_grid(tmp_path / "g.toml", grid_data, {"machine": ["fan", "broken"], "seed": [0, 1]})
    out = tmp_path / "runs"
    res = grid_cli(str(grid), "--out", str(out), "--jobs", "2", "--quiet")
    assert res.returncode == 1, res.stderr
    for seed in (0, 1):
        assert _done(out, f"fan/seed-{seed}")
        broken = out / "broken" / f"seed-{seed}"
        assert not (broken / DONE_MARKER).exists()
        # the failure is reported with its log, and the log holds the run's own error
        assert f"failed: broken/seed-{seed} (exit 2), log: {broken / LOG_NAME}" in res.stderr
        assert "no source-domain normal clip" in (broken / LOG_NAME).read_text()
    # ordinary run folders: what edge-asd-train report (and edge-asd-export --select) read
    runs = [r for r in find_runs(out) if r.parent.name != "baseline"]
    assert runs == [out / "fan" / "seed-0", out / "fan" / "seed-1"]
    assert json.loads((out / "fan/seed-1/config.json").read_text())["seed"] == 1
    bundle = subprocess.run([sys.executable, "-m", "export.cli", *map(str, runs), "--out", str(tmp_path / "fan.asd"),
                             "--select", "1"], capture_output=True, text=True)
    assert bundle.returncode == 0 and "chosen by proxy from 2" in bundle.stdout, bundle.stderr[-2000:]

    logs = {s: (out / f"fan/seed-{s}" / LOG_NAME).read_text() for s in (0, 1)}
    again = grid_cli(str(grid), "--out", str(out), "--jobs", "2")
    assert again.returncode == 1
    assert "4 runs, 2 finished already, 2 to run" in again.stdout
    assert all((out / f"fan/seed-{s}" / LOG_NAME).read_text() == logs[s] for s in (0, 1))  # not run again
    assert (out / "broken/seed-0" / LOG_NAME).read_text().count("no source-domain normal clip") == 2  # tried again


@pytest.mark.slow
def test_unfinished_run_is_resumed(grid_data, tmp_path):
    """A run whose stage 1 stopped after its checkpoint (no marker) continues, not restarts."""
    grid = write_grid(tmp_path / "g.toml", grid_data, {"machine": "fan"}, {**TINY, "epochs": 2})
    out = tmp_path / "runs"
    assert grid_cli(str(grid), "--out", str(out), "--quiet").returncode == 0
    run = out / "fan" / "run"
    (run / DONE_MARKER).unlink()
    assert grid_cli(str(grid), "--out", str(out), "--quiet").returncode == 0
    log = (run / LOG_NAME).read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]
    assert "resuming" in log and "after epoch 2" in log and (run / DONE_MARKER).is_file()
    steps = [line.split(",")[0] for line in (run / "losses.csv").read_text().splitlines()[1:]]
    assert len(steps) == len(set(steps)) and steps[-1] == str(len(steps))  # no step trained twice


@pytest.mark.slow
def test_ray_launcher_on_a_local_ray_instance(grid_data, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install '.[cluster]')")
    grid = write_grid(tmp_path / "g.toml", grid_data, {"machine": ["fan", "broken"]})
    out = tmp_path / "runs"
    res = grid_cli(str(grid), "--out", str(out), "--launcher", "ray", "--address", "local", "--quiet")
    assert res.returncode == 1, res.stderr
    assert _done(out, "fan/run")
    assert f"failed: broken/run (exit 2), log: {out / 'broken/run' / LOG_NAME}" in res.stderr
    assert [r for r in find_runs(out) if r.parent.name != "baseline"] == [out / "fan" / "run"]


@pytest.mark.slow
def test_slurm_array_script_runs_the_unfinished_runs(grid_data, tmp_path):
    grid = write_grid(tmp_path / "g.toml", grid_data, {"machine": "fan", "seed": [0, 1, 2]})
    out = tmp_path / "runs"
    assert grid_cli(str(grid), "--out", str(out), "--only", "fan/seed-1", "--quiet").returncode == 0
    res = grid_cli(str(grid), "--out", str(out), "--launcher", "slurm", "--gpus-per-run", "0", "--time", "1:00:00",
                   "--max-parallel", "4")
    assert res.returncode == 0, res.stderr
    script = out / "grid.sbatch"
    assert f"submit with: sbatch {script}" in res.stdout
    text = script.read_text()
    assert "#SBATCH --array=0-1%4" in text and "#SBATCH --time=1:00:00" in text and "--gpus" not in text
    assert (out / "grid_runs.txt").read_text() == "fan/seed-0\nfan/seed-2\n"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # what Slurm does for array task 1: the script itself, with the variable Slurm sets
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1"}
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode == 0
    assert _done(out, "fan/seed-2") and not (out / "fan/seed-0").exists()
