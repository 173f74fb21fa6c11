"""Audio sources for the daemon: clips of float32 mono 16 kHz audio on a bounded queue.

Two sources share one clip path (:class:`ClipCutter` -> :class:`ClipQueue`):

* :class:`MicSource` reads a PortAudio input device (sounddevice callback
  stream, shared by the sources on the channels of one device). The callback
  only copies samples into a lock-free ring buffer per source; a separate thread
  cuts clips at the device's native rate, resamples each clip to 16 kHz
  (:func:`edge_asd.io.audio.resample`, anti-aliased) and queues it. A device that
  fails or stops delivering audio is reported and reopened with backoff.
* :class:`FileSource` replays recordings (``file:<path, folder or glob>``) through
  the same cutting, in real time or as fast as the scorer takes them, once or in
  a loop, so thresholds can be tuned on recordings through the live pipeline.

Nothing is dropped silently: input overflows, ring-buffer overruns, clips
dropped from a full queue and bad files are counted in :class:`SourceHealth`
and logged (rate-limited).
"""

from __future__ import annotations

import abc
import collections
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import soundfile as sf

from edge_asd.io.audio import SAMPLE_RATE, dbfs, open_audio, resample, short_error
from edge_asd.io.files import list_source_files
from edge_asd.errors import AudioError

if TYPE_CHECKING:
    from edge_asd.daemon.fileprogress import FileProgress

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages


class DeviceError(Exception):
    """An audio input device that cannot be found or used (the message says why)."""


@dataclass(frozen=True)
class Clip:
    """One clip ready to score."""

    samples: np.ndarray  # float32, mono, SAMPLE_RATE
    end_time: datetime  # UTC wall-clock time of the clip's last sample
    dbfs: float  # level of the raw clip (before the scorer standardizes it)
    ready_monotonic: float  # time.monotonic() when the clip was complete: latency is measured from here
    origin: str  # where it came from: "<device>" or "<file>@<offset>s"
    # The file this clip is the last of (file sources): once it is scored, a
    # restarted source may continue after that file.
    completes: Path | None = None


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


class _Throttle:
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


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples (the resampler rounds its output length up)."""
    if x.size >= n:
        return np.ascontiguousarray(x[:n], dtype=np.float32)
    return np.concatenate([x, np.zeros(n - x.size, dtype=np.float32)])


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
        self._throttle = _Throttle()
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


# --- microphones --------------------------------------------------------------------


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # the Python module is there, the PortAudio library is not
        raise DeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from None
    return sd


# Run by a child process: a fresh PortAudio lists the devices present now, which the
# parent's PortAudio (initialized once) cannot do while it has streams open.
_PROBE = (
    "import json, sounddevice as sd; "
    "print(json.dumps([d['name'] for d in sd.query_devices() if d['max_input_channels'] > 0]))"
)
PROBE_TIMEOUT_S = 30.0
# Failed opens in a row after which a source forces a device list refresh (with backoff, about half a
# minute after the first failure, then every few minutes).
ESCALATE_AFTER_FAILED_OPENS = 5


def probe_input_names() -> list[str] | None:
    """The names of the input devices present now, from a child process; None when the probe failed."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
        names = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.debug("audio device probe failed: %s", exc)
        return None
    if not isinstance(names, list):
        log.debug("audio device probe failed: %s", done.stderr.strip()[-300:])
        return None
    return [str(n) for n in names]


def _input_names() -> list[str]:
    try:
        return [str(d["name"]) for d in _sounddevice().query_devices() if d["max_input_channels"] > 0]
    except Exception:  # PortAudio not usable: the caller's open reports why
        return []


def _describe_inputs(devices: list[dict]) -> str:
    names = [f"{d['index']} {d['name']!r}" for d in devices if d["max_input_channels"] > 0]
    return "input devices: " + ("; ".join(names) if names else "none")


