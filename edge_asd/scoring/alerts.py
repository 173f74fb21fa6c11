"""Alert state from per-clip decisions: what the daemon and a replay of recordings publish as alerts."""

from __future__ import annotations

# The daemon's [alerts] defaults, which ``edge-asd score`` replays with too.
RAISE_AFTER = 3
CLEAR_AFTER = 3


class Debouncer:
    """Turns per-clip decisions into an alert state that does not flap.

    The state turns anomalous after ``raise_after`` consecutive anomalous clips
    and back to normal after ``clear_after`` consecutive normal clips; a single
    odd clip in between resets the count.
    """

    def __init__(self, raise_after: int, clear_after: int):
        self.raise_after = raise_after
        self.clear_after = clear_after
        self.anomalous = False
        self._run = 0  # consecutive clips that disagree with the current state

    def update(self, clip_anomalous: bool) -> str | None:
        """Feed one clip; returns "anomalous" or "normal" when the state changes, else None."""
        if clip_anomalous == self.anomalous:
            self._run = 0
            return None
        self._run += 1
        if self._run >= (self.clear_after if self.anomalous else self.raise_after):
            self.anomalous = clip_anomalous
            self._run = 0
            return "anomalous" if clip_anomalous else "normal"
        return None

    def clips_until_change(self) -> int | None:
        """How many more clips like the last one turn the state; None while the last clip agreed with it.

        The page's "above threshold, alert after N more clips": a score over the
        threshold beside a "normal" badge is the debouncer counting, not a fault.
        """
        if self._run == 0:
            return None
        return (self.clear_after if self.anomalous else self.raise_after) - self._run

    def reconfigure(self, raise_after: int, clear_after: int) -> None:
        self.raise_after = raise_after
        self.clear_after = clear_after
