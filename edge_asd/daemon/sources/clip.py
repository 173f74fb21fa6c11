"""The clip path every source shares: a :class:`Clip`, the cutter that makes clips from a
sample stream (:class:`ClipCutter`) and the bounded queue to the scorer (:class:`ClipQueue`)."""

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


class ClipCutter:
    """Cuts a continuous sample stream into clips of ``clip_n`` samples every ``hop_n`` samples.

    ``hop_n < clip_n`` overlaps clips; ``hop_n > clip_n`` skips audio between
    clips (scoring a 10 s clip once a minute saves a small device's CPU).
    """

    def __init__(self, clip_n: int, hop_n: int):
        if clip_n < 1 or hop_n < 1:
            raise ValueError("clip and hop must be at least one sample")
        self.clip_n = clip_n
        self.hop_n = hop_n
        self._buf = np.zeros(clip_n, dtype=np.float32)
        self._fill = 0
        self._skip = 0

    def reset(self) -> None:
        """Forget the partial clip (after a gap in the stream a clip must not straddle it)."""
        self._fill = 0
        self._skip = 0

    def feed(self, x: np.ndarray, end_index: int) -> list[tuple[np.ndarray, int]]:
        """Add samples whose last one has absolute index ``end_index - 1``.

        Returns the completed clips with the absolute index just past their last sample.
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        base = end_index - x.size
        out: list[tuple[np.ndarray, int]] = []
        pos = 0
        while pos < x.size:
            if self._skip:
                s = min(self._skip, x.size - pos)
                pos += s
                self._skip -= s
                continue
            take = min(self.clip_n - self._fill, x.size - pos)
            self._buf[self._fill : self._fill + take] = x[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.clip_n:
                out.append((self._buf.copy(), base + pos))
                if self.hop_n >= self.clip_n:
                    self._fill = 0
                    self._skip = self.hop_n - self.clip_n
                else:
                    keep = self.clip_n - self.hop_n
                    self._buf[:keep] = self._buf[self.hop_n :].copy()
                    self._fill = keep
        return out


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples (the resampler rounds its output length up)."""
    if x.size >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([x, np.zeros(n - x.size, dtype=np.float32)])