def resolve_input_device(device: int | str, channel: int = 0) -> dict:
    """PortAudio's description of an input device given as ``default``, an index or a name.

    A name matches exactly, else as a case-insensitive substring of exactly one
    input device's name. Raises :class:`DeviceError` saying what exists.
    """
    sd = _sounddevice()
    try:
        devices = [dict(d) for d in sd.query_devices()]
    except Exception as exc:  # PortAudioError, or an unusual host API failure
        raise DeviceError(f"cannot list audio devices ({exc})") from None
    inputs = [d for d in devices if d["max_input_channels"] > 0]
    if device == "default":
        idx = sd.default.device[0]
        if idx is None or idx < 0:
            try:
                idx = int(sd.query_devices(kind="input")["index"])
            except Exception:
                raise DeviceError(f"there is no default audio input device; {_describe_inputs(devices)}") from None
        info = devices[idx]
        if info["max_input_channels"] < 1:
            raise DeviceError(f"the default device {info['name']!r} has no input channels; {_describe_inputs(devices)}")
    elif isinstance(device, int):
        if not 0 <= device < len(devices) or devices[device]["max_input_channels"] < 1:
            raise DeviceError(f"no audio input device with index {device}; {_describe_inputs(devices)}")
        info = devices[device]
    else:
        exact = [d for d in inputs if d["name"] == device]
        matches = exact or [d for d in inputs if device.lower() in d["name"].lower()]
        if not matches:
            raise DeviceError(f"no audio input device named {device!r}; {_describe_inputs(devices)}")
        if len(matches) > 1:
            raise DeviceError(
                f"{device!r} matches several input devices ({', '.join(repr(d['name']) for d in matches)}); "
                "give more of the name or the index"
            )
        info = matches[0]
    if channel >= info["max_input_channels"]:
        raise DeviceError(
            f"device {info['name']!r} has {info['max_input_channels']} input channel(s); channel {channel} does not exist"
        )
    return info


class _Ring:
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


class _SharedStream:
    """One open PortAudio input stream and the subscriptions it feeds.

    Several machines may listen to one device (one per channel of a
    multi-channel interface): a raw ALSA device can be opened only once, so
    they share one stream whose callback copies each subscriber's channel into
    that subscriber's ring buffer.
    """

    def __init__(self, info: dict, rate: int, channels: int):
        self.info = info
        self.rate = rate
        self.channels = channels
        # Replaced as a whole (never mutated) so the callback reads a consistent tuple without a lock.
        self.subs: tuple["MicSubscription", ...] = ()
        self.finished = threading.Event()  # set by PortAudio when the stream ends on its own
        self.retired = False  # closed on purpose (reopened with more channels), not failed
        self.stream = None

    def callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread: copy, count, return
        subs = self.subs
        overflow = bool(status.input_overflow)
        for sub in subs:
            if overflow:
                sub.input_overflows += 1
            sub.ring.write(indata[:, sub.channel])


class MicSubscription:
    """One source's view of a shared input stream: its channel, its ring buffer, its health."""

    def __init__(self, channel: int, ring: _Ring, shared: _SharedStream):
        self.channel = channel
        self.ring = ring
        self.shared = shared
        self.input_overflows = 0
        self.discontinuities = 0  # bumped when the stream was reopened under this subscriber

    @property
    def rate(self) -> int:
        return self.shared.rate

    @property
    def device_name(self) -> str:
        return str(self.shared.info["name"])

    @property
    def failed(self) -> bool:
        shared = self.shared
        return shared.finished.is_set() and not shared.retired


