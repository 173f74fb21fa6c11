"""Audio sources: clip cutting, bounded queues, file replay, and a real PortAudio microphone."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.io.audio import SAMPLE_RATE
from edge_asd.daemon.sources import (
    Clip,
    ClipCutter,
    ClipQueue,
    DeviceError,
    FileSource,
    MicSource,
    PortAudioHost,
    resolve_input_device,
)
from edge_asd.daemon.sources.ring import Ring as _Ring

sys.path.insert(0, str(Path(__file__).parent))
from vmic import DEVICE, VirtualMic, unavailable_reason  # noqa: E402

SR = SAMPLE_RATE


def tone(freq: float, seconds: float, rate: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


def drain(source, limit: int = 10_000, timeout: float = 30.0) -> list[Clip]:
    """Every clip until the source's queue is closed and empty."""
    clips = []
    while len(clips) < limit:
        c = source.queue.get(timeout=timeout)
        if c is None:
            assert source.queue.exhausted, "the source stalled instead of ending"
            break
        clips.append(c)
    return clips


def dummy_clip(i: int) -> Clip:
    from datetime import datetime, timezone

    return Clip(np.full(4, i, dtype=np.float32), datetime.now(timezone.utc), -10.0, time.monotonic(), str(i))


# --- clip cutting and queues ------------------------------------------------------------


def test_cutter_without_overlap():
    x = np.arange(25, dtype=np.float32)
    c = ClipCutter(10, 10)
    out = c.feed(x[:7], 7) + c.feed(x[7:], 25)
    assert [e for _, e in out] == [10, 20]
    np.testing.assert_array_equal(out[0][0], x[0:10])
    np.testing.assert_array_equal(out[1][0], x[10:20])


def test_cutter_with_overlap_and_with_gaps():
    x = np.arange(40, dtype=np.float32)
    out = ClipCutter(10, 4).feed(x, 40)
    assert [int(c[0]) for c, _ in out] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert all(e == int(c[-1]) + 1 for c, e in out)
    # hop > clip skips the audio in between (scoring 10 s once a minute)
    c = ClipCutter(10, 15)
    out = c.feed(x[:13], 13) + c.feed(x[13:], 40)
    assert [int(c[0]) for c, _ in out] == [0, 15, 30]


def test_cutter_reset_discards_the_partial_clip():
    c = ClipCutter(10, 10)
    assert c.feed(np.zeros(6, np.float32), 6) == []
    c.reset()
    out = c.feed(np.ones(10, np.float32), 100)
    assert len(out) == 1 and np.all(out[0][0] == 1) and out[0][1] == 100


def test_queue_drops_the_oldest_and_counts():
    q = ClipQueue(2)
    assert not q.put_drop_oldest(dummy_clip(1))
    assert not q.put_drop_oldest(dummy_clip(2))
    assert q.put_drop_oldest(dummy_clip(3))
    assert q.dropped == 1
    assert [q.get(0).origin, q.get(0).origin] == ["2", "3"]
    assert q.get(0.01) is None
    q.close()
    assert q.exhausted


def test_queue_put_wait_applies_backpressure_and_honours_stop():
    q = ClipQueue(1)
    stop = threading.Event()
    assert q.put_wait(dummy_clip(1), stop)
    got = []
    t = threading.Thread(target=lambda: got.append(q.put_wait(dummy_clip(2), stop)))
    t.start()
    assert q.get(5).origin == "1"
    t.join(5)
    assert got == [True] and q.get(0).origin == "2" and q.dropped == 0
    assert q.put_wait(dummy_clip(3), stop)
    stop.set()
    assert q.put_wait(dummy_clip(4), stop) is False, "a stopped producer gives up instead of blocking forever"


def test_ring_buffer_reports_overruns():
    r = _Ring(100)
    r.write(np.arange(60, dtype=np.float32))
    x, end, lost = r.read()
    assert end == 60 and lost == 0 and np.array_equal(x, np.arange(60))
    r.write(np.arange(60, 310, dtype=np.float32))  # 250 samples into a 100-sample ring
    x, end, lost = r.read()
    assert end == 310 and lost == 150
    np.testing.assert_array_equal(x, np.arange(210, 310))
    r.write(np.arange(310, 350, dtype=np.float32))  # wraps around the end of the buffer
    x, end, lost = r.read()
    assert lost == 0 and np.array_equal(x, np.arange(310, 350))


