"""``--preset``: one table of TrainConfig overrides, under --config and the flags; the device chooses without either."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import pytest

from edge_asd.errors import UserError
from tonal_data import write_dataset
from train import cli
from train.config import TrainConfig
from train.presets import PRESETS, choose_preset


# Smaller than conftest.py's: these tests stop before training.
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("dcase"), n_source=4, n_target=2)


class Stop(UserError):
    pass


def resolved(monkeypatch, data_root: Path, tmp_path: Path, *flags: str, cuda: bool = False) -> TrainConfig:
    """The TrainConfig edge-asd-train would train with, stopping before any training."""
    import train.stage1

    seen: list[TrainConfig] = []

    def capture(cfg, progress=True):
        seen.append(cfg)
        raise Stop("captured")

    monkeypatch.setattr(train.stage1, "train_extractor", capture)
    monkeypatch.setattr(cli, "_device", lambda name: "cuda" if cuda else "cpu")
    rc = cli.main(["--data", str(data_root), "--machine", "fan", "--out", str(tmp_path / "run"), "--quiet", *flags])
    assert rc == 2 and len(seen) == 1
    return seen[0]


def test_every_preset_is_a_valid_training_config(data_root, tmp_path):
    names = {f.name for f in fields(TrainConfig)}
    assert set(PRESETS) == {"cpu", "report"}
    for name, values in PRESETS.items():
        assert set(values) <= names, name
        TrainConfig(data=data_root, machine="fan", out=tmp_path, **values).validate()
    report = PRESETS["report"]
    assert (report["backbone"], report["batch_size"], report["epochs"]) == ("efficientnet_b0", 128, 150)


def test_choice_rules():
    assert choose_preset("report", cuda=False, has_config=True) == ("report", "--preset")
    assert choose_preset(None, cuda=False, has_config=True)[0] is None
    assert choose_preset(None, cuda=False, has_config=False)[0] == "cpu"
    assert choose_preset(None, cuda=True, has_config=False)[0] == "report"


def test_device_chooses_without_preset_or_config(monkeypatch, data_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="train.cli"):
        cfg = resolved(monkeypatch, data_root, tmp_path)
    for key, value in PRESETS["cpu"].items():
        assert getattr(cfg, key) == value, key
    # one line says which preset and why (the tiny data set also draws the no-regret warning)
    lines = [r.getMessage() for r in caplog.records if r.name == "train.cli" and r.levelno == logging.INFO]
    assert len(lines) == 1 and lines[0].startswith("preset cpu (no CUDA device)")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.cli"):
        cfg = resolved(monkeypatch, data_root, tmp_path / "g", cuda=True)
    assert (cfg.backbone, cfg.batch_size, cfg.epochs) == ("efficientnet_b0", 128, 150)
    assert [r.getMessage() for r in caplog.records if r.name == "train.cli"][0].startswith("preset report (a CUDA device is available)")


def test_flags_over_config_over_preset_over_defaults(monkeypatch, data_root, tmp_path):
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"epochs": 3, "d_model": 32, "n_heads": 2, "lr": 0.002}))
    cfg = resolved(monkeypatch, data_root, tmp_path, "--preset", "cpu", "--config", str(conf), "--lr", "0.005")
    assert cfg.lr == 0.005  # flag over config file
    assert (cfg.epochs, cfg.d_model, cfg.n_heads) == (3, 32, 2)  # config file over preset
    assert (cfg.backbone, cfg.n_layers, cfg.batch_size) == ("transformer", 2, 32)  # preset over defaults
    assert cfg.lambda_section == TrainConfig.lambda_section  # defaults where nobody says otherwise
    assert cfg.steps is None  # the file's epochs, not the preset's step budget


def test_cpu_preset_is_a_step_budget_that_epochs_replace(monkeypatch, data_root, tmp_path):
    cfg = resolved(monkeypatch, data_root, tmp_path, "--preset", "cpu")
    assert cfg.steps == PRESETS["cpu"]["steps"] and cfg.amplitude == "clip"
    cfg = resolved(monkeypatch, data_root, tmp_path / "e", "--preset", "cpu", "--epochs", "5")
    assert (cfg.steps, cfg.epochs) == (None, 5)
    cfg = resolved(monkeypatch, data_root, tmp_path / "s", "--preset", "cpu", "--steps", "40")
    assert cfg.steps == 40


def test_step_budget_is_whole_epochs_that_reach_it(tmp_path):
    from train.stage1 import _apply_step_budget

    cfg = TrainConfig(data=tmp_path, machine="fan", out=tmp_path, epochs=150, steps=300)
    assert _apply_step_budget(cfg, 2)[0].epochs == 150  # 35 clips: 2 steps an epoch
    assert _apply_step_budget(cfg, 7)[0].epochs == 43  # 43 x 7 = 301 >= 300
    assert _apply_step_budget(cfg, 1000)[0].epochs == 1  # 3,000 clips: one epoch already exceeds it
    fixed, why = _apply_step_budget(TrainConfig(data=tmp_path, machine="fan", out=tmp_path, epochs=9), 7)
    assert fixed.epochs == 9 and "as configured" in why


def test_a_config_file_alone_means_what_it_says(monkeypatch, data_root, tmp_path, caplog):
    demo = Path(__file__).resolve().parents[1] / "deploy" / "demo_train.json"
    with caplog.at_level(logging.INFO, logger="train.cli"):
        cfg = resolved(monkeypatch, data_root, tmp_path, "--config", str(demo))
    expected = TrainConfig(data=data_root, machine="fan", out=tmp_path / "run", **json.loads(demo.read_text()))
    assert cfg.to_dict() == {**expected.to_dict(), "device": "auto"}
    assert [r.getMessage() for r in caplog.records if r.name == "train.cli"][0].startswith("no preset")


def test_the_command_line_offers_what_the_tables_list():
    """A detector, backbone or objective is registered once; the flags read the tables, never a copy."""
    import inspect

    from edge_asd.scoring.detectors import DETECTORS
    from train.names import BACKBONES, CNN_BACKBONES, OBJECTIVES
    from train.options import DETECTOR_FLAGS, build_parser

    assert list(DETECTOR_FLAGS) == list(DETECTORS), "every detector has its flags, in the table's order"
    for name, flags in DETECTOR_FLAGS.items():
        accepted = inspect.signature(DETECTORS[name]).parameters
        assert flags.size in accepted and flags.metric == ("metric" in accepted)
        assert not flags.knn_score or "method" in accepted
        assert flags.shrinkage == ("shrinkage" in accepted)
    choices = {a.dest: a.choices for a in build_parser()._actions}
    assert choices["detector"] == list(DETECTORS)
    assert choices["backbone"] == list(BACKBONES) and set(CNN_BACKBONES) <= set(BACKBONES)
    assert choices["objective"] == list(OBJECTIVES)


@pytest.mark.parametrize("flags, line", [
    (["--shrinkage", "ledoit-wolf"], "--shrinkage does not apply to --detector knn (--shrinkage is for gmm)"),
    (["--detector", "gmm", "--metric", "cosine", "--knn-score", "mean"],
     "--metric and --knn-score do not apply to --detector gmm (--metric is for knn, lof; --knn-score is for knn)"),
    (["--detector", "lof", "--knn-score", "kth"], "--knn-score does not apply to --detector lof (--knn-score is for knn)"),
    # a value the detector refuses: before stage 1 trains, not after it
    (["--detector", "gauss-groups", "--k", "1"], "stage 2: folds must be at least 2, got 1"),
    (["--detector", "knn", "--k", "0"], "stage 2: k must be a positive integer, got 0"),
])
def test_a_flag_the_detector_would_ignore_is_refused(data_root, tmp_path, capsys, flags, line):
    """Before this, ``--shrinkage`` with knn trained a run that silently ignored it."""
    out = tmp_path / "run"
    rc = cli.main(["--data", str(data_root), "--machine", "fan", "--out", str(out), "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and line in err, err
    assert not out.exists()


def test_a_preset_metric_with_another_detector_is_not_the_users_mistake(monkeypatch, data_root, tmp_path):
    """The cpu preset's cosine metric must not make ``--detector gmm`` an error: only typed flags are checked."""
    from train.presets import STAGE2_PRESETS

    # the check reads the detector before presets apply, which holds while no preset chooses one
    assert all("detector" not in p for p in STAGE2_PRESETS.values())
    cfg = resolved(monkeypatch, data_root, tmp_path, "--preset", "cpu", "--detector", "gmm", "--shrinkage", "ledoit-wolf")
    assert cfg.machine == "fan"  # it reached stage 1


