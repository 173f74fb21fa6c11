"""The product's plain system is the strong plain reference (shared/reference/plain_baseline.py)
number for number, ignores the recording gain, and reads old bundles' settings back."""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_asd.io.audio import read_audio
from edge_asd.io.features import LogMelStats, LogMelStatsConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference" / "plain_baseline.py"
REAL = SHARED / "real-samples"


def _reference():
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} not beside the repository")
    spec = importlib.util.spec_from_file_location("plain_baseline", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_features_equal_the_reference_scripts_on_real_clips():
    ref = _reference()
    paths = sorted(REAL.glob("*/train/*.wav"))[::5]
    assert len(paths) >= 10
    f = LogMelStats()
    for p in paths:
        want = ref.feats(ref.load(str(p)))
        got = f(read_audio(p))
        # float32 throughout against the script's float64: a few 1e-7 in the log domain
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(p))


def test_features_ignore_the_recording_gain_and_legacy_keeps_it():
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 3) / 16000
    clip = (0.05 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    f = LogMelStats()
    base = f(clip)
    for db in (-12.0, 12.0):
        np.testing.assert_allclose(f(clip * np.float32(10 ** (db / 20))), base, rtol=1e-5, atol=1e-4)
    # a level-keeping configuration sees +12 dB as +12 dB on every band's mean (dB)
    legacy = LogMelStats(LogMelStatsConfig.from_dict({"kind": "logmel_stats", "n_mels": 64, "f_min": 0.0, "f_max": 8000.0}))
    assert legacy.cfg.amplitude == "recorded" and legacy.cfg.log == "db" and legacy.cfg.mel_scale == "slaney"
    quiet, loud = legacy(clip), legacy(clip * np.float32(10 ** (12 / 20)))
    np.testing.assert_allclose(loud[:64] - quiet[:64], 12.0, atol=1e-2)
    np.testing.assert_allclose(loud[64:], quiet[64:], atol=1e-2)


def test_silence_and_bad_settings():
    f = LogMelStats()
    out = f(np.zeros(16000, dtype=np.float32))
    assert np.all(np.isfinite(out))  # standardized silence is all zeros: log(eps), no NaN
    with pytest.raises(ValueError, match="shorter than the 1024-sample window"):
        f(np.ones(500, dtype=np.float32))
    with pytest.raises(ValueError, match="amplitude 'loud'"):
        LogMelStatsConfig(amplitude="loud")
    with pytest.raises(ValueError):
        LogMelStatsConfig(f_max=9000.0)


def _read_scores(folder: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in sorted(folder.glob("anomaly_score_*.csv")):
        with open(p, newline="") as fh:
            out[p.name] = {row[0]: float(row[1]) for row in csv.reader(fh)}
    return out


def _plain_fan_bundle(tmp_path: Path, *flags: str) -> tuple[Path, Path]:
    """The real fan as a user's data folder, its plain system trained with ``flags`` and exported: (data, bundle)."""
    from export.cli import main as export_main
    from train.cli import main as train_main

    data = tmp_path / "data"
    data.mkdir()
    (data / "fan").symlink_to(REAL / "fan", target_is_directory=True)
    run, bundle = tmp_path / "plain", tmp_path / "fan.asd"
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(run), "--system", "plain", *flags,
                       "--quiet"]) == 0
    assert export_main([str(run), "--out", str(bundle)]) == 0
    return data, bundle


def test_plain_bundle_ranks_test_clips_as_the_reference_script(tmp_path):
    """`edge-asd-train --system plain` -> `edge-asd-export` -> `edge-asd score` orders every test clip
    of every section as the yardstick script does (a per-section standardization is monotone)."""
    ref = _reference()
    from edge_asd.cli.main import main as asd_main

    data, bundle = _plain_fan_bundle(tmp_path, "--plain-features", "reference", "--plain-scorer", "nearest")
    assert asd_main(["score", str(bundle), str(data / "fan" / "test"), "--out", str(tmp_path / "product")]) == 0
    ref.main(str(data), str(tmp_path / "reference"))
    got, want = _read_scores(tmp_path / "product"), _read_scores(tmp_path / "reference")
    assert got.keys() == want.keys() and got
    for name in want:
        assert got[name].keys() == want[name].keys()
        clips = sorted(want[name])
        order_want = np.argsort([want[name][c] for c in clips], kind="stable")
        order_got = np.argsort([got[name][c] for c in clips], kind="stable")
        assert order_got.tolist() == order_want.tolist(), name


