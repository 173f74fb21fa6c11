"""Band evidence and the ratio scale (issue "Why is it anomalous"): a hand case on the tiny bundle's real
clips, the keys in every message and window, and a bundle written before them."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bundle_edit import read_members
from edge_asd.io.audio import read_audio
from edge_asd.io.dcase import list_clips
from edge_asd.io.features import LogMelStats
from edge_asd.mqtt.payloads import alert_payload, score_payload
from edge_asd.runtime.bundle import MANIFEST, open_bundle, write_bundle
from edge_asd.runtime.scorer import load_scorer
from edge_asd.scoring.bands import band_edges, deviation, name_bands

SR = 16000


@pytest.fixture(scope="module")
def scorer(tiny_bundle):
    return load_scorer(tiny_bundle, backend="onnx-cpu")


@pytest.fixture(scope="module")
def quiet_normal(tiny_data, scorer) -> np.ndarray:
    """A normal test clip of section 00 that names no band (a normal clip usually does not)."""
    clips = [c for c in list_clips(tiny_data, "fan", "test") if c.section == "00" and c.label == "normal"]
    for c in clips:
        x = read_audio(c.path)
        if scorer.score(x, "00").bands == ():
            return x
    pytest.fail("every normal test clip of section 00 names a deviating band")


@pytest.fixture(scope="module")
def old_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle as it was written before band statistics and reference medians existed."""
    members = read_members(tiny_bundle)
    manifest = json.loads(members.pop(MANIFEST))
    block = manifest.pop("band_evidence")
    manifest.pop("reference_medians")
    members.pop(block["file"])
    return write_bundle(tmp_path_factory.mktemp("old") / "old.asd", manifest, members)


