"""On-device enrollment of a new operating condition, rollback, and the anomalous-clip guard."""

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import pytest

from edge_asd.io.audio import read_audio
from edge_asd.runtime.bundle import open_bundle
from edge_asd.io.dcase import list_clips
from edge_asd.runtime.enroll import enroll
from edge_asd.errors import UserError
from edge_asd.runtime.scorer import load_scorer


def _scored_clips(tiny_bundle, tiny_data):
    """Every fan and gearbox clip of section 00 with its score under the bundle."""
    scorer = load_scorer(tiny_bundle, backend="onnx-cpu")
    out = []
    for machine, split in (("fan", "test"), ("gearbox", "test"), ("fan", "train")):
        for c in list_clips(tiny_data, machine, split):
            if c.section == "00":
                x = read_audio(c.path)
                r = scorer.score(x, "00")
                out.append((f"{machine}/{c.name}", x, r.score, r.threshold, c))
    return scorer, out


def test_enroll_adds_target_clips_and_keeps_the_old_bundle(tiny_bundle, tiny_data, tmp_path):
    scorer, clips = _scored_clips(tiny_bundle, tiny_data)
    normal = [(n, x) for n, x, s, t, c in clips if s <= t][:3]
    assert len(normal) == 3
    before = open_bundle(tiny_bundle)
    held_before = before.arrays(before.manifest.to_dict()["members"][0]["heldout"])
    rep = enroll(tiny_bundle, normal, tmp_path / "new.asd", section="00", domain="target")
    assert rep.n_clips == 3 and rep.previous is None and not rep.flagged
    new = open_bundle(tmp_path / "new.asd")
    m = new.manifest.to_dict()
    assert m["parent_bundle_id"] == before.bundle_id and m["bundle_id"] != before.bundle_id
    assert m["enrollments"][-1]["clips"] == [n for n, _ in normal]
    held = new.arrays(m["members"][0]["heldout"])
    grew = (held["sections"] == "00") & (held["domains"] == "target")
    was = (held_before["sections"] == "00") & (held_before["domains"] == "target")
    assert grew.sum() == was.sum() + 3
    assert m["thresholds"]["00"] == pytest.approx(rep.threshold_after)
    # the other section is untouched
    assert m["thresholds"]["01"] == before.manifest.to_dict()["thresholds"]["01"]
    # a KNN bank only grows, so the enrolled clips' raw target distances can only shrink
    new_scorer = load_scorer(tmp_path / "new.asd", backend="onnx-cpu")
    segs = np.stack([scorer.prepare(x) for _, x in normal])
    emb = scorer.embed(segs.reshape(-1, segs.shape[-1]))[0][0].reshape(3, 10, -1)
    old_t = scorer.members[0].sections["00"].domains["target"]
    new_t = new_scorer.members[0].sections["00"].domains["target"]
    assert new_t.detector.n_bank == old_t.detector.n_bank + 30
    raw_old = old_t.standardized(emb, scorer.aggregator) * old_t.std + old_t.mean
    raw_new = new_t.standardized(emb, scorer.aggregator) * new_t.std + new_t.mean
    assert np.all(raw_new <= raw_old + 1e-6) and np.all(raw_new < raw_old)
    # the old bundle is intact
    assert open_bundle(tiny_bundle).bundle_id == before.bundle_id


def test_guard_refuses_clips_the_model_finds_anomalous(tiny_bundle, tiny_data, tmp_path):
    _, clips = _scored_clips(tiny_bundle, tiny_data)
    flagged = [(n, x) for n, x, s, t, c in clips if s > t]
    assert flagged, "some clip (anomalies, another machine) must exceed the threshold"
    one = flagged[:1]
    with pytest.raises(UserError, match=r"already sound anomalous to this model: .*--accept-anomalous"):
        enroll(tiny_bundle, one, tmp_path / "x.asd", section="00")
    assert not (tmp_path / "x.asd").exists()
    rep = enroll(tiny_bundle, one, tmp_path / "x.asd", section="00", accept_anomalous=True)
    assert [f[0] for f in rep.flagged] == [one[0][0]]
    assert open_bundle(tmp_path / "x.asd").manifest.to_dict()["enrollments"][-1]["accepted_anomalous"] == [one[0][0]]