def _shrunk_log_distance(fit: np.ndarray, query: np.ndarray) -> np.ndarray:
    """log squared Mahalanobis distance under scikit-learn's Ledoit-Wolf estimate of ``fit``'s correlations."""
    from sklearn.covariance import ledoit_wolf

    mu, sd = fit.mean(axis=0), fit.std(axis=0)
    cov = ledoit_wolf((fit - mu) / sd)[0] * np.outer(sd, sd) + 1e-6 * np.eye(fit.shape[1])
    d = query - mu
    return np.log(np.einsum("nd,de,ne->n", d, np.linalg.inv(cov), d))


def test_default_plain_bundle_ranks_test_clips_by_the_groups_gaussians(tmp_path):
    """The default plain system (`--plain-scorer groups-per-domain`; the real fan has one domain, so its domains'
    scores are the pooled ones), trained, exported and scored as a user does, orders every
    test clip as 2 x the whole vector's + the largest group's standardized log Mahalanobis distance does, each under
    scikit-learn's Ledoit-Wolf covariance, standardized by the training clips' 10-fold held-out distances (computed
    here from the clips, independently of the product's stage 2)."""
    from edge_asd.cli.main import main as asd_main
    from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES

    data, bundle = _plain_fan_bundle(tmp_path)
    assert asd_main(["score", str(bundle), str(data / "fan" / "test"), "--out", str(tmp_path / "product")]) == 0
    cfg = PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]
    f = LogMelStats(cfg)
    train = np.stack([f(read_audio(p)) for p in sorted((data / "fan" / "train").glob("*.wav"))]).astype(np.float64)
    (name, got), = _read_scores(tmp_path / "product").items()
    clips = sorted(got)
    test = np.stack([f(read_audio(data / "fan" / "test" / c)) for c in clips]).astype(np.float64)
    mu, sd = train.mean(axis=0), train.std(axis=0)
    train, test = (train - mu) / sd, (test - mu) / sd
    edges = np.cumsum([0] + [n for _, n in cfg.blocks()])
    fold = np.arange(len(train)) % min(10, len(train))
    z = []
    for b in [slice(0, train.shape[1])] + [slice(a, e) for a, e in zip(edges, edges[1:])]:
        held = np.empty(len(train))
        for k in np.unique(fold):
            held[fold == k] = _shrunk_log_distance(train[fold != k][:, b], train[fold == k][:, b])
        z.append((_shrunk_log_distance(train[:, b], test[:, b]) - held.mean()) / held.std())
    want = 2.0 * z[0] + np.max(z[1:], axis=0)
    assert len(clips) >= 20
    assert np.argsort([got[c] for c in clips]).tolist() == np.argsort(want).tolist()


def test_gaussian_plain_bundle_ranks_test_clips_by_the_shrunk_mahalanobis_distance(tmp_path):
    """The plain system with `--plain-scorer gaussian`, trained, exported and scored as a user does, orders
    every test clip as a Mahalanobis distance under scikit-learn's Ledoit-Wolf covariance of the standardized
    training features does (computed here from the clips, independently of the product's stage 2)."""
    from sklearn.covariance import ledoit_wolf

    from edge_asd.cli.main import main as asd_main
    from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES

    data, bundle = _plain_fan_bundle(tmp_path, "--plain-scorer", "gaussian")
    assert asd_main(["score", str(bundle), str(data / "fan" / "test"), "--out", str(tmp_path / "product")]) == 0
    f = LogMelStats(PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES])
    train = np.stack([f(read_audio(p)) for p in sorted((data / "fan" / "train").glob("*.wav"))]).astype(np.float64)
    mu, sd = train.mean(axis=0), train.std(axis=0)
    precision = np.linalg.inv(ledoit_wolf((train - mu) / sd)[0] + 1e-6 * np.eye(train.shape[1]))
    (name, got), = _read_scores(tmp_path / "product").items()
    clips = sorted(got)
    z = (np.stack([f(read_audio(data / "fan" / "test" / c)) for c in clips]) - mu) / sd
    want = np.einsum("nd,de,ne->n", z, precision, z)
    assert len(clips) >= 20
    assert np.argsort([got[c] for c in clips]).tolist() == np.argsort(want).tolist()


