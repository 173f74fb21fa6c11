"""A user with one machine type and no outliers folder trains a detector (issue "Detection quality III",
item 5), and the no-regret check decides what the bundle holds (item 6)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tonal_data import tiny_config

from edge_asd.io.audio import read_audio
from edge_asd.io.dcase import list_clips
from edge_asd.runtime.bundle import open_bundle

SR = 16000


@pytest.fixture(scope="module")
def only_fan(data_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one") / "data"
    shutil.copytree(data_root / "fan", root / "fan")
    return root


def test_one_machine_type_gets_synthesized_pseudo_anomalies_once(only_fan, cache_dir, tmp_path):
    from train.data import prepare_data
    from train.data.pseudo import MIN_CLIPS

    cfg = replace(tiny_config(only_fan, tmp_path / "run", cache_dir), segment_seconds=1.024)
    data = prepare_data(cfg)
    doc = data.split["pseudo_anomalous"]
    assert doc["synthesized"] is True
    assert data.pools.machines.size >= MIN_CLIPS and data.pools.outliers.size == 0
    assert set(doc["machines"]) == {"synth:bearing", "synth:gearbox", "synth:pump", "synth:valve"}  # not "fan": the user's name
    folders = sorted((cache_dir / "pseudo_anomalous").iterdir())
    assert len(folders) == 1
    stamp = {p: p.stat().st_mtime_ns for p in folders[0].rglob("*.wav")}
    again = prepare_data(cfg)  # a rerun reads the same files, written once
    assert again.pools.machines.size == data.pools.machines.size
    assert {p: p.stat().st_mtime_ns for p in folders[0].rglob("*.wav")} == stamp
    assert sorted((cache_dir / "pseudo_anomalous").iterdir()) == folders


def test_alterations_are_seeded_and_change_the_clip():
    from train.gate import ALTERATIONS, alter

    x = (0.1 * np.random.default_rng(0).standard_normal(SR * 2)).astype(np.float32)
    for kind in ALTERATIONS:
        a = alter(x, kind, np.random.default_rng(1))
        b = alter(x, kind, np.random.default_rng(1))
        assert a.shape == x.shape and a.dtype == np.float32 and np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)
        assert np.abs(a - x).mean() > 1e-3 * np.abs(x).mean(), kind
    with pytest.raises(ValueError, match="unknown alteration"):
        alter(x, "rattle", np.random.default_rng(0))


def test_disturbances_are_seeded_and_keep_the_machine():
    """A normal clip recorded another way: changed, seeded, and still mostly the same sound."""
    from train.gate import NUISANCES, disturb

    t = np.arange(SR * 2) / SR
    x = (0.1 * np.sin(2 * np.pi * 440 * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    for kind in NUISANCES:
        a = disturb(x, kind, np.random.default_rng(1))
        np.testing.assert_array_equal(a, disturb(x, kind, np.random.default_rng(1)))
        assert a.shape == x.shape and a.dtype == np.float32 and np.all(np.isfinite(a))
        assert np.abs(a - x).mean() > 1e-3 * np.abs(x).mean(), kind
        peak = int(np.argmax(np.abs(np.fft.rfft(x))))
        assert int(np.argmax(np.abs(np.fft.rfft(a)))) == peak, kind  # the machine's line is still its loudest
    with pytest.raises(ValueError, match="unknown disturbance"):
        disturb(x, "rattle", np.random.default_rng(0))


def test_one_machine_end_to_end_with_the_no_regret_check(only_fan, cache_dir, tmp_path, caplog):
    """edge-asd-train on a folder with one machine type trains, checks, and edge-asd-export follows the check."""
    from edge_asd.cli.main import main as asd_main
    from export.cli import main as export_main
    from train.cli import main as train_main

    conf = tmp_path / "tiny.json"
    cfg = tiny_config(only_fan, tmp_path / "unused", cache_dir, segment_seconds=1.024).to_dict()
    conf.write_text(json.dumps({k: v for k, v in cfg.items() if k not in ("data", "machine", "out")}))
    run = tmp_path / "run"
    assert train_main(["--data", str(only_fan), "--machine", "fan", "--out", str(run), "--config", str(conf),
                       "--steps", "6", "--quiet"]) == 0
    gate = json.loads((run / "gate.json").read_text())
    assert gate["decision"] in ("ensemble", "plain")
    for key in ("auc_plain", "auc_learned", "auc_ensemble"):
        assert 0.0 <= gate[key] <= 1.0
    from train.gate import ALTERATIONS, NUISANCES, check_learned_member

    split = json.loads((run / "split.json").read_text())
    n_heldout = sum(c["split"] == "heldout" for c in split["clips"])
    # only clips stage 1 never trained on are checked, each with every alteration
    assert 0 < gate["n_normals"] <= n_heldout < len(split["clips"])
    assert gate["n_pseudo"] == gate["n_normals"] * len(ALTERATIONS)
    # and every one of them recorded another way, checked as a normal
    assert gate["n_disturbed"] == gate["n_normals"] * len(NUISANCES) and gate["nuisances"] == list(NUISANCES)
    # a run whose extractor trained on every normal cannot be checked: the plain system is deployed
    seen = {**split, "clips": [{**c, "split": "train"} for c in split["clips"]]}
    (run / "split.json").write_text(json.dumps(seen))
    unchecked = check_learned_member(run, run / "baseline" / "plain", only_fan, "generalization")
    assert unchecked.decision == "plain" and unchecked.auc_plain is None and unchecked.n_normals == 0
    (run / "split.json").write_text(json.dumps(split))
    assert json.loads((run / "split.json").read_text())["pseudo_anomalous"]["synthesized"] is True

    # the export follows the decision, whichever it is, and says so in the manifest
    for decision, n_members in (("ensemble", 2), ("plain", 1)):
        (run / "gate.json").write_text(json.dumps({**gate, "decision": decision}))
        bundle = tmp_path / f"{decision}.asd"
        assert export_main([str(run), "--out", str(bundle)]) == 0
        manifest = open_bundle(bundle).manifest.to_dict()
        assert manifest["gate"]["decision"] == decision
        assert len(manifest["members"]) == n_members
        if decision == "ensemble":  # the run trained on 1.024 s segments: stage 2 and the device cut 1 s ones
            assert manifest["audio"]["segment_seconds"] == 1.024
        if decision == "plain":
            assert manifest["members"][0]["system"] == "plain"
        out = tmp_path / f"sub-{decision}"
        assert asd_main(["score", str(bundle), str(only_fan / "fan" / "train"), "--section", "00", "--out", str(out),
                         "--quiet"]) == 0
    # a check that could check nothing (the real fan clips: too few held out) exports the plain system and says why
    from train.gate import write_gate

    write_gate(run, unchecked)
    with caplog.at_level("INFO", logger="export.pack"):
        assert export_main([str(run), "--out", str(tmp_path / "unchecked.asd")]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "export.pack"]  # getMessage raised on None figures
    assert any("could not check the learned member" in m for m in said), said
    assert len(open_bundle(tmp_path / "unchecked.asd").manifest.to_dict()["members"]) == 1
    (run / "gate.json").write_text(json.dumps(gate))
    # --no-plain is the learned member alone, whatever the check said
    assert export_main([str(run), "--out", str(tmp_path / "learned.asd"), "--no-plain"]) == 0
    manifest = open_bundle(tmp_path / "learned.asd").manifest.to_dict()
    assert len(manifest["members"]) == 1 and manifest["members"][0].get("system") != "plain"


def test_bundle_scores_ignore_the_recording_gain(tiny_bundle, tiny_data):
    """Every member standardizes the clip: +-12 dB of recording gain leaves the score where it was."""
    from edge_asd.runtime.scorer import load_scorer

    scorer = load_scorer(tiny_bundle, backend="onnx-cpu")
    clips = list_clips(tiny_data, "fan", "test")[:4]
    for c in clips:
        x = read_audio(c.path)
        base = scorer.score(x, c.section).score
        for db in (-12.0, 12.0):
            got = scorer.score(x * np.float32(10 ** (db / 20)), c.section).score
            assert abs(got - base) <= 1e-3 * max(1.0, abs(base)), (c.name, db, got, base)


def _write(folder: Path, n: int, silent: bool = False, seconds: float = 3.0) -> None:
    import soundfile as sf

    folder.mkdir(parents=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        x = np.zeros(int(SR * seconds), np.float32) if silent else (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32)
        sf.write(folder / f"section_00_source_train_normal_{i:04d}.wav", x, SR, subtype="PCM_16")


@pytest.mark.parametrize("n, silent, message", [
    (12, True, "all 12 normal training clip(s) are silent"),
    (1, False, "standardization needs at least 2 normal clips, got 1"),
])
def test_data_no_system_can_learn_from_is_refused_in_one_line(tmp_path, capsys, n, silent, message):
    from train.cli import main as train_main

    _write(tmp_path / "data" / "pump" / "train", n, silent)
    run = tmp_path / "run"
    assert train_main(["--data", str(tmp_path / "data"), "--machine", "pump", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("edge-asd-train: error: ")
    assert not run.exists()


def test_too_few_clips_for_a_learned_system_get_the_plain_one(tmp_path, caplog):
    import logging

    from train.cli import main as train_main
    from train.plain import is_plain_run

    _write(tmp_path / "data" / "pump" / "train", 4)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="train.cli"):
        assert train_main(["--data", str(tmp_path / "data"), "--machine", "pump", "--out", str(run), "--quiet"]) == 0
    assert is_plain_run(run)
    assert any("too few to train a feature extractor" in r.getMessage() for r in caplog.records)


def test_the_check_deploys_the_ensemble_only_when_it_leads_by_the_margin():
    """MARGIN is negative: a tie, or an ensemble the check puts a little ahead, leaves the plain system alone."""
    from train.gate import MARGIN, decide

    assert MARGIN < 0
    assert decide(0.80, 0.80) == "plain"
    assert decide(0.80, 0.80 - MARGIN / 2) == "plain"
    assert decide(0.80, 0.80 - 2 * MARGIN) == "ensemble"
    assert decide(0.80, 0.79, margin=0.02) == "ensemble"  # the old rule's tolerance, for the benchmark's comparison
