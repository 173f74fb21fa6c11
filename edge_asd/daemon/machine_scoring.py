"""The scorers a configuration names: each bundle loaded once (machines with the same bundle share it)
and each machine checked against its bundle (section, clip length)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_asd.daemon.config import DaemonConfig
from edge_asd.errors import BundleError, ConfigError, UserError

if TYPE_CHECKING:
    from edge_asd.runtime.scorer import ClipScorer


@dataclass
class SharedScorer:
    """A loaded bundle and the lock that serializes its use.

    Machines with the same bundle share one scorer (its extractor and
    detectors are the device's largest memory use); on a small device parallel
    inference would not be faster anyway.
    """

    scorer: ClipScorer
    lock: threading.Lock


@dataclass(frozen=True)
class Scoring:
    """What a pipeline scores with; replaced as a whole on reload."""

    shared: SharedScorer
    section: str
    threshold: float | None
    clip_seconds: float
    hop_seconds: float
    save_evidence: bool

    @property
    def bundle_id(self) -> str:
        return self.shared.scorer.bundle_id


def load_scorers(cfg: DaemonConfig) -> dict[str, Scoring]:
    """Load every bundle the configuration names and check each machine against its bundle.

    Raises :class:`BundleError` / :class:`ConfigError` naming the configuration key.
    """
    from edge_asd.runtime.scorer import load_scorer

    cache: dict[tuple, SharedScorer] = {}
    out: dict[str, Scoring] = {}
    cache_dir = str(cfg.storage.engine_cache) if cfg.storage.engine_cache else None
    for i, m in enumerate(cfg.machines):
        key = (str(m.bundle.resolve()), m.backend, m.threads)
        if key not in cache:
            try:
                scorer = load_scorer(m.bundle, backend=m.backend, threads=m.threads, cache_dir=cache_dir)
            except UserError as exc:
                raise BundleError(f"{cfg.path}: machines[{i}].bundle: {exc}") from None
            cache[key] = SharedScorer(scorer, threading.Lock())
        shared = cache[key]
        scorer = shared.scorer
        sections = list(scorer.sections)
        section = m.section if m.section is not None else sections[0]
        if section not in sections:
            raise ConfigError(
                f"{cfg.path}: machines[{i}].section: {section!r} is not a section of {m.bundle} "
                f"(it has {', '.join(sections)})"
            )
        clip_seconds = m.clip_seconds or float(scorer.clip_seconds)
        if clip_seconds < float(scorer.segment_seconds):
            raise ConfigError(
                f"{cfg.path}: machines[{i}].clip_seconds: {clip_seconds:g} s is shorter than the bundle's "
                f"{float(scorer.segment_seconds):g} s segments"
            )
        out[m.id] = Scoring(shared=shared, section=section, threshold=m.threshold, clip_seconds=clip_seconds,
                            hop_seconds=m.hop_seconds or clip_seconds, save_evidence=m.save_evidence)
    return out
