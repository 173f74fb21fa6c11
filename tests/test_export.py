"""Export to ONNX, precision variants, and offline scoring parity with torch."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.io.audio import clip_segments
from edge_asd.runtime.bundle import open_bundle
from edge_asd.io.dcase import list_clips
from edge_asd.scoring.metrics import evaluate_sections, labelled_metrics
from edge_asd.runtime.scorer import load_scorer


def test_onnx_graph_contract(tiny_bundle):
    import onnx

    b = open_bundle(tiny_bundle)
    model = onnx.load_from_string(b.read(b.manifest.to_dict()["members"][0]["model"]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1] == 32000 and isinstance(dims[0], str)  # dynamic batch
    assert [o.name for o in model.graph.output] == ["embedding", "domain_logit"]
    # the front end is a fixed DFT, not an STFT operator
    ops = {n.op_type for n in model.graph.node}
    assert "STFT" not in ops and "DFT" not in ops


def test_onnx_matches_torch_on_real_audio(tiny_run, tiny_bundle, tiny_data):
    from export.onnx_export import relative_error, torch_embed
    from train.embed import load_extractor

    clip = list_clips(tiny_data, "fan", "test")[0].path
    segs = clip_segments(clip)
    ref, ref_logit = torch_embed(load_extractor(tiny_run), segs)
    from edge_asd.runtime.onnx import OnnxBackend

    b = open_bundle(tiny_bundle)
    whole = OnnxBackend(b.read(b.manifest.to_dict()["members"][0]["model"]))  # the [batch, 32000] contract graph
    split = load_scorer(tiny_bundle, backend="onnx-cpu").members[0].backend  # what the CPU runs
    for backend in (whole, split):
        got, got_logit = backend.run(segs)
        assert relative_error(ref, got) < 1e-4
        assert np.allclose(ref_logit, got_logit, atol=1e-4 * max(1.0, np.abs(ref_logit).max()))


def test_score_and_evaluate_match_torch(tiny_run, tiny_bundle, tiny_data, edge_asd_exe, tmp_path):
    from train.evaluate import embed_test, score_embedded

    out = tmp_path / "sub"
    r = subprocess.run([edge_asd_exe, "score", str(tiny_bundle), str(tiny_data / "fan" / "test"), "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{k}_fan_section_{s}_test.csv" for k in ("anomaly_score", "decision_result") for s in ("00", "01")]
    runtime = evaluate_sections(out)
    from train.rundir import RunDir

    approach = RunDir(tiny_run).default_approach()
    torch_scored = score_embedded(tiny_run, embed_test(tiny_run, tiny_data, "fan", progress=False), approach)
    for (machine, section), m in runtime.items():
        sel = torch_scored["sections"] == section
        names = torch_scored["names"][sel]
        ref = labelled_metrics(["_anomaly_" in n for n in names], torch_scored["domains"][sel] == "target", torch_scored["scores"][sel])
        for key in ("auc_source", "auc_target", "pauc"):
            assert abs(getattr(m, key) - getattr(ref, key)) <= 0.005, (section, key)
    r = subprocess.run([edge_asd_exe, "evaluate", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0
    result = json.loads(r.stdout)
    assert set(result["machines"]["fan"]["sections"]) == {"00", "01"}
    assert 0 <= result["official_score"] <= 1


def test_score_skips_bad_files_and_keeps_the_rest(tiny_bundle, tiny_data, edge_asd_exe, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    good = list_clips(tiny_data, "fan", "test")[:3]
    for c in good:
        (clips / c.name).write_bytes(c.path.read_bytes())
    sf.write(clips / "section_00_source_test_normal_0999_x_1.wav", np.zeros((32000, 2)), 16000)
    r = subprocess.run([edge_asd_exe, "score", str(tiny_bundle), str(clips), "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "section_00_source_test_normal_0999_x_1.wav: 2 channels, expected mono" in r.stderr
    rows = sum(len(p.read_text().splitlines()) for p in (tmp_path / "o").glob("anomaly_score_*.csv"))
    assert rows == 3


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_bundles(tiny_run, tmp_path, precision):
    from export.pack import build_bundle

    path = build_bundle(tiny_run, tmp_path / f"{precision}.asd", precision=precision, progress=False)
    b = open_bundle(path)
    report = b.manifest.to_dict()["precision"]
    assert b.manifest.to_dict()["members"][0]["precision"] == precision
    assert "proxy_auc_change" in report and np.isfinite(report["proxy_auc_change"])
    assert report["embedding_relative_error"] < (0.05 if precision == "fp16" else 0.5)
    if precision == "int8":
        scorer = load_scorer(path, backend="onnx-cpu")
        res = scorer.score(np.random.default_rng(0).normal(size=64000).astype(np.float32))
        assert np.isfinite(res.score)


def test_tensorrt_engine(tiny_run, tmp_path):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed here (CI has no GPU); engines are built on the device")
    from export.pack import build_bundle

    path = build_bundle(tiny_run, tmp_path / "trt.asd", fmt="tensorrt", precision="fp16", progress=False)
    scorer = load_scorer(path, backend="tensorrt")
    assert scorer.backend_name == "tensorrt"


def test_clip_front_end_once_matches_per_segment_graph(tiny_bundle, tiny_data):
    from edge_asd.io.audio import SegmentSpec, read_audio, segment, standardize
    from export.onnx_export import relative_error

    from edge_asd.runtime.backend import ClipView
    from edge_asd.runtime.onnx import OnnxBackend, OnnxFrontEnd, SplitOnnx

    scorer = load_scorer(tiny_bundle, backend="onnx-cpu")
    member = scorer.members[0]
    assert isinstance(member.backend, SplitOnnx)
    x = read_audio(list_clips(tiny_data, "fan", "test")[1].path)
    std = standardize(x)
    emb_split, logit_split, _ = member.backend.run_clip(ClipView(x, SegmentSpec()))  # standardized inside
    b = open_bundle(tiny_bundle)
    full = OnnxBackend(b.read(b.manifest.to_dict()["members"][0]["model"]))
    emb_full, logit_full = full.run(segment(std, SegmentSpec()))
    assert relative_error(emb_full, emb_split) < 1e-4
    assert np.allclose(logit_full, logit_split, atol=1e-4 * max(1.0, np.abs(logit_full).max()))
    # the daemon's path (split) and the offline path (segments) give one score
    via_split = scorer.score(x, "00").score
    via_segments = scorer.score_segments(segment(std, SegmentSpec())[None], "00")[0][0]
    assert via_split == pytest.approx(via_segments, rel=1e-4, abs=1e-4)
    # the graph's frames made a stretch at a time are the same frames
    graph = b.read(b.manifest.to_dict()["members"][0]["split"]["frontend"])
    whole = OnnxFrontEnd(graph, 2048, 256, chunk_frames=10_000)
    assert std.size // 256 - 8 + 1 > OnnxFrontEnd.chunk_frames
    for chunk in (OnnxFrontEnd.chunk_frames, 7):
        np.testing.assert_allclose(OnnxFrontEnd(graph, 2048, 256, chunk_frames=chunk)(std), whole(std), rtol=1e-5, atol=1e-5)
    # offline scoring of several clips (edge-asd score) takes the same per-clip path
    clips = [read_audio(c.path) for c in list_clips(tiny_data, "fan", "test")[:3]]
    batched = scorer.score_segments(np.stack([segment(standardize(c), SegmentSpec()) for c in clips]), "00")[0]
    np.testing.assert_allclose(scorer.score_many(clips, "00"), batched, rtol=1e-4, atol=1e-4)
    # clips scored side by side give the same scores to the bit, in the clips' order
    np.testing.assert_array_equal(scorer.score_many(clips * 3, "00", workers=3), scorer.score_many(clips * 3, "00"))


@pytest.fixture(scope="module")
def second_run(tiny_data, tmp_path_factory):
    """Another tiny run of the same machine type, another seed: an ensemble candidate."""
    from conftest import TINY_MODEL
    from train.cli import main as train_main

    root = tmp_path_factory.mktemp("runs2")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps({**TINY_MODEL, "r_train": 0.8}))
    run = root / "fan" / "seed1"
    assert train_main(["--data", str(tiny_data), "--machine", "fan", "--out", str(run), "--config", str(cfg), "--seed", "1",
                       "--device", "cpu", "--baseline-epochs", "0", "--quiet", "--detector", "knn", "--k", "2"]) == 0
    return run


def test_ensemble_members_are_selected_without_test_labels(tiny_run, second_run, tiny_data, tmp_path):
    from edge_asd.scoring.metrics import evaluate_dir
    from edge_asd.offline.score import score_paths
    from export.pack import build_bundle

    runs = [tiny_run, second_run]
    both = open_bundle(build_bundle(runs, tmp_path / "both.asd", progress=False))
    assert len(both.manifest.to_dict()["members"]) == 2 and both.manifest.selection is None
    proxies = [both.manifest.to_dict()["precision"][m]["proxy_auc_fp32"] for m in ("m0", "m1")]

    # label-free: the member with the higher proxy AUC, and the figures recorded
    best = open_bundle(build_bundle(runs, tmp_path / "proxy.asd", select=1, progress=False))
    sel = best.manifest.to_dict()["selection"]
    assert [c["figure"] for c in sel["candidates"]] == pytest.approx(proxies)
    winner = int(np.argmax(proxies))
    assert [c["chosen"] for c in sel["candidates"]] == [i == winner for i in range(2)]
    assert [m["run"] for m in best.manifest.to_dict()["members"]] == [str(runs[winner])]

    # labelled validation clips: each candidate's figure is its own bundle's official score on them
    val = [c.path for c in list_clips(tiny_data, "fan", "test")]
    chosen = open_bundle(build_bundle(runs, tmp_path / "val.asd", select=1, validation=val, progress=False))
    sel = chosen.manifest.to_dict()["selection"]
    assert sel["criterion"].startswith("official score")
    for run, cand in zip(runs, sel["candidates"]):
        alone = build_bundle(run, tmp_path / f"{run.name}.asd", progress=False)
        score_paths(alone, val, tmp_path / f"sub_{run.name}", progress=False)
        assert cand["figure"] == pytest.approx(evaluate_dir(tmp_path / f"sub_{run.name}")["official_score"], abs=1e-9)
    figures = [c["figure"] for c in sel["candidates"]]
    assert [m["run"] for m in chosen.manifest.to_dict()["members"]] == [str(runs[int(np.argmax(figures))])]


def test_selection_mistakes_are_user_errors(tiny_run, second_run, tmp_path):
    from edge_asd.errors import UserError
    from export.pack import build_bundle

    with pytest.raises(UserError, match=r"--select 3: choose between 1 and the 2 run\(s\)"):
        build_bundle([tiny_run, second_run], tmp_path / "x.asd", select=3, progress=False)
    with pytest.raises(UserError, match="--select-by validation needs --validation"):
        build_bundle([tiny_run, second_run], tmp_path / "x.asd", select=1, select_by="validation", progress=False)
    assert not (tmp_path / "x.asd").exists()


def test_int8_engine_needs_the_bundles_calibration_cache(tiny_bundle, edge_asd_exe, tmp_path):
    # Checked before TensorRT is touched, so it holds on machines without it too.
    r = subprocess.run([edge_asd_exe, "build-engine", str(tiny_bundle), "--precision", "int8", "--out", str(tmp_path / "e.asd")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "member 0 carries no int8 calibration cache" in r.stderr and str(tiny_bundle) in r.stderr
    assert not (tmp_path / "e.asd").exists()


@pytest.mark.parametrize(
    "backend, engine, expected",
    [
        ("auto", None, ["onnx-tensorrt", "onnx-cuda", "onnx-cpu"]),
        ("auto", b"engine", ["tensorrt", "onnx-tensorrt", "onnx-cuda", "onnx-cpu"]),
        ("tensorrt", None, ["tensorrt", "onnx-tensorrt", "onnx-cuda", "onnx-cpu"]),
        ("onnx-cuda", None, ["onnx-cuda", "onnx-cpu"]),
    ],
)
def test_back_ends_fall_back_fastest_first(monkeypatch, backend, engine, expected):
    from edge_asd.runtime import backend_table as inference

    # A GPU device's providers; the model is not ONNX, so every back end really fails and says so in turn.
    monkeypatch.setattr(inference, "available_ort_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="no inference back end could load the model") as err:
        inference.make_backend(b"not an onnx model", backend=backend, engine=engine)
    tried = re.findall(r"(?:model: |; )(tensorrt|onnx-tensorrt|onnx-cuda|onnx-cpu): ", str(err.value))
    assert tried == expected


# --- reference clips (issue 26: listen, normal against now) --------------------------------------


def test_the_bundle_packs_typical_normal_reference_clips_of_each_section(tiny_bundle, tiny_data):
    from edge_asd.runtime.references import ReferenceClips

    bundle = open_bundle(tiny_bundle)
    listing = bundle.manifest.to_dict()["reference_clips"]
    assert sorted(listing) == bundle.manifest.to_dict()["sections"] == ["00", "01"]
    train = {c.name + ".wav" if not c.name.endswith(".wav") else c.name: c for c in list_clips(tiny_data, "fan", "train")}
    for section, entries in listing.items():
        assert len(entries) == 3, "the default is 3 per section"
        # both domains of the section are heard (the tiny set has source and target normals)
        assert {e["domain"] for e in entries} == {"source", "target"}, entries
        for e in entries:
            assert e["file"].startswith("references/") and e["file"].endswith(".flac") and e["file"] in bundle.manifest.to_dict()["files"]
            assert 0 < e["seconds"] <= 5.0
            x, rate = sf.read(__import__("io").BytesIO(bundle.read(e["file"])), dtype="float32")
            assert rate == 16000 and x.size == round(e["seconds"] * rate)
            src = train[e["source"]]
            assert src.section == section and (src.domain or "source") == e["domain"]
            original, _ = sf.read(src.path, dtype="float32")
            np.testing.assert_allclose(x, original[: x.size], atol=2 / 32768)  # the clip itself, as 16-bit FLAC
    refs = ReferenceClips.from_bundle(bundle)
    assert len(refs) == 6
    from edge_asd.io.features import LogMelStats, LogMelStatsConfig

    feats = LogMelStats(LogMelStatsConfig())
    for ref in refs.clips.values():
        own, _ = refs.samples(ref.name)
        assert refs.nearest(own, ref.section, feats) == ref, "a reference's own sound is nearest itself"
    assert refs.nearest(own, "99", feats) is None


def test_typical_normals_skip_the_odd_clip_and_take_domains_in_turn():
    from export.pack import typical_normals

    rng = np.random.default_rng(0)
    f = rng.normal(size=(9, 4))
    f[0] = 40.0  # a door slam: far from every other source clip
    f[1] = np.median(f[:6], axis=0)  # the most typical source clip
    domains = ["source"] * 6 + ["target"] * 3
    chosen = typical_normals(f, domains, 4)
    assert chosen[0] == 1 and 0 not in chosen
    assert [domains[i] for i in chosen] == ["source", "target", "source", "target"]
    assert typical_normals(f, domains, 0) == [] and len(typical_normals(f, domains, 20)) == 9


@pytest.mark.parametrize("value", ["21", "-1", "abc", "1.5", ""])
def test_a_bad_reference_clips_value_is_one_line_and_exit_2(tiny_run, tmp_path, value):
    import sys

    exe = str(Path(sys.executable).with_name("edge-asd-export"))
    r = subprocess.run([exe, str(tiny_run), "--out", str(tmp_path / "b.asd"), f"--reference-clips={value}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--reference-clips" in r.stderr and "0 (none) to 20" in r.stderr, r.stderr
    assert not (tmp_path / "b.asd").exists()


def test_reference_clips_0_packs_none(tiny_run, tmp_path):
    from export.pack import build_bundle

    m = open_bundle(build_bundle(tiny_run, tmp_path / "none.asd", progress=False, reference_clips=0)).manifest.to_dict()
    assert "reference_clips" not in m and not [f for f in m["files"] if f.startswith("references/")]
    assert m.get("band_evidence"), "band evidence does not depend on the reference clips"


# --- a segment length other than the default (issue 24 item 7) ------------------------------------


def test_a_3s_segment_run_is_exported_and_scored_with_3s_segments(tiny_data, edge_asd_exe, tmp_path):
    """Train 1 epoch on 3 s segments, export with the CLI: the manifest, the graphs and `edge-asd score` all use
    3 s segments, and the device's score of a clip is the training side's stage-2 score of it."""
    import sys

    from conftest import TINY_MODEL
    from train.cli import main as train_main
    from train.evaluate import embed_test, score_embedded
    from train.rundir import RunDir

    cfg = tmp_path / "seg3.json"
    cfg.write_text(json.dumps({**TINY_MODEL, "epochs": 1, "r_train": 0.8, "segment_seconds": 3, "hop_length": 512}))
    run = tmp_path / "fan" / "seg3"
    assert train_main(["--data", str(tiny_data), "--machine", "fan", "--out", str(run), "--config", str(cfg),
                       "--device", "cpu", "--baseline-epochs", "0", "--quiet", "--detector", "knn", "--k", "2"]) == 0
    bundle = tmp_path / "seg3.asd"
    r = subprocess.run([str(Path(sys.executable).with_name("edge-asd-export")), str(run), "--out", str(bundle), "--no-plain"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    b = open_bundle(bundle)
    audio, (member,) = b.manifest.audio, b.manifest.members
    assert audio.segment_seconds == 3.0 and audio.spec().segment_samples == 48000
    hop = json.loads((run / "config.json").read_text())["hop_length"]
    assert member.split is not None and member.split.hop_length == hop
    assert member.split.frames_per_segment == 1 + (48000 - 2048) // hop  # the frames one 3 s segment makes
    import onnx

    (inp,) = onnx.load_from_string(b.read(member.model)).graph.input
    assert inp.type.tensor_type.shape.dim[1].dim_value == 48000

    out = tmp_path / "sub"
    r = subprocess.run([edge_asd_exe, "score", str(bundle), str(tiny_data / "fan" / "test"), "--out", str(out), "--quiet",
                        "--backend", "onnx-cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    device = {}
    for csv in out.glob("anomaly_score_*.csv"):
        for line in csv.read_text().splitlines():
            name, score = line.split(",")
            device[name] = float(score)
    training = score_embedded(run, embed_test(run, tiny_data, "fan", progress=False), RunDir(run).default_approach())
    assert sorted(device) == sorted(training["names"])
    for name, score in zip(training["names"], training["scores"]):
        assert device[name] == pytest.approx(score, rel=1e-3, abs=1e-3), name


def test_device_and_training_side_score_the_same_embeddings_alike(tiny_run, tiny_data, tmp_path):
    """One scoring function: for the same embeddings, the device's scorer and the report's score_embedded agree to
    float precision, and the bundle's threshold is the one stage 2 fitted on the training side."""
    from edge_asd.runtime.scorer import ClipScorer
    from export.pack import build_bundle
    from train.evaluate import embed_test, score_embedded
    from train.rundir import RunDir
    from train.stage2 import load_stage2

    approach = RunDir(tiny_run).default_approach()
    bundle = build_bundle(tiny_run, tmp_path / "learned.asd", progress=False)  # the learned member alone, fp32
    scorer = ClipScorer(open_bundle(bundle), backend="onnx-cpu")
    test = embed_test(tiny_run, tiny_data, "fan", progress=False)
    training = score_embedded(tiny_run, test, approach)
    _, sections = load_stage2(tiny_run, approach)
    for section, model in sections.items():
        sel = test["sections"] == section
        device, p = scorer.combine([(test["embeddings"][sel], test["domain_logits"][sel])], section)
        np.testing.assert_allclose(device, training["scores"][sel], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(p, training["p_target"][sel], rtol=1e-12, atol=1e-12)
        assert scorer.thresholds[section] == pytest.approx(model.threshold, rel=1e-12)
        assert (device > scorer.thresholds[section]).tolist() == training["decisions"][sel].astype(bool).tolist()


@pytest.mark.parametrize("flags, warned", [(["--precision", "int8"], True), (["--precision", "fp16"], False),
                                           (["--precision", "int8", "--format", "tensorrt"], False)])
def test_int8_for_a_cpu_is_exported_with_a_warning(monkeypatch, caplog, tmp_path, flags, warned):
    """int8 ONNX is slower and larger than fp32 on a CPU (BENCHMARKS.md): the export says so, and still writes it."""
    import export.cli

    asked = []
    monkeypatch.setattr(export.cli, "build_bundle", lambda *a, **kw: asked.append(kw["precision"]))
    with caplog.at_level("WARNING", logger="export.cli"):
        assert export.cli.main([str(tmp_path), "--out", str(tmp_path / "b.asd"), *flags]) == 0
    assert asked == [flags[1]]
    assert any("slower and larger than fp32 on a CPU" in r.getMessage() for r in caplog.records) == warned