def tone(x: np.ndarray, hz: float, db_below: float) -> np.ndarray:
    t = np.arange(x.size) / SR
    return (x + np.sqrt(2) * x.std() * 10 ** (-db_below / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def band_stop(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / SR)
    spec[(f >= lo) & (f <= hi)] = 0
    return np.fft.irfft(spec, x.size).astype(np.float32)


def test_the_bundle_carries_band_statistics_and_reference_medians(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest.to_dict()
    assert m["band_evidence"]["sections"] == m["sections"] == ["00", "01"]
    assert m["band_evidence"]["file"] in m["files"]
    for s in m["sections"]:
        # the median of the held-out normals lies below the threshold fitted on them
        assert m["reference_medians"][s] < m["thresholds"][s]


@pytest.mark.parametrize("hz", [1500.0, 3000.0, 6000.0])
def test_a_tone_is_named_in_its_band_louder(scorer, quiet_normal, hz):
    r = scorer.score(tone(quiet_normal, hz, 15.0), "00")
    top = r.bands[0]
    assert top.lo_hz <= hz <= top.hi_hz and top.z > 5, r.bands
    assert top.hi_hz - top.lo_hz < hz  # a place in the spectrum, not half of it


def test_a_removed_band_is_named_quieter(scorer, quiet_normal):
    r = scorer.score(band_stop(quiet_normal, 1800.0, 2400.0), "00")
    top = r.bands[0]
    assert top.z < -5 and top.lo_hz < 2400.0 and top.hi_hz > 1800.0, r.bands


def test_a_gain_change_alone_names_no_band(scorer, quiet_normal):
    """The plain features standardize the clip's waveform: 26 dB quieter is the same clip to band evidence."""
    assert scorer.score(quiet_normal * 0.05, "00").bands == ()
    ev = scorer.band_evidence
    f = LogMelStats(ev.cfg)
    z = deviation(ev.sections["00"], f(quiet_normal))
    assert np.allclose(deviation(ev.sections["00"], f(quiet_normal * 0.05)), z, atol=1e-3)


def test_adjacent_bands_of_one_sign_merge_strongest_first():
    lo, hi = np.arange(8) * 100.0, np.arange(1, 9) * 100.0
    z = np.array([0.0, 6.0, 9.0, -7.0, 0.0, 0.0, -12.0, 5.5])
    bands = name_bands(z, lo, hi, threshold=5.0, max_bands=3)
    assert [(b.lo_hz, b.hi_hz, b.z) for b in bands] == [(600.0, 700.0, -12.0), (100.0, 300.0, 9.0), (300.0, 400.0, -7.0)]


def test_band_edges_tile_the_feature_range(scorer):
    lo, hi = band_edges(scorer.band_evidence.cfg)
    # each band from half way to its lower neighbour's centre to half way to its upper one's
    assert 50.0 < lo[0] < 100.0 and 7000.0 < hi[-1] < 7800.0
    assert np.allclose(lo[1:], hi[:-1]) and np.all(hi > lo)


def test_ratio_is_zero_at_the_median_normal_and_one_at_the_threshold(scorer, tiny_data):
    med, thr = scorer.reference_medians["00"], scorer.thresholds["00"]
    assert scorer.ratio(med, "00") == pytest.approx(0.0)
    assert scorer.ratio(thr, "00") == pytest.approx(1.0)
    assert scorer.ratio(thr, "00", threshold=2 * thr - med) == pytest.approx(0.5)  # a daemon's override moves the 1
    clips = [c for c in list_clips(tiny_data, "fan", "test") if c.section == "00"]
    for c in clips:
        r = scorer.score(read_audio(c.path), "00")
        assert (r.ratio > 1) == r.anomalous


def test_messages_carry_ratio_and_bands(scorer, quiet_normal):
    r = scorer.score(tone(quiet_normal, 3000.0, 15.0), "00")
    bands = [b.to_dict() for b in r.bands]
    p = score_payload(1795000000, 1, r.score, r.threshold, r.anomalous, r.p_target, -20.0, "b", r.ratio, bands)
    a = alert_payload(1795000000, "anomalous", "fan1", r.score, r.threshold, 1, "b", r.ratio, bands)
    for msg in (p, a):
        assert msg["ratio"] == r.ratio and msg["bands"][0]["lo_hz"] <= 3000.0 <= msg["bands"][0]["hi_hz"]
        assert set(msg["bands"][0]) == {"lo_hz", "hi_hz", "z"} and msg["v"] == 1


def test_a_bundle_without_band_statistics_still_scores_without_the_keys(old_bundle, quiet_normal, scorer):
    old = load_scorer(old_bundle, backend="onnx-cpu")
    r = old.score(quiet_normal, "00")
    assert r.ratio is None and r.bands is None
    assert r.score == pytest.approx(scorer.score(quiet_normal, "00").score, rel=1e-5)
    p = score_payload(1795000000, 1, r.score, r.threshold, r.anomalous, r.p_target, -20.0, "b", r.ratio, r.bands)
    assert "ratio" not in p and "bands" not in p


def _score_windows(exe: str, bundle: Path, wav: Path, out: Path) -> tuple[list[dict], list[dict]]:
    r = subprocess.run([exe, "score", str(bundle), str(wav), "--out", str(out), "--section", "00", "--json",
                        "--quiet", "--plot"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(out / "windows.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, [json.loads(line) for line in r.stdout.splitlines()]


def test_score_windows_carry_ratio_and_bands_in_csv_json_and_plot(tiny_bundle, old_bundle, quiet_normal,
                                                                     edge_asd_exe, tmp_path):
    # 3 normal clips, then 2 with a 3 kHz tone: a recording whose fault is somewhere in the spectrum
    wav = tmp_path / "pump.wav"
    sf.write(wav, np.concatenate([quiet_normal] * 3 + [tone(quiet_normal, 3000.0, 15.0)] * 2), SR)
    rows, lines = _score_windows(edge_asd_exe, tiny_bundle, wav, tmp_path / "new")
    assert len(rows) == len(lines) == 5
    assert [row["bands"] for row in rows[:3]] == ["", "", ""] and [ln["bands"] for ln in lines[:3]] == [[], [], []]
    for row, ln in zip(rows[3:], lines[3:]):
        top = ln["bands"][0]
        assert top["lo_hz"] <= 3000.0 <= top["hi_hz"] and top["z"] > 5
        assert row["bands"].startswith(f"{top['lo_hz']:.0f}-{top['hi_hz']:.0f}:+")
    assert all(float(row["ratio"]) == ln["ratio"] for row, ln in zip(rows, lines))
    assert (tmp_path / "new" / "pump.png").stat().st_size > 0

    rows, lines = _score_windows(edge_asd_exe, old_bundle, wav, tmp_path / "old")
    assert all(row["ratio"] == row["bands"] == "" for row in rows)
    assert all(ln["ratio"] is None and ln["bands"] is None for ln in lines)
    assert (tmp_path / "old" / "pump.png").stat().st_size > 0
