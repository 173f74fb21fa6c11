"""End to end on synthetic data: the method against the DCASE autoencoder baseline, and the train CLI's errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "demo_train.json"


def _exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.mark.slow
def test_report_has_every_system_beside_both_references(tmp_path):
    """The demo's configuration as the product deploys it (stage 2 on all normals, the plain
    member beside the run, as edge-asd-export packs it) reported beside both references, with 4
    target clips. Which is better is measured by benchmarks (BENCHMARKS.md), not asserted here."""
    from edge_asd.synth import SynthConfig, generate
    from train.cli import main as train_main
    from train.report import PLAIN_ROW

    data = tmp_path / "data"
    generate(data, SynthConfig(machines=("fan", "gearbox"), sections=2, train_source=40, train_target=4, test=10, seed=0), progress=False)
    runs = tmp_path / "runs"
    rc = train_main(["--data", str(data), "--machine", "fan", "--out", str(runs / "fan" / "demo"), "--config", str(DEMO_CONFIG),
                     "--device", "cpu", "--baseline-epochs", "20", "--quiet"])
    assert rc == 0
    rc = train_main(["report", "--data", str(data), "--out", str(runs), "--device", "cpu", "--quiet"])
    assert rc == 0
    with open(runs / "report" / "table3_all.csv") as fh:
        rows = {r["Method"]: float(r["all/har-mean"]) for r in csv.DictReader(fh)}
    assert set(rows) == {"Official autoencoder baseline", PLAIN_ROW, "DG demo", "DS demo", "DG demo + plain", "DS demo + plain"}
    assert all(0.0 < v <= 100.0 for v in rows.values()), rows
    for png in ("roc_fan.png", "hist_fan.png"):
        assert (runs / "report" / png).stat().st_size > 1000
    metrics = json.loads((runs / "report" / "metrics.json").read_text())
    assert set(metrics) == {"Official autoencoder baseline", PLAIN_ROW, "DG demo", "DS demo", "DG demo + plain", "DS demo + plain"}


def test_train_cli_user_errors(tmp_path):
    r = subprocess.run([_exe("edge-asd-train"), "--data", str(tmp_path), "--machine", "pump", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "pump/train: no such folder" in r.stderr
    r = subprocess.run([_exe("edge-asd-train"), "report", "--data", str(tmp_path), "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "holds no finished runs" in r.stderr
    r = subprocess.run([_exe("edge-asd-export"), str(tmp_path), "--out", str(tmp_path / "x.asd")], capture_output=True, text=True)
    assert r.returncode == 2 and "not a training run" in r.stderr


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bad_config_files_and_flags_are_one_line_errors(tmp_path):
    (tmp_path / "fan" / "train").mkdir(parents=True)
    base = [_exe("edge-asd-train"), "--data", str(tmp_path), "--machine", "fan", "--out", str(tmp_path / "r")]
    run = lambda *a: subprocess.run([*a], capture_output=True, text=True)  # noqa: E731
    _one_line_error(run(*base, "--config", str(tmp_path / "missing.json")), "missing.json: cannot read the configuration")
    (tmp_path / "bad.json").write_text("{epochs: 3")
    _one_line_error(run(*base, "--config", str(tmp_path / "bad.json")), "bad.json: not valid JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    _one_line_error(run(*base, "--config", str(tmp_path / "list.json")), "list.json: the configuration must be a JSON object")
    # argparse's own mistakes follow the same rule, in every command
    _one_line_error(run(*base, "--epochs", "many"), "edge-asd-train: error:", "--epochs", "--help")
    _one_line_error(run(_exe("edge-asd"), "score"), "edge-asd score: error:", "required")
    _one_line_error(run(_exe("edge-asd-export"), str(tmp_path), "--precision", "fp8"), "edge-asd-export: error:", "fp8")
    _one_line_error(run(_exe("edge-asd"), "watch", "--password-file", str(tmp_path / "nope")), "nope: cannot read the password")
    (tmp_path / "empty").write_text("")
    _one_line_error(run(_exe("edge-asd"), "watch", "--password-file", str(tmp_path / "empty")), "empty: password file is empty")
