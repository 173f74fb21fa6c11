"""The bundle manifest as typed, frozen classes: the one contract between export and the device.

``manifest.json`` inside a bundle is JSON; :meth:`Manifest.from_dict` reads it
level by level (audio, front end, members with their detectors and sections,
band evidence, reference clips, selection, files), checking every key and
naming the wrong one, and :meth:`Manifest.to_dict` writes it back. For what
``edge-asd-export`` writes, ``Manifest.from_dict(d).to_dict() == d``.

Optional fields are ``None`` where a bundle written before them lacks the key;
``to_dict`` leaves them out again, so an old bundle rewritten (enrollment, a
TensorRT engine added) keeps its shape. Keys this runtime does not know, at the
top level and in a member, are carried through untouched in ``extra``: a bundle
written by a newer export of the same schema version still loads.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from edge_asd.errors import ManifestError
from edge_asd.io.audio import SegmentSpec, level_from_manifest
from edge_asd.io.features import LogMelStatsConfig
from edge_asd.runtime.manifest_fields import Fields, drop_none, numbers, objects, strings
from edge_asd.scoring.section import Standardization
from edge_asd.scoring.stage2 import Stage2Config

SCHEMA_VERSION = 1


def _strict(f: Fields, known: tuple[str, ...]) -> None:
    """Refuse a key a level does not have: a typo must not silently fall back to a default."""
    for key in f.d:
        if key not in known:
            raise f.error(key, f"unknown key (expected {', '.join(known)})")


def _extra(f: Fields, known: tuple[str, ...]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in f.d.items() if k not in known}


def _plain_features(value: Any) -> LogMelStatsConfig:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {value!r}")
    return LogMelStatsConfig.from_dict(value)


# --- audio -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Amplitude:
    """How a clip's level is normalized before segmenting: ``standardize_per_clip``, ``raw`` (the plain
    system hears the clip as recorded) or ``machine`` (one mean and std of the machine's clips)."""

    mode: str
    mean: float | None = None
    std: float | None = None

    @classmethod
    def parse(cls, value: Any) -> "Amplitude":
        level_from_manifest(value)  # raises ValueError on anything it cannot apply
        if isinstance(value, str):
            return cls(value)
        return cls("machine", value["mean"], value["std"])

    def to_value(self) -> str | dict:
        return {"mode": self.mode, "mean": self.mean, "std": self.std} if self.mode == "machine" else self.mode

    @property
    def level(self) -> tuple[float, float] | None:
        return level_from_manifest(self.to_value())


@dataclass(frozen=True)
class Audio:
    """The clip and segment geometry every extractor member shares."""

    sample_rate: int
    segment_seconds: float
    n_segments: int
    clip_seconds: float | None = None  # None: a bundle before it (10 s, the DCASE clip)
    segment_align: int | None = None  # None: a bundle before it (no alignment)
    amplitude: Amplitude | None = None  # None: a bundle before it (per-clip standardization)

    KEYS = ("sample_rate", "segment_seconds", "n_segments", "clip_seconds", "segment_align", "amplitude")

    @classmethod
    def from_fields(cls, f: Fields) -> "Audio":
        _strict(f, cls.KEYS)
        return cls(f.req("sample_rate", int), f.req("segment_seconds", float), f.req("n_segments", int),
                   f.opt("clip_seconds", float), f.opt("segment_align", int),
                   f.parsed("amplitude", Amplitude.parse, required=False))

    @classmethod
    def of_spec(cls, spec: SegmentSpec, clip_seconds: float, amplitude: Amplitude) -> "Audio":
        return cls(spec.sample_rate, spec.segment_seconds, spec.n_segments, clip_seconds, spec.align, amplitude)

    def spec(self) -> SegmentSpec:
        return SegmentSpec(sample_rate=int(self.sample_rate), segment_seconds=float(self.segment_seconds),
                           n_segments=int(self.n_segments), align=int(self.segment_align or 1),
                           level=None if self.amplitude is None else self.amplitude.level)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.KEYS}
        d["amplitude"] = None if self.amplitude is None else self.amplitude.to_value()
        return drop_none(d)


