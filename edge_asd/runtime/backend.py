"""What every extractor back end is: the protocol, a clip in the forms back ends take, the numpy member.

Every back end maps amplitude-standardized segments ``[N, samples]`` (float32)
to ``(embedding [N, D], domain_logit [N])`` (``run``), and one clip to its
segments' embeddings (``run_clip``), from whichever form of the clip it needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from edge_asd.io.audio import SegmentSpec, normalize, segment
from edge_asd.io.features import LogMelStats


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