# --- file replay -----------------------------------------------------------------------


def write_wav(path: Path, x: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype=subtype)
    return path


def test_file_replay_cuts_every_file_in_order(tmp_path):
    a = write_wav(tmp_path / "rec" / "a.wav", tone(500, 2.5))  # 2 clips of 1 s, hop 1 s; 0.5 s tail unscored
    b = write_wav(tmp_path / "rec" / "sub" / "b.wav", tone(2000, 1.0))
    src = FileSource("m", tmp_path / "rec", clip_seconds=1.0, realtime=False)
    src.start()
    clips = drain(src)
    assert len(clips) == 3
    assert [Path(c.origin.split("@")[0]).name for c in clips] == ["a.wav", "a.wav", "b.wav"]
    assert all(c.samples.dtype == np.float32 and c.samples.size == SR for c in clips)
    ref_a = sf.read(a, dtype="float32")[0]
    np.testing.assert_array_equal(clips[1].samples, ref_a[SR : 2 * SR])
    assert peak_hz(clips[0].samples) == pytest.approx(500, abs=2)
    assert peak_hz(clips[2].samples) == pytest.approx(2000, abs=2)
    assert clips[0].dbfs == pytest.approx(-9.03, abs=0.1)  # a 0.5 amplitude sine
    # timestamps: the file's start on the replay timeline + the offset of the clip's end;
    # b starts where a (2.5 s) ended, so its first clip ends 2.5 + 1 s after a began.
    assert clips[1].end_time - clips[0].end_time == timedelta(seconds=1)
    assert clips[2].end_time - clips[0].end_time >= timedelta(seconds=2.5)
    assert src.ended and src.health().state == "ended" and src.bad_files == 0
    assert b.exists()


def test_file_replay_with_overlap(tmp_path):
    write_wav(tmp_path / "a.wav", tone(1000, 3.0))
    src = FileSource("m", tmp_path / "a.wav", clip_seconds=1.0, hop_seconds=0.5, realtime=False)
    src.start()
    clips = drain(src)
    assert len(clips) == 5  # starts at 0, 0.5, 1.0, 1.5, 2.0
    assert [c.origin.rsplit("@", 1)[1] for c in clips] == ["0.000s", "0.500s", "1.000s", "1.500s", "2.000s"]


def test_file_replay_loops_until_stopped(tmp_path):
    write_wav(tmp_path / "a.wav", tone(1000, 1.0))
    write_wav(tmp_path / "b.wav", tone(3000, 1.0))
    src = FileSource("m", str(tmp_path / "*.wav"), clip_seconds=1.0, realtime=False, loop=True, queue_clips=2)
    src.start()
    clips = [src.queue.get(timeout=10) for _ in range(5)]
    src.stop()
    assert [round(peak_hz(c.samples)) for c in clips] == [1000, 3000, 1000, 3000, 1000]
    assert src.files_played >= 4
    assert src.queue.dropped == 0, "a fast replay waits for the scorer instead of dropping"


