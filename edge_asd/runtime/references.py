"""A bundle's reference clips: a few typical normal training clips per section, to hear beside a fault.

``edge-asd-export --reference-clips N`` packs them as FLAC under ``references/``
and lists them in the manifest's ``reference_clips`` (per section: ``file``,
``domain``, ``seconds``). A bundle written before has none, and everything
else about it works as before. numpy and soundfile only: the page reads
these on the device.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import soundfile as sf

from edge_asd.errors import BundleError
from edge_asd.io.features import LogMelStats
from edge_asd.runtime.bundle import Bundle


@dataclass(frozen=True)
class ReferenceClip:
    """One reference clip: ``name`` is what a URL names it by (the file's base name), ``member`` its bundle path."""

    name: str
    member: str
    section: str
    domain: str
    seconds: float

    def to_dict(self) -> dict:
        return {"name": self.name, "section": self.section, "domain": self.domain, "seconds": self.seconds}


class ReferenceClips:
    """The reference clips a bundle holds, read from it on demand (each read checks the member's sha256)."""

    def __init__(self, bundle: Bundle, clips: list[ReferenceClip]):
        self.bundle = bundle
        self.clips = {c.name: c for c in clips}
        self._lock = threading.Lock()
        self._features: dict[str, np.ndarray] = {}  # per clip, the per-band mean log-mel nearest() compares

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "ReferenceClips":
        clips = []
        for section, entries in (bundle.manifest.reference_clips or {}).items():
            for e in entries:
                if e.file not in bundle.manifest.files:
                    raise BundleError(f"{bundle.path}: reference clip {e.file!r} is not in the bundle")
                clips.append(ReferenceClip(PurePosixPath(e.file).name, e.file, section, e.domain or "source", e.seconds))
        return cls(bundle, clips)

    def __len__(self) -> int:
        return len(self.clips)

    def of_section(self, section: str) -> list[ReferenceClip]:
        return [c for c in self.clips.values() if c.section == section]

    def get(self, name: str) -> ReferenceClip | None:
        return self.clips.get(name)

    def read(self, name: str) -> bytes:
        """The clip's FLAC bytes; KeyError for a name the bundle does not list."""
        return self.bundle.read(self.clips[name].member)

    def samples(self, name: str) -> tuple[np.ndarray, int]:
        x, rate = sf.read(io.BytesIO(self.read(name)), dtype="float32", always_2d=True)
        return x[:, 0], int(rate)

    def nearest(self, samples: np.ndarray, section: str, features: LogMelStats) -> ReferenceClip | None:
        """The section's reference whose spectrum (per-band mean log-mel) is nearest the clip's; None if it has none.

        Nearest, not the first: a section's references span its domains and
        operating conditions, and the one to hear beside a fault is the normal
        it departs from.
        """
        candidates = self.of_section(section)
        if not candidates:
            return None
        n = features.cfg.n_mels
        clip = features(np.asarray(samples, dtype=np.float32))[:n]
        dist = [float(np.linalg.norm(self._reference_features(c, features)[:n] - clip)) for c in candidates]
        return candidates[int(np.argmin(dist))]

    def _reference_features(self, clip: ReferenceClip, features: LogMelStats) -> np.ndarray:
        with self._lock:
            cached = self._features.get(clip.name)
        if cached is None:
            cached = features(self.samples(clip.name)[0])
            with self._lock:
                self._features[clip.name] = cached
        return cached
