"""The deployment bundle: verification on load, and every bad bundle's clear error."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.runtime.bundle import SCHEMA_VERSION, npz_bytes, open_bundle, sha256, write_bundle
from edge_asd.errors import BundleError
from edge_asd.runtime.scorer import load_scorer

from bundle_edit import read_members, tampered_bundle, write_members


def _copy(tiny_bundle, tmp_path):
    dst = tmp_path / "b.asd"
    dst.write_bytes(Path(tiny_bundle).read_bytes())
    return dst


def test_bundle_opens_and_is_self_describing(tiny_bundle):
    b = open_bundle(tiny_bundle)
    m = b.manifest.to_dict()
    assert m["schema_version"] == SCHEMA_VERSION
    for key in ("bundle_id", "created", "machine_type", "sections", "audio", "frontend", "embedding_dim", "approach",
                "aggregator", "kappa", "thresholds", "members", "files"):
        assert key in m
    assert m["audio"]["sample_rate"] == 16000 and m["audio"]["n_segments"] == 10
    assert m["frontend"]["n_mels"] == 224 and m["frontend"]["hop_length"] == 256
    for name, digest in m["files"].items():
        assert sha256(b.read(name)) == digest
    for member in m["members"]:
        for section, numbers in member["sections"].items():
            assert set(numbers["standardization"]) in ({"all"}, {"source", "target"})


def test_npz_members_have_no_pickles(tiny_bundle):
    b = open_bundle(tiny_bundle)
    arrays = b.arrays(b.manifest.to_dict()["members"][0]["state"])
    assert arrays and all(a.dtype != object for a in arrays.values())


def test_tampered_member_is_refused(tiny_bundle, tmp_path):
    p = tmp_path / "b.asd"
    name = tampered_bundle(tiny_bundle, p)
    with pytest.raises(BundleError, match=rf"checksum mismatch for member {name}"):
        open_bundle(p)


def test_wrong_schema_version_is_refused(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    members = read_members(p)
    m = json.loads(members["manifest.json"])
    m["schema_version"] = 99
    members["manifest.json"] = json.dumps(m).encode()
    write_members(p, members)
    with pytest.raises(BundleError, match="schema version 99 is not supported"):
        open_bundle(p)


def test_missing_member_is_refused(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    members = read_members(p)
    name = next(n for n in members if n.endswith(".onnx"))
    del members[name]
    write_members(p, members)
    with pytest.raises(BundleError, match=rf"member {name} is missing"):
        open_bundle(p)


def test_unlisted_member_is_refused(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    members = read_members(p)
    members["extra.pkl"] = b"cos\nsystem\n"
    write_members(p, members)
    with pytest.raises(BundleError, match="extra.pkl is not listed"):
        open_bundle(p)


def test_not_a_bundle(tmp_path):
    p = tmp_path / "x.asd"
    p.write_bytes(b"hello")
    with pytest.raises(BundleError, match="not a zip"):
        open_bundle(p)
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "missing.asd")


def _rebuilt(tiny_bundle, tmp_path, edit):
    b = open_bundle(tiny_bundle)
    manifest = b.manifest.to_dict()
    files = b.members()
    edit(manifest, files)
    manifest.pop("bundle_id")
    return write_bundle(tmp_path / "edited.asd", manifest, files)


def test_model_disagreeing_with_manifest_is_refused(tiny_bundle, tmp_path):
    def edit(manifest, files):
        manifest["embedding_dim"] = manifest["embedding_dim"] + 3
        manifest["members"][0]["embedding_dim"] = manifest["embedding_dim"]

    p = _rebuilt(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError, match="expects .*-d embeddings, the manifest says|outputs embeddings of shape"):
        load_scorer(p)

    def edit_len(manifest, files):
        manifest["audio"]["segment_seconds"] = 1.0

    p = _rebuilt(tiny_bundle, tmp_path, edit_len)
    with pytest.raises(BundleError, match=r"does not take \[batch, 16000\] waveforms"):
        load_scorer(p)


def test_detector_state_of_wrong_size_is_refused(tiny_bundle, tmp_path):
    def edit(manifest, files):
        name = manifest["members"][0]["state"]
        arrays = dict(np.load(__import__("io").BytesIO(files[name]), allow_pickle=False))
        arrays = {k: (v[:, :-1] if v.ndim == 2 else v) for k, v in arrays.items()}
        files[name] = npz_bytes(arrays)

    p = _rebuilt(tiny_bundle, tmp_path, edit)
    with pytest.raises(BundleError):
        load_scorer(p)


def test_score_cli_bad_bundle_exits_2(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    members = read_members(p)
    name = next(n for n in members if n.endswith(".onnx"))
    members[name] = members[name] + b"x"
    write_members(p, members)
    exe = Path(sys.executable).with_name("edge-asd")
    r = subprocess.run([str(exe), "score", str(p), str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "checksum mismatch" in lines[0] and str(p) in lines[0]


def test_member_changed_after_opening_is_refused_when_read(tiny_bundle, tmp_path):
    # Members are read from disk when asked for, so each read is verified again:
    # a bundle swapped under an opened one must not be half-trusted.
    p = _copy(tiny_bundle, tmp_path)
    b = open_bundle(p)
    name = tampered_bundle(tiny_bundle, p)
    with pytest.raises(BundleError, match=rf"{p}: checksum mismatch for member {name}"):
        b.read(name)
    p.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=rf"{p}: not a bundle"):
        b.read(name)
    p.unlink()
    with pytest.raises(BundleError, match=rf"{p}: cannot read bundle"):
        b.read(name)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _member_data_offsets(path: Path) -> dict[str, int]:
    """Where each member's stored bytes begin in the file (after its local header)."""
    import struct
    import zipfile

    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            out[info.filename] = info.header_offset + 30 + name_len + extra_len
    return out