def test_bad_files_are_skipped_and_named(tmp_path, caplog):
    folder = tmp_path / "rec"
    write_wav(folder / "1-good.wav", tone(1000, 1.0))
    (folder / "2-corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    write_wav(folder / "3-short.wav", tone(1000, 0.3))
    write_wav(folder / "4-nan.wav", np.full(SR, np.nan, dtype=np.float32), subtype="FLOAT")
    write_wav(folder / "5-good.wav", tone(2000, 1.0))
    with caplog.at_level(logging.ERROR, logger="edge_asd.sources"):
        src = FileSource("m", folder, clip_seconds=1.0, realtime=False)
        src.start()
        clips = drain(src)
    assert [round(peak_hz(c.samples)) for c in clips] == [1000, 2000]
    assert src.bad_files == 3
    text = caplog.text
    assert "2-corrupt.wav: unreadable audio file" in text
    assert "3-short.wav: 0.30 s long, shorter than one 1 s clip" in text
    assert "4-nan.wav: contains NaN" in text


def test_a_44k1_file_is_resampled_to_16k(tmp_path, caplog):
    write_wav(tmp_path / "cd.wav", tone(1000, 2.0, rate=44100), rate=44100)
    with caplog.at_level(logging.INFO, logger="edge_asd.sources"):
        src = FileSource("m", tmp_path / "cd.wav", clip_seconds=1.0, realtime=False)
        src.start()
        clips = drain(src)
    assert len(clips) == 2 and all(c.samples.size == SR for c in clips)
    assert peak_hz(clips[0].samples) == pytest.approx(1000, abs=2)
    assert clips[0].dbfs == pytest.approx(-9.03, abs=0.1), "resampling keeps the level"
    assert "44100 Hz; resampling to 16000 Hz" in caplog.text


def test_a_stereo_file_contributes_the_configured_channel(tmp_path, caplog):
    stereo = np.stack([tone(500, 1.0), tone(3000, 1.0)], axis=1)
    write_wav(tmp_path / "st.wav", stereo)
    with caplog.at_level(logging.INFO, logger="edge_asd.sources"):
        src = FileSource("m", tmp_path / "st.wav", clip_seconds=1.0, realtime=False, channel=1)
        src.start()
        (clip,) = drain(src)
    assert peak_hz(clip.samples) == pytest.approx(3000, abs=2)
    assert "has 2 channels; using channel 1" in caplog.text
    src = FileSource("m", tmp_path / "st.wav", clip_seconds=1.0, realtime=False, channel=2)
    src.start()
    assert drain(src) == [] and src.bad_files == 1 and "channel 2 does not exist" in src.health().last_error


def test_realtime_replay_never_delivers_a_clip_before_its_time(tmp_path):
    write_wav(tmp_path / "a.wav", tone(1000, 1.0))
    t0 = time.monotonic()
    src = FileSource("m", tmp_path / "a.wav", clip_seconds=0.5, realtime=True)
    src.start()
    clips = drain(src)
    assert len(clips) == 2
    # Paced by the audio's own duration (a lower bound: a slow machine cannot fail it).
    assert clips[0].ready_monotonic - t0 >= 0.5 and clips[1].ready_monotonic - t0 >= 1.0
    assert clips[1].end_time - clips[0].end_time == timedelta(seconds=0.5)


# --- a real microphone (PulseAudio virtual source read through PortAudio) ------------------

needs_vmic = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"virtual microphone unavailable: {unavailable_reason()}")


@pytest.fixture
def vmic(monkeypatch):
    """A running virtual microphone, with PortAudio in this process re-initialized to see it."""
    mic = VirtualMic(rate=16000, channels=2)
    mic.start()
    try:
        for k, v in mic.env.items():
            monkeypatch.setenv(k, v)
        host = PortAudioHost()
        assert host.rescan()
        yield mic, host
    finally:
        mic.stop()


def feed_tones(mic: VirtualMic, tmp_path: Path, left: float, right: float) -> None:
    wav = write_wav(tmp_path / "feed.wav", np.stack([tone(left, 2.0), tone(right, 2.0)], axis=1))
    mic.feed(wav, loop=True)


def mic_clips(src: MicSource, n: int) -> list[Clip]:
    src.start()
    try:
        clips = []
        for _ in range(n):
            c = src.queue.get(timeout=15)
            assert c is not None, f"no clip from the microphone: {src.health()}"
            clips.append(c)
        return clips
    finally:
        src.stop()


@needs_vmic
def test_mic_clips_have_the_right_length_and_content(vmic, tmp_path):
    mic, host = vmic
    # One channel opened on a two-channel source gets PulseAudio's downmix: feed both the same.
    feed_tones(mic, tmp_path, 1000, 1000)
    src = MicSource("m", DEVICE, clip_seconds=1.0, hop_seconds=0.5, samplerate=16000, host=host)
    clips = mic_clips(src, 3)
    for c in clips:
        assert c.samples.dtype == np.float32 and c.samples.size == SR
        assert peak_hz(c.samples) == pytest.approx(1000, abs=2)
        assert c.dbfs == pytest.approx(-9.03, abs=0.5)
    ends = [c.end_time for c in clips]
    # hop_seconds apart, give or take the scheduling of PortAudio's callback thread
    assert ends == sorted(ends) and abs((ends[2] - ends[1]).total_seconds() - 0.5) < 0.4
    assert src.health().overruns == 0 and src.rate == 16000


