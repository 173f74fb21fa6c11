"""DCASE names, audio reading, standardization, segmentation, resampling."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edge_asd
from edge_asd.io.audio import SegmentSpec, clip_segments, dbfs, read_audio, resample, segment, standardize
from edge_asd.io.dcase import list_clips, list_machines, parse_name
from edge_asd.errors import AudioError, DataError


@pytest.mark.parametrize(
    "name, expect",
    [
        ("section_00_source_train_normal_0000_vel_6_loc_A.wav", ("00", "source", "train", "normal", "0000", {"vel": "6", "loc": "A"})),
        ("section_02_target_test_anomaly_0012_m-n_W.wav", ("02", "target", "test", "anomaly", "0012", {"m-n": "W"})),
        ("section_01_source_train_normal_0005.wav", ("01", "source", "train", "normal", "0005", {})),
        ("section_00_target_train_normal_0003_noAttribute.wav", ("00", "target", "train", "normal", "0003", {})),
        ("section_03_0017.wav", ("03", None, "test", None, "0017", {})),
        ("section_00_test_0001.wav", ("00", None, "test", None, "0001", {})),
        ("section_05_source_test_normal_0049_car_A1_spd_28V_mic_1_noise_1.flac", ("05", "source", "test", "normal", "0049", {"car": "A1", "spd": "28V", "mic": "1", "noise": "1"})),
    ],
)
def test_parse_name(name, expect):
    info = parse_name(f"/data/fan/{expect[2]}/{name}")
    assert (info.section, info.domain, info.split, info.label, info.index, info.attributes) == expect
    assert info.machine == "fan"


@pytest.mark.parametrize("bad", ["normal_id_00_00000000.wav", "section_0_source_train_normal_0000.wav", "readme.wav", "section_00_source_train_broken_0000.wav"])
def test_parse_name_rejects(bad):
    with pytest.raises(DataError, match=bad.split(".")[0]):
        parse_name(bad)


def _wav(path, x, sr=16000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype=subtype)
    return path


def test_list_clips(tmp_path):
    rng = np.random.default_rng(0)
    for n in ("section_00_source_train_normal_0001_a_1.wav", "section_00_target_train_normal_0000_a_2.wav"):
        _wav(tmp_path / "pump" / "train" / n, rng.normal(size=32000) * 0.1)
    (tmp_path / "pump" / "train" / "notes.txt").write_text("ignored")
    (tmp_path / "other").mkdir()
    assert list_machines(tmp_path) == ["pump"]
    clips = list_clips(tmp_path, "pump", "train")
    assert [c.index for c in clips] == ["0001", "0000"]
    assert {c.domain for c in clips} == {"source", "target"}
    with pytest.raises(DataError, match="pump/test"):
        list_clips(tmp_path, "pump", "test")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "PCM_U8"])
def test_read_audio_formats(tmp_path, subtype):
    t = np.arange(32000) / 16000
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    p = _wav(tmp_path / "a.wav", x, subtype=subtype)
    y = read_audio(p)
    assert y.dtype == np.float32 and y.shape == (32000,)
    tol = 1e-2 if subtype == "PCM_U8" else 1e-4
    assert np.max(np.abs(y - x)) < tol


def test_read_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    p = _wav(tmp_path / "sr.wav", np.zeros(44100), sr=44100)
    with pytest.raises(AudioError, match=r"sr\.wav: sample rate 44100 Hz, expected 16000"):
        read_audio(p)
    p = _wav(tmp_path / "st.wav", np.zeros((16000, 2)))
    with pytest.raises(AudioError, match=r"st\.wav: 2 channels, expected mono"):
        read_audio(p)
    p = _wav(tmp_path / "short.wav", np.zeros(8000))
    with pytest.raises(AudioError, match=r"short\.wav: 0\.500 s long, shorter than one 2 s segment"):
        read_audio(p, min_seconds=2.0)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(AudioError, match=r"bad\.wav: unreadable"):
        read_audio(bad)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        read_audio(empty)
    p = _wav(tmp_path / "nan.wav", np.r_[np.zeros(100), np.nan, np.zeros(100)].astype(np.float32), subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN"):
        read_audio(p)
    p = _wav(tmp_path / "inf.wav", np.r_[np.zeros(100), -np.inf, np.zeros(100)].astype(np.float32), subtype="FLOAT")
    with pytest.raises(AudioError, match=r"inf\.wav: contains NaN or infinite samples"):
        read_audio(p)


def test_truncated_wav_is_refused_or_read_partially(tmp_path):
    p = _wav(tmp_path / "trunc.wav", np.random.default_rng(1).normal(size=32000) * 0.1)
    data = p.read_bytes()
    p.write_bytes(data[:30])  # header cut inside the fmt chunk
    with pytest.raises(AudioError, match="trunc.wav"):
        read_audio(p)


def test_standardize():
    x = np.random.default_rng(0).normal(3.0, 5.0, 10000)
    y = standardize(x)
    assert abs(y.mean()) < 1e-6 and abs(y.std() - 1) < 1e-5
    assert np.all(standardize(np.full(100, 0.3)) == 0)


def test_segments_cover_clip_and_align():
    spec = SegmentSpec()
    starts = spec.starts(160000)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 160000 - 32000
    assert np.all(starts % 256 == 0) and np.all(np.diff(starts) > 0)
    x = np.arange(160000, dtype=np.float32)
    segs = segment(x, spec)
    assert segs.shape == (10, 32000)
    assert np.array_equal(segs[3], x[starts[3] : starts[3] + 32000])
    # any clip of at least T seconds works
    assert segment(np.zeros(32000), spec).shape == (10, 32000)
    assert segment(np.zeros(40000), spec).shape == (10, 32000)
    with pytest.raises(ValueError):
        segment(np.zeros(31999), spec)


def test_clip_segments_reads_standardized(tmp_path):
    x = np.random.default_rng(2).normal(size=160000) * 0.01 + 0.2
    p = _wav(tmp_path / "c.wav", x, subtype="FLOAT")
    segs = clip_segments(p)
    whole = standardize(read_audio(p))
    assert np.allclose(segs[0], whole[:32000])


@pytest.mark.parametrize("orig", [48000, 44100, 22050, 8000])
def test_resample_matches_scipy(orig):
    from scipy.signal import resample_poly

    x = np.random.default_rng(3).normal(size=orig)
    g = np.gcd(orig, 16000)
    ref = resample_poly(x, 16000 // g, orig // g)
    y = resample(x, orig, 16000)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 1e-5


def test_resample_rejects_aliases():
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 12000 * t)  # above the 8 kHz Nyquist of the output
    assert np.sqrt(np.mean(resample(x, 48000) ** 2)) < 1e-2


def test_dbfs():
    t = np.arange(16000) / 16000
    assert abs(dbfs(np.sin(2 * np.pi * 100 * t)) + 3.01) < 0.02
    assert dbfs(np.zeros(10)) == -200.0


def test_runtime_never_imports_torch():
    # Every module of the runtime package, found by walking it: a new module cannot slip past a hand-kept list.
    # The page draws its spectrograms in numpy: no plotting or imaging library on the device either.
    code = (
        "import importlib, pkgutil, sys, edge_asd\n"
        "names = [m.name for m in pkgutil.walk_packages(edge_asd.__path__, 'edge_asd.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "bad = [m for m in ('torch', 'scipy', 'sklearn', 'timm', 'matplotlib', 'PIL', 'train', 'export') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(len(names))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    on_disk = [p for p in Path(edge_asd.__file__).parent.rglob("*.py") if p.parent.name != "edge_asd" or p.stem != "__init__"]
    assert int(out) == len(on_disk), "every .py file of edge_asd is a module the walk imported"


def test_segment_spec_is_derived_once_from_a_runs_config_and_amplitude(tmp_path):
    """Stage 1 (from its config) and everything after it (from the run folder) cut clips with the same spec."""
    import json

    from train.config import TrainConfig
    from train.data import run_spec, segment_spec
    from train.rundir import RunDir

    cfg = TrainConfig(data="d", machine="fan", out=str(tmp_path), segment_seconds=3.0, hop_length=512, val_segments=6)
    amplitude = {"mode": "machine", "mean": 0.01, "std": 0.2}
    run = RunDir(tmp_path)
    run.config.write_text(json.dumps(cfg.to_dict()))
    run.split.write_text(json.dumps({"clips": [], "amplitude": amplitude}))
    spec = segment_spec(cfg.to_dict(), amplitude)
    assert spec == run_spec(tmp_path)
    assert (spec.segment_seconds, spec.n_segments, spec.align, spec.level) == (3.0, 6, 512, (0.01, 0.2))
    assert segment_spec({}, None).level is None  # an old run folder: the defaults, clip standardization