def test_modulation_spectrum_finds_the_rate_of_an_envelope_and_ignores_gain():
    """The envelope modulation spectrum (the product's plain default): a 30 Hz surge in one band raises
    that band's bin around 30 Hz and no other band's; gain leaves it; old configs read back without it."""
    from edge_asd.io.features import modulation_pooling

    cfg = LogMelStatsConfig(modulation_bands=8)
    f = LogMelStats(cfg)
    assert f.dim == 128 + 8 * 16
    rng = np.random.default_rng(0)
    t = np.arange(160000) / 16000
    noise = rng.standard_normal(t.size).astype(np.float32)
    tone = np.sin(2 * np.pi * 3000 * t)  # inside one of the 8 wide bands
    steady = f(noise + 0.5 * tone)
    surging = f(noise + 0.5 * tone * (1 + 0.8 * np.sin(2 * np.pi * 30 * t)))
    diff = (surging - steady)[128:].reshape(8, 16)
    band, b = np.unravel_index(np.argmax(diff), diff.shape)
    hz = np.fft.rfftfreq(cfg.modulation_frames, cfg.modulation_hop / cfg.sample_rate)
    centre_hz = (hz[:, None] * (modulation_pooling(cfg) > 0)).sum(0) / (modulation_pooling(cfg) > 0).sum(0)
    assert 20 < centre_hz[b] < 45, centre_hz[b]
    assert diff[band, b] > 2.0  # ln units: the surge's bin is several times louder
    assert np.abs(np.delete(diff, band, axis=0)).max() < diff[band, b] / 2
    # gain: the clip is standardized and each envelope divided by its mean
    np.testing.assert_allclose(f(4.0 * (noise + 0.5 * tone)), steady, rtol=1e-4, atol=1e-4)
    # a clip shorter than one 2 s modulation frame still has every bin
    assert np.all(np.isfinite(f(noise[:24000])))
    # a manifest of the reference (no modulation keys) reads back as the reference
    old = {k: v for k, v in LogMelStatsConfig().to_dict().items() if not k.startswith("modulation")}
    assert LogMelStatsConfig.from_dict(old).dim == 128
    assert LogMelStatsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="modulation bins"):
        LogMelStatsConfig(modulation_bands=8, modulation_bins=200)


