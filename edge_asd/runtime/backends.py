"""Extractor inference back ends behind one small interface.

``make_backend`` picks, in order, what is installed and asked for: a TensorRT
engine built for this very GPU, onnxruntime with the TensorRT or CUDA execution
provider, onnxruntime on the CPU. A back end that fails to import or to load is
logged and the next one is tried (Frigate's detector pattern), so a TensorRT
problem never takes a CPU install down.

Every back end maps amplitude-standardized segments ``[N, samples]`` (float32)
to ``(embedding [N, D], domain_logit [N])`` (``run``), and one clip to its
segments' embeddings (``run_clip``), from whichever form of the clip it needs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Protocol

import numpy as np

from edge_asd.io.audio import SegmentSpec, normalize, segment
from edge_asd.io.features import LogMelStats

log = logging.getLogger("edge_asd.inference")  # the name journals show, kept from before the subpackages

BACKENDS = ("auto", "onnx-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt")


@dataclass
class ClipView:
    """One raw clip in the forms back ends take, each made at most once per clip."""

    raw: np.ndarray  # as recorded: numpy features read the level
    spec: SegmentSpec

    @cached_property
    def normalized(self) -> np.ndarray:
        return normalize(self.raw, self.spec)

    @cached_property
    def starts(self) -> np.ndarray:
        return self.spec.starts(self.raw.size)

    @cached_property
    def segments(self) -> np.ndarray:
        return segment(self.normalized, self.spec)


class Backend(Protocol):
    name: str
    # Whether whole clips, one at a time, suit it better than batches of segments.
    clip_level: bool
    # Whether it can take segments at all (numpy features need the raw clip).
    takes_segments: bool

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def run_clip(self, clip: ClipView) -> tuple[np.ndarray, np.ndarray, float]:
        """``(embedding [S, D], domain_logit [S], seconds spent in a front end outside the model)``."""
        ...


class SegmentBatches:
    """What a back end that only runs segments does with a clip: segment it and run the batch."""

    clip_level = False
    takes_segments = True

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def run_clip(self, clip: ClipView) -> tuple[np.ndarray, np.ndarray, float]:
        emb, logit = self.run(clip.segments)
        return emb, logit, 0.0


@dataclass
class OnnxBackend(SegmentBatches):
    """onnxruntime session over the exported extractor (front end inside)."""

    model: bytes
    providers: list = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 0
    max_batch: int = 64
    name: str = "onnx-cpu"

    def __post_init__(self) -> None:
        self.session = self._session(self.model, self.providers, self.threads)
        self.model = b""  # onnxruntime holds its own copy of the weights
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or "embedding" not in outputs or "domain_logit" not in outputs:
            raise ValueError(
                f"extractor model must have one input and outputs 'embedding' and 'domain_logit', has inputs "
                f"{[i.name for i in inputs]} and outputs {outputs}"
            )
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape

    @staticmethod
    def _session(model: bytes, providers: list, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # All graph optimizations: constant folding turns the fixed DFT and mel
        # matrices into plain initializers, and conv/BN fusion matters on a CPU.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        # One model, one stream of batches: inter-op parallelism only adds threads.
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads must not spin: the split front end and encoder are two
        # sessions with two pools, and on a 2-core device one pool's spinning
        # starves the other (and the capture thread).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if _shared_cpu_arena(ort):
            # Every CPU session draws on one arena: the sessions of a clip run one
            # after the other, so the process holds the largest one's activations,
            # not their sum, and the arena's reuse spares the page faults that
            # plain allocation pays on every clip.
            so.add_session_config_entry("session.use_env_allocators", "1")
        return ort.InferenceSession(model, sess_options=so, providers=providers)

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(segments, dtype=np.float32)
        embs, logits = [], []
        for lo in range(0, len(x), self.max_batch):
            emb, logit = self.session.run(["embedding", "domain_logit"], {self.input_name: x[lo : lo + self.max_batch]})
            embs.append(emb)
            logits.append(logit.reshape(-1))
        return np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32)


@dataclass
class SplitOnnx:
    """Front end once per clip, encoder per segment (see export.onnx_export.FrontendGraph).

    Gives the same embeddings as the whole-segment graph with about half the
    front-end work, since a clip's segments overlap; segment starts must be
    multiples of the hop, which :class:`edge_asd.io.audio.SegmentSpec` guarantees.
    """

    frontend: bytes
    encoder: bytes
    frames: int
    hop: int
    providers: list = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = 0
    # Segments per encoder run. A clip's 10 segments in one batch need ~90 MB of
    # activations at the peak for EfficientNet-B0; 2 at a time need a fifth of
    # that and run no slower on a 2-core CPU (the working set stays in cache;
    # benchmarks/bench_runtime.py).
    encoder_batch: int = 2
    # Samples of one analysis window (the front end's n_fft; 0: unknown, the clip
    # goes through in one piece) and frames per front-end run. A frame depends
    # only on the samples under its window, so a clip's frames can be made a
    # stretch at a time with the same numbers; 160 frames at a time hold a
    # quarter of a 10 s clip's intermediate spectra (~25 MB less at the peak).
    window: int = 0
    frontend_chunk_frames: int = 160
    name: str = "onnx-cpu"
    clip_level = True
    takes_segments = True

    def __post_init__(self) -> None:
        if self.encoder_batch < 1 or self.frontend_chunk_frames < 1:
            raise ValueError(f"encoder_batch and frontend_chunk_frames must be at least 1, got "
                             f"{self.encoder_batch} and {self.frontend_chunk_frames}")
        self._fe = OnnxBackend._session(self.frontend, self.providers, self.threads)
        self._enc = OnnxBackend._session(self.encoder, self.providers, self.threads)
        # onnxruntime holds its own copy of the weights; the bundle's bytes can go
        self.frontend = self.encoder = b""

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The :class:`Backend` interface: whole segments, front end per segment."""
        x = np.ascontiguousarray(segments, dtype=np.float32)
        embs, logits = [], []
        for lo in range(0, len(x), self.encoder_batch):
            (frames,) = self._fe.run(["logmel"], {"waveform": x[lo : lo + self.encoder_batch]})
            emb, logit = self._enc.run(["embedding", "domain_logit"], {"logmel": frames[:, :, : self.frames]})
            embs.append(emb)
            logits.append(logit.reshape(-1))
        return np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32)

    def _clip_frames(self, clip: np.ndarray) -> np.ndarray:
        """Log-mel frames ``[1, n_mels, F]`` of a whole standardized clip."""
        usable = clip.size // self.hop * self.hop  # the graph takes whole hop blocks; the rest is in no frame
        x = np.ascontiguousarray(clip[:usable], dtype=np.float32)
        span = -(-self.window // self.hop) if self.window else 0  # hop blocks under one window
        total = usable // self.hop - span + 1
        if not span or total <= self.frontend_chunk_frames:
            return self._fe.run(["logmel"], {"waveform": x[None]})[0]
        parts = []
        for f0 in range(0, total, self.frontend_chunk_frames):
            f1 = min(total, f0 + self.frontend_chunk_frames)
            parts.append(self._fe.run(["logmel"], {"waveform": x[None, f0 * self.hop : (f1 - 1 + span) * self.hop]})[0])
        return np.concatenate(parts, axis=2)

    def run_clip(self, clip: ClipView) -> tuple[np.ndarray, np.ndarray, float]:
        """``(embedding [S, D], domain_logit [S], seconds spent in the front end)``: the log-mel once per clip."""
        t0 = time.perf_counter()
        frames = self._clip_frames(clip.normalized)
        t_fe = time.perf_counter() - t0
        first = np.asarray(clip.starts) // self.hop
        windows = np.stack([frames[0, :, f : f + self.frames] for f in first])
        embs, logits = [], []
        for lo in range(0, len(windows), self.encoder_batch):
            emb, logit = self._enc.run(["embedding", "domain_logit"], {"logmel": windows[lo : lo + self.encoder_batch]})
            embs.append(emb)
            logits.append(logit.reshape(-1))
        return np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32), t_fe


