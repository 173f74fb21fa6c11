"""`edge-asd score` on a user's own recordings: any name, any length, one row per window (issue 13)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.cli.main import main as asd_main
from edge_asd.scoring.alerts import Debouncer
from edge_asd.io.dcase import list_clips
from edge_asd.daemon.fileprogress import FileProgress
from edge_asd.runtime.scorer import load_scorer
from edge_asd.daemon.sources import FileSource

SR = 16000
CLIP_S = 4.0  # the tiny bundle's clip length (tests/conftest.py writes 4 s clips)


def read_rows(out: Path) -> list[dict]:
    with open(out / "windows.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def score(exe: str, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "score", str(bundle), *args, "--quiet"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def normal_audio(tiny_data) -> np.ndarray:
    """Ten normal training clips of section 00 back to back: 40 s that sound like the machine."""
    clips = [c for c in list_clips(tiny_data, "fan", "train") if c.section == "00" and c.domain == "source"]
    return np.concatenate([sf.read(c.path, dtype="float32")[0] for c in clips[:10]])


@pytest.fixture(scope="module")
def loud_middle(normal_audio, tmp_path_factory) -> Path:
    """Normal sound, 16 s of a full-scale square wave (windows 5-8), normal sound again: 56 s, 14 windows."""
    t = np.arange(int(4 * CLIP_S * SR)) / SR
    loud = (0.9 * np.sign(np.sin(2 * np.pi * 3000 * t))).astype(np.float32)
    n5 = int(5 * CLIP_S * SR)
    x = np.concatenate([normal_audio[:n5], loud, normal_audio[n5 : 2 * n5]])
    path = tmp_path_factory.mktemp("rec") / "pump_2026-11-01T10.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    return path


@pytest.mark.parametrize(("name", "expect"), [
    ("pump_2026-11-01T10.wav", datetime(2026, 11, 1, 10)),
    ("pump_2026-11-01_10-30-15.wav", datetime(2026, 11, 1, 10, 30, 15)),
    ("line2 20261101T103000.flac", datetime(2026, 11, 1, 10, 30)),
    ("compressor room.wav", None),
    ("serial_1234567890.wav", None),  # digits, not a date
    ("section_00_source_test_normal_0001.wav", None),
])
def test_wall_time_from_a_file_name(name, expect):
    from edge_asd.offline.replay import time_from_name

    assert time_from_name(name) == expect


def test_any_name_needs_a_section_from_a_bundle_of_several_and_takes_one(normal_audio, tiny_bundle, edge_asd_exe,
                                                                         tmp_path):
    rec = tmp_path / "recordings"
    rec.mkdir()
    for hour in (10, 11):
        sf.write(rec / f"pump_2026-11-01T{hour}.wav", normal_audio[: int(2 * CLIP_S * SR)], SR, subtype="PCM_16")
    r = score(edge_asd_exe, tiny_bundle, str(rec), "--out", str(tmp_path / "a"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in r.stderr, r.stderr
    assert all("give --section" in line and "(00, 01)" in line for line in lines[:2]), lines

    r = score(edge_asd_exe, tiny_bundle, str(rec), "--out", str(tmp_path / "b"), "--section", "01")
    assert r.returncode == 0, r.stderr
    rows = read_rows(tmp_path / "b")
    assert [(row["file"], row["window"]) for row in rows] == [
        ("pump_2026-11-01T10.wav", "0"), ("pump_2026-11-01T10.wav", "1"),
        ("pump_2026-11-01T11.wav", "0"), ("pump_2026-11-01T11.wav", "1"),
    ]
    # wall times from the names
    assert [row["start_time"] for row in rows] == [
        "2026-11-01T10:00:00.000", "2026-11-01T10:00:04.000", "2026-11-01T11:00:00.000", "2026-11-01T11:00:04.000"]
    assert rows[1]["end_time"] == "2026-11-01T10:00:08.000"
    thr = load_scorer(tiny_bundle).thresholds["01"]
    assert all(float(row["threshold"]) == thr for row in rows), "section 01's threshold, not 00's"
    assert not list((tmp_path / "b").glob("anomaly_score_*.csv")), "own recordings are not DCASE submissions"


def test_an_unknown_section_is_refused_naming_the_sections(normal_audio, tiny_bundle, edge_asd_exe, tmp_path):
    path = tmp_path / "line3.wav"
    sf.write(path, normal_audio[: int(CLIP_S * SR)], SR)
    r = score(edge_asd_exe, tiny_bundle, str(path), "--out", str(tmp_path / "o"), "--section", "07")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'07' is not in this bundle (it has 00, 01)" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_a_long_recording_streams_in_blocks_and_matches_the_clip_scorer(tiny_bundle, tmp_path, monkeypatch, capsys):
    """Three minutes at the daemon's clip length and hop: no whole-file read, the numbers ClipScorer gives."""
    minutes = 3
    x = (0.1 * np.random.default_rng(3).standard_normal(minutes * 60 * SR)).astype(np.float32)
    path = tmp_path / "compressor room.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    def whole(*args, **kwargs):
        raise AssertionError("a recording was read whole")

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    monkeypatch.setattr(sf, "read", whole)
    out = tmp_path / "o"
    assert asd_main(["score", str(tiny_bundle), str(path), "--out", str(out), "--section", "00", "--json",
                     "--quiet"]) == 0
    monkeypatch.undo()
    assert reads and set(reads) == {FileSource.block_frames}, "only block reads"
    assert len(reads) == -(-x.size // FileSource.block_frames) + 1  # every block once, then the end

    n = int(minutes * 60 / CLIP_S)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["window"] for r in rows] == list(range(n))
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(k * CLIP_S, (k + 1) * CLIP_S) for k in range(n)]
    assert all(r["start_time"] == "" for r in rows), "no wall time in the name and no --start"
    scorer = load_scorer(tiny_bundle)
    clip_n = int(CLIP_S * SR)
    for r in rows:
        k = r["window"]
        ref = scorer.score(x[k * clip_n : (k + 1) * clip_n], "00")
        assert (r["score"], r["threshold"], r["anomalous"], r["p_target"]) == pytest.approx(
            (ref.score, ref.threshold, ref.anomalous, ref.p_target), rel=1e-6)
    csv_rows = read_rows(out)
    assert [float(c["score"]) for c in csv_rows] == [r["score"] for r in rows], "the CSV keeps every digit"


