"""Outlier exposure from any folder of sounds: formats, rates, channels, bad files, the cache."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.io.audio import read_audio, resample, standardize
from edge_asd.errors import DataError
from train import data as data_module
from train.data import CropDataset, prepare_data

from tonal_data import SR, tiny_config


def write_outliers(root: Path) -> dict[str, np.ndarray]:
    """A folder as people have them: nested, mixed formats, rates and channels, one corrupt file, notes."""
    rng = np.random.default_rng(5)
    files = {
        "nested/street_44k_stereo.flac": (0.1 * rng.standard_normal((3 * 44100, 2)), 44100, {}),
        "phone_8k.wav": (0.1 * rng.standard_normal(int(2.5 * 8000)), 8000, {"subtype": "PCM_16"}),
        "nested/deeper/native_16k.wav": (0.1 * rng.standard_normal(3 * SR), SR, {"subtype": "FLOAT"}),
        "nested/birds_22k.ogg": (0.1 * rng.standard_normal(3 * 22050), 22050, {"format": "OGG", "subtype": "VORBIS"}),
    }
    written = {}
    for name, (x, rate, kw) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), x, rate, **kw)
        written[name] = path
    (root / "nested" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    (root / "README.txt").write_text("not audio, not warned about")
    return written


def test_any_format_rate_and_channel_count(data_root, tmp_path, caplog, monkeypatch):
    folder = tmp_path / "sounds"
    written = write_outliers(folder)
    cfg = tiny_config(data_root, tmp_path / "run", tmp_path / "cache", outliers=folder)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        data = prepare_data(cfg)
    # the corrupt file is named once, in one line; the text file is not audio and is not mentioned
    warned = [r.getMessage() for r in caplog.records if r.name == "train.data"]
    assert len(warned) == 1 and "broken.wav" in warned[0] and "\n" not in warned[0] and "skipped" in warned[0]
    assert not any("README" in w for w in warned)
    table = data.table
    used = [table.path(i) for i in data.pools.outliers]
    assert len(used) == 4
    # 16 kHz mono files are read where they are; the others through one decoded 16 kHz mono copy
    assert written["nested/deeper/native_16k.wav"] in used
    decoded = [p for p in used if p.parent == tmp_path / "cache" / "decoded"]
    assert len(decoded) == 3
    lengths = sorted(int(table.n_samples[i]) for i in data.pools.outliers)
    assert lengths == [40000, 48000, 48000, 48000]  # 2.5 s at 8 kHz and 3 s at 44.1 and 22.05 kHz, now 16 kHz
    # the stereo FLAC is the channel mean through the runtime's resampler, exactly
    x, rate = sf.read(str(written["nested/street_44k_stereo.flac"]), dtype="float32", always_2d=True)
    expected = resample(x.mean(axis=1, dtype=np.float64), rate)
    i = next(i for i in data.pools.outliers if table.n_samples[i] == 48000 and np.array_equal(read_audio(table.path(i)), expected))
    np.testing.assert_array_equal(table.audio[i], standardize(expected))

    # Crops read from the files (no memory cache) are the in-memory ones: the decoded copy seeks.
    monkeypatch.setattr(data_module, "decode_to_16k_mono", lambda *a: pytest.fail("decoded again despite the cache"))
    streamed = prepare_data(replace(cfg, memory_cache_mb=0))
    assert streamed.table.audio is None and [streamed.table.path(j) for j in streamed.pools.outliers] == used
    ds = CropDataset(streamed.table, len(streamed.sections), cfg.segment_samples)
    for j in streamed.pools.outliers:
        np.testing.assert_array_equal(ds._crop(int(j), 1234), table.audio[int(j)][1234 : 1234 + cfg.segment_samples])
    assert streamed.split["pseudo_anomalous"]["n_outliers"] == 4


def test_decoded_copy_follows_its_source(data_root, tmp_path):
    folder = tmp_path / "sounds"
    rng = np.random.default_rng(1)
    folder.mkdir()
    src = folder / "a.flac"
    sf.write(str(src), 0.1 * rng.standard_normal((3 * 48000, 2)), 48000)
    cfg = tiny_config(data_root, tmp_path / "run", tmp_path / "cache", outliers=folder)
    first = prepare_data(cfg)
    (a,) = [first.table.path(i) for i in first.pools.outliers]
    sf.write(str(src), 0.1 * rng.standard_normal((4 * 48000, 1)), 48000)  # the file changes: a new copy, not the stale one
    second = prepare_data(cfg)
    (b,) = [second.table.path(i) for i in second.pools.outliers]
    assert a != b and second.table.n_samples[second.pools.outliers[0]] == 64000


def test_folder_without_readable_audio_is_one_line_before_training(data_root, tmp_path):
    bad = tmp_path / "bad"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "a.wav").write_bytes(b"not a wav at all")
    (bad / "b.flac").write_bytes(b"")
    (bad / "notes.txt").write_text("hello")
    cfg = tiny_config(data_root, tmp_path / "run", tmp_path / "cache", outliers=bad)
    with pytest.raises(DataError, match=r"bad: none of its 2 audio file\(s\) could be read"):
        prepare_data(cfg)
    empty = tmp_path / "empty"
    (empty / "deep").mkdir(parents=True)
    (empty / "deep" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="empty: outliers folder holds no audio files"):
        prepare_data(replace(cfg, outliers=empty))

    exe = str(Path(sys.executable).with_name("edge-asd-train"))
    r = subprocess.run(
        [exe, "--data", str(data_root), "--machine", "fan", "--out", str(tmp_path / "r"), "--outliers", str(bad),
         "--device", "cpu", "--quiet", "--epochs", "1", "--backbone", "transformer"],
        capture_output=True, text=True, env={"XDG_CACHE_HOME": str(tmp_path / "xdg"), "PATH": "/usr/bin:/bin"},
    )
    err = [line for line in r.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("edge-asd-train: error: "), r.stderr
    assert "none of its 2 audio file(s) could be read" in err[0]
    assert not (tmp_path / "r" / "checkpoints").exists()