class FeatureBackend:
    """A member computed in numpy from the raw clip (the plain log-mel statistics).

    One embedding per clip (S = 1) and no domain classifier. It sees the clip as
    recorded, not amplitude-standardized: the level is part of the feature.
    """

    name = "numpy"
    clip_level = True
    takes_segments = False

    def __init__(self, features: LogMelStats):
        self.features = features

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("a numpy feature member scores raw clips, not standardized segments")

    def run_clip(self, clip: ClipView) -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        emb = self.features(clip.raw)[None]
        return emb, np.zeros(1, dtype=np.float32), time.perf_counter() - t0


_ARENA_REGISTERED: list[bool] = []


def _shared_cpu_arena(ort) -> bool:
    """Register one CPU arena in onnxruntime's process-wide environment, once.

    onnxruntime's environment is global to the process whatever we do, so the
    once-flag has to be too. False (each session keeps its own arena) where this
    onnxruntime build cannot share one.
    """
    if not _ARENA_REGISTERED:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _ARENA_REGISTERED.append(True)
        except Exception as exc:  # an older or trimmed build: lose the saving, not the service
            log.debug("onnxruntime cannot share a CPU arena (%s); each session keeps its own", exc)
            _ARENA_REGISTERED.append(False)
    return _ARENA_REGISTERED[0]


def available_ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _ort_providers(kind: str, cache_dir: str | None) -> list:
    if kind == "onnx-cpu":
        return ["CPUExecutionProvider"]
    if kind == "onnx-cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if kind == "onnx-tensorrt":
        trt_opts = {"trt_fp16_enable": True}
        if cache_dir:
            # Engines take minutes to build on a Jetson: keep them across restarts.
            trt_opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir})
        return [("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"unknown onnxruntime back end {kind!r}")


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
        b = OnnxBackend(model, providers=_ort_providers(kind, cache_dir), threads=threads or (os.cpu_count() or 1))
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
