"""One scored window of a recording, as ``edge-asd score`` writes it (CSV, JSON lines) and plots it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from edge_asd.scoring.bands import Band


@dataclass(frozen=True)
class Window:
    """One scored window of a recording, with the alert state after it."""

    file: str
    window: int
    start_s: float
    end_s: float
    start_time: datetime | None
    end_time: datetime | None
    score: float
    threshold: float
    anomalous: bool
    p_target: float
    dbfs: float
    alert: bool  # the debounced state after this window
    event: str  # "raised", "cleared" or ""
    ratio: float | None = None  # 0 at the section's median held-out normal, 1 at the threshold; None: an older bundle
    bands: tuple[Band, ...] | None = None  # the deviating bands, strongest first; None: no band statistics

    def record(self) -> dict:
        out = asdict(self)
        out["start_time"] = format_wall(self.start_time)
        out["end_time"] = format_wall(self.end_time)
        out["bands"] = None if self.bands is None else [b.to_dict() for b in self.bands]
        return out


def format_wall(t: datetime | None) -> str:
    if t is None:
        return ""
    s = t.isoformat(timespec="milliseconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s
