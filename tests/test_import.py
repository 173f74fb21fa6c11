"""`edge-asd import`: own recordings into DCASE clips (issue 25, item 1).

Recordings are a few seconds long and clips 1-2 s, so every test stays small; the
streaming test counts the reads instead of needing an hour of audio.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edge_asd
from edge_asd.cli.main import main as asd_main
from edge_asd.errors import AudioError
from edge_asd.io.audio import StreamResampler, resample
from edge_asd.io.dcase import clip_name, list_clips, parse_name
from edge_asd.io.importer import ImportOptions, import_recordings

SR = 16000
ROOT = Path(edge_asd.__file__).resolve().parent.parent


def tone(seconds: float, rate: int, hz: float = 1000.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, rate: int, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(round(seconds * rate)))).astype(np.float32)


def run(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    """``edge-asd import ...`` in this process: (status, stdout lines, stderr lines)."""
    rc = asd_main(["import", *map(str, args), "--quiet"])
    out = capsys.readouterr()
    return rc, out.out.strip().splitlines(), out.err.strip().splitlines()


def provenance(data: Path, machine: str) -> list[dict]:
    with open(data / machine / "import.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spec))])


# --- the resampler: streamed equals whole ----------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 16000])
def test_streamed_resampling_equals_resampling_the_whole_signal(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(3 * rate).astype(np.float32)
    r = StreamResampler(rate)
    parts, pos = [], 0
    while pos < x.size:  # blocks of every size, down to one sample
        n = int(rng.choice([1, 7, 100, 4096, 20000]))
        parts.append(r.feed(x[pos : pos + n]))
        pos += n
    parts.append(r.finish())
    streamed, whole = np.concatenate(parts), resample(x, rate)
    assert streamed.shape == whole.shape
    assert np.max(np.abs(streamed - whole)) < 1e-6


# --- what is written -------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    """A 44.1 kHz stereo FLAC, a 48 kHz float WAV and an 8 kHz Vorbis OGG: 3 s, 2.5 s and 2.2 s."""
    d = tmp_path / "rec"
    d.mkdir()
    flac, wav, ogg = d / "hall.flac", d / "line 2.wav", d / "yard.ogg"
    sf.write(flac, np.stack([tone(3, 44100), noise(3, 44100)], axis=1), 44100, subtype="PCM_24")
    sf.write(wav, noise(2.5, 48000, seed=1), 48000, subtype="FLOAT")
    sf.write(ogg, tone(2.2, 8000, hz=500), 8000, format="OGG", subtype="VORBIS")
    return [flac, wav, ogg]


def test_mixed_formats_and_rates_become_16k_mono_clips_that_list_clips_reads(mixed, tmp_path, capsys):
    data = tmp_path / "data"
    rc, out, err = run(capsys, *mixed, "--data", data, "--machine", "pump", "--clip-seconds", "1")
    assert rc == 0 and err == []
    assert out == [
        f"{mixed[0]}: 3 clips -> {data / 'pump' / 'train'} (section 00, source, normal); skipped 0 silent, 0 clipped, 0 short",
        f"{mixed[1]}: 2 clips -> {data / 'pump' / 'train'} (section 00, source, normal); skipped 0 silent, 0 clipped, 1 short",
        f"{mixed[2]}: 2 clips -> {data / 'pump' / 'train'} (section 00, source, normal); skipped 0 silent, 0 clipped, 1 short",
    ]
    clips = list_clips(data, "pump", "train")
    assert [c.index for c in clips] == ["0000", "0001", "0002", "0003", "0004", "0005", "0006"]
    assert {(c.machine, c.section, c.domain, c.split, c.label) for c in clips} == {("pump", "00", "source", "train", "normal")}
    for c in clips:
        info = sf.info(str(c.path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (SR, 1, "PCM_16", SR)
    # the FLAC's first channel, a 1 kHz tone, is still a 1 kHz tone; the OGG's 500 Hz tone too
    assert peak_hz(sf.read(clips[0].path)[0], SR) == pytest.approx(1000, abs=2)
    assert peak_hz(sf.read(clips[6].path)[0], SR) == pytest.approx(500, abs=2)


def test_a_resampled_1khz_tone_keeps_its_frequency_and_level(tmp_path, capsys):
    rec = tmp_path / "tone.wav"
    sf.write(rec, tone(2, 44100, amp=0.5), 44100, subtype="PCM_16")
    assert run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "2")[0] == 0
    (clip,) = list_clips(tmp_path / "d", "fan", "train")
    y = sf.read(clip.path)[0]
    assert peak_hz(y, SR) == pytest.approx(1000, abs=1)
    mid = y[SR // 4 : -SR // 4]  # away from the resampler's run-in at the recording's ends
    # within the Kaiser filter's passband ripple (~0.1 %), as scipy.signal.resample_poly
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=5e-3)


def test_a_16k_16bit_recording_keeps_its_very_samples(tmp_path, capsys):
    x = np.round(noise(3, SR) * 32768).astype(np.int16)
    rec = tmp_path / "a.wav"
    sf.write(rec, x, SR, subtype="PCM_16")
    assert run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "1.5")[0] == 0
    clips = list_clips(tmp_path / "d", "fan", "train")
    assert [sf.read(c.path, dtype="int16")[0].tolist() for c in clips] == [x[:24000].tolist(), x[24000:].tolist()]


def test_the_clips_are_the_whole_recording_resampled_and_cut(tmp_path):
    """No seam at block boundaries: each clip is the matching stretch of resample(whole recording)."""
    x = noise(4, 44100, amp=0.2)
    rec = tmp_path / "a.wav"
    sf.write(rec, x, 44100, subtype="FLOAT")
    opts = ImportOptions(data=tmp_path / "d", machine="fan", clip_seconds=1.0, hop_seconds=0.75)
    (r,) = import_recordings([rec], opts, block_frames=1000)  # 1000 frames: many blocks per clip
    whole = resample(x, 44100)
    assert len(r.clips) == 5
    for k, name in enumerate(r.clips):
        y = sf.read(opts.folder / name)[0]
        ref = np.clip(np.round(whole[12000 * k : 12000 * k + SR] * 32768), -32768, 32767) / 32768
        assert np.max(np.abs(y - ref)) == 0


def test_long_recordings_stream_in_blocks(tmp_path, monkeypatch):
    """Reads never exceed a block, and the first clip is on disk long before the file is read."""
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(6, 48000), 48000, subtype="PCM_16")
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def counting_read(self, frames=-1, *args, **kwargs):
        block = real_read(self, frames, *args, **kwargs)
        reads.append(len(block))
        return block

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    opts = ImportOptions(data=tmp_path / "d", machine="fan", clip_seconds=1.0)
    read_before_first_clip = []
    real_link = os.link

    def noting_link(src, dst, *args, **kwargs):
        read_before_first_clip.append(sum(reads))
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", noting_link)
    (r,) = import_recordings([rec], opts, block_frames=4800)
    assert len(r.clips) == 6
    assert max(reads) <= 4800 and sum(reads) == 6 * 48000
    assert read_before_first_clip[0] <= 48000 + 2 * 4800  # one clip of audio and the resampler's lookahead


# --- skipped windows -------------------------------------------------------------


def test_a_recording_shorter_than_a_clip_gives_no_clip_and_one_short(tmp_path, capsys):
    rec = tmp_path / "brief.wav"
    sf.write(rec, noise(0.8, 22050), 22050)
    data = tmp_path / "d"
    rc, out, _ = run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")
    assert rc == 0
    assert out == [f"{rec}: 0 clips -> {data / 'fan' / 'train'} (section 00, source, normal); "
                   "skipped 0 silent, 0 clipped, 1 short"]
    assert provenance(data, "fan") == []
    assert not any((data / "fan" / "train").iterdir())


def test_an_empty_recording_is_one_short_window(tmp_path, capsys):
    rec = tmp_path / "empty.wav"
    sf.write(rec, np.zeros(0, dtype=np.float32), SR)
    rc, out, _ = run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan")
    assert rc == 0 and out[0].endswith("0 clips -> " + str(tmp_path / "d" / "fan" / "train") +
                                       " (section 00, source, normal); skipped 0 silent, 0 clipped, 1 short")


def test_long_recordings_show_progress_on_stderr_unless_quiet(tmp_path, capsys, monkeypatch):
    import edge_asd.io.importer as importer

    monkeypatch.setattr(importer, "PROGRESS_MIN_SECONDS", 2.0)  # "long" without a long file
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(3, SR), SR)
    assert asd_main(["import", str(rec), "--data", str(tmp_path / "d"), "--machine", "fan", "--clip-seconds", "1"]) == 0
    out = capsys.readouterr()
    assert "a.wav" in out.err and "3/3" in out.err and len(out.out.splitlines()) == 1
    assert run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "1")[2] == []


def test_silent_and_clipped_windows_are_skipped_and_counted(tmp_path, capsys):
    sr = 44100
    loud_ok = tone(1, sr, amp=1.0)  # a sine whose peaks just touch full scale: loud, not clipped
    dither = np.random.default_rng(0).integers(-1, 2, sr) / 32768  # 1-LSB dither of a muted microphone
    overdriven = np.clip(tone(1, sr, amp=1.05), -1, 1)
    x = np.concatenate([noise(1, sr), np.zeros(sr), dither, overdriven, loud_ok, noise(0.5, sr)])
    rec = tmp_path / "mixed.wav"
    sf.write(rec, x, sr, subtype="PCM_16")
    data = tmp_path / "d"
    rc, out, _ = run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")
    assert rc == 0
    assert out[0].endswith("2 clips -> " + str(data / "fan" / "train") +
                           " (section 00, source, normal); skipped 2 silent, 1 clipped, 1 short")
    assert [row["start_s"] for row in provenance(data, "fan")] == ["0.000", "4.000"]


def test_a_silent_recording_imports_nothing(tmp_path, capsys):
    rec = tmp_path / "muted.flac"
    sf.write(rec, np.zeros(3 * 48000, dtype=np.float32), 48000)
    rc, out, _ = run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "1")
    assert rc == 0 and out[0].endswith("0 clips -> " + str(tmp_path / "d" / "fan" / "train") +
                                       " (section 00, source, normal); skipped 3 silent, 0 clipped, 0 short")


# --- options ---------------------------------------------------------------------


def test_clip_hop_channel_section_domain_split_and_label(tmp_path, capsys):
    rec = tmp_path / "two channels.wav"
    sf.write(rec, np.stack([tone(3, 48000, hz=700), tone(3, 48000, hz=2000)], axis=1), 48000)
    data = tmp_path / "d"
    rc, out, _ = run(capsys, rec, "--data", data, "--machine", "valve", "--clip-seconds", "2", "--hop-seconds", "0.5",
                     "--channel", "1", "--section", "03", "--domain", "target", "--split", "test", "--label", "anomaly")
    assert rc == 0
    assert out == [f"{rec}: 3 clips -> {data / 'valve' / 'test'} (section 03, target, anomaly); "
                   "skipped 0 silent, 0 clipped, 1 short"]
    clips = list_clips(data, "valve", "test")
    assert [c.name for c in clips] == [f"section_03_target_test_anomaly_000{i}.wav" for i in range(3)]
    assert all(c.is_anomaly and c.domain == "target" and c.section == "03" for c in clips)
    assert all(sf.info(str(c.path)).frames == 2 * SR for c in clips)
    assert all(peak_hz(sf.read(c.path)[0], SR) == pytest.approx(2000, abs=2) for c in clips)  # channel 1
    rows = provenance(data, "valve")
    assert [(r["clip"], r["start_s"], r["end_s"]) for r in rows] == [
        ("test/section_03_target_test_anomaly_0000.wav", "0.000", "2.000"),
        ("test/section_03_target_test_anomaly_0001.wav", "0.500", "2.500"),
        ("test/section_03_target_test_anomaly_0002.wav", "1.000", "3.000"),
    ]
    assert not (data / "valve" / "train").exists()


def test_a_hop_longer_than_the_clip_leaves_gaps(tmp_path, capsys):
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(5, SR), SR)
    assert run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "1",
               "--hop-seconds", "2")[0] == 0
    assert [r["start_s"] for r in provenance(tmp_path / "d", "fan")] == ["0.000", "2.000", "4.000"]


def test_the_defaults_are_10s_clips_back_to_back_in_section_00_source_train_normal(tmp_path, capsys):
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(21, 8000), 8000)  # 8 kHz keeps 21 s small
    rc, out, _ = run(capsys, rec, "--data", tmp_path / "d", "--machine", "fan")
    assert rc == 0 and out[0].endswith("2 clips -> " + str(tmp_path / "d" / "fan" / "train") +
                                       " (section 00, source, normal); skipped 0 silent, 0 clipped, 1 short")
    assert [c.name for c in list_clips(tmp_path / "d", "fan", "train")] == [
        "section_00_source_train_normal_0000.wav", "section_00_source_train_normal_0001.wav"]
    assert all(sf.info(str(c.path)).frames == 10 * SR for c in list_clips(tmp_path / "d", "fan", "train"))


def test_a_name_with_spaces_and_non_ascii_characters(tmp_path, capsys):
    folder = tmp_path / "Halle Süd"
    folder.mkdir()
    rec = folder / "Pumpe 2 – Läufer «neu».wav"
    sf.write(rec, noise(2, SR), SR)
    rc, out, _ = run(capsys, rec, "--data", tmp_path / "d", "--machine", "pumpe", "--clip-seconds", "1")
    assert rc == 0 and out[0].startswith(f"{rec}: 2 clips -> ")
    assert {r["recording"] for r in provenance(tmp_path / "d", "pumpe")} == {str(rec)}


def test_a_folder_imports_its_wav_and_flac_files(tmp_path, capsys):
    folder = tmp_path / "rec"
    (folder / "sub").mkdir(parents=True)
    sf.write(folder / "a.wav", noise(1, SR), SR)
    sf.write(folder / "sub" / "b.flac", noise(1, SR), SR)
    rc, out, _ = run(capsys, folder, "--data", tmp_path / "d", "--machine", "fan", "--clip-seconds", "1")
    assert rc == 0 and len(out) == 2
    assert len(list_clips(tmp_path / "d", "fan", "train")) == 2


# --- numbering and provenance ------------------------------------------------------


def test_numbering_continues_per_group_and_nothing_is_overwritten(tmp_path, capsys):
    data = tmp_path / "d"
    train = data / "fan" / "train"
    train.mkdir(parents=True)
    # clips already there: the source normals end at 0007 (a .flac, with attributes), the target normals at 0002
    sf.write(train / "section_00_source_train_normal_0003.wav", noise(1, SR), SR)
    sf.write(train / "section_00_source_train_normal_0007_vel_6.flac", noise(1, SR), SR)
    sf.write(train / "section_00_target_train_normal_0002.wav", noise(1, SR), SR)
    sf.write(train / "section_01_source_train_normal_0040.wav", noise(1, SR), SR)
    before = snapshot(data)
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(2, SR, seed=5), SR)
    assert run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")[0] == 0
    assert run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1", "--domain", "target")[0] == 0
    assert run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")[0] == 0
    names = sorted(p.name for p in train.iterdir())
    assert names == sorted([
        *[Path(k).name for k in before],
        "section_00_source_train_normal_0008.wav", "section_00_source_train_normal_0009.wav",
        "section_00_target_train_normal_0003.wav", "section_00_target_train_normal_0004.wav",
        "section_00_source_train_normal_0010.wav", "section_00_source_train_normal_0011.wav",
    ])
    after = snapshot(data)
    assert all(after[k] == v for k, v in before.items())
    rows = provenance(data, "fan")
    assert [r["clip"] for r in rows] == [
        "train/section_00_source_train_normal_0008.wav", "train/section_00_source_train_normal_0009.wav",
        "train/section_00_target_train_normal_0003.wav", "train/section_00_target_train_normal_0004.wav",
        "train/section_00_source_train_normal_0010.wav", "train/section_00_source_train_normal_0011.wav",
    ]
    assert (data / "fan" / "import.csv").read_text(encoding="utf-8").count("clip,recording") == 1  # header once
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["imported_at"]) for r in rows)


def test_a_name_taken_while_importing_is_skipped_not_replaced(tmp_path, monkeypatch):
    """Another writer took the next names after the folder was read: the clips go to the free ones."""
    import edge_asd.io.clipset as clipset

    opts = ImportOptions(data=tmp_path / "d", machine="fan", clip_seconds=1.0)
    opts.folder.mkdir(parents=True)
    theirs = opts.folder / clip_name("00", "source", "train", "normal", 0)
    theirs.write_bytes(b"someone else's clip")
    monkeypatch.setattr(clipset, "next_free_index", lambda options: 0)  # as if read before theirs appeared
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(2, SR), SR)
    (r,) = import_recordings([rec], opts)
    assert r.clips == ("section_00_source_train_normal_0001.wav", "section_00_source_train_normal_0002.wav")
    assert theirs.read_bytes() == b"someone else's clip"
    assert not [p for p in opts.folder.iterdir() if p.name.startswith(".")]  # no temp file left


def test_two_imports_into_different_sections_and_domains(tmp_path, capsys):
    data = tmp_path / "d"
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(a, noise(2, SR), SR)
    sf.write(b, noise(3, 48000, seed=2), 48000)
    assert run(capsys, a, "--data", data, "--machine", "fan", "--clip-seconds", "1", "--section", "00")[0] == 0
    assert run(capsys, b, "--data", data, "--machine", "fan", "--clip-seconds", "1", "--section", "01",
               "--domain", "target")[0] == 0
    got = sorted((c.section, c.domain, c.split, c.label, c.index) for c in list_clips(data, "fan", "train"))
    assert got == [("00", "source", "train", "normal", "0000"), ("00", "source", "train", "normal", "0001"),
                   ("01", "target", "train", "normal", "0000"), ("01", "target", "train", "normal", "0001"),
                   ("01", "target", "train", "normal", "0002")]
    assert [Path(r["recording"]).name for r in provenance(data, "fan")] == ["a.wav"] * 2 + ["b.flac"] * 3


def test_a_recording_damaged_midway_keeps_the_clips_before_it(tmp_path):
    x = noise(3, SR)
    x[int(2.5 * SR)] = np.nan
    rec = tmp_path / "damaged.wav"
    sf.write(rec, x, SR, subtype="FLOAT")
    opts = ImportOptions(data=tmp_path / "d", machine="fan", clip_seconds=1.0)
    with pytest.raises(AudioError) as exc:
        import_recordings([rec], opts, block_frames=8000)  # the damage comes after two clips' blocks
    assert str(exc.value) == (f"{rec}: contains NaN or infinite samples (first at 2.50 s); "
                              "the 2 clip(s) before it were imported")
    assert [r["clip"] for r in provenance(tmp_path / "d", "fan")] == [
        "train/section_00_source_train_normal_0000.wav", "train/section_00_source_train_normal_0001.wav"]
    assert sorted(p.name for p in opts.folder.iterdir()) == [
        "section_00_source_train_normal_0000.wav", "section_00_source_train_normal_0001.wav"]


# --- bad input: one line, status 2, nothing imported before changed ------------------


@pytest.fixture
def imported(tmp_path, capsys) -> tuple[Path, Path]:
    """A data set with one earlier import, and a good 2 s stereo recording."""
    rec = tmp_path / "good.wav"
    sf.write(rec, np.stack([noise(2, SR), noise(2, SR, seed=1)], axis=1), SR)
    data = tmp_path / "data"
    assert run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")[0] == 0
    return data, rec


def bad_file(tmp_path: Path) -> Path:
    p = tmp_path / "not audio.wav"
    p.write_bytes(b"RIFF\x00\x00 this is no wave file" * 10)
    return p


BAD = [
    # (what, arguments after the recording(s), text the one line must hold)
    ("unreadable", lambda t, rec: [bad_file(t), rec], "not audio.wav: unreadable audio file"),
    ("missing", lambda t, rec: [rec, t / "gone.wav"], "gone.wav: no such file or folder"),
    ("channel", lambda t, rec: [rec, "--channel", "2"], "good.wav: has 2 channels; --channel 2 does not exist"),
    ("section one digit", lambda t, rec: [rec, "--section", "1"], "--section '1': two digits"),
    ("section slash", lambda t, rec: [rec, "--section", "0/"], "--section '0/': two digits"),
    ("section plus", lambda t, rec: [rec, "--section", "+1"], "--section '+1': two digits"),
    ("section space", lambda t, rec: [rec, "--section", "0 "], "--section '0 ': two digits"),
    ("machine slash", lambda t, rec: [rec, "--machine", "fan/2"], "--machine 'fan/2': a machine type"),
    ("machine plus", lambda t, rec: [rec, "--machine", "fan+"], "--machine 'fan+': a machine type"),
    ("machine hash", lambda t, rec: [rec, "--machine", "fan#1"], "--machine 'fan#1': a machine type"),
    ("machine space", lambda t, rec: [rec, "--machine", "fan 2"], "--machine 'fan 2': a machine type"),
    ("machine dot", lambda t, rec: [rec, "--machine", ".fan"], "--machine '.fan': a machine type"),
    ("anomaly in train", lambda t, rec: [rec, "--label", "anomaly"], "--label anomaly needs --split test"),
    ("clip length", lambda t, rec: [rec, "--clip-seconds", "0"], "--clip-seconds 0: at least 0.1"),
    ("hop", lambda t, rec: [rec, "--hop-seconds", "-1"], "--hop-seconds -1: must be positive"),
]


@pytest.mark.parametrize(("what", "args", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_changes_nothing(imported, tmp_path, capsys, what, args, says):
    data, rec = imported
    before = snapshot(data)
    argv = args(tmp_path, rec)
    if "--machine" not in argv:
        argv += ["--machine", "fan"]
    rc, out, err = run(capsys, *argv, "--data", data)
    assert rc == 2 and out == []
    assert len(err) == 1 and err[0].startswith("edge-asd: error: ") and says in err[0], err
    assert snapshot(data) == before


def test_a_bad_choice_is_one_line_from_the_parser(imported, capsys):
    data, rec = imported
    before = snapshot(data)
    with pytest.raises(SystemExit) as exc:
        asd_main(["import", str(rec), "--data", str(data), "--machine", "fan", "--domain", "elsewhere"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--domain: invalid choice: 'elsewhere'" in err[0]
    assert snapshot(data) == before


def test_a_data_folder_that_is_a_file_is_refused(tmp_path, capsys):
    rec = tmp_path / "a.wav"
    sf.write(rec, noise(1, SR), SR)
    data = tmp_path / "data"
    data.write_text("not a folder")
    rc, _, err = run(capsys, rec, "--data", data, "--machine", "fan")
    assert rc == 2 and err == [f"edge-asd: error: {data}: exists and is not a folder"]


def test_a_data_folder_that_is_not_writable_is_refused(imported, capsys):
    """As root, permissions bind only without CAP_DAC_OVERRIDE: the command runs under setpriv then."""
    data, rec = imported
    train = data / "fan" / "train"
    before = snapshot(data)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions would not bind")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    train.chmod(0o555)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edge_asd.cli.main", "import", str(rec), "--data", str(data),
             "--machine", "fan", "--clip-seconds", "1", "--quiet"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        train.chmod(0o755)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"edge-asd: error: {train}: data folder not writable (Permission denied)"]
    assert snapshot(data) == before


def test_a_non_dcase_file_in_the_folder_is_named_before_anything_is_written(imported, capsys):
    data, rec = imported
    stranger = data / "fan" / "train" / "notes.wav"
    sf.write(stranger, noise(1, SR), SR)
    before = snapshot(data)
    rc, _, err = run(capsys, rec, "--data", data, "--machine", "fan", "--clip-seconds", "1")
    assert rc == 2 and len(err) == 1 and f"{stranger}: not a DCASE clip name" in err[0]
    assert snapshot(data) == before


def test_clip_name_round_trips_through_parse_name():
    info = parse_name(Path("d/fan/test") / clip_name("07", "target", "test", "anomaly", 12345))
    assert (info.machine, info.section, info.domain, info.split, info.label, info.index) == (
        "fan", "07", "target", "test", "anomaly", "12345")
