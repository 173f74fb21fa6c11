"""`edge-asd record`: a microphone into DCASE clips (issue 25, items 2 and 5).

Every test records from a real PortAudio stream: PulseAudio's virtual microphone
(tests/vmic.py), fed by its own process, read by `edge-asd record` in a subprocess as
a user would run it. Recordings are a few seconds with 1 s clips.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.io.dcase import list_clips
from vmic import DEVICE, VirtualMic, unavailable_reason

SR = 16000

needs_vmic = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"virtual microphone unavailable: {unavailable_reason()}")


def tone(seconds: float, rate: int, hz: float = 1000.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spec))])


def provenance(data: Path, machine: str) -> list[dict]:
    with open(data / machine / "import.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def mic(tmp_path):
    """A running virtual microphone at 48 kHz stereo."""
    m = VirtualMic(rate=48000, channels=2)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def feed(mic: VirtualMic, tmp_path: Path, left: np.ndarray, right: np.ndarray | None = None) -> None:
    wav = tmp_path / f"feed-{time.monotonic_ns()}.wav"
    sf.write(wav, np.stack([left, left if right is None else right], axis=1), 48000, subtype="PCM_16")
    mic.feed(wav, loop=True)


def record_cmd(exe: str, data: Path, *args: str, minutes: float = 0.05) -> list[str]:
    return [exe, "record", "--data", str(data), "--machine", "pump", "--mic", DEVICE, "--minutes", f"{minutes:g}",
            "--clip-seconds", "1", *args]


def record(exe: str, mic: VirtualMic | None, data: Path, *args: str, minutes: float = 0.05) -> subprocess.CompletedProcess:
    env = {**os.environ, **(mic.env if mic else {})}
    return subprocess.run(record_cmd(exe, data, *args, minutes=minutes), env=env, capture_output=True, text=True,
                          timeout=60)


@needs_vmic
def test_record_writes_16k_clips_of_the_chosen_channel_with_meter_and_progress(mic, edge_asd_exe, tmp_path):
    feed(mic, tmp_path, tone(2, 48000, hz=500), tone(2, 48000, hz=1500))
    data = tmp_path / "d"
    # hop 0.5 s over 3 s: whole windows at 0, 0.5, ..., 2.0 s; the one at 2.5 s is the short tail
    done = record(edge_asd_exe, mic, data, "--channel", "1", "--hop-seconds", "0.5", "--section", "03",
                  "--domain", "target")
    assert done.returncode == 0, done.stderr
    clips = list_clips(data, "pump", "train")
    assert len(clips) == 5
    assert {(c.section, c.domain, c.split, c.label) for c in clips} == {("03", "target", "train", "normal")}
    for c in clips:
        x, rate = sf.read(c.path)
        assert (rate, x.shape) == (SR, (SR,))
        assert peak_hz(x) == pytest.approx(1500, abs=3)  # channel 1, not channel 0's 500 Hz
    rows = provenance(data, "pump")
    assert [r["clip"] for r in rows] == [f"train/{c.name}" for c in clips]
    assert [float(r["start_s"]) for r in rows] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert {r["recording"] for r in rows} == {f"mic:{DEVICE}"}
    assert done.stdout.strip() == (f"mic:{DEVICE}: 5 clips -> {data / 'pump' / 'train'} (section 03, target, normal); "
                                   "skipped 0 silent, 0 clipped, 1 short")
    err = done.stderr.replace("\r", "\n")
    assert "recording pulse" in err and "3.0/3" in err  # the progress bar, in seconds
    # the level meter: a 0.3 sine is -13.5 dBFS RMS and -10.5 dBFS peak
    levels = [float(v) for v in re.findall(r"level\s+(-?\d+\.\d) dBFS", err)]
    assert levels and abs(np.median(levels) + 13.5) < 1.5
    assert "warning" not in err


@needs_vmic
def test_silent_and_clipped_audio_is_skipped_and_clipping_is_warned(mic, edge_asd_exe, tmp_path):
    x = np.concatenate([np.zeros(48000 * 2, np.float32), np.clip(tone(2, 48000, amp=1.5), -1, 1)])
    feed(mic, tmp_path, x)
    data = tmp_path / "d"
    done = record(edge_asd_exe, mic, data, minutes=4 / 60)
    assert done.returncode == 0, done.stderr
    # 4 s of a 4 s loop that starts wherever the feeder is: windows wholly in the silence are silent,
    # those that reach into the clipped half are clipped (1 + 3, or 2 + 2 when they happen to line up)
    summary = re.fullmatch(r"mic:pulse: 0 clips -> (.+) \(section 00, source, normal\); "
                           r"skipped (\d) silent, (\d) clipped, 0 short", done.stdout.strip())
    assert summary and summary[1] == str(data / "pump" / "train"), done.stdout
    silent, clipped = int(summary[2]), int(summary[3])
    assert silent + clipped == 4 and silent >= 1 and clipped >= 2
    assert "warning: clipping at" in done.stderr and "lower the input gain" in done.stderr
    assert list((data / "pump" / "train").iterdir()) == []


@needs_vmic
def test_numbering_continues_after_an_import_and_test_clips_take_labels(mic, edge_asd_exe, tmp_path):
    from edge_asd.cli.main import main as asd_main

    data = tmp_path / "d"
    rec = tmp_path / "old fault.wav"
    sf.write(rec, tone(2, 44100, hz=700), 44100)
    assert asd_main(["import", str(rec), "--data", str(data), "--machine", "pump", "--clip-seconds", "1",
                     "--split", "test", "--label", "anomaly", "--quiet"]) == 0
    feed(mic, tmp_path, tone(2, 48000, hz=900))
    done = record(edge_asd_exe, mic, data, "--split", "test", "--label", "anomaly", "--quiet", minutes=2 / 60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet: no bar, no meter
    clips = list_clips(data, "pump", "test")
    assert [c.name for c in clips] == [f"section_00_source_test_anomaly_{i:04d}.wav" for i in range(4)]
    assert [peak_hz(sf.read(c.path)[0]) for c in clips] == pytest.approx([700, 700, 900, 900], abs=3)
    assert [r["recording"] for r in provenance(data, "pump")] == [str(rec)] * 2 + [f"mic:{DEVICE}"] * 2


@needs_vmic
def test_ctrl_c_in_the_middle_keeps_every_finished_clip(mic, edge_asd_exe, tmp_path):
    feed(mic, tmp_path, tone(2, 48000))
    data = tmp_path / "d"
    proc = subprocess.Popen(record_cmd(edge_asd_exe, data, minutes=1), env={**os.environ, **mic.env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = data / "pump" / "train"
        deadline = time.monotonic() + 30
        while len(list(folder.glob("*.wav"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)  # in the middle of the third clip
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    clips = list_clips(data, "pump", "train")
    assert 2 <= len(clips) <= 4
    for c in clips:
        info = sf.info(str(c.path))
        assert (info.samplerate, info.frames, info.subtype) == (SR, SR, "PCM_16")
    assert [r["clip"] for r in provenance(data, "pump")] == [f"train/{c.name}" for c in clips]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no half-written clip
    assert out.strip().endswith(f"{len(clips)} clips -> {folder} (section 00, source, normal); "
                                "skipped 0 silent, 0 clipped, 1 short")
    assert "stopped by Ctrl-C after" in err and "every finished clip is kept" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--label", "anomaly"], "--label anomaly needs --split test"),
    (["--minutes", "0"], "--minutes 0: must be a positive number of minutes"),
    (["--section", "1/2"], "--section '1/2': two digits"),
    (["--machine", "pump #2"], "--machine 'pump #2'"),
])
def test_bad_options_are_one_line_and_nothing_is_written(edge_asd_exe, tmp_path, args, message):
    data = tmp_path / "d"
    cmd = record_cmd(edge_asd_exe, data) + args  # later options win
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
    assert not data.exists()


@needs_vmic
def test_a_microphone_that_does_not_exist_is_named_and_nothing_is_written(mic, edge_asd_exe, tmp_path):
    data = tmp_path / "d"
    done = subprocess.run(record_cmd(edge_asd_exe, data)[:-6] + ["--mic", "no such mic", "--minutes", "0.05"],
                          env={**os.environ, **mic.env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "--mic 'no such mic': no audio input device named 'no such mic'; input devices:" in line
    assert not data.exists()