def test_enroll_in_place_then_rollback(tiny_bundle, tiny_data, tmp_path, edge_asd_exe):
    _, clips = _scored_clips(tiny_bundle, tiny_data)
    normal = [c for n, x, s, t, c in clips if s <= t and n.startswith("fan/")][:2]
    bundle = tmp_path / "fan.asd"
    original = Path(tiny_bundle).read_bytes()
    bundle.write_bytes(original)
    folder = tmp_path / "new_condition"
    folder.mkdir()
    for c in normal:
        (folder / c.name).write_bytes(c.path.read_bytes())
    r = subprocess.run([edge_asd_exe, "enroll", str(bundle), str(folder), "--clips", "2", "--out", str(bundle), "--section", "00"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "enrolled 2 clips into section 00, domain target" in r.stdout
    assert bundle.read_bytes() != original
    assert (tmp_path / "fan.asd.prev").read_bytes() == original
    r = subprocess.run([edge_asd_exe, "rollback", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert bundle.read_bytes() == original
    r = subprocess.run([edge_asd_exe, "rollback", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 2 and "no previous version" in r.stderr


def test_enroll_cli_errors(tiny_bundle, edge_asd_exe, tmp_path):
    r = subprocess.run([edge_asd_exe, "enroll", str(tiny_bundle), "--out", str(tmp_path / "o.asd")], capture_output=True, text=True)
    assert r.returncode == 2 and "either --mic DEVICE or clip files" in r.stderr
    r = subprocess.run([edge_asd_exe, "enroll", str(tiny_bundle), str(tmp_path / "nope"), "--out", str(tmp_path / "o.asd")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    # a recording of hours is refused from its header, not read into memory
    long = tmp_path / "hours.wav"
    with sf.SoundFile(long, "w", 16000, 1, "PCM_16") as f:
        block = np.zeros(16000 * 60, dtype=np.int16)
        for _ in range(11):
            f.write(block)
    r = subprocess.run([edge_asd_exe, "enroll", str(tiny_bundle), str(long), "--out", str(tmp_path / "o.asd")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "hours.wav: 660 s long; enrollment takes each file as one clip" in r.stderr
    assert not (tmp_path / "o.asd").exists()
    with pytest.raises(UserError, match="'source' or 'target'"):
        enroll(tiny_bundle, [("a", np.zeros(64000, np.float32))], tmp_path / "o.asd", domain="weird")


def test_enrolling_a_new_microphone_into_a_plain_bundle_gives_it_its_own_mean(tmp_path):
    """A plain system trained before the microphone was moved: the new condition's normals score high. Enrolling
    four of its clips (the device's `edge-asd enroll`, domain "target") gives that condition its own mean and
    standardization in the per-domain scorer, and its other normals then score like the old condition's."""
    from scipy.signal import lfilter

    from edge_asd.synth import SynthConfig, generate
    from export.cli import main as export_main
    from train.cli import main as train_main

    data = tmp_path / "data"
    generate(data, SynthConfig(machines=("fan",), sections=1, train_source=30, train_target=0, test=12, seed=5),
             progress=False)
    run, bundle = tmp_path / "plain", tmp_path / "fan.asd"
    assert train_main(["--data", str(data), "--machine", "fan", "--out", str(run), "--system", "plain",
                       "--quiet"]) == 0
    assert export_main([str(run), "--out", str(bundle)]) == 0
    normals = [c for c in list_clips(data, "fan", "test") if c.label == "normal" and c.domain == "source"]
    # the same machine through another microphone: a first-order tilt, 6 dB down at the top of the band
    moved = [(c.name, lfilter([0.75, 0.25], [1.0], read_audio(c.path)).astype(np.float32)) for c in normals]
    old_mic = [read_audio(c.path) for c in normals]
    before = load_scorer(bundle, backend="onnx-cpu")
    def gap(scorer) -> float:
        """Median score of the moved microphone's normals (not enrolled) above the old microphone's."""
        return float(np.median([scorer.score(x, "00").score for _, x in moved[4:]])
                     - np.median([scorer.score(x, "00").score for x in old_mic[4:]]))

    gap_before = gap(before)
    rep = enroll(bundle, moved[:4], tmp_path / "new.asd", section="00", accept_anomalous=True)
    assert rep.domain == "target" and rep.n_clips == 4
    after = load_scorer(tmp_path / "new.asd", backend="onnx-cpu")
    detector = after.members[0].sections["00"].domains["all"].detector
    assert detector.per_domain and detector.get_state()["log_mean"].shape[0] == 2
    gap_after = gap(after)
    assert gap_before > 1.0 and abs(gap_after) < gap_before / 3, (gap_before, gap_after)
