"""The DCASE 2022 AE baseline re-implementation (train/baseline.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import get_window
from sklearn.metrics import roc_auc_score

from edge_asd.errors import UserError
from train.baseline import (
    AEBaseline,
    AEBaselineConfig,
    DenseAutoencoder,
    LogMel,
    frame_starts,
    gather_vectors,
    slaney_hz_to_mel,
    slaney_mel_filterbank,
    slaney_mel_to_hz,
    train_ae_baseline,
)

SR = 16000
HARMONIC_AMPLITUDES = (0.3, 0.2, 0.1, 0.05, 0.03)
ANOMALY_TONES_HZ = (2300.0, 3700.0, 5100.0)


def _machine_sound(rng: np.random.Generator, anomalous: bool, seconds: float = 2.0) -> np.ndarray:
    """A 300 Hz harmonic stack in light noise; the anomaly adds whining tones."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 300.0 * (1.0 + rng.uniform(-0.01, 0.01))
    x = sum(
        a * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
        for k, a in enumerate(HARMONIC_AMPLITUDES, start=1)
    )
    if anomalous:
        x = x + sum(0.1 * np.sin(2 * np.pi * f * t) for f in ANOMALY_TONES_HZ)
    return (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fan")
    (root / "train").mkdir()
    (root / "test").mkdir()
    rng = np.random.default_rng(0)
    train = []
    for i in range(16):
        domain = "source" if i < 14 else "target"
        p = root / "train" / f"section_00_{domain}_train_normal_{i:04d}.wav"
        sf.write(p, _machine_sound(rng, False), SR, subtype="PCM_16")
        train.append(p)
    test, labels = [], []
    for i in range(8):
        for label in ("normal", "anomaly"):
            p = root / "test" / f"section_00_source_test_{label}_{i:04d}.wav"
            sf.write(p, _machine_sound(rng, label == "anomaly"), SR, subtype="PCM_16")
            test.append(p)
            labels.append(int(label == "anomaly"))
    return {"train": train, "test": test, "labels": np.array(labels)}


def _cfg(**kw) -> AEBaselineConfig:
    # batch 32 on this tiny set gives enough steps for the BatchNorm moving
    # statistics (Keras momentum 0.99) to settle, whatever the seed
    base = dict(epochs=20, batch_size=32, seed=0)
    base.update(kw)
    return AEBaselineConfig(**base)


@pytest.fixture(scope="module")
def trained(dataset) -> AEBaseline:
    return train_ae_baseline(dataset["train"], _cfg(), progress=False)


# --- training and scoring -----------------------------------------------------


def test_training_loss_falls(trained):
    loss = trained.history["loss"]
    assert len(loss) == 20
    assert all(math.isfinite(v) for v in loss)
    assert loss[-1] < 0.2 * loss[0]
    # the held-out 10 % of vectors is validated every epoch, as Keras does
    assert len(trained.history["val_loss"]) == 20
    assert trained.history["val_loss"][-1] < 0.2 * trained.history["val_loss"][0]


def test_trained_model_separates_anomalies(trained, dataset):
    scores = trained.score_paths(dataset["test"], batch_clips=5)
    assert scores.shape == (len(dataset["test"]),)
    assert np.all(np.isfinite(scores))
    assert roc_auc_score(dataset["labels"], scores) > 0.95


def test_untrained_model_does_not_separate_anomalies(dataset):
    # The extra tones raise log energies in otherwise quiet mel bins, which
    # brings the input closer to zero: an autoencoder that has learnt nothing
    # ranks such clips as *less* anomalous. Separation must come from training.
    for seed in range(3):
        untrained = train_ae_baseline(dataset["train"], _cfg(epochs=0, seed=seed), progress=False)
        assert untrained.history["loss"] == []
        scores = untrained.score_paths(dataset["test"])
        assert roc_auc_score(dataset["labels"], scores) < 0.6


def test_scores_do_not_depend_on_batching(trained, dataset):
    paths = dataset["test"][:6]
    one_by_one = trained.score_paths(paths, batch_clips=1)
    together = trained.score_paths(paths, batch_clips=16)
    np.testing.assert_allclose(one_by_one, together, rtol=1e-5)


def test_clip_score_is_mean_squared_error_of_its_vectors(trained, dataset):
    path = dataset["test"][1]
    logmel = trained.logmel(path)
    x = gather_vectors(logmel, frame_starts(logmel.shape[0], 5), 5)
    with torch.no_grad():
        expected = float(((trained.model(x) - x) ** 2).mean())
    assert trained.score_paths([path])[0] == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_model(dataset):
    cfg = _cfg(epochs=3)
    a = train_ae_baseline(dataset["train"], cfg, progress=False)
    b = train_ae_baseline(dataset["train"], cfg, progress=False)
    assert a.history == b.history
    np.testing.assert_array_equal(a.score_paths(dataset["test"][:4]), b.score_paths(dataset["test"][:4]))
    c = train_ae_baseline(dataset["train"], _cfg(epochs=3, seed=1), progress=False)
    assert c.history["loss"] != a.history["loss"]


def test_save_load_round_trip(trained, dataset, tmp_path):
    path = tmp_path / "models" / "ae_fan.pt"
    trained.save(path)
    loaded = AEBaseline.load(path)
    assert loaded.cfg == trained.cfg
    assert loaded.history == trained.history
    np.testing.assert_array_equal(loaded.score_paths(dataset["test"]), trained.score_paths(dataset["test"]))


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(UserError, match="no such"):
        AEBaseline.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="junk.pt"):
        AEBaseline.load(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="not an AE baseline"):
        AEBaseline.load(foreign)


