"""Shared fixtures: a tiny synthetic data set, a tiny trained run and its bundle;
the tonal data set and feature cache of the training tests.

The first three are built once per test session (a few seconds of CPU
training) and shared by the export, scoring, daemon and enrollment tests, so
that every one of them works on a real trained model and a real bundle, never
on a mock. Plain helpers (the daemon as a process, bundle editing, the tonal
data writer) live in tests/daemon_proc.py, tests/bundle_edit.py and
tests/tonal_data.py, so that no test module imports another.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY_MODEL = {
    "backbone": "transformer",
    "embedding_dim": 32,
    "d_model": 32,
    "n_layers": 1,
    "n_heads": 2,
    "batch_size": 16,
    "epochs": 2,
    "num_workers": 0,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from edge_asd.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("data")
    # 20 source clips per section at r_train 0.8 leave 4 held out; 8 target clips
    # with 6 for training leave 2: the least domain specialization can fit.
    cfg = SynthConfig(machines=("fan", "gearbox"), sections=2, train_source=20, train_target=8, test=4, seconds=4.0, seed=7, workers=1)
    generate(root, cfg, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    from train.cli import main as train_main

    runs = tmp_path_factory.mktemp("runs")
    run = runs / "fan" / "tiny"
    cfg_file = runs / "tiny.json"
    cfg_file.write_text(json.dumps({**TINY_MODEL, "r_train": 0.8}))
    rc = train_main(
        [
            "--data", str(tiny_data), "--machine", "fan", "--out", str(run), "--config", str(cfg_file),
            "--device", "cpu", "--baseline-epochs", "3", "--quiet", "--detector", "knn", "--k", "2",
        ]
    )
    assert rc == 0
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    from export.pack import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "fan.asd"
    return build_bundle(tiny_run, out, progress=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tonal fan/pump training set of tests/tonal_data.py, one per test module."""
    # Module scope: tests of one module share it as they always have; a module's
    # own edits (or its own smaller set, as test_presets.py defines) stay its own.
    from tonal_data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("dcase"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A clip-statistics cache the training tests of one module share."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def edge_asd_exe() -> str:
    return str(Path(sys.executable).with_name("edge-asd"))


@pytest.fixture
def daemons() -> list:
    """Daemon processes a test started (tests/daemon_proc.py ``Daemon``), killed if the test fails midway."""
    started: list = []
    yield started
    for d in started:
        d.kill()


# --- MQTT broker fixtures (broker, brokers): defined in mqtt_broker.py, shared by every test module ---
# Loaded as a plugin here, before any test module imports mqtt_broker, so pytest can still rewrite its asserts.
pytest_plugins = ["mqtt_broker"]


@pytest.fixture
def tmpfs(tmp_path):
    """``make(size)``: a real tmpfs of ``size`` (mount's syntax: "2m") in the test's folder, unmounted afterwards.

    Mounting needs root (as CI runs the tests); elsewhere the test is skipped with the mount's own reason.
    """
    mounted: list[Path] = []

    def make(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}-{size}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {size} tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmpfs):
    """A real 2 MiB tmpfs (needs root; skipped elsewhere), unmounted afterwards."""
    return tmpfs("2m")
