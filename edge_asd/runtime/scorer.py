"""Scoring clips with a deployment bundle: what ``score``, ``run`` and ``enroll`` share.

A :class:`ClipScorer` turns raw audio into the clip's anomaly score exactly as
the desktop fitted it: clip-level amplitude standardization, S segments, the
extractor (front end inside the model), the section's inlier models, the
aggregator, standardization, Eq. 8 mixing and the ensemble mean.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.io.audio import normalize, segment
from edge_asd.runtime.bundle import Bundle, open_bundle
from edge_asd.runtime.manifest import Member as MemberSpec
from edge_asd.errors import BundleError, UserError
from edge_asd.io.features import LogMelStats
from edge_asd.runtime.backend import Backend, ClipView, FeatureBackend
from edge_asd.runtime.backend_table import make_backend
from edge_asd.runtime.frontend import FFTFrontEnd, FrontEnd
from edge_asd.runtime.onnx import OnnxFrontEnd, SplitOnnx, available_ort_providers
from edge_asd.scoring.bands import Band, BandEvidence, BandReference, ratio
from edge_asd.scoring.clip_scores import score_clips
from edge_asd.scoring.search import limit_faiss_threads
from edge_asd.scoring.section import SectionModel, section_from_state


@dataclass(frozen=True)
class ClipResult:
    score: float
    threshold: float
    anomalous: bool
    p_target: float
    section: str
    timings_ms: dict = field(default_factory=dict)
    # None where the bundle predates them (no reference medians, no band statistics)
    ratio: float | None = None
    bands: tuple[Band, ...] | None = None


@dataclass
class _LoadedMember:
    """One bundle member as the scorer runs it: its back end and its section models."""

    name: str
    backend: Backend  # a SplitOnnx (front end once per clip, by rFFT) on the CPU when the bundle has the split graphs
    sections: dict[str, SectionModel]
    has_domain_head: bool = True  # whether its domain logits mean anything (Eq. 7)


class ClipScorer:
    """A loaded bundle, ready to score clips of its machine type."""

    def __init__(self, bundle: Bundle, backend: str = "auto", threads: int = 0, cache_dir: str | None = None):
        # the bundle itself (its bytes) is not kept: the sessions hold the weights
        self.bundle_path = bundle.path
        manifest = bundle.manifest
        self.manifest = manifest
        self.bundle_id: str = manifest.bundle_id
        self.machine_type: str = manifest.machine_type
        self.sections: list[str] = list(manifest.sections)
        try:
            self.spec = manifest.audio.spec()
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: audio settings unusable ({exc})") from None
        self.sample_rate = self.spec.sample_rate
        self.segment_seconds = self.spec.segment_seconds
        self.clip_seconds = float(manifest.audio.clip_seconds or 10.0)
        self.approach: str = manifest.approach
        self.aggregator: str = manifest.aggregator
        self.kappa = float(manifest.kappa)
        self.embedding_dim = int(manifest.embedding_dim)
        self.thresholds = {s: float(manifest.thresholds[s]) for s in self.sections}
        # normal-score quantiles per section, the daemon's drift reference (absent in some bundles)
        self.reference_quantiles: dict[str, list[float]] = dict(manifest.reference_quantiles or {})
        self.reference_medians: dict[str, float] = {s: float(v) for s, v in (manifest.reference_medians or {}).items()}
        self.band_evidence = band_evidence_of(bundle)
        # A plain member beside a learned one runs on a thread of its own, on one of the cores, while the
        # learned member's front end and encoder run on the others (see embed_clip).
        cores = threads or (os.cpu_count() or 1)
        self.side_members = (cores >= 2 and any(m.is_plain for m in manifest.members)
                             and not all(m.is_plain for m in manifest.members))
        member_threads = max(1, cores - 1) if self.side_members else threads
        self.members: list[_LoadedMember] = [self._member(bundle, i, spec, backend, member_threads, cache_dir)
                                       for i, spec in enumerate(manifest.members)]
        self.backend_name = "+".join(dict.fromkeys(m.backend.name for m in self.members))
        self._band_features = self._band_feature_source()

    def _member(self, bundle: Bundle, i: int, spec: MemberSpec, backend: str, threads: int,
                cache_dir: str | None) -> _LoadedMember:
        """One member's sections and back end, each checked against the manifest."""
        arrays = bundle.arrays(spec.state)
        dim = int(spec.embedding_dim or self.embedding_dim)
        try:
            sections = {s: section_from_state(s, arrays, spec.sections[s].standardization, spec.sections[s].threshold) for s in self.sections}
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"{bundle.path}: detector state of member {i} is unusable ({exc})") from None
        for s, sm in sections.items():
            for dom, dm in sm.domains.items():
                got = getattr(dm.detector, "n_features_in_", None)
                if got is not None and int(got) != dim:
                    raise BundleError(
                        f"{bundle.path}: detector {s}/{dom} of member {i} expects {got}-d embeddings, the manifest says {dim}"
                    )
        if spec.is_plain:
            try:
                be = FeatureBackend(LogMelStats(spec.features))
            except (TypeError, ValueError) as exc:
                raise BundleError(f"{bundle.path}: member {i}: features unusable ({exc})") from None
            return _LoadedMember(spec.label(i), be, sections, has_domain_head=False)
        engine = bundle.read(spec.engine.file) if spec.engine else None
        try:
            if self._use_split(spec, backend, engine):
                be = split_backend(bundle, spec, threads or (os.cpu_count() or 1))
            else:
                be = make_backend(
                    bundle.read(spec.model),
                    backend=backend,
                    threads=threads,
                    engine=engine,
                    engine_meta=spec.engine.to_dict() if spec.engine else None,
                    cache_dir=cache_dir,
                )
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"{bundle.path}: member {i}: {str(exc).splitlines()[0]}") from None
        self._check_model_shape(be, i, dim)
        return _LoadedMember(spec.label(i), be, sections, spec.has_domain_head)

    def _band_feature_source(self) -> LogMelStats | int | None:
        """The index of the plain member whose features band evidence reads, else the features to compute."""
        if self.band_evidence is None:
            return None
        for i, member in enumerate(self.members):
            features = getattr(member.backend, "features", None)
            if isinstance(features, LogMelStats) and features.cfg == self.band_evidence.cfg:
                return i
        return LogMelStats(self.band_evidence.cfg)

    @staticmethod
    def _use_split(member: MemberSpec, backend: str, engine: bytes | None) -> bool:
        """The CPU runs the split graphs; GPUs and TensorRT run the whole-segment graph."""
        if member.split is None or backend not in ("auto", "onnx-cpu"):
            return False
        return backend == "onnx-cpu" or (engine is None and "CUDAExecutionProvider" not in available_ort_providers())

    def _check_model_shape(self, backend, i: int, dim: int) -> None:
        """Refuse a model whose input or output sizes disagree with the manifest."""
        probe = np.zeros((1, self.spec.segment_samples), dtype=np.float32)
        try:
            emb, logit = backend.run(probe)
        except Exception as exc:
            raise BundleError(
                f"{self.bundle_path}: model of member {i} does not take [batch, {self.spec.segment_samples}] "
                f"waveforms as the manifest says ({str(exc).splitlines()[0]})"
            ) from None
        if emb.shape != (1, dim) or logit.shape != (1,):
            raise BundleError(
                f"{self.bundle_path}: model of member {i} outputs embeddings of shape {tuple(emb.shape)[1:]}, "
                f"the manifest says ({dim},)"
            )

    def resolve_section(self, section: str | None) -> str:
        if section is None:
            return self.sections[0]
        if section not in self.thresholds:
            raise UserError(f"{self.bundle_path}: section {section!r} is not in this bundle (it has {', '.join(self.sections)})")
        return section

    def prepare(self, clip: np.ndarray) -> np.ndarray:
        """Standardize and segment a raw clip: ``[S, segment_samples]``."""
        clip = self._checked(clip)
        return segment(normalize(clip, self.spec), self.spec)

    def _checked(self, clip: np.ndarray) -> np.ndarray:
        clip = np.asarray(clip, dtype=np.float32).reshape(-1)
        if clip.size < self.spec.segment_samples:
            raise UserError(
                f"clip of {clip.size / self.sample_rate:.2f} s is shorter than one {self.segment_seconds:g} s segment"
            )
        return clip

    def embed(self, segments: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each extractor member's ``(embedding [N, D], domain_logit [N])`` of segments."""
        return [m.backend.run(segments) for m in self.members if m.backend.takes_segments]

    @property
    def clip_level(self) -> bool:
        """Whether every member works on the whole clip (the CPU's split graphs, numpy features)."""
        return all(m.backend.clip_level for m in self.members)

    def embed_clip(self, clip: np.ndarray, side: bool = True) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
        """Each member's ``(embedding [S_m, D_m], domain_logit [S_m])`` of one raw clip, and timings in ms.

        "frontend" includes standardization, the split graphs' log-mel and the plain member's features;
        "plain" the latter alone. With ``side_members`` (and ``side``), the plain member runs on a thread of its
        own meanwhile: a clip's numpy features and the learned member's encoder then share the cores instead of
        taking turns (the cpu preset's bundle on 2 cores: 17.3 -> 15.4 ms a clip, the encoder on one thread). The
        parts' times are then each part's own, and their sum is more than the clip's wall time.
        """
        view = ClipView(self._checked(clip), self.spec)
        outs: list = [None] * len(self.members)
        times = [0.0] * len(self.members)
        failed: list[BaseException] = []

        def run(i: int) -> None:
            try:
                ta = time.perf_counter()
                emb, logit, fe_s = self.members[i].backend.run_clip(view)
                outs[i], times[i] = (emb, logit, fe_s), time.perf_counter() - ta
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread below
                failed.append(exc)

        beside = [i for i, m in enumerate(self.members) if not m.backend.takes_segments] \
            if side and self.side_members else []
        helper = None
        if beside:
            helper = threading.Thread(target=lambda: [run(i) for i in beside], name="plain-member", daemon=True)
            helper.start()
        t0 = time.perf_counter()
        view.normalized  # made here, so that standardization counts as front end, as it always has
        prep = time.perf_counter() - t0
        for i in range(len(self.members)):
            if i not in beside:
                run(i)
        if helper is not None:
            helper.join()
        if failed:
            raise failed[0]
        t_fe = sum(o[2] for o in outs)
        t_enc = sum(t - o[2] for t, o in zip(times, outs))
        t_plain = sum(o[2] for o, m in zip(outs, self.members) if not m.backend.takes_segments)
        return [(o[0], o[1]) for o in outs], {"frontend": (prep + t_fe) * 1e3, "extractor": t_enc * 1e3,
                                               "plain": t_plain * 1e3}

    def combine(self, outs: list[tuple[np.ndarray, np.ndarray]], section: str) -> tuple[np.ndarray, np.ndarray]:
        """Scores and p_target of clips from each member's ``(embedding [n, S_m, D_m], logit [n, S_m])``.

        p_target is the mean over the members that have a domain classifier (0
        where none has: the bundle then scores both domains with one model).
        """
        return score_clips([m.sections[section] for m in self.members], [emb for emb, _ in outs],
                           [logit if m.has_domain_head else None for m, (_, logit) in zip(self.members, outs)],
                           aggregator=self.aggregator, kappa=self.kappa, approach=self.approach)

    def score_segments(self, segs: np.ndarray, section: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """Scores of clips given as ``[n_clips, S, samples]`` standardized segments (extractor members only)."""
        if not all(m.backend.takes_segments for m in self.members):
            raise ValueError("a bundle with a numpy feature member scores raw clips (score_many), not segments")
        n, s, length = segs.shape
        t0 = time.perf_counter()
        outs = self.embed(segs.reshape(n * s, length))
        t1 = time.perf_counter()
        scores, p = self.combine([(e.reshape(n, s, -1), l.reshape(n, s)) for e, l in outs], section)
        t2 = time.perf_counter()
        return scores, p, {"extractor": (t1 - t0) * 1e3, "detector": (t2 - t1) * 1e3}

    def score_many(self, clips: list[np.ndarray], section: str, workers: int = 1) -> np.ndarray:
        """Anomaly scores of several raw clips of one section (offline scoring).

        Clip-level members (the CPU's split graphs, numpy features) take one clip
        at a time, as in the daemon; where all members are, ``workers`` clips
        run side by side: one clip's threads leave a 2-core CPU idle between its
        parts (the plain member runs on one thread, onnxruntime waits on its
        slowest), and a second clip fills them (replay 45 -> 62 clips/s, the same
        scores to the bit: every member is read-only while scoring). GPU back
        ends take all the clips' segments in one batch, which is what a GPU wants.
        """
        if self.clip_level and workers > 1 and len(clips) > 1:
            # only where every member is the CPU's: a TensorRT execution context must not run two clips at once
            with ThreadPoolExecutor(min(workers, len(clips)), thread_name_prefix="score") as pool:
                return np.array(list(pool.map(lambda c: self._score_clip(c, section, side=False)[0][0], clips)))
        if self.clip_level or not all(m.backend.takes_segments for m in self.members):
            return np.array([self._score_clip(c, section)[0][0] for c in clips])
        return self.score_segments(np.stack([self.prepare(c) for c in clips]), section)[0]

    def score(self, clip: np.ndarray, section: str | None = None) -> ClipResult:
        section = self.resolve_section(section)
        scores, p, timings, outs = self._score_clip(clip, section)
        thr = self.thresholds[section]
        score = float(scores[0])
        t0 = time.perf_counter()
        bands = self._bands(clip, outs, section)
        if bands is not None:
            timings["bands"] = (time.perf_counter() - t0) * 1e3
        return ClipResult(score, thr, score > thr, float(p[0]), section, timings, self.ratio(score, section), bands)

    def ratio(self, score: float, section: str, threshold: float | None = None) -> float | None:
        """``score`` on the one scale of every bundle: 0 at the section's median held-out normal, 1 at the threshold.

        ``threshold``: a daemon's override of the bundle's, so that 1 is where its alerts start.
        """
        thr = self.thresholds[section] if threshold is None else float(threshold)
        return ratio(score, self.reference_medians.get(section), thr)

    def _bands(self, clip: np.ndarray, outs: list[tuple[np.ndarray, np.ndarray]], section: str) -> tuple[Band, ...] | None:
        source = self._band_features
        if source is None or self.band_evidence is None:
            return None
        features = outs[source][0][0] if isinstance(source, int) else source(clip)
        found = self.band_evidence.bands(features, section)
        return None if found is None else tuple(found)

    def _score_clip(self, clip: np.ndarray, section: str, side: bool = True) -> tuple[np.ndarray, np.ndarray, dict, list]:
        outs, timings = self.embed_clip(clip, side)
        t0 = time.perf_counter()
        scores, p = self.combine([(e[None], l[None]) for e, l in outs], section)
        return scores, p, {**timings, "detector": (time.perf_counter() - t0) * 1e3}, outs


def band_evidence_of(bundle: Bundle) -> BandEvidence | None:
    """The bundle's band statistics; None in a bundle written before them (it scores, without bands)."""
    spec = bundle.manifest.band_evidence
    if spec is None:
        return None
    try:
        arrays = bundle.arrays(spec.file)
        sections = {s: BandReference.from_arrays(arrays, f"{s}/", spec.k) for s in spec.sections}
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{bundle.path}: band statistics unusable ({exc})") from None
    for ref in sections.values():
        if ref.spread.shape[0] != spec.features.n_mels:
            raise BundleError(f"{bundle.path}: band statistics have {ref.spread.shape[0]} bands, the features {spec.features.n_mels}")
    return BandEvidence(spec.features, sections)


def split_backend(bundle: Bundle, member: MemberSpec, threads: int) -> SplitOnnx:
    """The CPU's extractor: the front end once per clip (by rFFT where the bundle says how), then the encoder."""
    sp = member.split
    frontend: FrontEnd
    if sp.logmel is not None and sp.input_norm:
        norm = bundle.arrays(sp.input_norm)
        try:
            frontend = FFTFrontEnd(sp.logmel, norm["scale"], norm["shift"])  # one thread: see edge_asd.io.stft
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: front end of member {member.name or '?'} is unusable ({exc})") from None
    else:  # bundles written before the rFFT front end: the graph
        n_fft = getattr(bundle.manifest.frontend, "n_fft", 0)
        frontend = OnnxFrontEnd(bundle.read(sp.frontend), int(n_fft), sp.hop_length, threads=threads)
    return SplitOnnx(frontend, bundle.read(sp.encoder), sp.frames_per_segment, sp.hop_length, threads=threads)


def quiet_faiss_threads() -> None:
    """One faiss thread for the runtime's searches.

    A clip's KNN query is 10 vectors: OpenMP's thread start and spin-waiting
    cost more than the search and compete with onnxruntime's threads for the
    device's few cores (median 0.1 ms single-threaded vs. 20+ ms with 2 busy
    threads, benchmarks/bench_detectors.py). Process-wide, so the commands call
    it, not the library.
    """
    limit_faiss_threads(1)


def load_scorer(bundle_path: str | Path, backend: str = "auto", threads: int = 0, cache_dir: str | None = None) -> ClipScorer:
    return ClipScorer(open_bundle(bundle_path), backend=backend, threads=threads, cache_dir=cache_dir)