class PortAudioHost:
    """PortAudio state shared by all mic sources of one process.

    * One stream per (device, sample rate), shared by every source that listens
      to it, each taking its own channel (see :class:`_SharedStream`).
    * PortAudio lists devices once, at initialization, so a USB microphone that
      was absent at start (or came back under another card number) can only be
      found after re-initializing it -- which also kills every open stream
      (sounddevice issues #125, #382). :meth:`rescan` re-initializes at once when
      no stream is open; with streams open, only when a child process sees a new
      input (or on escalation), and then it reopens those streams itself.
    * PortAudio calls are serialized, so a rescan never races an open.
    """

    def __init__(self, block_seconds: float = 0.1, ring_seconds: float = 10.0) -> None:
        self.block_seconds = block_seconds
        self.ring_seconds = ring_seconds
        self._lock = threading.Lock()
        self._streams: dict[tuple[int, int], _SharedStream] = {}  # live streams new subscribers join
        self._open: set[_SharedStream] = set()  # every stream not closed yet (live or failed)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._open)

    def attach(self, device: int | str, channel: int, samplerate: int | None = None) -> MicSubscription:
        """Subscribe to ``channel`` of ``device``, opening (or widening) the shared stream as needed.

        Raises :class:`DeviceError`, ``sounddevice.PortAudioError`` or ``ValueError``
        (an unsupported setting) when the device cannot be opened.
        """
        with self._lock:
            info = resolve_input_device(device, channel)
            rate = int(samplerate or round(info["default_samplerate"]))
            key = (int(info["index"]), rate)
            shared = self._streams.get(key)
            if shared is not None and shared.finished.is_set():
                del self._streams[key]  # failed; its subscribers detach from it on their own
                shared = None
            if shared is None:
                shared = self._open_stream(info, rate, channel + 1)
                self._streams[key] = shared
            elif channel >= shared.channels:
                shared = self._widen(key, shared, channel + 1)
            sub = MicSubscription(channel, _Ring(int(rate * self.ring_seconds)), shared)
            shared.subs = shared.subs + (sub,)
            return sub

    def detach(self, sub: MicSubscription) -> None:
        """End a subscription; the stream closes with its last subscriber."""
        with self._lock:
            shared = sub.shared
            shared.subs = tuple(s for s in shared.subs if s is not sub)
            if not shared.subs:
                key = (int(shared.info["index"]), shared.rate)
                if self._streams.get(key) is shared:
                    del self._streams[key]
                self._close_stream(shared)

    def rescan(self, force: bool = False) -> bool:
        """Re-read PortAudio's device list; True when it did.

        With no stream open this is cheap and always done. With streams open it
        costs every open stream a short gap, so it is done only when a probe in a
        child process (a fresh PortAudio, which sees the devices present now)
        lists an input this process does not know, or when ``force``d.
        """
        sd = _sounddevice()
        with self._lock:
            if not self._open:
                sd._terminate()  # what the sounddevice maintainer recommends to refresh the list (issue #125)
                sd._initialize()
                return True
        # Probed without the lock: a child process takes a while, and other sources must not wait for it.
        if not force and not self._list_is_stale():
            return False
        with self._lock:
            self._refresh_open_streams(sd)
        return True

    def _list_is_stale(self) -> bool:
        now = probe_input_names()
        if now is None:
            return False
        with self._lock:
            known = _input_names()
        return bool(set(now) - set(known))

    # -- with the lock held ----------------------------------------------------------
    def _refresh_open_streams(self, sd) -> None:
        """Close every stream, re-initialize PortAudio, reopen each live stream and move its subscribers over."""
        live = list(self._streams.values())
        for shared in live:
            shared.retired = True
        for shared in list(self._open):
            self._close_stream(shared)
        self._streams.clear()
        sd._terminate()
        sd._initialize()
        reopened = 0
        for old in live:
            try:
                info = resolve_input_device(str(old.info["name"]), old.channels - 1)
                new = self._open_stream(info, old.rate, old.channels)
            except Exception as exc:  # gone meanwhile: its subscribers see the failure and retry on their own
                log.warning("audio input %r could not be reopened after the device list refresh: %s",
                            old.info["name"], exc)
                old.retired = False
                old.finished.set()
                continue
            self._move_subscribers(old, new)
            self._streams[(int(info["index"]), new.rate)] = new
            reopened += 1
        log.info("audio device list refreshed with %d stream(s) open (%d reopened): %s",
                 len(live), reopened, "; ".join(_input_names()) or "no input devices")

    def _open_stream(self, info: dict, rate: int, channels: int) -> _SharedStream:
        sd = _sounddevice()
        shared = _SharedStream(info, rate, channels)
        stream = sd.InputStream(
            device=int(info["index"]),
            channels=channels,
            samplerate=rate,
            dtype="float32",
            blocksize=max(1, int(rate * self.block_seconds)),
            # High latency: larger driver buffers, fewer overflows; a monitor does not need low latency.
            latency="high",
            callback=shared.callback,
            finished_callback=shared.finished.set,
        )
        shared.stream = stream
        self._open.add(shared)
        try:
            stream.start()
        except Exception:
            self._close_stream(shared)
            raise
        log.info("audio input %r (index %d) open: %d channel(s) at %d Hz", info["name"], int(info["index"]),
                 channels, rate)
        return shared

    def _widen(self, key: tuple[int, int], old: _SharedStream, channels: int) -> _SharedStream:
        """Reopen ``old`` with more channels and move its subscribers over (a raw device opens only once)."""
        old.retired = True
        self._close_stream(old)
        try:
            new = self._open_stream(old.info, old.rate, channels)
        except Exception:
            old.retired = False  # its subscribers now see the failure and reopen on their own
            del self._streams[key]
            raise
        self._move_subscribers(old, new)
        self._streams[key] = new
        return new

    @staticmethod
    def _move_subscribers(old: _SharedStream, new: _SharedStream) -> None:
        new.subs = old.subs
        for sub in old.subs:
            sub.discontinuities += 1
            sub.shared = new
        old.subs = ()

    def _close_stream(self, shared: _SharedStream) -> None:
        if shared not in self._open:
            return
        self._open.discard(shared)
        stream = shared.stream
        try:
            stream.abort()
        except Exception:  # a stream whose device vanished may refuse to stop; closing still frees it
            pass
        try:
            stream.close()
        except Exception as exc:
            log.debug("closing a failed stream: %s", exc)