def test_modulation_lines_see_a_faint_periodic_impact_train_that_the_bins_average_away():
    """``modulation_lines``: faint impacts at 37 Hz (a bearing's defect rate) in noise raise the line prominence of
    the bin holding 37 Hz (and of its harmonics' bins) and of no bin below it; the gain does not move it; the flag needs the modulation spectrum, and configs without it read back without."""
    from edge_asd.io.features import modulation_line_bins, modulation_pooling

    cfg = LogMelStatsConfig(modulation_bands=8, modulation_lines=True)
    f = LogMelStats(cfg)
    # the two lowest bins (2-2.6 and 2.6-3.4 Hz) hold one DFT bin each at 0.49 Hz: no line prominence there
    assert modulation_line_bins(cfg).tolist() == [False] * 2 + [True] * 14
    assert f.dim == 128 + 8 * 16 + 14
    sr, rng = 16000, np.random.default_rng(1)
    noise = rng.standard_normal(10 * sr).astype(np.float32)
    ring = np.exp(-np.arange(64) / 8.0) * np.sin(2 * np.pi * 4000 * np.arange(64) / sr)  # a 4 kHz resonance
    impacts = np.zeros(noise.size)
    impacts[(np.arange(0, 10, 1 / 37.0) * sr).astype(int)] = 1.0
    bearing = np.convolve(impacts, ring)[: noise.size].astype(np.float32)
    bearing *= np.float32(0.2 * noise.std() / bearing.std())  # 14 dB below the noise
    quiet, faulty = f(noise), f(noise + bearing)
    assert quiet.shape == (f.dim,)
    lines = faulty[-14:] - quiet[-14:]
    hz = np.fft.rfftfreq(cfg.modulation_frames, cfg.modulation_hop / cfg.sample_rate)
    pool = modulation_pooling(cfg)
    b = int(np.argmax(pool[np.argmin(np.abs(hz - 37.0))])) - 2
    assert lines[b] > 1.5 and np.abs(lines[:b]).max() < 0.3
    np.testing.assert_allclose(f(4.0 * noise), quiet, rtol=1e-4, atol=1e-4)
    # without the flag the features are the modulation default's, the lines dropped
    np.testing.assert_allclose(LogMelStats(LogMelStatsConfig(modulation_bands=8))(noise), quiet[:-14], rtol=1e-6, atol=1e-6)
    old = {k: v for k, v in cfg.to_dict().items() if k != "modulation_lines"}
    assert LogMelStatsConfig.from_dict(old).modulation_lines is False
    assert LogMelStatsConfig.from_dict(cfg.to_dict()) == cfg
    assert np.all(np.isfinite(f(noise[:24000])))  # shorter than one 2 s modulation frame
    with pytest.raises(ValueError, match="modulation_lines needs"):
        LogMelStatsConfig(modulation_lines=True)


def test_fast_lines_see_an_impact_rate_above_the_modulation_spectrums_reach():
    """``fast_lines_n_fft``: impacts at 180 Hz (a bearing's outer-race rate on a fast shaft) lie above the
    modulation spectrum's 125 Hz and are smoothed by its 32 ms window: its lines do not move, the fast envelope's
    line in the bin holding 180 Hz does, and no other bin's."""
    from edge_asd.io.features import modulation_line_bins, modulation_pooling
    from train.plain import PLAIN_FEATURES

    cfg = LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128)
    assert PLAIN_FEATURES["lines"] == cfg
    fast = cfg.fast_lines()
    assert (fast.modulation_n_fft, fast.modulation_hop, fast.modulation_frames) == (128, 32, 1024)
    n_fast = int(modulation_line_bins(fast).sum())
    f = LogMelStats(cfg)
    assert f.dim == 128 + 8 * 16 + 14 + n_fast
    sr, rng = 16000, np.random.default_rng(1)
    noise = rng.standard_normal(10 * sr).astype(np.float32)
    ring = np.exp(-np.arange(64) / 8.0) * np.sin(2 * np.pi * 4000 * np.arange(64) / sr)
    impacts = np.zeros(noise.size)
    impacts[(np.arange(0, 10, 1 / 180.0) * sr).astype(int)] = 1.0
    bearing = np.convolve(impacts, ring)[: noise.size].astype(np.float32)
    bearing *= np.float32(0.2 * noise.std() / bearing.std())  # 14 dB below the noise
    quiet = f(noise)
    diff = f(noise + bearing) - quiet
    slow_lines, fast_lines = diff[256:270], diff[270:]
    assert np.abs(slow_lines).max() < 0.3
    hz = np.fft.rfftfreq(fast.modulation_frames, fast.modulation_hop / fast.sample_rate)
    b = int(np.argmax(modulation_pooling(fast)[np.argmin(np.abs(hz - 180.0))]))
    b -= int((~modulation_line_bins(fast)[:b]).sum())  # its place among the bins that carry a line
    assert fast_lines[b] > 1.5 and np.abs(np.delete(fast_lines, b)).max() < 0.3
    np.testing.assert_allclose(f(0.25 * noise), quiet, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(f(noise[:24000])))  # shorter than one 2 s frame of either envelope
    assert LogMelStatsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="fast_lines_n_fft needs"):
        LogMelStatsConfig(modulation_bands=8, fast_lines_n_fft=128)


