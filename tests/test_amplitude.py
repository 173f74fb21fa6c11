"""Amplitude normalization per clip (the report) or per machine type (the authors' recipe),
from training statistics through the bundle to the device."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_asd.io.audio import SegmentSpec, amplitude_manifest, level_from_manifest, normalize, standardize
from train.data import ClipStats, pooled_stats


def test_pooled_stats_equal_the_statistics_of_the_concatenation():
    rng = np.random.default_rng(0)
    clips = [rng.normal(mu, sd, n) for mu, sd, n in ((0.0, 1.0, 1000), (0.5, 0.1, 300), (-0.2, 3.0, 50))]
    got = pooled_stats([ClipStats(c.size, float(c.mean()), float(c.std())) for c in clips])
    everything = np.concatenate(clips)
    assert got.n_samples == everything.size
    assert got.mean == pytest.approx(everything.mean(), rel=1e-12)
    assert got.std == pytest.approx(everything.std(), rel=1e-12)


def test_fixed_level_keeps_the_loudness_that_per_clip_standardization_removes():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 0.1, 32000).astype(np.float32)
    clip_spec, machine_spec = SegmentSpec(), SegmentSpec(level=(0.0, 0.1))
    np.testing.assert_allclose(normalize(3 * x, clip_spec), standardize(x), atol=1e-5)
    np.testing.assert_allclose(normalize(3 * x, machine_spec), 30 * x, rtol=1e-5)
    assert level_from_manifest(amplitude_manifest(machine_spec)) == (0.0, 0.1)
    assert level_from_manifest(amplitude_manifest(clip_spec)) is None
    with pytest.raises(ValueError, match="positive std"):
        level_from_manifest({"mode": "machine", "mean": 0.0, "std": 0.0})


@pytest.mark.slow
def test_machine_level_travels_from_training_to_the_device(tmp_path):
    from edge_asd.runtime.scorer import load_scorer
    from edge_asd.synth import SynthConfig, generate
    from export.pack import build_bundle
    from train.cli import main as train_main

    data = tmp_path / "d"
    generate(data, SynthConfig(machines=("fan", "valve"), sections=1, train_source=7, train_target=3, test=2,
                               seconds=3.0, seed=5, workers=1), progress=False)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"backbone": "transformer", "embedding_dim": 16, "d_model": 16, "n_layers": 1, "n_heads": 2,
                               "batch_size": 8, "epochs": 1, "num_workers": 0, "amplitude": "machine"}))
    run = tmp_path / "run"
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(run), "--config", str(cfg), "--device", "cpu",
                       "--baseline-epochs", "0", "--quiet", "--no-plain-baseline", "--bank", "all"]) == 0
    amp = json.loads((run / "split.json").read_text())["amplitude"]
    assert amp["mode"] == "machine" and amp["std"] > 0
    bundle = build_bundle(run, tmp_path / "b.asd", progress=False)
    scorer = load_scorer(bundle, backend="onnx-cpu")
    assert scorer.manifest.to_dict()["audio"]["amplitude"] == {"mode": "machine", "mean": amp["mean"], "std": amp["std"]}
    clip = np.random.default_rng(2).normal(0, 0.05, 48000).astype(np.float32)
    np.testing.assert_allclose(scorer.prepare(clip)[0], ((clip - amp["mean"]) / amp["std"])[:32000], rtol=1e-4, atol=1e-5)
    # the louder machine now scores differently; per-clip standardization could not tell
    assert scorer.score(clip).score != pytest.approx(scorer.score(4 * clip).score)
