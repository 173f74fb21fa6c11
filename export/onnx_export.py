"""Extractor -> ONNX, front end inside: ``waveform [batch, 32000] -> embedding, domain_logit``.

Uses the TorchScript-based exporter at opset 17: the graph it writes for the
conv-DFT front end and the encoders holds only operators TensorRT parses
(Conv, MatMul, Pow, Log, Softmax, ...), and it exports in a fraction of a
second where the dynamo exporter takes several.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch
from torch import nn

OPSET = 17


class EmbedGraph(nn.Module):
    """The part of the extractor scoring needs: embedding and domain logit.

    With ``half_encoder`` the encoder and heads run in fp16 while the front end
    and input normalization stay fp32: a power spectrum of standardized audio
    exceeds fp16's 65504, so a whole-graph fp16 conversion overflows to inf.
    Casting inside torch puts exactly two Casts in the graph; onnxruntime's
    graph-level fp16 converter was seen to cast front-end outputs anyway.
    """

    def __init__(self, extractor: nn.Module, half_encoder: bool = False):
        super().__init__()
        self.extractor = copy.deepcopy(extractor).float() if half_encoder else extractor
        self.half_encoder = half_encoder
        if half_encoder:
            self.extractor.encoder.half()
            self.extractor.heads.half()
            branch = getattr(self.extractor, "fft_branch", None)
            if branch is not None:
                # Its spectrum (constants and output) stays fp32, as the log-mel front end does.
                for part in (branch.convs, branch.mlp, branch.proj):
                    part.half()

    def forward(self, waveform: torch.Tensor):
        if not self.half_encoder:
            emb, logit = self.extractor.embed(waveform)
            return emb, logit.reshape(-1)
        x = self.extractor.input_norm(self.extractor.frontend(waveform))
        emb = self.extractor.encoder(x.half())
        branch = getattr(self.extractor, "fft_branch", None)
        if branch is not None:
            emb = torch.cat([emb, branch.encode(branch.features(waveform).half())], dim=-1)
        logit = self.extractor.heads.domain_logit(emb)
        return emb.float(), logit.float().reshape(-1)


def export_onnx(extractor: nn.Module, segment_samples: int, opset: int = OPSET, half_encoder: bool = False) -> bytes:
    """Serialized ONNX of the extractor, dynamic batch, checked with onnx's full check.

    fp32 throughout, or with ``half_encoder`` the fp16 variant for GPUs and TensorRT.
    """
    graph = EmbedGraph(extractor.eval().cpu().float(), half_encoder=half_encoder)
    return _export(
        graph, torch.zeros(2, segment_samples), "waveform", ["embedding", "domain_logit"],
        {"waveform": {0: "batch"}, "embedding": {0: "batch"}, "domain_logit": {0: "batch"}}, opset,
    )


def torch_embed(extractor: nn.Module, segments: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    graph = EmbedGraph(extractor).eval().cpu().float()
    embs, logits = [], []
    with torch.no_grad():
        for lo in range(0, len(segments), batch):
            e, l = graph(torch.from_numpy(np.ascontiguousarray(segments[lo : lo + batch], dtype=np.float32)))
            embs.append(e.numpy())
            logits.append(l.numpy())
    return np.concatenate(embs), np.concatenate(logits)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a|: the embedding parity measure of the export issue."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))


class FrontendGraph(nn.Module):
    """Whole clip ``[1, N]`` -> normalized log-mel frames ``[1, n_mels, F]``.

    The S = 10 segments of a 10 s clip overlap by ~78 %: computing the DFT once
    per clip and slicing 118-frame windows (segment starts are hop multiples)
    does about half the front-end work of per-segment graphs, with identical
    frames. The per-band input normalization is frame-wise, so it belongs here.
    """

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, waveform: torch.Tensor):
        return self.extractor.input_norm(self.extractor.frontend(waveform))


class EncoderGraph(nn.Module):
    """Normalized log-mel ``[B, n_mels, frames]`` -> embedding, domain logit."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, logmel: torch.Tensor):
        emb = self.extractor.encoder(logmel)
        return emb, self.extractor.heads.domain_logit(emb).reshape(-1)


def input_norm_affine(extractor: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The extractor's input normalization at inference as ``scale * x + shift`` per mel band (float32).

    A BatchNorm with running statistics is an affine map once trained; the
    CPU's rFFT front end (edge_asd.runtime.frontend) applies it after the log-mel,
    as ``frontend.onnx`` does.
    """
    bn = extractor.input_norm
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    weight = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    bias = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    scale = weight / np.sqrt(var + bn.eps)
    return scale.astype(np.float32), (bias - mean * scale).astype(np.float32)


def _export(graph: nn.Module, example: torch.Tensor, input_name: str, outputs: list[str], dynamic: dict, opset: int) -> bytes:
    import onnx

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.eval(), (example,), buf, input_names=[input_name], output_names=outputs,
            dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def export_split(extractor: nn.Module, segment_samples: int, opset: int = OPSET) -> tuple[bytes, bytes, int]:
    """(front-end graph, encoder graph, frames per segment) of an extractor in fp32."""
    if not getattr(extractor, "frame_sliceable", True):
        raise ValueError("an extractor with an FFT branch has no split graphs; deploy the whole-segment graph")
    ex = extractor.eval().cpu().float()
    frames = ex.frontend.n_frames(segment_samples)
    fe = _export(
        FrontendGraph(ex), torch.zeros(1, segment_samples * 2), "waveform", ["logmel"],
        {"waveform": {0: "batch", 1: "samples"}, "logmel": {0: "batch", 2: "frames"}}, opset,
    )
    enc = _export(
        EncoderGraph(ex), torch.zeros(2, ex.frontend.n_mels, frames), "logmel", ["embedding", "domain_logit"],
        {"logmel": {0: "batch"}, "embedding": {0: "batch"}, "domain_logit": {0: "batch"}}, opset,
    )
    return fe, enc, frames