# --- front end -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogMelFrontEnd:
    """A learned extractor's log-mel front end: the bundle-wide statement, and a split graph's rFFT numbers."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    mel_scale: str
    log_eps: float
    win_length: int | None = None
    center: bool | None = None
    window: str | None = None
    power: float | None = None
    mel_norm: str | None = None

    REQUIRED = {"sample_rate": int, "n_fft": int, "hop_length": int, "n_mels": int, "f_min": float, "f_max": float,
                "mel_scale": str, "log_eps": float}
    OPTIONAL = {"win_length": int, "center": bool, "window": str, "power": float, "mel_norm": str}

    @classmethod
    def from_fields(cls, f: Fields) -> "LogMelFrontEnd":
        _strict(f, (*cls.REQUIRED, *cls.OPTIONAL))
        return cls(**{k: f.req(k, t) for k, t in cls.REQUIRED.items()}, **{k: f.opt(k, t) for k, t in cls.OPTIONAL.items()})

    @classmethod
    def from_dict(cls, d: dict) -> "LogMelFrontEnd":
        return cls.from_fields(Fields(d, "frontend"))

    def check_rfft(self) -> None:
        """ValueError where these numbers are not what the CPU's rFFT front end (runtime/frontend.py) computes."""
        if self.center:
            raise ValueError("a centred STFT is not what the exported front end computes")
        if self.power is not None and float(self.power) != 2.0:
            raise ValueError(f"power {self.power} is not the exported front end's 2")

    def to_dict(self) -> dict:
        return drop_none(asdict(self))


# the bundle-wide front end: a learned extractor's log-mel, or the plain system's features in a plain-only bundle
FrontEnd = Union[LogMelFrontEnd, LogMelStatsConfig]


def _frontend(f: Fields, key: str) -> FrontEnd:
    sub = f.obj(key)
    return f.parsed(key, _plain_features) if sub.has("kind") else LogMelFrontEnd.from_fields(sub)


