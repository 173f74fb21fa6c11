"""Reduced-precision variants of an exported extractor.

* fp16: the encoder and heads in half precision, front end and inputs/outputs
  fp32, for GPU execution providers and TensorRT (on a CPU, fp16 only costs time).
* int8: onnxruntime static quantization (QDQ, per-channel weights) for the CPU,
  calibrated on the run's normal training clips. The log-mel front end stays
  fp32: a power spectrum spans ~100 dB, which 8 bits cannot hold, and it is a
  small share of the compute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


def _input_length(model: bytes) -> int:
    import onnx

    return onnx.load_from_string(model).graph.input[0].type.tensor_type.shape.dim[1].dim_value


class _SegmentReader:
    """Feeds calibration batches to onnxruntime's quantizer."""

    def __init__(self, input_name: str, segments: np.ndarray, batch: int = 16):
        self._batches = iter([{input_name: segments[i : i + batch]} for i in range(0, len(segments), batch)])

    def get_next(self):
        return next(self._batches, None)


def to_int8(model: bytes, calibration_segments: np.ndarray) -> bytes:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    m = onnx.load_from_string(model)
    frontend_nodes = [n.name for n in m.graph.node if "frontend" in n.name]
    input_name = m.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        quantize_static(
            str(src),
            str(dst),
            _SegmentReader(input_name, np.ascontiguousarray(calibration_segments, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=frontend_nodes,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return dst.read_bytes()


def convert(model: bytes, precision: str, calibration_segments: np.ndarray | None = None, extractor=None) -> bytes:
    if precision == "fp32":
        return model
    if precision == "fp16":
        from .onnx_export import export_onnx

        if extractor is None:
            raise ValueError("fp16 export re-traces the extractor; pass it")
        return export_onnx(extractor, segment_samples=_input_length(model), half_encoder=True)
    if precision == "int8":
        if calibration_segments is None or len(calibration_segments) == 0:
            raise ValueError("int8 quantization needs calibration segments")
        return to_int8(model, calibration_segments)
    raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
