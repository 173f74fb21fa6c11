"""The clip path every source shares: a :class:`Clip` and the bounded queue to the scorer
(:class:`ClipQueue`); the cutter that makes clips from a sample stream is
:class:`edge_asd.io.recording.ClipCutter`, shared with ``edge-asd score``."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class Clip:
    """One clip ready to score."""

    samples: np.ndarray  # float32, mono, SAMPLE_RATE
    end_time: datetime  # UTC wall-clock time of the clip's last sample
    dbfs: float  # level of the raw clip (before the scorer standardizes it)
    ready_monotonic: float  # time.monotonic() when the clip was complete: latency is measured from here
    origin: str  # where it came from: "<device>" or "<file>@<offset>s"
    # File sources: (key, value) of the replay position this clip reaches, journaled with its
    # message so that a restarted source continues after it (edge_asd.daemon.fileprogress).
    position: tuple[str, str] | None = None


class ClipQueue:
    """A bounded clip queue between a source and the scorer.

    A live source must never wait for the scorer (audio would be lost in the
    driver instead, uncounted), so :meth:`put_drop_oldest` makes room by
    dropping the oldest clip and counting it. A fast file replay instead waits
    (:meth:`put_wait`): there the scorer sets the pace and every clip is scored.
    """

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError("queue size must be at least 1")
        self.maxsize = maxsize
        self._items: collections.deque[Clip] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put_drop_oldest(self, clip: Clip) -> bool:
        """Queue ``clip``; True when the oldest queued clip had to be dropped for it."""
        with self._cond:
            dropped = False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(clip)
            self._cond.notify()
            return dropped

    def put_wait(self, clip: Clip, stop: threading.Event) -> bool:
        """Queue ``clip`` once there is room; False (clip not queued) when ``stop`` is set first."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._items.append(clip)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Clip | None:
        """The oldest clip, or None when none came within ``timeout`` (or the queue is closed and empty)."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    return None
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            clip = self._items.popleft()
            self._cond.notify_all()
            return clip

    def close(self) -> None:
        """No more clips will come; readers drain what is queued, then get None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drop every queued clip (shutdown); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n

    @property
    def exhausted(self) -> bool:
        """Closed and empty: the source has ended and every clip was taken."""
        with self._cond:
            return self._closed and not self._items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
