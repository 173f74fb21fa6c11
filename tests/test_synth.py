"""``edge-asd synth``: the synthetic DCASE-layout data set, on real files."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score

from edge_asd.io.dcase import list_clips, list_machines, parse_name
from edge_asd.errors import UserError
from edge_asd.synth import MACHINE_TYPES, MANIFEST_NAME, MACHINES, SynthConfig, generate

EDGE_ASD = Path(sys.executable).parent / "edge-asd"


def _manifest(root: Path, machine: str) -> dict[str, dict[str, str]]:
    with open(root / machine / MANIFEST_NAME, newline="") as fh:
        return {row["file"].split("/")[-1]: row for row in csv.DictReader(fh)}


def _wavs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.wav"))


# --------------------------------------------------------------------------- layout and format

LAYOUT = SynthConfig(machines=MACHINE_TYPES, sections=2, train_source=2, train_target=1, test=1, seconds=3.0, seed=7)


@pytest.fixture(scope="module")
def layout_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    written = generate(root, LAYOUT)
    assert written == len(MACHINE_TYPES) * 2 * (2 + 1 + 4)
    return root


def test_every_machine_type_is_written_in_the_dcase_layout(layout_set):
    assert list_machines(layout_set) == sorted(MACHINE_TYPES)
    for machine in MACHINE_TYPES:
        train = list_clips(layout_set, machine, "train")
        test = list_clips(layout_set, machine, "test")
        assert len(train) == 2 * (2 + 1) and len(test) == 2 * 4
        for clip in train:
            assert clip.label == "normal" and clip.split == "train"
        for section in ("00", "01"):
            got = sorted((c.domain, c.label) for c in test if c.section == section)
            assert got == [("source", "anomaly"), ("source", "normal"), ("target", "anomaly"), ("target", "normal")]
            src = sorted((c.index, c.domain) for c in train if c.section == section)
            assert src == [("0000", "source"), ("0000", "target"), ("0001", "source")]


def test_names_parse_and_carry_key_value_attributes(layout_set):
    for path in _wavs(layout_set):
        info = parse_name(path)
        assert info.machine == path.parent.parent.name
        assert info.split == path.parent.name
        assert info.domain in ("source", "target") and info.label in ("normal", "anomaly")
        # Attributes are key_value pairs that parse into a dict with the same tokens.
        assert info.attributes, path.name
        assert "_".join(f"{k}_{v}" for k, v in info.attributes.items()) == info.attribute_string


def test_source_and_target_operating_points_differ_in_every_section(layout_set):
    for machine in MACHINE_TYPES:
        clips = list_clips(layout_set, machine, "train") + list_clips(layout_set, machine, "test")
        for section in ("00", "01"):
            src = {c.attribute_string for c in clips if c.section == section and c.domain == "source"}
            tgt = {c.attribute_string for c in clips if c.section == section and c.domain == "target"}
            assert src and tgt and not src & tgt, (machine, section, src, tgt)


def test_clips_are_16k_mono_pcm16_of_the_requested_length_below_the_ceiling(layout_set):
    for path in _wavs(layout_set):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 48000)
        x, _ = sf.read(str(path), dtype="float32")
        assert np.all(np.isfinite(x))
        assert np.max(np.abs(x)) <= 10 ** (-3 / 20) + 1e-4  # peak ceiling -3 dBFS
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 10 ** (-45 / 20)  # not silent


def test_manifest_lists_every_clip_with_its_anomaly(layout_set):
    for machine in MACHINE_TYPES:
        rows = _manifest(layout_set, machine)
        files = {p.name for p in (layout_set / machine).rglob("*.wav")}
        assert set(rows) == files
        for name, row in rows.items():
            info = parse_name(layout_set / machine / row["file"])
            assert (row["section"], row["domain"], row["label"]) == (info.section, info.domain, info.label)
            if info.label == "anomaly":
                assert row["anomaly"] in MACHINES[machine].anomalies
                assert 0.0 <= float(row["severity"]) <= 1.0
            else:
                assert row["anomaly"] == "" and row["severity"] == ""


# --------------------------------------------------------------------------- determinism


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_order_or_process_count(tmp_path):
    base = dict(sections=1, train_source=4, train_target=2, test=2, seconds=2.0, seed=3)
    generate(tmp_path / "a", SynthConfig(machines=("fan", "valve"), workers=1, **base))
    # Another machine order, and clips spread over two processes.
    generate(tmp_path / "b", SynthConfig(machines=("valve", "fan"), workers=2, **base))
    a, b = _bytes(tmp_path / "a"), _bytes(tmp_path / "b")
    assert len(a) == 2 * (14 + 1)
    assert a == b


def test_a_clip_does_not_depend_on_the_other_clips_generated(tmp_path):
    generate(tmp_path / "small", SynthConfig(machines=("gearbox",), sections=1, train_source=1, train_target=0,
                                             test=1, seconds=2.0, seed=5))
    generate(tmp_path / "large", SynthConfig(machines=("gearbox",), sections=2, train_source=3, train_target=2,
                                             test=2, seconds=2.0, seed=5))
    small, large = _bytes(tmp_path / "small"), _bytes(tmp_path / "large")
    wavs = [k for k in small if k.endswith(".wav")]
    assert len(wavs) == 5
    for key in wavs:
        assert small[key] == large[key], key


def test_another_seed_gives_other_sounds(tmp_path):
    base = dict(machines=("bearing",), sections=1, train_source=2, train_target=0, test=0, seconds=2.0)
    generate(tmp_path / "a", SynthConfig(seed=1, **base))
    generate(tmp_path / "b", SynthConfig(seed=2, **base))
    a = sorted((tmp_path / "a").rglob("*.wav"))
    b = sorted((tmp_path / "b").rglob("*.wav"))
    assert len(a) == len(b) == 2
    for pa, pb in zip(a, b):
        xa, _ = sf.read(str(pa))
        xb, _ = sf.read(str(pb))
        assert xa.shape == xb.shape and not np.allclose(xa, xb)


# --------------------------------------------------------------------------- what the sounds are like

STATS = SynthConfig(machines=MACHINE_TYPES, sections=2, train_source=8, train_target=3, test=6, seconds=3.0, seed=11)
_BANDS = np.geomspace(50.0, 8000.0, 49)


def _features(path: Path) -> tuple[np.ndarray, float]:
    """Level-free log band energies (mean, std and 95th percentile over 64-ms frames), and RMS in dB."""
    x, sr = sf.read(str(path), dtype="float32")
    frame, hop = 1024, 512
    n = (len(x) - frame) // hop + 1
    frames = x[np.arange(frame)[None, :] + hop * np.arange(n)[:, None]] * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    f = np.fft.rfftfreq(frame, 1.0 / sr)
    bands = np.stack([power[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in zip(_BANDS[:-1], _BANDS[1:])], 1)
    log = 10.0 * np.log10(bands + 1e-12)
    log -= log.mean()
    feats = np.concatenate([log.mean(0), log.std(0), np.percentile(log, 95, axis=0)])
    return feats, 10.0 * np.log10(np.mean(x.astype(np.float64) ** 2))


@pytest.fixture(scope="module")
def stats_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    generate(root, STATS)
    data = {}
    for machine in MACHINE_TYPES:
        manifest = _manifest(root, machine)
        clips = list_clips(root, machine, "train") + list_clips(root, machine, "test")
        data[machine] = [(c, *_features(c.path), manifest[c.name]) for c in clips]
    return data


def test_every_anomaly_kind_occurs(stats_set):
    for machine, rows in stats_set.items():
        kinds = {row["anomaly"] for c, _, _, row in rows if c.is_anomaly}
        assert kinds == set(MACHINES[machine].anomalies), machine


def test_loudness_does_not_separate_normal_from_anomalous(stats_set):
    labels, levels = [], []
    for rows in stats_set.values():
        for c, _, rms_db, _ in rows:
            if c.split == "test":
                labels.append(c.is_anomaly)
                levels.append(rms_db)
    auc = roc_auc_score(labels, levels)
    assert 0.3 < auc < 0.7, auc


def _distances(rows, keep) -> tuple[list[bool], list[float]]:
    """Standardized spectral distance of test clips to their section's and domain's training normals."""
    labels, scores = [], []
    for c, feats, _, row in rows:
        if c.split != "test" or not keep(c, row):
            continue
        ref = np.array(
            [f for t, f, _, _ in rows if t.split == "train" and (t.section, t.domain) == (c.section, c.domain)]
        )
        z = (feats - ref.mean(0)) / (ref.std(0) + 0.5)
        labels.append(c.is_anomaly)
        scores.append(float(np.mean(z**2)))
    return labels, scores


def test_strong_anomalies_differ_from_normals_in_spectrum(stats_set):
    aucs = {}
    for machine, rows in stats_set.items():
        labels, scores = _distances(rows, lambda c, row: not c.is_anomaly or float(row["severity"]) >= 0.6)
        aucs[machine] = roc_auc_score(labels, scores)
    assert np.mean(list(aucs.values())) > 0.75, aucs
    assert min(aucs.values()) > 0.55, aucs


def test_sections_are_distinguishable_by_sound(stats_set):
    for machine, rows in stats_set.items():
        centroids = {
            s: np.mean([f for c, f, _, _ in rows if c.split == "train" and c.section == s and c.domain == "source"], 0)
            for s in ("00", "01")
        }
        test = [(c.section, f) for c, f, _, _ in rows if c.split == "test" and c.domain == "source" and not c.is_anomaly]
        correct = [min(centroids, key=lambda s: np.sum((f - centroids[s]) ** 2)) == sec for sec, f in test]
        assert np.mean(correct) >= 0.9, machine


def test_target_domain_is_shifted_from_source(stats_set):
    """Target normals lie farther from the source centroid than source normals do."""
    ratios = {}
    for machine, rows in stats_set.items():
        for section in ("00", "01"):
            normals = [(c.domain, f) for c, f, _, _ in rows if c.section == section and not c.is_anomaly]
            src = np.array([f for d, f in normals if d == "source"])
            tgt = np.array([f for d, f in normals if d == "target"])
            centroid = src.mean(0)
            within = np.linalg.norm(src - centroid, axis=1).mean()
            across = np.linalg.norm(tgt - centroid, axis=1).mean()
            ratios[machine, section] = across / within
    # Some shifts are mild (a bearing's sound is mostly its fixed resonances), none absent.
    assert min(ratios.values()) > 1.2, ratios
    assert np.mean(list(ratios.values())) > 2.0, ratios


# --------------------------------------------------------------------------- configuration errors


TINY = dict(machines=("fan",), sections=1, train_source=1, train_target=0, test=0, seconds=2.0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(machines=("fan", "toaster")), "unknown machine type 'toaster' (known: fan, pump, gearbox, bearing, valve"),
        (dict(machines=()), "no machine types"),
        (dict(machines=("fan", "fan")), "given twice"),
        (dict(sections=0), "sections must be an integer from 1 to 99"),
        (dict(sections=100), "sections must be an integer from 1 to 99"),
        (dict(train_source=-1), "train-source must be an integer >= 0"),
        (dict(test=-2), "test must be an integer >= 0"),
        (dict(train_source=0, train_target=0, test=0), "nothing to generate"),
        (dict(seconds=1.5), "seconds must be from 2 to 600"),
        (dict(seconds=float("nan")), "seconds must be a number"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(sample_rate=8000), "sample rate must be an integer >= 16000"),
    ],
)
def test_bad_configuration_is_a_user_error(tmp_path, change, message):
    cfg = SynthConfig(**{**TINY, **change})
    with pytest.raises(UserError) as err:
        generate(tmp_path / "out", cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_refuses_to_mix_into_an_existing_machine_folder(tmp_path):
    cfg = SynthConfig(machines=("valve",), sections=1, train_source=1, train_target=0, test=0, seconds=2.0)
    generate(tmp_path, cfg)
    before = _bytes(tmp_path)
    with pytest.raises(UserError, match="already exists and is not empty"):
        generate(tmp_path, SynthConfig(machines=("fan", "valve"), sections=1, train_source=1, train_target=0,
                                       test=0, seconds=2.0, seed=9))
    assert _bytes(tmp_path) == before
    # Another machine type into the same data root is fine.
    generate(tmp_path, SynthConfig(machines=("fan",), sections=1, train_source=1, train_target=0, test=0, seconds=2.0))
    assert list_machines(tmp_path) == ["fan", "valve"]


def test_output_path_that_is_a_file_is_a_user_error(tmp_path):
    target = tmp_path / "data"
    target.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder"):
        generate(target, SynthConfig(**TINY))


# --------------------------------------------------------------------------- command line


def test_cli_writes_a_data_set(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.run(
        [str(EDGE_ASD), "synth", str(out), "--machines", "fan,valve", "--sections", "1", "--train-source", "2",
         "--train-target", "1", "--test", "1", "--seconds", "2", "--seed", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote 14 clips to {out}"
    assert proc.stderr.strip()  # progress is shown unless --quiet
    assert list_machines(out) == ["fan", "valve"]
    assert len(list_clips(out, "fan", "test")) == 4


def test_cli_unknown_machine_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [str(EDGE_ASD), "synth", str(tmp_path / "data"), "--machines", "fan,blender", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("edge-asd: error: unknown machine type 'blender'")
    assert "fan" in lines[0] and "valve" in lines[0]
    assert not (tmp_path / "data").exists()