def test_plain_local_neighbours_scale_each_normals_distance_and_the_bundle_keeps_it(tmp_path):
    """--plain-neighbours local divides by each normal's own neighbour distance, and the bundle carries the scales."""
    from edge_asd.runtime.bundle import open_bundle
    from export.cli import main as export_main
    from train.cli import main as train_main
    from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES
    from train.stage2 import load_stage2

    data = tmp_path / "data"
    data.mkdir()
    (data / "fan").symlink_to(REAL / "fan", target_is_directory=True)
    run = tmp_path / "plain"
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(run), "--system", "plain",
                       "--plain-neighbours", "local", "--quiet"]) == 0
    cfg, models = load_stage2(run, "generalization")
    assert cfg.detector_params["local_scale"] is True
    detector = next(iter(models.values())).domains["all"].detector
    assert detector.local_scale and detector.get_state()["row_scale"].shape == (detector.n_bank,)
    assert export_main([str(run), "--out", str(tmp_path / "fan.asd")]) == 0
    member = open_bundle(tmp_path / "fan.asd").manifest.to_dict()["members"][0]
    assert member["system"] == "plain"
    # the default is the shrunk Gaussians of the feature groups, the groups the features' own; --plain-scorer is the
    # option's current name
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(tmp_path / "default"), "--system", "plain",
                       "--quiet"]) == 0
    cfg, models = load_stage2(tmp_path / "default", "generalization")
    assert cfg.detector == "gauss-groups" and cfg.detector_params["per_domain"] is True
    assert cfg.detector_params["edges"] == PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES].block_edges()
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(tmp_path / "reference"), "--system",
                       "plain", "--plain-features", "reference", "--quiet"]) == 0
    assert load_stage2(tmp_path / "reference", "generalization")[0].detector_params["edges"] == "0,64,128"
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(tmp_path / "nearest"), "--system", "plain",
                       "--plain-scorer", "nearest", "--quiet"]) == 0
    assert load_stage2(tmp_path / "nearest", "generalization")[0].detector_params["local_scale"] is False


def test_the_scorer_runs_without_faiss_or_torch(tmp_path):
    """A device scoring a plain bundle loads neither faiss (14 MB) nor torch: its searches are numpy's."""
    import subprocess
    import sys

    _, bundle = _plain_fan_bundle(tmp_path)
    clip = sorted((REAL / "fan" / "test").glob("*.wav"))[0]
    code = ("import sys; from edge_asd.io.audio import read_audio; from edge_asd.runtime.scorer import load_scorer, "
            "quiet_faiss_threads; quiet_faiss_threads(); s = load_scorer(sys.argv[1]); r = s.score(read_audio(sys.argv[2])); "
            "print(sorted(m for m in ('faiss', 'torch') if m in sys.modules), float(r.score))")
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(clip)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, score = out.stdout.split("] ")
    assert loaded == "[" and np.isfinite(float(score))


