"""Extractor -> ONNX, front end inside: ``waveform [batch, 32000] -> embedding, domain_logit``.

Uses the TorchScript-based exporter at opset 17: the graph it writes for the
conv-DFT front end and the encoders holds only operators TensorRT parses
(Conv, MatMul, Pow, Log, Softmax, ...). The dynamo exporter is the fallback
where the TorchScript one is unavailable.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

OPSET = 17


class EmbedGraph(nn.Module):
    """The part of the extractor scoring needs: embedding and domain logit."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, waveform: torch.Tensor):
        emb, logit = self.extractor.embed(waveform)
        return emb, logit.reshape(-1)


def export_onnx(extractor: nn.Module, segment_samples: int, opset: int = OPSET) -> bytes:
    """Serialized ONNX of the extractor in fp32, dynamic batch, checked with onnx's full check."""
    import onnx

    graph = EmbedGraph(extractor).eval().cpu().float()
    example = torch.zeros(2, segment_samples)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                (example,),
                buf,
                input_names=["waveform"],
                output_names=["embedding", "domain_logit"],
                dynamic_axes={"waveform": {0: "batch"}, "embedding": {0: "batch"}, "domain_logit": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        except Exception:
            buf = io.BytesIO()
            torch.onnx.export(
                graph,
                (example,),
                buf,
                input_names=["waveform"],
                output_names=["embedding", "domain_logit"],
                dynamic_shapes={"waveform": {0: torch.export.Dim("batch", min=1, max=4096)}},
                opset_version=max(opset, 18),
                dynamo=True,
            )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


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
