"""Sub-cluster AdaCos objective and the full-segment FFT branch: the formulas by hand, the factorised
segment DFT against numpy, and a tiny run that trains, separates sections, exports and matches torch.

Uses the synthetic "fan" (three pitched sections, attribute ``p_<pitch>``) and
"pump" data of tests/test_stage1.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asd.io.audio import SegmentSpec, clip_segments
from edge_asd.io.dcase import list_clips
from edge_asd.errors import UserError
from tonal_data import tiny_config
from train.adacos import AdaCosCropDataset, SubClusterAdaCos, adacos_classes, initial_scale, subcluster_adacos_loss
from train.config import TrainConfig
from train.data import BatchPlan, OEBatchSampler, prepare_data
from train.embed import load_extractor
from train.fft_branch import SegmentSpectrum, split_length
from train.models import ModelConfig, build_extractor
from train.stage1 import evaluate_sections, heldout_clips, train_extractor

torch.set_num_threads(2)

ADACOS_FFT = dict(objective="subcluster_adacos", fft_branch=True, fft_channels=16, fft_embedding_dim=8, n_subclusters=4)


# --- the objective by hand -------------------------------------------------------------------


def _reference(cos: np.ndarray, y: np.ndarray, s: float, m: int) -> tuple[float, float, float]:
    """(new scale, loss, median angle) of sub-cluster AdaCos written out sample by sample, centre by centre."""
    n, cm = cos.shape
    c = cm // m
    rows = [i for i in range(n) if y[i].sum() > 0]
    b_terms, thetas = [], []
    for i in rows:
        own = {k for k in range(c) if y[i, k] > 0}
        b_terms.append(sum(math.exp(s * cos[i, j]) for j in range(cm) if j // m not in own))
        angles = [math.acos(max(cos[i, k * m + q] for q in range(m))) for k in range(c)]
        thetas.append(sum(y[i, k] * angles[k] for k in range(c)) / y[i].sum())
    b_avg = sum(b_terms) / len(rows)
    theta_med = float(np.median(thetas))
    s_new = math.log(b_avg) / math.cos(min(math.pi / 4, theta_med))
    loss, weight = 0.0, 0.0
    for i in rows:
        z = sum(math.exp(s_new * cos[i, j]) for j in range(cm))
        for k in range(c):
            p = sum(math.exp(s_new * cos[i, k * m + q]) for q in range(m)) / z  # the sub-cluster sum
            loss -= y[i, k] * math.log(p)
            weight += y[i, k]
    return s_new, loss / weight, theta_med


@pytest.mark.parametrize("near", [False, True], ids=["random", "near_own_centres"])
def test_subcluster_adacos_loss_matches_a_direct_computation(near):
    torch.manual_seed(0)
    head = SubClusterAdaCos(embedding_dim=5, class_sections=[0, 1, -1], n_sections=2, n_subclusters=2)
    assert head.scale.item() == pytest.approx(math.sqrt(2) * math.log(3 * 2 - 1))
    emb = torch.randn(5, 5)
    # one-hot rows, a Mixup row (0.3 / 0.7), a row with half its weight left out, an unlabelled row
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0.3, 0, 0.7], [0, 0, 0.5], [0, 0, 0]], dtype=torch.float32)
    if near:  # embeddings by one sub-cluster of their class: the median angle falls below pi / 4
        with torch.no_grad():
            emb = head.centres[[0, 3, 1, 5, 2]] + 0.15 * emb
    cos = head.cosine(emb)
    ref_cos = (emb / emb.norm(dim=1, keepdim=True)) @ (head.centres / head.centres.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(cos, ref_cos)
    s_ref, loss_ref, theta_med = _reference(cos.double().detach().numpy(), y.numpy().astype(np.float64), head.scale.item(), 2)
    assert (theta_med < math.pi / 4) == near and s_ref > 1.0
    loss = subcluster_adacos_loss(head, cos, y)
    assert head.scale.item() == pytest.approx(s_ref, rel=1e-5)
    assert loss.item() == pytest.approx(loss_ref, rel=1e-5)
    # the unlabelled row does not count; without the update the scale stays
    moved = cos.clone()
    moved[4] = -moved[4]
    head.scale.fill_(s_ref)
    assert subcluster_adacos_loss(head, moved, y, update_scale=False).item() == pytest.approx(loss_ref, rel=1e-5)
    assert head.scale.item() == pytest.approx(s_ref)
    # class probabilities are sums over sub-clusters and sum to one; sections add up their classes
    p = head.class_log_probs(cos).exp()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(5))
    sec = torch.sigmoid(head.section_logits(cos))
    torch.testing.assert_close(sec, p[:, :2], rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_centres_and_the_embedding():
    torch.manual_seed(1)
    head = SubClusterAdaCos(embedding_dim=6, class_sections=[0, 0, 1], n_sections=2, n_subclusters=3)
    emb = torch.randn(8, 6, requires_grad=True)
    y = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    before = head.centres.detach().clone()
    loss = subcluster_adacos_loss(head, head.cosine(emb), y)
    loss.backward()
    g = head.centres.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert (g.abs().sum(dim=1) > 0).all()  # every sub-cluster of every class is pulled or pushed
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    torch.optim.SGD(head.parameters(), lr=0.5).step()
    assert subcluster_adacos_loss(head, head.cosine(emb), y, update_scale=False) < loss
    assert not torch.equal(head.centres, before)
    fixed = SubClusterAdaCos(embedding_dim=6, class_sections=[0, 0, 1], n_sections=2, n_subclusters=3, trainable=False)
    assert not fixed.centres.requires_grad
    subcluster_adacos_loss(fixed, fixed.cosine(emb), y).backward()
    assert fixed.centres.grad is None and "centres" in fixed.state_dict()


def test_initial_scale_and_option_errors(data_root, cache_dir, tmp_path):
    assert initial_scale(2) == 0.0 and initial_scale(17) == pytest.approx(math.sqrt(2) * math.log(16))
    with pytest.raises(ValueError):
        initial_scale(1)
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir, **ADACOS_FFT)
    cfg.validate()
    for change, match in ((dict(objective="arcface"), "objective 'arcface'"), (dict(n_subclusters=0), "n_subclusters"),
                          (dict(fft_channels=0), "fft_channels"), (dict(fft_embedding_dim=0), "fft_embedding_dim")):
        with pytest.raises(UserError, match=match):
            replace(cfg, **change).validate()
    with pytest.raises(UserError, match="one class and n_subclusters 1"):
        ModelConfig(objective="subcluster_adacos", n_subclusters=1, adacos_classes=["00_source"], adacos_class_sections=[0]).validate()
    # a config written before these keys existed still loads, with the report's objective
    old = {k: v for k, v in cfg.to_dict().items() if k not in ADACOS_FFT}
    assert TrainConfig.from_dict(old).objective == "oe"


def test_cli_rejects_a_bad_objective_in_one_line(data_root, tmp_path):
    exe = str(Path(sys.executable).with_name("edge-asd-train"))
    args = [exe, "--data", str(data_root), "--machine", "fan", "--out", str(tmp_path / "r"), "--quiet"]
    r = subprocess.run(args + ["--objective", "arcface"], capture_output=True, text=True)
    assert r.returncode == 2 and "arcface" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"objective": "arcface"}))
    r = subprocess.run(args + ["--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "objective 'arcface' is not one of oe, subcluster_adacos" in r.stderr


# --- classes ------------------------------------------------------------------------------------


def test_classes_follow_the_file_names_and_mixup(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir, mixup=True, **ADACOS_FFT)
    data = prepare_data(cfg)
    classes = adacos_classes(data, "fan")
    own = [f"{s:02d}_{d}_p_{int(f)}" for s, f in enumerate((220.0, 470.0, 910.0)) for d in ("source", "target")]
    assert classes.names == own + ["~pump_00_source", "~pump_01_source"]
    assert classes.sections == [0, 0, 1, 1, 2, 2, -1, -1]
    assert (classes.of_clip >= 0).all()
    left_out = adacos_classes(data, "fan", pseudo_classes=False)
    assert left_out.names == own and (left_out.of_clip[~data.table.normal] == -1).all()
    sampler = OEBatchSampler(data.pools, data.table.lengths, cfg.segment_samples, BatchPlan.from_config(cfg), cfg.seed)
    ds = AdaCosCropDataset(data.table, 3, cfg.segment_samples, classes)
    for clip, off, partner, poff, lam in next(iter(sampler)):
        item = ds[(clip, off, partner, poff, lam)]
        expected = np.zeros(len(classes.names), np.float32)
        expected[classes.of_clip[clip]] += lam
        if partner >= 0:
            expected[classes.of_clip[partner]] += 1 - lam
        np.testing.assert_allclose(item["label"].numpy(), expected, rtol=1e-6)
        assert item["label"].sum().item() == pytest.approx(1.0)


# --- the factorised segment DFT --------------------------------------------------------------------


@pytest.mark.parametrize("n", [32000, 16000, 1009])
def test_segment_dft_equals_numpy_rfft_magnitude(n):
    rng = np.random.default_rng(n)
    t = np.arange(n) / 16000
    x = np.stack([
        rng.standard_normal(n),
        3.0 * np.sin(2 * np.pi * 437.3 * t) + 0.01 * rng.standard_normal(n),  # a tone 50 dB above the noise
        np.zeros(n),
    ]).astype(np.float32)
    fe = SegmentSpectrum(n)
    rows, cols = split_length(n)
    assert rows * cols == n and (n != 1009 or cols == 1)  # a prime length falls back to the dense DFT
    ref = np.abs(np.fft.rfft(x.astype(np.float64), axis=1))[:, : n // 2]
    with torch.no_grad():
        got = fe(torch.from_numpy(x)).numpy()
        fe.use_fft = True
        fast = fe(torch.from_numpy(x)).numpy()
    assert got.shape == (3, n // 2) and got.dtype == np.float32
    scale = ref.max(axis=1, keepdims=True) + 1e-30
    assert np.max(np.abs(got - ref) / scale) < 2e-6  # float32 rounding of 2 x ~sqrt(n)-term sums
    assert np.max(np.abs(fast - ref) / scale) < 2e-6
    assert np.all(got[2] == 0)
    assert np.max(np.abs(got[:2] - np.roll(ref[:2], 1, axis=1)) / scale[:2]) > 0.1  # not trivially close
    assert list(fe.parameters()) == [] and fe.state_dict() == {}


def test_segment_dft_exports_with_plain_operators():
    import onnx

    from export.onnx_export import OPSET, _export

    graph = onnx.load_from_string(_export(SegmentSpectrum(32000).eval(), torch.zeros(2, 32000), "waveform", ["spectrum"],
                                          {"waveform": {0: "batch"}, "spectrum": {0: "batch"}}, OPSET))
    ops = {n.op_type for n in graph.graph.node}
    # what TensorRT parses; the 32000-point DFT's constants are small GEMM operands, not a dense matrix
    assert ops <= {"Reshape", "Transpose", "MatMul", "Slice", "Mul", "Sub", "Add", "Concat", "Sqrt", "Gather",
                   "Constant", "Shape", "Unsqueeze", "Cast"}, ops
    assert sum(np.prod(t.dims) for t in graph.graph.initializer) < 300_000


# --- a tiny run, end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def adacos_run(data_root, cache_dir, tmp_path_factory):
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("runs") / "fan", cache_dir, mixup=True, **ADACOS_FFT)
    return cfg, train_extractor(cfg, progress=False)


def test_adacos_fft_run_separates_sections_better_than_untrained(adacos_run, data_root):
    cfg, run = adacos_run
    model = load_extractor(run)
    assert model.fft_branch is not None and model.adacos is not None
    assert model.config.embedding_size == 16 + 8
    assert model.adacos.scale.item() != pytest.approx(initial_scale(8 * 4))  # adapted during training
    clips = heldout_clips(run, data_root)
    spec = SegmentSpec(n_segments=3)
    trained = evaluate_sections(model, clips, spec)
    torch.manual_seed(cfg.seed)
    untrained = evaluate_sections(build_extractor(replace(model.config)), clips, spec)
    assert trained["section_acc"] >= 0.7, trained
    assert untrained["section_acc"] < 0.6, untrained
    assert trained["section_loss"] < untrained["section_loss"]
    # The embedding itself (what stage 2 sees): the cosine margin of each held-out clip between its
    # section's mean and the nearest other section's mean. Random features of these pitched sounds
    # already point the right way, but by a hair; training opens the gap.
    from train.embed import embed_clips

    truth = np.array([c[1] for c in clips])

    def margin(m) -> float:
        emb, _ = embed_clips(m.eval(), [c[0] for c in clips], spec)
        e = emb.mean(axis=1)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        sims = e @ np.stack([e[truth == k].mean(axis=0) for k in range(3)]).T
        own = sims[np.arange(len(truth)), truth]
        sims[np.arange(len(truth)), truth] = -np.inf
        return float(np.mean(own - sims.max(axis=1)))

    torch.manual_seed(cfg.seed)
    m_trained, m_untrained = margin(model), margin(build_extractor(replace(model.config)))
    assert m_trained > 0.1 and m_trained > 3 * m_untrained, (m_trained, m_untrained)


def test_adacos_fft_run_exports_with_parity(adacos_run, data_root):
    import onnx

    from edge_asd.runtime.onnx import OnnxBackend
    from export.onnx_export import export_onnx, export_split, relative_error, torch_embed

    _, run = adacos_run
    model = load_extractor(run)
    onnx_bytes = export_onnx(model, 32000)
    graph = onnx.load_from_string(onnx_bytes)
    assert [o.name for o in graph.graph.output] == ["embedding", "domain_logit"]
    ops = {n.op_type for n in graph.graph.node}
    assert "DFT" not in ops and "STFT" not in ops and "MatMul" in ops
    segs = clip_segments(sorted((data_root / "fan" / "train").glob("section_01_*.wav"))[0], SegmentSpec(n_segments=4))
    ref, ref_logit = torch_embed(model, segs)
    got, got_logit = OnnxBackend(onnx_bytes).run(segs)
    assert ref.shape == (4, 24)
    assert relative_error(ref, got) < 1e-4
    assert np.allclose(ref_logit, got_logit, atol=1e-4 * max(1.0, np.abs(ref_logit).max()))
    # the fp16 variant keeps both spectra in fp32
    half, _ = OnnxBackend(export_onnx(model, 32000, half_encoder=True)).run(segs)
    assert relative_error(ref, half) < 0.05
    assert not model.frame_sliceable and build_extractor(replace(model.config, fft_branch=False)).frame_sliceable
    with pytest.raises(ValueError, match="FFT branch"):
        export_split(model, 32000)


def test_cli_flags_train_and_bundle_without_split_graphs(tiny_data, tmp_path):
    """--objective / --fft-branch over a --config file, stage 2 on the embeddings, a bundle that scores."""
    from conftest import TINY_MODEL
    from edge_asd.runtime.bundle import open_bundle
    from edge_asd.runtime.scorer import load_scorer
    from export.pack import build_bundle
    from train.cli import main as train_main

    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps({**TINY_MODEL, "r_train": 0.8, "fft_channels": 8, "n_subclusters": 2, "epochs": 1}))
    run = tmp_path / "fan"
    assert train_main(["--data", str(tiny_data), "--machine", "fan", "--out", str(run), "--config", str(cfg_file),
                       "--objective", "subcluster_adacos", "--fft-branch", "--device", "cpu", "--baseline-epochs", "0",
                       "--quiet", "--detector", "knn", "--k", "2"]) == 0
    stored = json.loads((run / "config.json").read_text())
    assert stored["objective"] == "subcluster_adacos" and stored["fft_branch"] is True and stored["n_subclusters"] == 2
    path = build_bundle(run, tmp_path / "fan.asd", progress=False)
    member = open_bundle(path).manifest.to_dict()["members"][0]
    assert member["embedding_dim"] == 32 + 32 and "split" not in member
    scorer = load_scorer(path, backend="onnx-cpu")
    clips = list_clips(tiny_data, "fan", "test")[:2]
    from edge_asd.io.audio import read_audio

    scores = scorer.score_many([read_audio(c.path) for c in clips], "00")
    assert np.all(np.isfinite(scores))