def test_too_short_clip_is_a_user_error(trained, tmp_path):
    short = tmp_path / "section_00_source_test_normal_0000.wav"
    sf.write(short, np.zeros(1000, dtype=np.float32), SR)  # < 4 hops of 512
    with pytest.raises(UserError, match=short.name):
        trained.score_paths([short])


@pytest.mark.parametrize(
    "kw",
    [dict(epochs=-1), dict(batch_size=0), dict(lr=0.0), dict(validation_split=1.0), dict(frames=0)],
)
def test_bad_config_is_a_user_error(kw):
    with pytest.raises(UserError):
        AEBaselineConfig(**kw)


def test_too_little_training_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no training clips"):
        train_ae_baseline([], _cfg())
    tiny = tmp_path / "section_00_source_train_normal_0000.wav"
    sf.write(tiny, np.full(2048, 0.1, dtype=np.float32), SR)  # 5 frames: a single vector
    with pytest.raises(UserError, match="training vectors"):
        train_ae_baseline([tiny], _cfg(), progress=False)


# --- model --------------------------------------------------------------------


def test_model_matches_the_keras_baseline_summary():
    model = DenseAutoencoder(640)
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
        (8, 128), (128, 128), (128, 128), (128, 128), (128, 640),
    ]  # fmt: skip
    norms = [m for m in model.net if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 9 and all(n.eps == 1e-3 and n.momentum == pytest.approx(0.01) for n in norms)
    assert isinstance(model.net[-1], torch.nn.Linear)  # linear output, no BN/ReLU
    # Keras' model.summary() of the baseline: 269,992 params, 267,928 trainable
    # (its count includes BatchNorm moving mean and variance).
    trainable = sum(p.numel() for p in model.parameters())
    moving = sum(n.running_mean.numel() + n.running_var.numel() for n in norms)
    assert trainable == 267_928
    assert trainable + moving == 269_992
    # Keras initialization: zero biases, Glorot-uniform kernels
    assert all(not m.bias.detach().any() for m in linears)
    limit = math.sqrt(6.0 / (640 + 128))
    assert float(linears[0].weight.detach().abs().max()) <= limit


# --- features -----------------------------------------------------------------


def test_slaney_mel_scale_anchor_points():
    # linear below 1 kHz at 3 mels per 200 Hz; 27 mels per factor 6.4 above
    hz = np.array([0.0, 200.0, 500.0, 1000.0, 6400.0, 40960.0])
    mel = np.array([0.0, 3.0, 7.5, 15.0, 42.0, 69.0])
    np.testing.assert_allclose(slaney_hz_to_mel(hz), mel, atol=1e-12)
    np.testing.assert_allclose(slaney_mel_to_hz(mel), hz, rtol=1e-12, atol=1e-9)
    grid = np.linspace(0, 8000, 1001)
    np.testing.assert_allclose(slaney_mel_to_hz(slaney_hz_to_mel(grid)), grid, rtol=1e-12, atol=1e-9)


def test_slaney_filterbank_hand_computed_single_filter():
    # sr 8 kHz, n_fft 16: bins every 500 Hz. One filter on 0-4000 Hz: its peak
    # is half-way in mels, 4000 Hz = 15 + ln 4 / (ln 6.4 / 27) mels.
    top = 15.0 + math.log(4.0) * 27.0 / math.log(6.4)
    centre = 1000.0 * math.exp(math.log(6.4) / 27.0 * (top / 2 - 15.0))
    assert centre == pytest.approx(1194.24, abs=0.01)
    bins = np.arange(9) * 500.0
    tri = np.where(bins <= centre, bins / centre, (4000.0 - bins) / (4000.0 - centre))
    expected = tri * 2.0 / 4000.0
    np.testing.assert_allclose(slaney_mel_filterbank(8000, 16, 1)[0], expected, rtol=1e-6, atol=1e-12)


def test_slaney_filterbank_of_the_baseline():
    fb = slaney_mel_filterbank(SR, 1024, 128).astype(np.float64)
    assert fb.shape == (128, 513)
    assert np.all(fb >= 0) and np.all(fb.sum(axis=1) > 0)  # no empty filter
    bin_hz = SR / 1024
    edges = slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(SR / 2), 130))
    for i in range(128):
        lo, centre, hi = edges[i], edges[i + 1], edges[i + 2]
        nz = np.flatnonzero(fb[i])
        # support strictly inside the triangle's edges
        assert nz[0] * bin_hz > lo - 1e-9 and nz[-1] * bin_hz < hi + 1e-9
        # peak on one of the two bins that bracket the centre frequency
        assert np.argmax(fb[i]) in (math.floor(centre / bin_hz), math.ceil(centre / bin_hz))
        # peak height never exceeds the Slaney normalization 2 / (hi - lo)
        assert fb[i].max() <= 2.0 / (hi - lo) * (1 + 1e-6)
        # unit area in Hz, once a filter spans enough bins for the sum to approximate it
        if hi - lo >= 10 * bin_hz:
            assert fb[i].sum() * bin_hz == pytest.approx(1.0, abs=0.02)


