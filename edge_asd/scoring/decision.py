"""One clip's decision, as the daemon and a replay of recordings both make it: the threshold that
applies, whether the clip is anomalous, the debounced alert state it leaves and whether its audio
is kept as evidence.

Written once so that ``edge-asd score`` replays a recording exactly as the daemon would have
judged it live: a second copy of these rules is a second place for them to drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

from edge_asd.scoring.alerts import Debouncer
from edge_asd.scoring.bands import Band

# What the debounced state turned into with a clip, as a replay's CSV names the event.
_EVENTS = {"anomalous": "raised", "normal": "cleared"}


class ScoredClip(Protocol):
    """What a scorer says about one clip (``edge_asd.runtime.scorer.ClipResult`` is one)."""

    score: float
    threshold: float
    p_target: float
    section: str
    ratio: float | None
    bands: tuple[Band, ...] | None


# (score, section, threshold) -> the score's ratio to that threshold: a scorer's ``ratio``.
Rescale = Callable[[float, str, float], "float | None"]


@dataclass(frozen=True)
class DecidedClip:
    """A scored clip with its decision: what every output (MQTT, the page, a replay's rows) reports."""

    score: float
    threshold: float  # the one that applied: the override, else the bundle's
    p_target: float
    dbfs: float
    section: str
    ratio: float | None  # 0 at the section's median held-out normal, 1 at the threshold; None: an older bundle
    bands: tuple[Band, ...] | None  # the deviating bands, strongest first; None: no band statistics
    finite: bool  # False: a non-finite number, on which no decision rests (the debouncer did not see it)
    anomalous: bool  # this clip alone is over the threshold
    change: str | None  # "anomalous" or "normal" when the debounced state turned with this clip
    alert: bool  # the debounced state after this clip
    pending: int | None  # clips like this one still needed to turn the state (Debouncer.clips_until_change)
    save_evidence: bool  # its audio is to be kept

    @property
    def event(self) -> str:
        """"raised", "cleared" or "": the change in a replay's words."""
        return _EVENTS.get(self.change or "", "")

    @property
    def state(self) -> str:
        """The debounced state after this clip, as the retained alert state says it."""
        return "anomalous" if self.alert else "normal"

    def band_dicts(self) -> list[dict] | None:
        return None if self.bands is None else [b.to_dict() for b in self.bands]


@dataclass
class ClipDecider:
    """Turns scored clips into decided ones for one machine: owns its threshold rule and its debouncer.

    ``threshold``: a per-machine override of the bundle's, or None; ``rescale`` puts a score on
    the override's ratio scale (a scorer's ``ratio``), so that 1 is where this machine's alerts start.
    """

    debouncer: Debouncer
    threshold: float | None = None
    rescale: Rescale | None = None
    save_evidence: bool = False

    def decide(self, scored: ScoredClip, dbfs: float) -> DecidedClip:
        threshold = self.threshold if self.threshold is not None else float(scored.threshold)
        score = float(scored.score)
        p_target = float(scored.p_target)
        finite = all(math.isfinite(v) for v in (score, threshold, p_target, dbfs))
        # A non-finite clip leaves the alert state alone: NaN is neither over nor under a threshold.
        anomalous = finite and score > threshold
        change = self.debouncer.update(anomalous) if finite else None
        if self.threshold is None or self.rescale is None:
            ratio = scored.ratio
        else:
            ratio = self.rescale(score, scored.section, threshold)
        return DecidedClip(
            score=score, threshold=threshold, p_target=p_target, dbfs=dbfs, section=scored.section,
            ratio=ratio, bands=scored.bands, finite=finite, anomalous=anomalous, change=change,
            alert=self.debouncer.anomalous, pending=self.debouncer.clips_until_change(),
            save_evidence=anomalous and self.save_evidence,
        )
