"""The lock-free ring buffer between PortAudio's callback thread and a microphone source."""

from __future__ import annotations

import time

import numpy as np


class Ring:
    """Single-producer single-consumer ring buffer of float32 samples.

    The producer is PortAudio's callback thread: it copies and then publishes
    its new total with one attribute store (atomic under the GIL), so it never
    takes a lock and never waits. The consumer detects samples the producer
    overwrote before they were read (an overrun) and reports how many were lost.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self.written = 0  # total samples ever written
        self.read_total = 0  # total samples handed to the consumer or lost
        # (written, wall time, monotonic time) of the last write: clip timestamps are derived from it.
        self.mark: tuple[int, float, float] = (0, time.time(), time.monotonic())

    def write(self, x: np.ndarray) -> None:
        n = x.shape[0]
        cap = self.capacity
        w = self.written
        if n > cap:
            x = x[n - cap :]
            w += n - cap
            n = cap
        pos = w % cap
        first = min(n, cap - pos)
        self._buf[pos : pos + first] = x[:first]
        if n > first:
            self._buf[: n - first] = x[first:]
        self.written = w + n
        self.mark = (self.written, time.time(), time.monotonic())

    def read(self) -> tuple[np.ndarray, int, int]:
        """``(samples, end_index, lost)``: everything new since the last read."""
        cap = self.capacity
        w = self.written
        start = self.read_total
        lost = 0
        if w - start > cap:
            lost = w - cap - start
            start = w - cap
        n = w - start
        pos = start % cap
        first = min(n, cap - pos)
        out = np.concatenate([self._buf[pos : pos + first], self._buf[: n - first]]) if n > first else self._buf[pos : pos + n].copy()
        # The producer kept writing while we copied: whatever it wrapped over is not what we wanted.
        w2 = self.written
        clobbered = max(0, w2 - cap - start)
        if clobbered:
            clobbered = min(clobbered, n)
            out = out[clobbered:]
            lost += clobbered
        self.read_total = w
        return out, w, lost
