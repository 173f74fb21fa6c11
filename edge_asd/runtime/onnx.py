"""onnxruntime back ends: the whole-segment graph, and the split graphs (front end once per clip) for CPUs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge_asd.runtime.backend import ClipView, SegmentBatches
from edge_asd.runtime.frontend import FrontEnd

log = logging.getLogger("edge_asd.inference")  # the name journals show, kept from before the subpackages


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


class OnnxFrontEnd:
    """The bundle's ``frontend.onnx`` on the CPU: standardized waveform ``[N]`` -> normalized log-mel ``[n_mels, F]``.

    What a bundle without the rFFT front end's numbers runs on a CPU
    (:mod:`edge_asd.runtime.frontend`), and the reference the rFFT is held to.
    ``n_fft`` is the samples of one analysis window (0: unknown, the clip goes
    through in one piece). A frame depends only on the samples under its
    window, so a clip's frames can be made ``chunk_frames`` at a time with the
    same numbers; 160 frames at a time hold a quarter of a 10 s clip's
    intermediate spectra (~25 MB less at the peak).
    """

    name = "onnx-graph"
    chunk_frames = 160

    def __init__(self, model: bytes, n_fft: int, hop: int, threads: int = 0, chunk_frames: int | None = None):
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.chunk_frames = int(chunk_frames or OnnxFrontEnd.chunk_frames)
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {self.chunk_frames}")
        # onnxruntime keeps its own copy of the model: the bytes are not held here
        self._session = OnnxBackend._session(model, ["CPUExecutionProvider"], threads)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        usable = wave.size // self.hop * self.hop  # the graph takes whole hop blocks; the rest is in no frame
        x = np.ascontiguousarray(wave[:usable], dtype=np.float32)
        span = -(-self.n_fft // self.hop) if self.n_fft else 0  # hop blocks under one window
        total = usable // self.hop - span + 1
        if not span or total <= self.chunk_frames:
            return self._session.run(["logmel"], {"waveform": x[None]})[0][0]
        parts = []
        for f0 in range(0, total, self.chunk_frames):
            f1 = min(total, f0 + self.chunk_frames)
            parts.append(self._session.run(["logmel"], {"waveform": x[None, f0 * self.hop : (f1 - 1 + span) * self.hop]})[0][0])
        return np.concatenate(parts, axis=1)


@dataclass
class SplitOnnx:
    """Front end once per clip, encoder per segment (see export.onnx_export.FrontendGraph).

    Gives the same embeddings as the whole-segment graph with about half the
    front-end work, since a clip's segments overlap; segment starts must be
    multiples of the hop, which :class:`edge_asd.io.audio.SegmentSpec` guarantees.
    The front end is the rFFT (:class:`edge_asd.runtime.frontend.FFTFrontEnd`)
    where the bundle carries its numbers, else the bundle's graph (:class:`OnnxFrontEnd`).
    """

    frontend: FrontEnd
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
    name: str = "onnx-cpu"
    clip_level = True
    takes_segments = True

    def __post_init__(self) -> None:
        if self.encoder_batch < 1:
            raise ValueError(f"encoder_batch must be at least 1, got {self.encoder_batch}")
        self._enc = OnnxBackend._session(self.encoder, self.providers, self.threads)
        self.encoder = b""  # onnxruntime holds its own copy of the weights

    def run(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The :class:`Backend` interface: whole segments, front end per segment."""
        x = np.ascontiguousarray(segments, dtype=np.float32)
        return self._encode(np.stack([self.frontend(s)[:, : self.frames] for s in x]))

    def run_clip(self, clip: ClipView) -> tuple[np.ndarray, np.ndarray, float]:
        """``(embedding [S, D], domain_logit [S], seconds spent in the front end)``: the log-mel once per clip."""
        t0 = time.perf_counter()
        frames = self.frontend(clip.normalized)
        t_fe = time.perf_counter() - t0
        first = np.asarray(clip.starts) // self.hop
        return (*self._encode(np.stack([frames[:, f : f + self.frames] for f in first])), t_fe)

    def _encode(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embs, logits = [], []
        for lo in range(0, len(windows), self.encoder_batch):
            emb, logit = self._enc.run(["embedding", "domain_logit"], {"logmel": windows[lo : lo + self.encoder_batch]})
            embs.append(emb)
            logits.append(logit.reshape(-1))
        return np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32)


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


def ort_providers(kind: str, cache_dir: str | None) -> list:
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