def test_hop_and_clip_options_cut_as_the_daemon_does(normal_audio, tiny_bundle, tmp_path, capsys):
    path = tmp_path / "a.wav"
    sf.write(path, normal_audio[: int(3 * CLIP_S * SR)], SR)
    assert asd_main(["score", str(tiny_bundle), str(path), "--out", str(tmp_path / "o"), "--section", "00",
                     "--clip-seconds", "6", "--hop-seconds", "2", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    src = FileSource("m", path, clip_seconds=6, hop_seconds=2, realtime=False)
    src.start()
    daemon_clips = []
    while (c := src.queue.get(timeout=30)) is not None:
        daemon_clips.append(c)
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(0.0, 6.0), (2.0, 8.0), (4.0, 10.0), (6.0, 12.0)]
    assert [c.origin.rsplit("@", 1)[1] for c in daemon_clips] == [f"{r['start_s']:.3f}s" for r in rows]
    assert [r["dbfs"] for r in rows] == pytest.approx([c.dbfs for c in daemon_clips], abs=1e-9)


def test_alerts_are_raised_and_cleared_as_the_daemons_debouncer_does(loud_middle, tiny_bundle, tmp_path, capsys):
    args = ["score", str(tiny_bundle), str(loud_middle), "--out", str(tmp_path / "o"), "--section", "00",
            "--threshold", "20", "--json", "--quiet"]
    assert asd_main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 14
    assert [r["anomalous"] for r in rows] == [5 <= i <= 8 for i in range(14)], [r["score"] for r in rows]
    deb = Debouncer(3, 3)  # the daemon's [alerts] defaults
    expected = []
    for r in rows:
        change = deb.update(r["anomalous"])
        expected.append((deb.anomalous, {"anomalous": "raised", "normal": "cleared"}.get(change or "", "")))
    assert [(r["alert"], r["event"]) for r in rows] == expected
    assert [i for i, r in enumerate(rows) if r["event"]] == [7, 11]  # the third loud window; the third quiet one
    assert rows[7]["end_time"] == "2026-11-01T10:00:32.000"

    assert asd_main(args[:-2] + ["--raise-after", "1", "--clear-after", "4", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i, r["event"]) for i, r in enumerate(rows) if r["event"]] == [(5, "raised"), (12, "cleared")]


def test_plot_and_evidence(loud_middle, normal_audio, tiny_bundle, edge_asd_exe, tmp_path):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, normal_audio[: int(2 * CLIP_S * SR)], SR, subtype="PCM_16")
    out, ev = tmp_path / "o", tmp_path / "ev"
    r = score(edge_asd_exe, tiny_bundle, str(loud_middle), str(quiet), "--out", str(out), "--section", "00",
              "--threshold", "20", "--plot", "--evidence", str(ev), "--machine", "pump1")
    assert r.returncode == 0, r.stderr
    for name in (loud_middle.stem, quiet.stem):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    saved = sorted((ev / "pump1" / loud_middle.stem).glob("*.wav"))
    # every anomalous window, named as the daemon names evidence: <UTC end time>_seq<n>.wav
    assert [p.name for p in saved] == [f"20261101T1000{24 + 4 * k:02d}.000Z_seq{5 + k}.wav" for k in range(4)]
    audio, rate = sf.read(saved[0], dtype="float32")
    full = sf.read(loud_middle, dtype="float32")[0]
    assert rate == SR and np.allclose(audio, full[int(5 * CLIP_S * SR) : int(6 * CLIP_S * SR)], atol=1e-4)
    assert not (ev / "pump1" / quiet.stem).exists(), "no evidence of a recording with no anomalous window"


