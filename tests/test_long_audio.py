"""A recording of many hours: the daemon's file replay streams it, `edge-asd score` refuses it with a way out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 16000
HOUR_S = 3600
CLIP_S = 10.0
DECODED_MB = HOUR_S * SR * 4 / 2**20  # the whole file as float32, what reading it at once would take


@pytest.fixture(scope="module")
def hour_wav(tmp_path_factory) -> Path:
    """One hour of PCM_16 noise (115 MB), written a minute at a time so that the test itself stays small."""
    path = tmp_path_factory.mktemp("long") / "section_00_source_test_normal_0001.wav"
    minute = (0.1 * np.random.default_rng(0).standard_normal(60 * SR)).astype(np.float32)
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(HOUR_S // 60):
            f.write(minute)
    assert sf.info(path).frames == HOUR_S * SR
    return path


# Runs in a fresh interpreter: the peak resident size (VmHWM) of the test process
# already holds whatever earlier tests loaded, which would hide any growth.
REPLAY = """
import json, sys
from edge_asd.daemon.sources import FileSource

def hwm_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024

before = hwm_mb()
src = FileSource("m", sys.argv[1], clip_seconds=float(sys.argv[2]), realtime=False)
src.start()
n, last = 0, None
while True:
    clip = src.queue.get(timeout=300)
    if clip is None:
        break
    assert clip.samples.size == int(float(sys.argv[2]) * 16000)
    n, last = n + 1, clip.origin
print(json.dumps({"clips": n, "last": last, "bad_files": src.bad_files, "growth_mb": hwm_mb() - before}))
"""


def test_an_hour_long_file_replays_in_bounded_memory(hour_wav):
    proc = subprocess.run([sys.executable, "-c", REPLAY, str(hour_wav), str(CLIP_S)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["clips"] == HOUR_S / CLIP_S and out["bad_files"] == 0
    assert out["last"] == f"{hour_wav}@{HOUR_S - CLIP_S:.3f}s"
    # A generous bound: streaming needs a few blocks and queued clips (a few MB);
    # reading the file whole would need all of DECODED_MB (230 MB) at once.
    assert out["growth_mb"] < DECODED_MB / 4, out


def _score(edge_asd_exe: str, bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([edge_asd_exe, "score", str(bundle), *args, "--quiet"], capture_output=True, text=True,
                          timeout=300)


def test_score_refuses_a_long_file_and_scores_the_others(hour_wav, tiny_bundle, edge_asd_exe, tmp_path):
    good = tmp_path / "section_00_source_test_normal_0000.wav"
    sf.write(good, (0.1 * np.random.default_rng(1).standard_normal(4 * SR)).astype(np.float32), SR, subtype="PCM_16")
    out = tmp_path / "sub"
    r = _score(edge_asd_exe, tiny_bundle, str(hour_wav), str(good), "--out", str(out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"edge-asd: skipped: {hour_wav}: 3600 s long, more than the 600 s"), lines[0]
    assert "edge-asd run" in lines[0] and "file:" in lines[0] and "--max-seconds" in lines[0]
    assert lines[1].startswith("edge-asd: error: 1 of 2 files could not be scored")
    rows = (out / "anomaly_score_fan_section_00_test.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == [good.name]
    assert np.isfinite(float(rows[0].split(",")[1]))


def test_score_max_seconds_is_the_users_to_set(tiny_bundle, edge_asd_exe, tmp_path):
    clip = tmp_path / "section_00_source_test_normal_0000.wav"
    sf.write(clip, (0.1 * np.random.default_rng(2).standard_normal(4 * SR)).astype(np.float32), SR, subtype="PCM_16")
    r = _score(edge_asd_exe, tiny_bundle, str(clip), "--out", str(tmp_path / "a"), "--max-seconds", "3")
    assert r.returncode == 2 and f"{clip}: 4 s long, more than the 3 s" in r.stderr, r.stderr
    r = _score(edge_asd_exe, tiny_bundle, str(clip), "--out", str(tmp_path / "b"), "--max-seconds", "5")
    assert r.returncode == 0, r.stderr
    r = _score(edge_asd_exe, tiny_bundle, str(clip), "--out", str(tmp_path / "c"), "--max-seconds", "0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-seconds must be positive" in lines[0], r.stderr
