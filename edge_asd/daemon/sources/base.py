"""What every source is: :class:`ClipSource` (a worker thread, a stop event, the clip queue,
counters) and the :class:`SourceHealth` snapshot it reports."""

from __future__ import annotations

import abc
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from edge_asd.daemon.sources.clip import Clip, ClipQueue

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages


@dataclass(frozen=True)
class SourceHealth:
    """A snapshot of a source's counters for the stats heartbeat."""

    state: str  # "starting", "ok", "failing" or "ended"
    clips: int
    dropped_clips: int
    overruns: int
    input_overflows: int
    bad_files: int
    reopens: int
    last_error: str | None


class Throttle:
    """Log the first occurrence of a recurring problem, then at most once per ``interval_s`` with a count."""

    def __init__(self, interval_s: float = 60.0):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] += 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if n:
            logger.log(level, msg + " (%d more since the last report)", *args, n)
        else:
            logger.log(level, msg, *args)


class ClipSource(abc.ABC):
    """Common machinery: a worker thread, a stop event, the queue, counters and health."""

    def __init__(self, name: str, clip_seconds: float, hop_seconds: float | None, queue_clips: int):
        if clip_seconds <= 0:
            raise ValueError("clip_seconds must be positive")
        self.name = name
        self.clip_seconds = float(clip_seconds)
        self.hop_seconds = float(hop_seconds) if hop_seconds else float(clip_seconds)
        self.queue = ClipQueue(queue_clips)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()
        self._state = "starting"
        self._last_error: str | None = None
        self.clips = 0
        self.overruns = 0
        self.input_overflows = 0
        self.bad_files = 0
        self.reopens = 0
        # An exception that escaped the worker: the daemon treats it as an internal error.
        self.crashed: BaseException | None = None
        self.last_clip_mono: float | None = None  # when the last clip was queued
        # When the worker last showed it is not stuck; None for sources that do not report it.
        self.last_beat_mono: float | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._thread = threading.Thread(target=self._guarded_run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing; the queue is closed, so the scorer drains it and ends."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.queue.close()

    @property
    def ended(self) -> bool:
        """The source will produce no more clips (its thread has finished)."""
        return self._thread is not None and not self._thread.is_alive()

    def health(self) -> SourceHealth:
        return SourceHealth(
            state=self._state,
            clips=self.clips,
            dropped_clips=self.queue.dropped,
            overruns=self.overruns,
            input_overflows=self.input_overflows,
            bad_files=self.bad_files,
            reopens=self.reopens,
            last_error=self._last_error,
        )

    def stuck_for(self, now: float) -> float | None:
        """Seconds since a running worker last made progress; None when not known or not running."""
        beat = self.last_beat_mono
        if beat is None or self.ended or self._stop.is_set():
            return None
        return now - beat

    def _beat(self) -> None:
        self.last_beat_mono = time.monotonic()

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` (showing progress meanwhile); True when stopped."""
        end = time.monotonic() + seconds
        while True:
            self._beat()
            left = end - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(1.0, left)):
                return True

    def _guarded_run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported to the daemon, which exits 1
            log.exception("source %s: internal error", self.name)
            self.crashed = exc
        finally:
            self._state = "ended"
            self.queue.close()

    @abc.abstractmethod
    def _run(self) -> None:
        """Produce clips until the source ends or ``self._stop`` is set."""

    # -- helpers for subclasses ----------------------------------------------------
    def _emit(self, clip: Clip, wait: bool) -> bool:
        if wait:
            if not self.queue.put_wait(clip, self._stop):
                return False
        elif self.queue.put_drop_oldest(clip):
            self._throttle.log(
                log, logging.WARNING, "dropped",
                "source %s: scoring is slower than capture; dropped the oldest queued clip (%d dropped so far)",
                self.name, self.queue.dropped,
            )
        self.clips += 1
        self.last_clip_mono = time.monotonic()
        return True

    def _fail(self, key: str, message: str) -> None:
        self._state = "failing"
        self._last_error = message
        self._throttle.log(log, logging.ERROR, key, "source %s: %s", self.name, message)
