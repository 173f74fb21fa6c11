"""The CPU's rFFT front end (issue 28) computes what the bundle's front-end graph and training's LogMel compute.

Parity is max |difference| / max |log-mel| over a clip's frames (export.onnx_export.relative_error),
on real clips (../shared/real-samples) and synthetic ones, against a float64 STFT as the referee.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.io.audio import SegmentSpec, read_audio, standardize
from edge_asd.io.blas import SERIAL_PRODUCT, serial_rows
from edge_asd.io.dcase import list_clips
from edge_asd.io.features import mel_filterbank
from edge_asd.io.stft import LogMelSTFT, band_blocks, hann
from edge_asd.runtime.bundle import open_bundle
from edge_asd.runtime.frontend import FFTFrontEnd
from edge_asd.runtime.manifest import LogMelFrontEnd
from edge_asd.runtime.onnx import OnnxFrontEnd
from edge_asd.runtime.scorer import load_scorer

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-samples"
TOLERANCE = 1e-5


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _real_clips(every: int = 16) -> list[Path]:
    paths = sorted(REAL.glob("*/*/*.wav"))[::every]
    if len(paths) < 5:
        pytest.skip(f"{REAL} not beside the repository")
    return paths


def _synthetic_clips(tiny_data: Path) -> list[np.ndarray]:
    """The tests' `edge-asd synth` machine sounds, white noise and a click train."""
    rng = np.random.default_rng(5)
    clicks = np.zeros(5 * 16000, dtype=np.float32)
    clicks[::4000] = 1.0
    made = [read_audio(c.path) for c in list_clips(tiny_data, "fan", "test")[:3]]
    return made + [rng.standard_normal(5 * 16000).astype(np.float32), clicks]


def _extreme_clips() -> list[np.ndarray]:
    """Log-mels that span ~120 dB, float32's whole range: a pure tone, a mains hum over noise 120 dB down."""
    t = np.arange(5 * 16000) / 16000
    hum = np.sin(2 * np.pi * 60 * t) + 1e-6 * np.random.default_rng(6).standard_normal(t.size)
    return [np.sin(2 * np.pi * 1234.5 * t).astype(np.float32), hum.astype(np.float32)]


def _reference_logmel(x: np.ndarray, cfg: LogMelFrontEnd) -> np.ndarray:
    """float64 numpy, dense filterbank, no blocks: the referee."""
    n = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    idx = np.arange(n)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)
    spec = np.fft.rfft(x.astype(np.float64)[idx] * np.hanning(cfg.n_fft + 1)[:-1], axis=1)
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale)
    return np.log(np.abs(spec) ** 2 @ fb.T + cfg.log_eps).T


@pytest.fixture(scope="module")
def fronts(tiny_bundle):
    """(the bundle's graph, the rFFT front end the CPU scorer built from the same bundle)."""
    b = open_bundle(tiny_bundle)
    split = b.manifest.to_dict()["members"][0]["split"]
    fft = load_scorer(tiny_bundle, backend="onnx-cpu").members[0].backend.frontend
    assert isinstance(fft, FFTFrontEnd), "a new bundle's CPU scorer takes the rFFT front end"
    graph = OnnxFrontEnd(b.read(split["frontend"]), int(split["logmel"]["n_fft"]), int(split["hop_length"]), threads=1)
    return graph, fft


