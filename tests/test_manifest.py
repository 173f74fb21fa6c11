"""The typed manifest: today's export round-trips exactly, older layouts load, a wrong key is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_asd.errors import BundleError, ManifestError
from edge_asd.io.features import LEGACY_PLAIN, LogMelStatsConfig
from edge_asd.runtime.manifest import LogMelFrontEnd, Manifest

DATA = Path(__file__).parent / "data"
# manifest.json of two bundles written by edge-asd-export before the manifest was typed (55f56e0):
# one learned member with split graphs, band evidence and reference clips; the plain system alone (gate)
WRITTEN = ("manifest_v1_learned.json", "manifest_v1_plain.json")


def _written(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.mark.parametrize("name", WRITTEN)
def test_round_trip_of_what_export_wrote(name):
    d = _written(name)
    assert Manifest.from_dict(d).to_dict() == d


def test_typed_levels():
    m = Manifest.from_dict(_written(WRITTEN[0]))
    assert m.audio.spec().segment_samples == 32000 and m.audio.spec().align == 256
    assert isinstance(m.frontend, LogMelFrontEnd) and m.frontend.n_fft == 2048
    member = m.members[0]
    assert not member.is_plain and member.split.logmel.n_mels == 224
    assert member.sections["01"].standardization["target"].std > 0
    assert m.band_evidence.sections == ("00", "01") and m.reference_clips["00"][0].domain == "source"
    plain = Manifest.from_dict(_written(WRITTEN[1]))
    assert isinstance(plain.frontend, LogMelStatsConfig) and plain.members[0].is_plain and plain.gate["decision"] == "plain"


def _older(d: dict) -> dict:
    """The same manifest as the first bundles wrote it: none of the keys added since (the loader's defaults)."""
    for key in ("reference_quantiles", "reference_medians", "band_evidence", "reference_clips", "precision", "stage2"):
        d.pop(key, None)
    for key in ("clip_seconds", "segment_align", "amplitude"):
        d["audio"].pop(key)
    for member in d["members"]:
        for key in ("name", "heldout", "stage2", "domain_head", "amplitude", "detector", "run", "backbone", "seed"):
            member.pop(key, None)
        if "split" in member:
            member["split"].pop("logmel")
            member["split"].pop("input_norm")
        if "features" in member:
            member["features"] = {k: v for k, v in member["features"].items() if k not in LEGACY_PLAIN}
    return d


@pytest.mark.parametrize("name", WRITTEN)
def test_older_layouts_load_with_the_loaders_defaults(name):
    m = Manifest.from_dict(_older(_written(name)))
    assert m.audio.spec().align == 1 and m.audio.spec().level is None and m.audio.clip_seconds is None
    member = m.members[0]
    assert member.has_domain_head and member.label(0) == "m0" and member.heldout is None
    if member.split is not None:
        assert member.split.logmel is None  # the graph front end, as before the rFFT one
    if member.is_plain:
        assert member.features.amplitude == "recorded" and member.features.log == "db"  # LEGACY_PLAIN
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda d: d["members"][0]["sections"]["01"].update(threshold="x"), "members[0].sections.01.threshold: expected a number"),
        (lambda d: d["audio"].update(segmnt_seconds=1), "audio.segmnt_seconds: unknown key"),
        (lambda d: d["audio"].pop("n_segments"), "audio.n_segments: missing"),
        (lambda d: d["members"][0]["split"].update(frames_per_segment=1.5), "members[0].split.frames_per_segment"),
        (lambda d: d["band_evidence"]["features"].update(window="box"), "band_evidence.features"),
        (lambda d: d["audio"].update(amplitude={"mode": "machine", "mean": 0, "std": -1}), "audio.amplitude"),
        (lambda d: d["reference_clips"]["00"][0].pop("file"), "reference_clips.00[0].file: missing"),
        (lambda d: d["members"][0]["stage2"].update(bank="some"), "members[0].stage2"),
        (lambda d: d.pop("thresholds"), "manifest lacks thresholds"),
        (lambda d: d.update(schema_version=2), "schema version 2 is not supported"),
        (lambda d: d["files"].update({"x.npz": 3}), "files.x.npz: expected a string"),
    ],
)
def test_a_wrong_key_is_named_in_one_line(edit, named):
    d = _written(WRITTEN[0])
    edit(d)
    with pytest.raises(ManifestError, match=named.replace("[", r"\[").replace("]", r"\]")) as info:
        Manifest.from_dict(d)
    assert isinstance(info.value, BundleError) and "\n" not in str(info.value)


def test_the_manifest_export_writes_is_what_it_reads_back(tiny_bundle):
    import zipfile

    with zipfile.ZipFile(tiny_bundle) as zf:
        written = json.loads(zf.read("manifest.json"))
    assert Manifest.from_dict(written).to_dict() == written
    assert set(written) == set(json.loads((DATA / WRITTEN[0]).read_text())) - {"reference_clips"} | (
        {"reference_clips"} if "reference_clips" in written else set())