def test_default_k_per_detector():
    from train.options import detector_params

    assert detector_params("knn", None, "l2", "kth") == {"k": 1, "metric": "l2", "method": "largest"}
    assert detector_params("gmm", None, "l2", "kth") == {"n_components": 4}
    assert detector_params("lof", None, "cosine", "mean") == {"k": 16, "metric": "cosine"}
    assert detector_params("lof", 3, None, "kth") == {"k": 3, "metric": None}
    # --shrinkage reaches the GMM only, and "none" (the GMM's own default) writes nothing
    assert detector_params("gmm", 1, None, "kth", "ledoit-wolf") == {"n_components": 1, "shrinkage": "ledoit-wolf"}
    assert detector_params("gmm", 1, None, "kth", "none") == {"n_components": 1}
    assert detector_params("knn", 1, "l2", "kth", "ledoit-wolf") == {"k": 1, "metric": "l2", "method": "largest"}


def test_the_quality_benchmark_reads_the_presets():
    """benchmarks/bench_quality.py measures what the product trains: its systems come from the presets' table."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    from train.config import TrainConfig
    from train.presets import PRESETS

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.SYSTEMS["cpu"] == PRESETS["cpu"]
    assert all(PRESETS["cpu"][k] == v for k, v in bench.SYSTEMS["transformer"].items())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not [k for system in bench.SYSTEMS.values() for k in system if k not in known]


def test_a_config_json_with_a_retired_key_still_loads():
    """kappa set nothing (Eq. 7's temperature is stage 2's): gone from TrainConfig, yet an old run's config.json loads."""
    from edge_asd.errors import ConfigError

    old = {"data": "d", "machine": "fan", "out": "o", "kappa": 0.3}
    cfg = TrainConfig.from_dict(old)
    assert not hasattr(cfg, "kappa") and "kappa" not in cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown training config key.*bogus"):
        TrainConfig.from_dict({**old, "bogus": 1})