def test_edge_asd_score_loads_no_mqtt_faiss_or_torch(tmp_path):
    """`edge-asd score` needs none of them: paho alone is 7 MB of a scorer's resident memory (the CLI's parser knows
    `watch`, whose client imports paho only when it watches)."""
    import subprocess
    import sys

    _, bundle = _plain_fan_bundle(tmp_path)
    clips = tmp_path / "clips"
    clips.mkdir()
    for p in sorted((REAL / "fan" / "test").glob("*.wav"))[:2]:
        (clips / p.name).write_bytes(p.read_bytes())
    code = ("import sys; from edge_asd.cli.main import main; rc = main(['score', sys.argv[1], sys.argv[2], '--out', "
            "sys.argv[3], '--quiet']); print(rc, sorted(m for m in ('paho', 'faiss', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(clips), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 []", out.stdout
    assert len(list((tmp_path / "out").glob("anomaly_score_*.csv"))) == 1


def test_comodulation_sees_bands_moving_together_and_not_a_shared_slow_drift():
    from edge_asd.io.features import comodulation

    rng = np.random.default_rng(4)
    t = 5000  # 10 s at 500 Hz
    fast = rng.standard_normal(t)
    slow = np.sin(2 * np.pi * 0.05 * np.arange(t) / 500.0)  # a 20 s drift, common to every band
    env = np.stack([fast + 5 * slow, fast + 5 * slow, rng.standard_normal(t) + 5 * slow, np.full(t, 3.0)], axis=1)
    c = comodulation(env, 250)
    assert c.shape == (6,)  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert c[0] > 0.99  # the shared fast part
    assert abs(c[1]) < 0.1 and abs(c[3]) < 0.1  # the drift alone does not correlate them once removed
    assert c[2] == c[4] == c[5] == 0.0  # a band that does not move
    np.testing.assert_allclose(comodulation(env[:100], 250), comodulation(env[:100], 100))  # the window fits the clip


def test_dynamics_see_broadband_crackle_in_noise_and_ignore_gain():
    """``dynamics``: faint broadband crackle (random clicks, 14 dB under the noise) raises the fast envelope's
    comodulation and the log-mel's frame-to-frame change, one impact of the same energy does not; the gain does not
    move any of it; the values are appended
    after those of "lines", which stay as they are; the default plain features are these."""
    from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES

    base = PLAIN_FEATURES["lines"]
    cfg = LogMelStatsConfig(modulation_bands=8, modulation_lines=True, fast_lines_n_fft=128, dynamics=True)
    assert PLAIN_FEATURES["dynamics"] == cfg
    assert PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES] == replace(cfg, transient_sigmas=3.0, modulation_trim=1)  # gated, trimmed
    f = LogMelStats(cfg)
    assert f.dim == base.dim + 64 + 8 + 8 + 28
    sr, rng = 16000, np.random.default_rng(2)
    noise = rng.standard_normal(10 * sr).astype(np.float32)
    clicks = np.zeros(noise.size, dtype=np.float32)
    at = rng.choice(noise.size - 64, 60, replace=False)
    for i in at:  # short broadband clicks
        clicks[i : i + 16] += rng.standard_normal(16).astype(np.float32)
    clicks *= np.float32(0.2 * noise.std() / clicks.std())
    quiet, crackle = f(noise), f(noise + clicks)
    np.testing.assert_allclose(quiet[: base.dim], LogMelStats(base)(noise), rtol=1e-6, atol=1e-6)
    delta, env_std, comod = (quiet[base.dim : base.dim + 64], quiet[base.dim + 64 : base.dim + 80], quiet[base.dim + 80 :])
    c_delta, c_env_std, c_comod = (crackle[base.dim : base.dim + 64], crackle[base.dim + 64 : base.dim + 80],
                                   crackle[base.dim + 80 :])
    assert c_comod.mean() > comod.mean() + 0.05  # the clicks sound in every band at once (0.08 -> 0.15 here)
    assert np.all(c_env_std[8:] > env_std[8:])  # and make each fast envelope band move more
    assert c_delta.mean() > delta.mean()
    # one loud impact (a door, a dropped tool) as loud as all the crackle together: the crackle goes on, it does not
    thud = np.zeros(noise.size, dtype=np.float32)
    thud[80000 : 80000 + 400] = rng.standard_normal(400).astype(np.float32) * np.exp(-np.arange(400) / 80.0)
    thud *= np.float32(np.sqrt((clicks ** 2).sum() / (thud ** 2).sum()))
    door = f(noise + thud)
    # (the comodulation moves 0.23 as much for the impact as for the crackle; 0.73 without its clipping)
    assert abs(door[base.dim + 80 :].mean() - comod.mean()) < 0.35 * (c_comod.mean() - comod.mean())
    assert abs((door[base.dim + 64 : base.dim + 80] - env_std).mean()) < 0.2 * (c_env_std - env_std).mean()
    np.testing.assert_allclose(f(0.25 * noise), quiet, rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(f(noise[:24000])))
    assert LogMelStatsConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if not k.startswith("dynamics")}
    assert LogMelStatsConfig.from_dict(old).dynamics is False  # manifests from before it read back without
    with pytest.raises(ValueError, match="dynamics needs the fast envelope"):
        LogMelStatsConfig(modulation_bands=8, modulation_lines=True, dynamics=True)
