"""TensorRT engines: building them on the device, and running them.

Engines are specific to the GPU and the TensorRT version that built them, so
they are built where they run (``edge-asd build-engine BUNDLE`` on the Jetson
itself) and stored in the bundle with that provenance. A mismatched engine is
refused with a message saying what it was built for, and the runtime falls
back to the bundle's ONNX model (see :func:`edge_asd.runtime.backend_table.make_backend`).

Needs ``tensorrt`` and ``cuda-python`` (both ship with JetPack); neither is a
dependency of the plain runtime, and everything here imports them lazily.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import numpy as np

from edge_asd.errors import UserError
from edge_asd.runtime.backend import SegmentBatches
from edge_asd.runtime.manifest import Engine, Member

log = logging.getLogger("edge_asd.engine")  # the name journals show, kept from before the subpackages


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError(
            "tensorrt is not installed here; install '.[tensorrt]' (or use JetPack's) and build the engine on the device "
            "that will run it with `edge-asd build-engine BUNDLE`"
        ) from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise RuntimeError("cuda-python is not installed (pip install cuda-python)") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def device_identity() -> dict:
    """What an engine is tied to: the GPU model, its compute capability, TensorRT's version."""
    trt = _trt()
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"tensorrt_version": trt.__version__, "gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


class _Calibrator:
    """INT8 entropy calibration over normal training segments, with a cache.

    Defined lazily because its base class lives in tensorrt.
    """

    @staticmethod
    def make(trt, segments: np.ndarray, cache: Path | None):
        cudart = _cudart()

        class Calib(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self.batch = 8
                self.data = np.ascontiguousarray(segments, dtype=np.float32)
                self.pos = 0
                self.dev = _check(cudart.cudaMalloc(self.batch * self.data.shape[1] * 4))

            def get_batch_size(self):
                return self.batch

            def get_batch(self, names):
                if self.pos + self.batch > len(self.data):
                    return None
                chunk = self.data[self.pos : self.pos + self.batch]
                self.pos += self.batch
                _check(cudart.cudaMemcpy(self.dev, chunk.ctypes.data, chunk.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
                return [int(self.dev)]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache and cache.exists() else None

            def write_calibration_cache(self, data):
                if cache:
                    cache.write_bytes(bytes(data))

        return Calib()


def build_engine(
    onnx_model: bytes,
    precision: str = "fp16",
    max_batch: int = 10,
    segment_samples: int = 32000,
    calibration_segments: np.ndarray | None = None,
    calibration_cache: Path | None = None,
    workspace_mb: int = 1024,
) -> tuple[bytes, dict]:
    """Serialized engine with an optimization profile for batch 1..max_batch, and its provenance."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration_segments is None and not (calibration_cache and calibration_cache.exists()):
            raise UserError("a TensorRT int8 engine needs calibration segments or a calibration cache")
        config.set_flag(trt.BuilderFlag.INT8)
        segs = calibration_segments if calibration_segments is not None else np.zeros((0, segment_samples), np.float32)
        config.int8_calibrator = _Calibrator.make(trt, segs, calibration_cache)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, segment_samples), (max_batch, segment_samples), (max_batch, segment_samples))
    config.add_optimization_profile(profile)
    if precision == "int8":
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    meta = {**device_identity(), "precision": precision, "max_batch": max_batch, "input": name}
    return bytes(serialized), meta


def engine_source(member: Member) -> str:
    """The bundle member a TensorRT engine is built from.

    onnxruntime's int8 model (asymmetric uint8 activations, for the CPU) is not
    one TensorRT can run; an int8 bundle for TensorRT therefore also carries the
    fp32 model, which TensorRT quantizes itself with the stored calibration cache.
    """
    return member.engine_source or member.model


class TensorRTBackend(SegmentBatches):
    """Runs a serialized engine; refuses one built for another GPU or TensorRT."""

    name = "tensorrt"

    def __init__(self, engine: bytes, meta: dict):
        here = device_identity()
        for key in ("tensorrt_version", "gpu", "compute_capability"):
            if meta.get(key) != here[key]:
                raise RuntimeError(
                    f"the bundle's engine was built for {meta.get('gpu')} (compute {meta.get('compute_capability')}) with "
                    f"TensorRT {meta.get('tensorrt_version')}; this device is {here['gpu']} (compute "
                    f"{here['compute_capability']}) with TensorRT {here['tensorrt_version']}. Rebuild it here with "
                    "`edge-asd build-engine BUNDLE`; using the ONNX model meanwhile"
                )
        trt = _trt()
        self._cudart = _cudart()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine)
        if self._engine is None:
            raise RuntimeError("TensorRT could not deserialize the bundle's engine")
        self._ctx = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate())
        self.max_batch = int(meta.get("max_batch", 10))
        self.input = meta.get("input", "waveform")

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cudart = self._cudart
        self._ctx.set_input_shape(self.input, x.shape)
        outs = {}
        ptrs = []
        try:
            d_in = _check(cudart.cudaMalloc(x.nbytes))
            ptrs.append(d_in)
            _check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            self._ctx.set_tensor_address(self.input, int(d_in))
            for name in ("embedding", "domain_logit"):
                shape = tuple(self._ctx.get_tensor_shape(name))
                host = np.empty(shape, dtype=np.float32)
                dev = _check(cudart.cudaMalloc(host.nbytes))
                ptrs.append(dev)
                self._ctx.set_tensor_address(name, int(dev))
                outs[name] = (host, dev)
            if not self._ctx.execute_async_v3(self._stream):
                raise RuntimeError("TensorRT execution failed")
            for host, dev in outs.values():
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, dev, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
            _check(cudart.cudaStreamSynchronize(self._stream))
        finally:
            for p in ptrs:
                cudart.cudaFree(p)
        return outs["embedding"][0], outs["domain_logit"][0].reshape(-1)

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(segments, dtype=np.float32)
        parts = [self._run_batch(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def build_engine_in_bundle(bundle_path: Path, precision: str = "fp16", out: Path | None = None) -> Path:
    """``edge-asd build-engine``: add an engine for this device to every member of a bundle."""
    from edge_asd.runtime.bundle import open_bundle, write_bundle

    bundle = open_bundle(bundle_path)
    manifest = bundle.manifest
    files = bundle.members()
    spec = manifest.audio.spec()
    members = []
    for i, member in enumerate(manifest.members):
        cache = member.calibration_cache
        if precision == "int8" and cache is None:
            raise UserError(
                f"{bundle_path}: member {i} carries no int8 calibration cache; export the bundle with "
                "`edge-asd-export RUN --format tensorrt --precision int8` (which calibrates on the run's normal clips), "
                "or build an fp16 engine"
            )
        log.info("building a %s TensorRT engine for member %d (takes minutes on a Jetson)", precision, i)
        with tempfile.TemporaryDirectory() as tmp:
            cache_path = None
            if precision == "int8":
                cache_path = Path(tmp) / "calibration.cache"
                cache_path.write_bytes(files[cache])
            engine, meta = build_engine(files[engine_source(member)], precision=precision, max_batch=spec.n_segments,
                                        segment_samples=spec.segment_samples, calibration_cache=cache_path)
        name = member.model.rsplit(".", 1)[0] + ".engine"
        files[name] = engine
        members.append(dataclasses.replace(member, engine=Engine(name, meta)))
    manifest = dataclasses.replace(manifest, members=tuple(members), bundle_id="", created="")
    return write_bundle(out or bundle_path, manifest, files)