class MicSource(ClipSource):
    """Clips from a PortAudio input device, resampled from its native rate to 16 kHz."""

    def __init__(
        self,
        name: str,
        device: int | str,
        clip_seconds: float,
        hop_seconds: float | None = None,
        channel: int = 0,
        samplerate: int | None = None,
        queue_clips: int = 4,
        host: PortAudioHost | None = None,
        stall_timeout_s: float = 5.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 30.0,
    ):
        super().__init__(name, clip_seconds, hop_seconds, queue_clips)
        self.device = device
        self.channel = channel
        self.requested_rate = samplerate
        # One host per process: a private one is only right when this is the process's only mic.
        self.host = host or PortAudioHost()
        self.stall_timeout_s = stall_timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.rate: int | None = None  # the rate the stream actually runs at
        self.device_name: str | None = None

    def _run(self) -> None:
        backoff = self.retry_min_s
        failed_opens = 0
        while not self._stop.is_set():
            self._beat()
            try:
                sub = self.host.attach(self.device, self.channel, self.requested_rate)
            except Exception as exc:  # DeviceError, sounddevice.PortAudioError, ValueError for an unsupported rate
                failed_opens += 1
                self._fail("open", f"cannot open input device {self.device!r}: {exc}; retrying in {backoff:g} s")
            else:
                failed_opens = 0
                if self._capture_until_failure(sub) is None:
                    return
                backoff = self.retry_min_s
            if self._pause(backoff):
                return
            backoff = min(self.retry_max_s, backoff * 2)
            # A device that vanished and came back (USB) may only be found after a rescan.
            self.host.rescan(force=self._escalate(failed_opens))

    def _escalate(self, failed_opens: int) -> bool:
        """Every few failed opens in a row, refresh the device list even if the probe sees nothing new.

        A re-plugged device can keep its name while the handle PortAudio holds for
        it went stale; only a refresh (a short gap for the other microphones) cures that.
        """
        if failed_opens == 0 or failed_opens % ESCALATE_AFTER_FAILED_OPENS:
            return False
        log.error("source %s: %d attempts in a row could not open %r; refreshing the audio device list",
                  self.name, failed_opens, self.device)
        return True

    def _capture_until_failure(self, sub: MicSubscription) -> str | None:
        self.rate = sub.rate
        self.device_name = sub.device_name
        log.info("source %s: capturing from %r channel %d at %d Hz", self.name, self.device_name,
                 self.channel, self.rate)
        try:
            reason = self._capture(sub)
            if reason is not None:
                # Reported before the stream is closed: closing a stream whose device is gone
                # can hang in the driver (PortAudio issue 1037), and the failure must show anyway.
                self.reopens += 1
                self._fail("stream", f"input device {self.device_name!r} failed: {reason}; reopening")
        finally:
            self.host.detach(sub)
        return reason

    def _capture(self, sub: MicSubscription) -> str | None:
        """Cut clips until stopped (None) or until the stream fails (the reason)."""
        ring = sub.ring
        rate = sub.rate
        clip_n = int(round(self.clip_seconds * rate))
        out_n = int(round(self.clip_seconds * SAMPLE_RATE))
        cutter = ClipCutter(clip_n, max(1, int(round(self.hop_seconds * rate))))
        last_audio = time.monotonic()
        seen_overflows = sub.input_overflows
        seen_gaps = sub.discontinuities
        poll = min(0.05, self.host.block_seconds / 2)
        while not self._stop.wait(poll):
            self._beat()
            if sub.failed:
                return "the stream stopped (device unplugged or driver error)"
            x, end_index, lost = ring.read()
            if lost:
                self.overruns += 1
                cutter.reset()
                self._throttle.log(log, logging.WARNING, "overrun",
                                   "source %s: ring buffer overrun, %d samples lost (the system is overloaded)",
                                   self.name, lost)
            if sub.input_overflows != seen_overflows:
                self.input_overflows += sub.input_overflows - seen_overflows
                seen_overflows = sub.input_overflows
                # The driver lost samples: the partial clip is not continuous audio.
                cutter.reset()
                self._throttle.log(log, logging.WARNING, "overflow",
                                   "source %s: input overflow reported by the device (%d so far)",
                                   self.name, self.input_overflows)
            if sub.discontinuities != seen_gaps:
                seen_gaps = sub.discontinuities
                cutter.reset()  # the shared stream was reopened: a short gap in the audio
            now = time.monotonic()
            if x.size == 0:
                if now - last_audio > self.stall_timeout_s:
                    return f"no audio from the device for {self.stall_timeout_s:g} s"
                continue
            last_audio = now
            if self._state != "ok":
                if self._state == "failing":
                    log.info("source %s: audio is flowing again", self.name)
                self._state = "ok"
            mark_written, mark_wall, mark_mono = ring.mark
            for native, clip_end in cutter.feed(x, end_index):
                behind = max(0, mark_written - clip_end) / rate
                samples = _fit_length(resample(native, rate, SAMPLE_RATE), out_n)
                clip = Clip(
                    samples=samples,
                    end_time=datetime.fromtimestamp(mark_wall - behind, timezone.utc),
                    dbfs=dbfs(samples),
                    ready_monotonic=mark_mono - behind,
                    origin=str(self.device_name),
                )
                self._emit(clip, wait=False)
        return None