def test_one_flipped_byte_in_any_member_is_a_checksum_mismatch(tiny_bundle, tmp_path):
    # A bit flipped on a flash card or in a copy leaves the zip's directory whole but breaks the
    # member's CRC-32 as well as its sha256: the user is told the checksum, not "not a zip archive".
    offsets = _member_data_offsets(Path(tiny_bundle))
    sizes = {n: len(d) for n, d in read_members(tiny_bundle).items()}
    assert "manifest.json" in offsets and len(offsets) >= 3
    for name, start in offsets.items():
        p = _copy(tiny_bundle, tmp_path)
        _flip_byte(p, start + sizes[name] // 2)
        with pytest.raises(BundleError, match=rf"{p}: checksum mismatch for member {name} ") as err:
            open_bundle(p)
        assert "not a zip" not in str(err.value)
    # The same when the bundle was opened before the byte flipped (a member read later).
    p = _copy(tiny_bundle, tmp_path)
    b = open_bundle(p)
    name = next(n for n in offsets if n.endswith(".npz"))
    _flip_byte(p, offsets[name] + sizes[name] // 2)
    with pytest.raises(BundleError, match=rf"checksum mismatch for member {name} "):
        b.arrays(name)


def test_score_cli_names_a_flipped_byte_as_a_checksum_mismatch(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    offsets = _member_data_offsets(p)
    name = next(n for n in offsets if n.endswith(".onnx"))
    _flip_byte(p, offsets[name] + 100)
    exe = Path(sys.executable).with_name("edge-asd")
    r = subprocess.run([str(exe), "score", str(p), str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"checksum mismatch for member {name}" in lines[0] and str(p) in lines[0], lines


def test_a_bundle_without_reference_clips_still_loads_and_scores(tiny_bundle, tmp_path):
    # As bundles were written before --reference-clips: no manifest key, no references/ members.
    from edge_asd.runtime.references import ReferenceClips

    members = read_members(tiny_bundle)
    manifest = json.loads(members.pop("manifest.json"))
    listing = manifest.pop("reference_clips")
    assert listing, "the tiny bundle has reference clips to take out"
    for entries in listing.values():
        for e in entries:
            members.pop(e["file"])
    old = write_bundle(tmp_path / "old.asd", {k: v for k, v in manifest.items() if k != "files"}, members)
    bundle = open_bundle(old)
    assert len(ReferenceClips.from_bundle(bundle)) == 0
    x = (0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)
    new_r = load_scorer(tiny_bundle, backend="onnx-cpu").score(x, "00")
    old_r = load_scorer(old, backend="onnx-cpu").score(x, "00")
    assert old_r.score == pytest.approx(new_r.score, rel=1e-6) and old_r.bands == new_r.bands


def test_a_reference_clip_the_bundle_lacks_is_refused(tiny_bundle, tmp_path):
    from edge_asd.runtime.references import ReferenceClips

    members = read_members(tiny_bundle)
    manifest = json.loads(members.pop("manifest.json"))
    manifest["reference_clips"]["00"][0]["file"] = "references/../../etc/passwd"
    bad = write_bundle(tmp_path / "bad.asd", {k: v for k, v in manifest.items() if k != "files"}, members)
    with pytest.raises(BundleError, match="reference clip"):
        ReferenceClips.from_bundle(open_bundle(bad))