def test_rfft_front_end_matches_the_bundle_graph(fronts, tiny_data):
    graph, fft = fronts
    clips = [read_audio(p, min_seconds=2.0) for p in _real_clips()] + _synthetic_clips(tiny_data)
    for x in clips:
        x = standardize(x)
        want, got = graph(x), fft(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert _relative_error(want, got) <= TOLERANCE


def test_on_extreme_clips_the_rfft_front_end_is_the_closer_to_exact(fronts):
    """Where bands sit 120 dB below the loudest, float32's rounding shows in the log of the quietest: the
    graph's matrix-product DFT was measured 1.6e-4 to 8e-4 from a float64 STFT there, the float32 rFFT (ducc0) 7.5e-5 to 2.1e-4, a
    float64 rFFT (numpy) 1e-5."""
    graph, fft = fronts
    norm = fft._scale, fft._shift
    for x in _extreme_clips():
        x = standardize(x)
        exact = _reference_logmel(x, fft.cfg) * norm[0] + norm[1]
        assert _relative_error(exact, fft(x)) <= min(30 * TOLERANCE, _relative_error(exact, graph(x)))


def test_rfft_front_end_matches_training_logmel_and_a_float64_stft(tiny_data):
    import torch

    from train.frontend import LogMel

    lm = LogMel()
    fft = FFTFrontEnd(LogMelFrontEnd.from_dict(lm.config()), np.ones(lm.n_mels), np.zeros(lm.n_mels))
    for x in [read_audio(p, min_seconds=2.0) for p in _real_clips(24)] + _synthetic_clips(tiny_data):
        x = standardize(x)
        got = fft.logmel(x)
        with torch.no_grad():
            for use_fft in (False, True):  # the deployed DFT, and torch.stft as training may run it
                lm.use_fft = use_fft
                assert _relative_error(lm(torch.from_numpy(x)[None])[0].numpy(), got) <= TOLERANCE
        # a float32 FFT: measured at most 2.6e-6 from a float64 STFT on these clips
        assert _relative_error(_reference_logmel(x, fft.cfg), got) <= TOLERANCE / 2


def test_band_blocks_hold_every_weight_of_the_filterbanks():
    for args in ((16000, 2048, 224, 50.0, 7800.0, "slaney"), (16000, 1024, 64, 50.0, 7800.0, "htk"),
                 (16000, 1024, 128, 0.0, 8000.0, "slaney")):
        fb = mel_filterbank(*args).astype(np.float32)
        dense = np.zeros_like(fb)
        blocks = band_blocks(fb)
        for b in blocks:
            assert not dense[:, b.bins].any()  # each bin in one block
            dense[b.bands, b.bins] = b.weights.T
        np.testing.assert_array_equal(dense, fb)
        assert sum(b.weights.size for b in blocks) < fb.size / 3  # the point of the blocks


@pytest.mark.parametrize("n_fft, n_mels, mel_scale", [(2048, 224, "slaney"), (1024, 64, "htk"), (512, 8, "htk"),
                                                       (128, 8, "htk")])
def test_every_mel_product_stays_on_the_calling_thread(n_fft, n_mels, mel_scale):
    """OpenBLAS hands larger products to its pool, and beside the other member that cost the learned + plain bundle
    13.5 -> 21 ms a clip (edge_asd/io/blas.py): every product of a block of frames stays under the size, in equal
    steps."""
    fb = mel_filterbank(16000, n_fft, n_mels, 50.0, 7800.0, mel_scale)
    stft = LogMelSTFT(n_fft, n_fft // 4, hann(n_fft, "hann"), fb)
    for _, _, weights, step in stft._blocks:
        assert step * weights.size <= SERIAL_PRODUCT
        steps = -(-stft._rows // step)
        assert steps * step - stft._rows < steps  # equal steps: no short last one
    assert serial_rows(SERIAL_PRODUCT + 1) == 1 and serial_rows(0) == SERIAL_PRODUCT and serial_rows(4096) == 64


def test_blocks_give_the_same_frames(fronts):
    _, fft = fronts
    x = standardize(np.random.default_rng(1).standard_normal(16000 * 7).astype(np.float32))
    one = FFTFrontEnd(fft.cfg, fft._scale[:, 0], fft._shift[:, 0])
    one._stft._rows = 10_000  # the whole clip as one block
    assert fft._stft._rows < one.n_frames(x.size)
    np.testing.assert_allclose(fft(x), one(x), rtol=0, atol=1e-6)  # the split into blocks changes no frame
    # a frame depends only on the samples under it: a segment's frames are the clip's, sliced
    spec = SegmentSpec()
    start = 256 * 20
    np.testing.assert_allclose(one(x[start : start + spec.segment_samples]), one(x)[:, 20 : 20 + 118], rtol=0, atol=1e-6)


def test_a_bundle_without_the_rfft_numbers_keeps_the_graph_with_the_same_scores(tiny_bundle, tiny_data, tmp_path):
    from bundle_edit import read_members, write_members

    from edge_asd.runtime.bundle import sha256

    members = read_members(tiny_bundle)
    manifest = json.loads(members.pop("manifest.json"))
    split = manifest["members"][0]["split"]
    members.pop(split.pop("input_norm"))
    del split["logmel"]
    manifest["files"] = {n: sha256(d) for n, d in members.items()}
    old = tmp_path / "old.asd"
    write_members(old, {"manifest.json": json.dumps(manifest).encode(), **members})
    legacy, new = load_scorer(old, backend="onnx-cpu"), load_scorer(tiny_bundle, backend="onnx-cpu")
    assert isinstance(legacy.members[0].backend.frontend, OnnxFrontEnd)
    for c in list_clips(tiny_data, "fan", "test")[:4]:
        x = read_audio(c.path)
        assert new.score(x, "00").score == pytest.approx(legacy.score(x, "00").score, rel=1e-4, abs=1e-4)


def test_bad_clips_give_the_same_one_line_errors_on_the_rfft_path(tiny_bundle, tiny_data, edge_asd_exe, tmp_path):
    clips = tmp_path / "fan" / "test"
    clips.mkdir(parents=True)
    good = list_clips(tiny_data, "fan", "test")[0].path
    shutil.copy(good, clips / good.name)
    x = read_audio(good)
    stem = "section_00_source_test_normal"
    sf.write(clips / f"{stem}_0901.wav", x[:8000], 16000)
    nan = x.copy()
    nan[100] = np.nan
    sf.write(clips / f"{stem}_0902.wav", nan, 16000, subtype="FLOAT")
    sf.write(clips / f"{stem}_0903.wav", x, 44100)
    r = subprocess.run([edge_asd_exe, "score", str(tiny_bundle), str(clips), "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    for name, why in (("0901", "shorter than one"), ("0902", "contains NaN or infinite samples"),
                      ("0903", "sample rate 44100 Hz, expected 16000")):
        assert sum(f"{stem}_{name}.wav" in line and why in line for line in lines) == 1, r.stderr
    # the good clip was still scored
    rows = (tmp_path / "o" / "anomaly_score_fan_section_00_test.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == [good.name]


@pytest.mark.parametrize("change, message", [({"center": True}, "centred"), ({"power": 1.0}, "power 1.0")])
def test_rfft_front_end_refuses_numbers_it_does_not_compute(change, message):
    """The manifest's front end is the one declaration: numbers the rFFT cannot reproduce are refused, not guessed."""
    from train.frontend import LogMel

    lm = LogMel()
    cfg = LogMelFrontEnd.from_dict({**lm.config(), **change})
    with pytest.raises(ValueError, match=message):
        FFTFrontEnd(cfg, np.ones(lm.n_mels), np.zeros(lm.n_mels))


def test_clips_run_side_by_side_only_on_the_cpus_own_members(tiny_run, tiny_data, tmp_path, monkeypatch):
    """Beside a member that is not the CPU's split graphs (here the whole-segment graph; on a device TensorRT, whose
    execution context must not run two clips at once) `score_many` keeps to one clip at a time."""
    from bundle_edit import read_members, write_members

    import edge_asd.runtime.scorer as scorer_module
    from edge_asd.runtime.bundle import sha256
    from export.pack import build_bundle
    from train.plain import fit_plain

    both = build_bundle([tiny_run, fit_plain(tiny_data, "fan", tmp_path / "plain")], tmp_path / "both.asd", progress=False)
    members = read_members(both)
    manifest = json.loads(members.pop("manifest.json"))
    split = manifest["members"][0].pop("split")
    for name in (split["frontend"], split["encoder"], split["input_norm"]):
        members.pop(name)
    manifest["files"] = {n: sha256(d) for n, d in members.items()}
    whole = tmp_path / "whole.asd"
    write_members(whole, {"manifest.json": json.dumps(manifest).encode(), **members})
    clips = [read_audio(c.path) for c in list_clips(tiny_data, "fan", "test")[:3]]
    split_scorer, whole_scorer = load_scorer(both, backend="onnx-cpu"), load_scorer(whole, backend="onnx-cpu")
    assert split_scorer.clip_level and not whole_scorer.clip_level
    assert [m.backend.takes_segments for m in whole_scorer.members] == [True, False], "whole graph + plain member"
    pools = []
    real_pool = scorer_module.ThreadPoolExecutor
    monkeypatch.setattr(scorer_module, "ThreadPoolExecutor", lambda *a, **kw: pools.append(1) or real_pool(*a, **kw))
    np.testing.assert_allclose(whole_scorer.score_many(clips, "00", workers=2), split_scorer.score_many(clips, "00"),
                               rtol=1e-4, atol=1e-4)
    assert pools == []
    np.testing.assert_array_equal(split_scorer.score_many(clips, "00", workers=2), split_scorer.score_many(clips, "00"))
    assert pools == [1]


def test_the_plain_member_beside_the_learned_one_gives_the_same_scores_and_its_errors(tiny_run, tiny_data, tmp_path,
                                                                                        monkeypatch):
    """On two cores the plain member runs on a thread of its own while the learned one runs: the very same numbers
    as one member after the other, the encoder then on the other core, and a failure of either reaches the caller."""
    import threading

    from edge_asd.errors import UserError
    from edge_asd.runtime.backend import FeatureBackend
    from export.pack import build_bundle
    from train.plain import fit_plain

    both = build_bundle([tiny_run, fit_plain(tiny_data, "fan", tmp_path / "plain")], tmp_path / "both.asd", progress=False)
    one_core, two_cores = load_scorer(both, backend="onnx-cpu", threads=1), load_scorer(both, backend="onnx-cpu", threads=2)
    assert not one_core.side_members and two_cores.side_members
    assert two_cores.members[0].backend._enc.get_session_options().intra_op_num_threads == 1  # the other core's
    threads_seen = []
    real_run_clip = FeatureBackend.run_clip
    monkeypatch.setattr(FeatureBackend, "run_clip",
                        lambda self, view: threads_seen.append(threading.current_thread().name) or real_run_clip(self, view))
    for c in list_clips(tiny_data, "fan", "test")[:3]:
        clip = read_audio(c.path)
        a, b = one_core.score(clip, "00"), two_cores.score(clip, "00")
        assert (a.score, a.p_target, a.bands) == (b.score, b.p_target, b.bands)
        assert b.timings_ms["plain"] > 0 and b.timings_ms["frontend"] >= b.timings_ms["plain"]
    assert threads_seen == ["MainThread", "plain-member"] * 3

    def broken(self, view):
        raise UserError("the plain member cannot take this clip")

    monkeypatch.setattr(FeatureBackend, "run_clip", broken)
    with pytest.raises(UserError, match="the plain member cannot take this clip"):
        two_cores.score(read_audio(list_clips(tiny_data, "fan", "test")[0].path), "00")
    assert not any(t.name == "plain-member" for t in threading.enumerate())