# --- files --------------------------------------------------------------------------


class FileSource(ClipSource):
    """Replays audio files through the clip path.

    Rules, chosen so a replay scores what a microphone would have delivered:

    * Files are taken in sorted order (a folder is searched recursively; a glob
      is expanded) and re-listed on every loop pass, so files added to a folder
      are picked up.
    * Each file is cut on its own: clips never straddle two recordings, and a
      tail shorter than a clip is not scored.
    * A file is streamed in blocks of :attr:`block_frames` frames, never read
      whole, so a recording of many hours replays in the memory of a few blocks.
      Clips are cut at the file's own rate and each clip is resampled to 16 kHz,
      exactly as the microphone path does (a rate change is logged once per file).
    * A multi-channel file contributes channel ``channel`` (logged once per file).
    * A bad file (unreadable, empty, too short for one clip, no such channel) is
      logged with its name and skipped; the rest carry on. A block of NaN or
      infinite samples (or unreadable data) ends its file there: the clips before
      it were scored, the rest of the file is skipped and the file is named.
    * A clip's timestamp is the start of its file on a replay timeline plus the
      offset of the clip's end in the file. A file starts at the later of "now"
      and the end of the previous file on that timeline, so timestamps always
      increase: in real time they are the wall-clock times the clips became
      available, as for a microphone; as fast as possible they continue the
      timeline as if the files had been played back to back in real time (and
      so may run ahead of the clock). File modification times are not used:
      copying recordings changes them.
    * With a :class:`~edge_asd.daemon.fileprogress.FileProgress`, a restarted source skips
      the files up to the last one whose final clip (``Clip.completes``) the
      scorer reported done with :meth:`file_finished`.
    * ``realtime=True`` paces clips at the file's duration and drops the oldest
      queued clip when scoring falls behind (exactly like a microphone);
      ``realtime=False`` waits for the scorer, so every clip is scored.
    """

    # 64 Ki frames: 4 s at 16 kHz, 1.4 s at 48 kHz; a few MB even for many channels.
    block_frames = 65536

    def __init__(
        self,
        name: str,
        target: str | Path,
        clip_seconds: float,
        hop_seconds: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        channel: int = 0,
        queue_clips: int = 4,
        empty_retry_s: float = 5.0,
        progress: "FileProgress | None" = None,
    ):
        super().__init__(name, clip_seconds, hop_seconds, queue_clips)
        self.target = str(target)
        self.progress = progress
        self.realtime = realtime
        self.loop = loop
        self.channel = channel
        self.empty_retry_s = empty_retry_s
        self.files_played = 0
        self._noted: set[tuple[str, str]] = set()
        self._timeline_end: datetime | None = None  # end of the last file on the replay timeline

    def _note(self, path: Path, kind: str, level: int, msg: str, *args: Any) -> None:
        """Log a per-file message once, not on every loop pass."""
        if (str(path), kind) in self._noted:
            return
        self._noted.add((str(path), kind))
        log.log(level, msg, *args)

    def _forget_gone(self, paths: list[Path]) -> None:
        """Drop the once-only notes of files no longer listed: a folder that files pass through must not grow them."""
        listed = {str(p) for p in paths}
        self._noted = {k for k in self._noted if k[0] in listed}

    def open_file(self, path: Path) -> sf.SoundFile:
        """An open file that can give at least one clip, per the class rules; :class:`AudioError` when it cannot."""
        try:
            f = open_audio(path)
        except AudioError:
            if not path.exists():
                raise AudioError(f"{path}: no such file (it disappeared)") from None
            raise
        try:
            self._check(path, f)
        except AudioError:
            f.close()
            raise
        return f

    def _check(self, path: Path, f: sf.SoundFile) -> None:
        if f.frames == 0:
            raise AudioError(f"{path}: contains no samples")
        if f.channels > 1:
            if self.channel >= f.channels:
                raise AudioError(f"{path}: has {f.channels} channels; channel {self.channel} does not exist")
            self._note(path, "channel", logging.INFO, "source %s: %s has %d channels; using channel %d",
                       self.name, path, f.channels, self.channel)
        elif self.channel > 0:
            self._note(path, "channel", logging.INFO, "source %s: %s is mono; using its only channel",
                       self.name, path)
        if f.frames < int(round(self.clip_seconds * f.samplerate)):
            raise AudioError(
                f"{path}: {f.frames / f.samplerate:.2f} s long, shorter than one {self.clip_seconds:g} s clip"
            )
        if f.samplerate != SAMPLE_RATE:
            self._note(path, "rate", logging.INFO, "source %s: %s is %d Hz; resampling to %d Hz",
                       self.name, path, f.samplerate, SAMPLE_RATE)

    def _run(self) -> None:
        # A restarted source continues after the last file it finished (the first pass only).
        resume_after = self.progress.last(self.name, self.target) if self.progress is not None else None
        while not self._stop.is_set():
            played = 0
            paths = list_source_files(self.target)
            self._forget_gone(paths)
            for path in paths:
                if self._stop.is_set():
                    return
                if resume_after is not None and path <= Path(resume_after):
                    played += 1  # done before the restart: not an empty folder
                    continue
                clips_before = self.clips
                try:
                    with self.open_file(path) as f:
                        if not self._replay(path, f):
                            return
                except AudioError as exc:
                    self.bad_files += 1
                    self._last_error = str(exc)
                    scored = self.clips - clips_before
                    if scored:
                        self._note(path, "bad", logging.ERROR,
                                   "source %s: skipping the rest of the file after %d clip(s): %s", self.name, scored, exc)
                        played += 1
                    else:
                        self._note(path, "bad", logging.ERROR, "source %s: skipping %s", self.name, exc)
                    continue
                played += 1
                self.files_played += 1
            resume_after = None
            if not self.loop:
                return
            if played == 0:
                self._fail("empty", f"{self.target}: no playable audio files; looking again in {self.empty_retry_s:g} s")
                if self._stop.wait(self.empty_retry_s):
                    return

    def _blocks(self, path: Path, f: sf.SoundFile):
        """``(mono block, frames read so far)`` of the selected channel; :class:`AudioError` at the first bad block."""
        ch = self.channel if f.channels > 1 else 0
        done = 0
        while True:
            try:
                block = f.read(self.block_frames, dtype="float32", always_2d=True)
            except Exception as exc:  # a decoder error in the middle of a damaged file
                raise AudioError(f"{path}: unreadable audio data at {done / f.samplerate:.2f} s ({short_error(exc)})") from None
            if block.shape[0] == 0 or self._stop.is_set():
                return
            x = block[:, ch]
            if not np.all(np.isfinite(x)):
                at = done + int(np.argmin(np.isfinite(x)))
                raise AudioError(f"{path}: contains NaN or infinite samples (first at {at / f.samplerate:.2f} s)")
            done += x.size
            yield x, done

    def cut_clips(self, path: Path, f: sf.SoundFile) -> Iterator[tuple[np.ndarray, float, bool]]:
        """``(clip at 16 kHz, offset of its end in s, whether no further clip fits the file)`` of an open file.

        Streamed block by block (the class rules); :class:`AudioError` at the first bad block.
        ``edge-asd score`` replays recordings through this too, so both cut alike.
        """
        rate = f.samplerate
        hop_n = max(1, int(round(self.hop_seconds * rate)))
        cutter = ClipCutter(int(round(self.clip_seconds * rate)), hop_n)
        out_n = int(round(self.clip_seconds * SAMPLE_RATE))
        for x, end_index in self._blocks(path, f):
            for native, end in cutter.feed(x, end_index):
                yield _fit_length(resample(native, rate, SAMPLE_RATE), out_n), end / rate, end + hop_n > f.frames

    def file_finished(self, path: Path) -> None:
        """Every clip of ``path`` was scored (the daemon's scorer says so): a restart continues after it."""
        if self.progress is not None:
            self.progress.record(self.name, self.target, path)

    def _replay(self, path: Path, f: sf.SoundFile) -> bool:
        """Queue one file's clips, streaming it; False when stopped midway."""
        if self._state != "ok":
            self._state = "ok"
        duration = f.frames / f.samplerate
        start_wall = datetime.now(timezone.utc)
        if self._timeline_end is not None and self._timeline_end > start_wall:
            start_wall = self._timeline_end
        self._timeline_end = start_wall + timedelta(seconds=duration)
        start_mono = time.monotonic()
        for samples, offset, last in self.cut_clips(path, f):
            if self.realtime and self._stop.wait(max(0.0, start_mono + offset - time.monotonic())):
                return False
            clip = Clip(
                samples=samples,
                end_time=start_wall + timedelta(seconds=offset),
                dbfs=dbfs(samples),
                ready_monotonic=time.monotonic(),
                origin=f"{path}@{offset - self.clip_seconds:.3f}s",
                completes=path if last else None,
            )
            if not self._emit(clip, wait=not self.realtime):
                return False
        if self._stop.is_set():
            return False
        if self.realtime:
            # The next file starts when this one would have finished playing.
            return not self._stop.wait(max(0.0, start_mono + duration - time.monotonic()))
        return True


def make_source(
    name: str,
    spec: Any,
    clip_seconds: float,
    hop_seconds: float | None,
    *,
    realtime: bool = True,
    loop: bool = False,
    channel: int = 0,
    samplerate: int | None = None,
    queue_clips: int = 4,
    host: PortAudioHost | None = None,
    progress: "FileProgress | None" = None,
) -> ClipSource:
    """The source a :class:`~edge_asd.daemon.config.SourceSpec` names (not started)."""
    if spec.kind == "mic":
        return MicSource(name, spec.device, clip_seconds, hop_seconds, channel=channel, samplerate=samplerate,
                         queue_clips=queue_clips, host=host)
    if spec.kind == "file":
        return FileSource(name, spec.target, clip_seconds, hop_seconds, realtime=realtime, loop=loop,
                          channel=channel, queue_clips=queue_clips, progress=progress)
    raise ValueError(f"unknown source kind {spec.kind!r}")


__all__ = [
    "Clip",
    "ClipCutter",
    "ClipQueue",
    "ClipSource",
    "DeviceError",
    "FileSource",
    "MicSource",
    "MicSubscription",
    "PortAudioHost",
    "SourceHealth",
    "make_source",
    "resolve_input_device",
]