# --- members ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Detector:
    kind: str
    params: dict[str, Any]

    @classmethod
    def from_fields(cls, f: Fields) -> "Detector":
        _strict(f, ("kind", "params"))
        return cls(f.req("kind", str), copy.deepcopy(f.req("params", dict)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": copy.deepcopy(self.params)}


@dataclass(frozen=True)
class SectionNumbers:
    """A member's numbers for one section: each domain model's score standardization and the member's threshold."""

    standardization: dict[str, Standardization]
    threshold: float

    @classmethod
    def from_fields(cls, f: Fields) -> "SectionNumbers":
        _strict(f, ("standardization", "threshold"))
        std = f.obj("standardization")
        domains = {}
        for dom in std.d:
            d = std.obj(dom)
            _strict(d, ("mean", "std"))
            domains[dom] = Standardization(d.req("mean", float), d.req("std", float))
        return cls(domains, f.req("threshold", float))

    @classmethod
    def from_dict(cls, d: dict) -> "SectionNumbers":
        """From :func:`edge_asd.scoring.section.section_state`'s numbers."""
        return cls.from_fields(Fields(d, "section"))

    def to_dict(self) -> dict:
        return {"standardization": {k: asdict(v) for k, v in self.standardization.items()}, "threshold": self.threshold}


@dataclass(frozen=True)
class Split:
    """The CPU's split graphs: the front end once per clip, then the encoder per segment."""

    frontend: str
    encoder: str
    frames_per_segment: int
    hop_length: int
    logmel: LogMelFrontEnd | None = None  # with input_norm: the rFFT front end; None: a bundle before it (the graph)
    input_norm: str | None = None

    @classmethod
    def from_fields(cls, f: Fields) -> "Split":
        _strict(f, ("frontend", "encoder", "frames_per_segment", "hop_length", "logmel", "input_norm"))
        return cls(f.req("frontend", str), f.req("encoder", str), f.req("frames_per_segment", int),
                   f.req("hop_length", int), LogMelFrontEnd.from_fields(f.obj("logmel")) if f.opt("logmel", dict) else None,
                   f.opt("input_norm", str))

    def to_dict(self) -> dict:
        return drop_none({**asdict(self), "logmel": None if self.logmel is None else self.logmel.to_dict()})


@dataclass(frozen=True)
class Engine:
    """A TensorRT engine and what it was built for (the builder's own description, kept as it wrote it)."""

    file: str
    meta: dict[str, Any]

    @classmethod
    def from_fields(cls, f: Fields) -> "Engine":
        return cls(f.req("file", str), _extra(f, ("file",)))

    def to_dict(self) -> dict:
        return {"file": self.file, **copy.deepcopy(self.meta)}


@dataclass(frozen=True)
class Member:
    """One ensemble member: an extractor (ONNX model, optional split graphs and engine) or the plain
    system's numpy features, with its detector state and per-section numbers."""

    state: str
    sections: dict[str, SectionNumbers]
    name: str | None = None
    run: str | None = None
    system: str | None = None  # "plain" for the numpy-feature member
    machine_type: str | None = None
    backbone: str | None = None
    seed: int | None = None
    embedding_dim: int | None = None
    model: str | None = None
    precision: str | None = None
    features: LogMelStatsConfig | None = None  # the plain system's: it has no model file
    amplitude: Amplitude | None = None
    domain_head: bool | None = None  # None: a bundle before it (it had one)
    heldout: str | None = None  # None: a bundle before on-device enrollment
    detector: Detector | None = None
    stage2: Stage2Config | None = None  # None: a bundle before it (the manifest's stage2 is every member's)
    split: Split | None = None
    engine: Engine | None = None
    engine_source: str | None = None
    calibration_cache: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    SIMPLE = {"name": str, "run": str, "system": str, "machine_type": str, "backbone": str, "seed": int,
              "embedding_dim": int, "model": str, "precision": str, "domain_head": bool, "heldout": str,
              "engine_source": str, "calibration_cache": str}
    KEYS = ("state", "sections", *SIMPLE, "features", "amplitude", "detector", "stage2", "split", "engine")

    @classmethod
    def from_fields(cls, f: Fields) -> "Member":
        sections = f.obj("sections")
        return cls(
            state=f.req("state", str),
            sections={s: SectionNumbers.from_fields(sections.obj(s)) for s in sections.d},
            **{k: f.opt(k, t) for k, t in cls.SIMPLE.items()},
            features=f.parsed("features", _plain_features, required=False),
            amplitude=f.parsed("amplitude", Amplitude.parse, required=False),
            detector=Detector.from_fields(f.obj("detector")) if f.opt("detector", dict) is not None else None,
            stage2=f.parsed("stage2", lambda d: Stage2Config(**d), required=False),
            split=Split.from_fields(f.obj("split")) if f.opt("split", dict) else None,
            engine=Engine.from_fields(f.obj("engine")) if f.opt("engine", dict) else None,
            extra=_extra(f, cls.KEYS),
        )

    @property
    def is_plain(self) -> bool:
        """A numpy-feature member: detector state but no model file."""
        return self.features is not None

    @property
    def has_domain_head(self) -> bool:
        return True if self.domain_head is None else self.domain_head

    def label(self, index: int) -> str:
        return self.name or f"m{index}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.SIMPLE}
        d.update(
            state=self.state,
            sections={s: n.to_dict() for s, n in self.sections.items()},
            features=None if self.features is None else self.features.to_dict(),
            amplitude=None if self.amplitude is None else self.amplitude.to_value(),
            detector=None if self.detector is None else self.detector.to_dict(),
            stage2=None if self.stage2 is None else asdict(self.stage2),
            split=None if self.split is None else self.split.to_dict(),
            engine=None if self.engine is None else self.engine.to_dict(),
        )
        return {**copy.deepcopy(self.extra), **drop_none(d)}


# --- what the device shows beside a score ------------------------------------------------


@dataclass(frozen=True)
class BandEvidenceSpec:
    """Where the normal clips' plain features for band evidence are, and how they were computed."""

    file: str
    features: LogMelStatsConfig
    k: int
    sections: tuple[str, ...]

    @classmethod
    def from_fields(cls, f: Fields) -> "BandEvidenceSpec":
        _strict(f, ("file", "features", "k", "sections"))
        return cls(f.req("file", str), f.parsed("features", _plain_features), f.req("k", int), strings(f, "sections"))

    def to_dict(self) -> dict:
        return {"file": self.file, "features": self.features.to_dict(), "k": self.k, "sections": list(self.sections)}


@dataclass(frozen=True)
class ReferenceClipEntry:
    """A typical normal clip packed as FLAC, to hear beside a fault."""

    file: str
    seconds: float
    domain: str | None = None  # None: "source"
    source: str | None = None  # the training clip it was cut from

    @classmethod
    def from_fields(cls, f: Fields) -> "ReferenceClipEntry":
        _strict(f, ("file", "seconds", "domain", "source"))
        return cls(f.req("file", str), f.req("seconds", float), f.opt("domain", str), f.opt("source", str))

    def to_dict(self) -> dict:
        return drop_none(asdict(self))


@dataclass(frozen=True)
class Candidate:
    run: str
    name: str
    figure: float
    chosen: bool


@dataclass(frozen=True)
class Selection:
    """How an ensemble's members were chosen from more runs, every candidate's figure recorded."""

    criterion: str
    k: int
    candidates: tuple[Candidate, ...]

    @classmethod
    def from_fields(cls, f: Fields) -> "Selection":
        _strict(f, ("criterion", "k", "candidates"))
        cands = []
        for c in objects(f, "candidates"):
            _strict(c, ("run", "name", "figure", "chosen"))
            cands.append(Candidate(c.req("run", str), c.req("name", str), c.req("figure", float), c.req("chosen", bool)))
        return cls(f.req("criterion", str), f.req("k", int), tuple(cands))

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "k": self.k, "candidates": [asdict(c) for c in self.candidates]}


@dataclass(frozen=True)
class Enrollment:
    """One on-device enrollment of a new operating condition."""

    time: str
    section: str
    domain: str
    clips: tuple[str, ...]
    accepted_anomalous: tuple[str, ...]

    @classmethod
    def from_fields(cls, f: Fields) -> "Enrollment":
        _strict(f, ("time", "section", "domain", "clips", "accepted_anomalous"))
        return cls(f.req("time", str), f.req("section", str), f.req("domain", str), strings(f, "clips"),
                   strings(f, "accepted_anomalous"))

    def to_dict(self) -> dict:
        return {**asdict(self), "clips": list(self.clips), "accepted_anomalous": list(self.accepted_anomalous)}


# --- the manifest ------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """Every number scoring needs, and the sha256 of every member file of the bundle."""

    bundle_id: str
    created: str
    machine_type: str
    sections: tuple[str, ...]
    audio: Audio
    frontend: FrontEnd
    embedding_dim: int
    approach: str
    aggregator: str
    kappa: float
    threshold_rule: str
    thresholds: dict[str, float]
    members: tuple[Member, ...]
    files: dict[str, str]  # member file -> sha256
    schema_version: int = SCHEMA_VERSION
    stage2: Stage2Config | None = None
    precision: dict[str, Any] | None = None  # export's precision and parity report (per member name in an ensemble)
    reference_quantiles: dict[str, list[float]] | None = None  # the daemon's drift reference
    reference_medians: dict[str, float] | None = None  # 0 of the score ratio
    band_evidence: BandEvidenceSpec | None = None
    reference_clips: dict[str, tuple[ReferenceClipEntry, ...]] | None = None
    selection: Selection | None = None
    gate: dict[str, Any] | None = None  # the training-time no-regret check's record (train/gate.py)
    parent_bundle_id: str | None = None  # set by enrollment: the bundle this one was made from
    enrollments: tuple[Enrollment, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("schema_version", "bundle_id", "created", "machine_type", "sections", "audio", "frontend",
                "embedding_dim", "approach", "aggregator", "kappa", "threshold_rule", "thresholds", "members", "files")
    OPTIONAL = ("stage2", "precision", "reference_quantiles", "reference_medians", "band_evidence", "reference_clips",
                "selection", "gate", "parent_bundle_id", "enrollments")

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """The manifest of ``d``; :class:`ManifestError` naming the first wrong key."""
        f = Fields(d)
        missing = [k for k in cls.REQUIRED if not f.has(k)]
        if missing:
            raise ManifestError(f"manifest lacks {', '.join(missing)}")
        version = f.d["schema_version"]
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"bundle schema version {version!r} is not supported (this runtime reads version {SCHEMA_VERSION})")
        files = f.obj("files")
        return cls(
            schema_version=version,
            bundle_id=f.req("bundle_id", str),
            created=f.req("created", str),
            machine_type=f.req("machine_type", str),
            sections=strings(f, "sections"),
            audio=Audio.from_fields(f.obj("audio")),
            frontend=_frontend(f, "frontend"),
            embedding_dim=f.req("embedding_dim", int),
            approach=f.req("approach", str),
            aggregator=f.req("aggregator", str),
            kappa=f.req("kappa", float),
            threshold_rule=f.req("threshold_rule", str),
            thresholds=numbers(f, "thresholds"),
            members=tuple(Member.from_fields(m) for m in objects(f, "members")),
            files={name: files.req(name, str) for name in files.d},
            stage2=f.parsed("stage2", lambda s: Stage2Config(**s), required=False),
            precision=copy.deepcopy(f.opt("precision", dict)),
            reference_quantiles=_quantiles(f),
            reference_medians=numbers(f, "reference_medians", required=False),
            band_evidence=BandEvidenceSpec.from_fields(f.obj("band_evidence")) if f.opt("band_evidence", dict) else None,
            reference_clips=_reference_clips(f),
            selection=Selection.from_fields(f.obj("selection")) if f.opt("selection", dict) else None,
            gate=copy.deepcopy(f.opt("gate", dict)),
            parent_bundle_id=f.opt("parent_bundle_id", str),
            enrollments=tuple(Enrollment.from_fields(e) for e in objects(f, "enrollments")) if f.has("enrollments") else None,
            extra=_extra(f, (*cls.REQUIRED, *cls.OPTIONAL)),
        )

    @property
    def segment_spec(self) -> SegmentSpec:
        return self.audio.spec()

    def member_stage2(self, member: Member) -> Stage2Config | None:
        """A member's stage 2 (an ensemble's members may differ: the plain system has its own)."""
        return member.stage2 or self.stage2

    def to_dict(self) -> dict:
        d: dict[str, Any] = {k: getattr(self, k) for k in ("schema_version", "bundle_id", "created", "machine_type",
                                                              "embedding_dim", "approach", "aggregator", "kappa",
                                                              "threshold_rule", "parent_bundle_id")}
        d.update(
            sections=list(self.sections),
            audio=self.audio.to_dict(),
            frontend=self.frontend.to_dict(),
            thresholds=dict(self.thresholds),
            members=[m.to_dict() for m in self.members],
            files=dict(self.files),
            stage2=None if self.stage2 is None else asdict(self.stage2),
            precision=copy.deepcopy(self.precision),
            reference_quantiles=None if self.reference_quantiles is None else {
                s: list(q) for s, q in self.reference_quantiles.items()},
            reference_medians=None if self.reference_medians is None else dict(self.reference_medians),
            band_evidence=None if self.band_evidence is None else self.band_evidence.to_dict(),
            reference_clips=None if self.reference_clips is None else {
                s: [e.to_dict() for e in entries] for s, entries in self.reference_clips.items()},
            selection=None if self.selection is None else self.selection.to_dict(),
            gate=copy.deepcopy(self.gate),
            enrollments=None if self.enrollments is None else [e.to_dict() for e in self.enrollments],
        )
        return {**copy.deepcopy(self.extra), **drop_none(d)}


def _quantiles(f: Fields) -> dict[str, list[float]] | None:
    if not f.has("reference_quantiles"):
        return None
    sub = f.obj("reference_quantiles")
    out = {}
    for section in sub.d:
        values = sub.req(section, list)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise sub.error(section, "expected a list of numbers")
        out[section] = list(values)
    return out


def _reference_clips(f: Fields) -> dict[str, tuple[ReferenceClipEntry, ...]] | None:
    if not f.has("reference_clips") or f.d["reference_clips"] is None:
        return None
    sub = f.obj("reference_clips")
    return {s: tuple(ReferenceClipEntry.from_fields(e) for e in objects(sub, s)) for s in sub.d}