@needs_vmic
def test_mic_at_48k_is_resampled_and_channel_selected(vmic, tmp_path):
    mic, host = vmic
    feed_tones(mic, tmp_path, 1000, 2500)
    src = MicSource("m", DEVICE, clip_seconds=1.0, channel=1, samplerate=48000, host=host)
    clips = mic_clips(src, 2)
    assert src.rate == 48000
    for c in clips:
        assert c.samples.size == SR
        assert peak_hz(c.samples) == pytest.approx(2500, abs=2), "channel 1 carries the 2.5 kHz tone"


@needs_vmic
def test_machines_on_channels_of_one_device_share_one_stream(vmic, tmp_path):
    mic, host = vmic
    feed_tones(mic, tmp_path, 1000, 2500)
    left = MicSource("left", DEVICE, clip_seconds=0.5, channel=0, samplerate=48000, host=host)
    right = MicSource("right", DEVICE, clip_seconds=0.5, channel=1, samplerate=48000, host=host)
    left.start()
    try:
        assert left.queue.get(timeout=15) is not None
        right.start()  # needs a second channel: the stream is reopened wider, left moves over
        try:
            got_right = [right.queue.get(timeout=15) for _ in range(2)]
            left.queue.discard()
            got_left = [left.queue.get(timeout=15) for _ in range(2)]
            assert host.open_streams == 1, "one device, one stream (a raw ALSA device opens only once)"
            left_health = left.health()
        finally:
            right.stop()
    finally:
        left.stop()
    assert all(c is not None and peak_hz(c.samples) == pytest.approx(2500, abs=4) for c in got_right)
    assert all(c is not None and peak_hz(c.samples) == pytest.approx(1000, abs=4) for c in got_left)
    assert left_health.state == "ok" and left_health.reopens == 0, "widening the stream is not a failure"
    assert host.open_streams == 0


@needs_vmic
def test_mic_device_that_disappears_is_reported_and_reopened(vmic, tmp_path):
    mic, host = vmic
    feed_tones(mic, tmp_path, 1000, 1000)
    src = MicSource("m", DEVICE, clip_seconds=0.5, samplerate=16000, host=host, retry_min_s=0.2, retry_max_s=0.5)
    src.start()
    try:
        assert src.queue.get(timeout=15) is not None
        mic.kill_server()
        deadline = time.monotonic() + 20
        while src.health().state != "failing" and time.monotonic() < deadline:
            time.sleep(0.05)
        h = src.health()
        assert h.state == "failing" and h.last_error, h
        mic.restart_server()
        src.queue.discard()
        deadline = time.monotonic() + 30
        clip = None
        while clip is None and time.monotonic() < deadline:
            clip = src.queue.get(timeout=1)
        assert clip is not None, f"capture did not resume: {src.health()}"
        assert peak_hz(clip.samples) == pytest.approx(1000, abs=4)
        assert src.health().state == "ok" and src.health().reopens >= 1
        # The old failure's text is cleared with the recovery: a later stall must not be reported under it.
        assert src.health().last_error is None, src.health()
    finally:
        src.stop()


def test_unknown_devices_are_refused_with_what_exists():
    with pytest.raises(DeviceError, match="no audio input device named 'no-such-mic-xyz'|PortAudio is not available"):
        resolve_input_device("no-such-mic-xyz")
    with pytest.raises(DeviceError, match="index 4242|PortAudio is not available"):
        resolve_input_device(4242)


@needs_vmic
def test_channel_beyond_the_device_is_refused(vmic):
    with pytest.raises(DeviceError, match="channel 99 does not exist"):
        resolve_input_device(DEVICE, channel=99)