def test_plot_without_matplotlib_is_one_line(normal_audio, tiny_bundle, tmp_path, monkeypatch, capsys):
    path = tmp_path / "a.wav"
    sf.write(path, normal_audio[: int(CLIP_S * SR)], SR)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert asd_main(["score", str(tiny_bundle), str(path), "--out", str(tmp_path / "o"), "--section", "00",
                     "--plot", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plot needs matplotlib" in err[0], err


def test_start_gives_wall_times_to_unnamed_recordings(normal_audio, tiny_bundle, tmp_path, capsys):
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, normal_audio[: int(2.5 * CLIP_S * SR)], SR)  # 10 s: 2 windows and a tail
    assert asd_main(["score", str(tiny_bundle), str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "--out",
                     str(tmp_path / "o"), "--section", "00", "--start", "2026-11-01T10:00:00Z", "--json",
                     "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["start_time"]) for r in rows] == [
        ("a.wav", "2026-11-01T10:00:00.000Z"), ("a.wav", "2026-11-01T10:00:04.000Z"),
        ("b.wav", "2026-11-01T10:00:10.000Z"), ("b.wav", "2026-11-01T10:00:14.000Z"),  # b follows a's 10 s
    ]
    assert asd_main(["score", str(tiny_bundle), str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"),
                     "--section", "00", "--start", "10 o'clock"]) == 2
    assert "--start \"10 o'clock\": not an ISO-8601 time" in capsys.readouterr().err


def test_bad_recordings_are_named_and_skipped(normal_audio, tiny_bundle, edge_asd_exe, tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(rec / "1-good.wav", normal_audio[: int(CLIP_S * SR)], SR)
    (rec / "2-corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    (rec / "3-empty.wav").write_bytes(b"")
    sf.write(rec / "4-short.wav", normal_audio[: SR], SR)
    sf.write(rec / "5-nan.wav", np.full(int(CLIP_S * SR), np.nan, dtype=np.float32), SR, subtype="FLOAT")
    half = np.concatenate([normal_audio[: int(3 * CLIP_S * SR)], np.full(int(CLIP_S * SR), np.nan, dtype=np.float32)])
    sf.write(rec / "6-nan-later.wav", half, SR, subtype="FLOAT")
    sf.write(rec / "7-good.wav", normal_audio[: int(CLIP_S * SR)], SR)
    r = score(edge_asd_exe, tiny_bundle, str(rec), "--out", str(tmp_path / "o"), "--section", "00")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 6, r.stderr
    expect = {
        "2-corrupt.wav": "unreadable audio file", "3-empty.wav": "empty file (0 bytes)",
        "4-short.wav": "shorter than one 4 s clip", "5-nan.wav": "NaN or infinite samples",
        "6-nan-later.wav": "window(s) before it were scored)",
    }
    for line, (name, why) in zip(lines, expect.items()):
        assert line.startswith(f"edge-asd: skipped: {rec / name}: ") and why in line, (line, name)
    assert lines[-1].startswith("edge-asd: error: 5 of 7 files could not be scored")
    files = [row["file"] for row in read_rows(tmp_path / "o")]
    assert files[0] == "1-good.wav" and files[-1] == "7-good.wav" and set(files[1:-1]) == {"6-nan-later.wav"}


def test_a_restarted_file_source_continues_after_the_last_journaled_clip(tmp_path):
    from edge_asd.mqtt.outbox import Outbox

    rec = tmp_path / "rec"
    rec.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(rec / name, (0.1 * rng.standard_normal(int(2.5 * SR))).astype(np.float32), SR)

    def run(box: Outbox, journal: int, **kw) -> list:
        """Clips a source gives; the first ``journal`` are journaled with their positions, as the scorer does."""
        src = FileSource("m", rec, clip_seconds=1.0, hop_seconds=0.5, realtime=False,
                         progress=FileProgress(box, tmp_path / "outbox.sqlite.files.json"), **kw)
        src.start()
        clips = []
        while (c := src.queue.get(timeout=30)) is not None:
            clips.append(c)
            if len(clips) <= journal:
                box.append_with_seq("m", "t", lambda seq: b"{}", position=c.position)
            if len(clips) == 8:
                break
        src.stop()
        return clips

    def where(clips) -> list[str]:
        return [f"{Path(c.origin.split('@')[0]).name}@{c.origin.split('@')[1]}" for c in clips]

    with Outbox(tmp_path / "outbox.sqlite") as box:
        first = run(box, journal=6)  # killed after journaling the second clip of b
        assert where(first) == [f"{n}@{o:.3f}s" for n in ("a.wav", "b.wav") for o in (0.0, 0.5, 1.0, 1.5)]
        again = run(box, journal=0)
        assert where(again)[:2] == ["b.wav@1.000s", "b.wav@1.500s"], "continues with the first clip not journaled"
        assert again[0].end_time > first[5].end_time, "timestamps do not jump back across the restart"
        assert (again[0].end_time - first[5].end_time).total_seconds() == pytest.approx(0.5, abs=0.01)
        # In a loop, the pass after the restart starts at the first file again.
        box.append_with_seq("m", "t", lambda seq: b"{}", position=again[1].position)  # the last clip of b
        looped = run(box, journal=0, loop=True)
        assert where(looped) == [f"c.wav@{o:.3f}s" for o in (0.0, 0.5, 1.0, 1.5)] + \
            [f"a.wav@{o:.3f}s" for o in (0.0, 0.5, 1.0, 1.5)]
    # Pointed at another folder, a source starts at its beginning.
    assert FileProgress(Outbox(tmp_path / "outbox.sqlite")).resume("m", str(tmp_path / "other")) is None


def test_the_finished_file_an_older_daemon_recorded_is_still_honoured(tmp_path):
    from edge_asd.mqtt.outbox import Outbox

    rec = tmp_path / "rec"
    rec.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(rec / name, np.full(int(2 * SR), 0.1, np.float32), SR)
    legacy = tmp_path / "outbox.sqlite.files.json"
    legacy.write_text(json.dumps({f"m\t{rec}": str(rec / "a.wav")}))
    with Outbox(tmp_path / "outbox.sqlite") as box:
        src = FileSource("m", rec, clip_seconds=1.0, realtime=False, progress=FileProgress(box, legacy))
        src.start()
        clips = []
        while (c := src.queue.get(timeout=30)) is not None:
            clips.append(c)
        assert {Path(c.origin.split("@")[0]).name for c in clips} == {"b.wav"}


def test_score_and_the_daemon_give_the_same_windows_scores_and_alerts(loud_middle, tiny_bundle, edge_asd_exe,
                                                                      tmp_path, daemons):
    """One recording (32 kHz, so both resample) through `edge-asd score` and through `edge-asd run` + a real broker."""
    sys.path.insert(0, str(Path(__file__).parent))
    from mqtt_broker import Broker, require_mosquitto
    from daemon_proc import Daemon, scores, write_config

    from edge_asd.io.audio import resample

    require_mosquitto()
    rec = tmp_path / "rec"
    rec.mkdir()
    path = rec / "line1_2026-11-01T10.wav"
    sf.write(path, resample(sf.read(loud_middle, dtype="float32")[0], SR, 32000), 32000, subtype="FLOAT")
    r = score(edge_asd_exe, tiny_bundle, str(path), "--out", str(tmp_path / "o"), "--section", "00",
              "--hop-seconds", "2", "--threshold", "20", "--raise-after", "2", "--clear-after", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == (56 - 4) // 2 + 1
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/#")
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{rec}",
                           machine='realtime = false\nsection = "00"\nhop_seconds = 2.0\nthreshold = 20.0\n',
                           alerts="raise_after = 2\nclear_after = 2\n")
        d = Daemon(edge_asd_exe, cfg)
        daemons.append(d)
        assert d.wait(120) == 0, d.log()
        sub.wait_for(lambda _: len(scores(sub)) >= len(rows), what="a score per window")
        msgs = scores(sub)
        alerts = [m.json() for m in sub.on("edge_asd/box1/fan1/alert")]
    assert [m["seq"] for m in msgs] == list(range(1, len(rows) + 1))
    for row, m in zip(rows, msgs):
        assert (row["score"], row["p_target"], row["dbfs"]) == pytest.approx((m["score"], m["p_target"], m["dbfs"]),
                                                                             rel=1e-6), row["window"]
        assert (row["threshold"], row["anomalous"]) == (m["threshold"], m["anomalous"])
        # ratio on the overriding threshold (1 where alerts start), and the same deviating bands
        assert row["ratio"] == pytest.approx(m["ratio"], rel=1e-5) and (m["ratio"] > 1) == m["anomalous"]
        assert row["bands"] == m["bands"], row["window"]
    events = [(row["window"] + 1, {"raised": "anomalous", "cleared": "normal"}[row["event"]]) for row in rows
              if row["event"]]
    assert events and [(a["seq"], a["state"]) for a in alerts] == events
    assert all(a["bands"] == msgs[a["seq"] - 1]["bands"] and a["ratio"] == msgs[a["seq"] - 1]["ratio"] for a in alerts)
    assert {e for _, e in events} == {"anomalous", "normal"}
