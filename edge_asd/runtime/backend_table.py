"""Extractor inference back ends behind one small interface.

``make_backend`` picks, in order, what is installed and asked for: a TensorRT
engine built for this very GPU, onnxruntime with the TensorRT or CUDA execution
provider, onnxruntime on the CPU. A back end that fails to import or to load is
logged and the next one is tried (Frigate's detector pattern), so a TensorRT
problem never takes a CPU install down.

What a back end is: :mod:`edge_asd.runtime.backend`; onnxruntime's:
:mod:`edge_asd.runtime.onnx`; TensorRT's: :mod:`edge_asd.runtime.trt`.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from edge_asd.runtime.backend import Backend
from edge_asd.runtime.onnx import OnnxBackend, ort_providers, available_ort_providers

log = logging.getLogger("edge_asd.inference")  # the name journals show, kept from before the subpackages

BACKENDS = ("auto", "onnx-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt")


def _tensorrt(model: bytes, threads: int, engine: bytes | None, engine_meta: dict | None, cache_dir: str | None) -> Backend:
    if engine is None:
        raise RuntimeError("the bundle holds no TensorRT engine")
    from edge_asd.runtime.trt import TensorRTBackend  # tensorrt is imported only where an engine is used

    return TensorRTBackend(engine, engine_meta or {})


def _onnxruntime(kind: str) -> Callable[..., Backend]:
    def make(model: bytes, threads: int, engine: bytes | None, engine_meta: dict | None, cache_dir: str | None) -> Backend:
        missing = {"onnx-cuda": "CUDAExecutionProvider", "onnx-tensorrt": "TensorrtExecutionProvider"}.get(kind)
        if missing is not None and missing not in available_ort_providers():
            raise RuntimeError(f"onnxruntime here has no {missing}")
        b = OnnxBackend(model, providers=ort_providers(kind, cache_dir), threads=threads or (os.cpu_count() or 1))
        b.name = kind
        return b

    return make


# Back-end name -> factory (Frigate's detector table); ``auto`` is an order over these, fastest first.
FACTORIES: dict[str, Callable[..., Backend]] = {
    "tensorrt": _tensorrt,
    "onnx-tensorrt": _onnxruntime("onnx-tensorrt"),
    "onnx-cuda": _onnxruntime("onnx-cuda"),
    "onnx-cpu": _onnxruntime("onnx-cpu"),
}
assert set(FACTORIES) == set(BACKENDS) - {"auto"}


def make_backend(
    model: bytes,
    backend: str = "auto",
    threads: int = 0,
    engine: bytes | None = None,
    engine_meta: dict | None = None,
    cache_dir: str | None = None,
) -> Backend:
    """The best back end that loads, trying the next one when one fails."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown back end {backend!r}; choose from {', '.join(BACKENDS)}")
    # Fastest first; an explicit choice falls back along the same order, so a
    # refused engine still gets the GPU through onnxruntime before the CPU.
    providers = available_ort_providers()
    chain = (["tensorrt"] if engine is not None else []) + [
        kind for kind, provider in (("onnx-tensorrt", "TensorrtExecutionProvider"), ("onnx-cuda", "CUDAExecutionProvider"))
        if provider in providers
    ] + ["onnx-cpu"]
    if backend == "auto":
        order = chain
    else:
        order = chain[chain.index(backend) :] if backend in chain else [backend] + chain
    errors = []
    for kind in order:
        try:
            return FACTORIES[kind](model, threads, engine, engine_meta, cache_dir)
        except Exception as exc:  # try the next back end, but say why
            log.warning("back end %s unavailable: %s", kind, exc)
            errors.append(f"{kind}: {exc}")
    raise RuntimeError("no inference back end could load the model: " + "; ".join(errors))