def test_logmel_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    wave = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    cfg = AEBaselineConfig()
    got = LogMel(cfg)(torch.from_numpy(wave)).numpy()
    # librosa 0.9 STFT: centred frames, zero padding, periodic Hann window
    padded = np.pad(wave.astype(np.float64), 512)
    n_frames = 1 + wave.size // 512
    assert got.shape == (n_frames, 128)
    frames = np.stack([padded[t * 512 : t * 512 + 1024] for t in range(n_frames)])
    power = np.abs(np.fft.rfft(frames * get_window("hann", 1024), axis=1)) ** 2
    mel = power @ slaney_mel_filterbank(SR, 1024, 128).astype(np.float64).T
    expected = 10.0 * np.log10(np.maximum(mel, np.finfo(np.float64).eps))
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_logmel_of_a_tone_peaks_in_its_band_and_is_not_standardized():
    t = np.arange(SR) / SR
    cfg = AEBaselineConfig()
    frontend = LogMel(cfg)
    loud = frontend(torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)))
    quiet = frontend(torch.from_numpy((0.05 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)))
    centres = slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(SR / 2), 130))[1:-1]
    peak = int(loud[10].argmax())
    assert peak in np.argsort(np.abs(centres - 1000.0))[:2]
    # 20 dB less amplitude is 20 dB less log-mel energy: no level normalization
    assert float(loud[10, peak] - quiet[10, peak]) == pytest.approx(20.0, abs=0.01)
    silent = frontend(torch.zeros(SR))
    assert float(silent.max()) == pytest.approx(10.0 * math.log10(np.finfo(np.float64).eps))


def test_vectors_stack_consecutive_frames_like_the_baseline():
    logmel = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)  # 7 frames, 3 mel bins
    starts = frame_starts(7, 5)
    assert starts.tolist() == [0, 1, 2]
    got = gather_vectors(logmel, starts, 5).numpy()
    # common.file_to_vectors: vectors[:, n_mels * t : n_mels * (t + 1)] = logmel[:, t : t + n].T
    expected = np.zeros((3, 15))
    lm = logmel.numpy().T
    for t in range(5):
        expected[:, 3 * t : 3 * (t + 1)] = lm[:, t : t + 3].T
    np.testing.assert_array_equal(got, expected)
    assert frame_starts(4, 5).numel() == 0
