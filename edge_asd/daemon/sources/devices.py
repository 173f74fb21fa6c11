"""PortAudio: finding input devices (by index, name or ``default``), checking a configuration's
``mic:`` sources against them, and the :class:`PortAudioHost` that shares one stream per
device between the sources on its channels and re-reads the device list when devices come
and go."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from edge_asd.daemon.sources.ring import Ring
from edge_asd.errors import ConfigError

if TYPE_CHECKING:
    from edge_asd.daemon.config import DaemonConfig

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages


class DeviceError(Exception):
    """An audio input device that cannot be found or used (the message says why)."""


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


def check_mic_devices(cfg: DaemonConfig) -> None:
    """Refuse ``mic:`` sources whose device PortAudio does not list (or lacks the channel)."""
    for i, m in enumerate(cfg.machines):
        if m.source.kind != "mic":
            continue
        try:
            resolve_input_device(m.source.device, m.channel)
        except DeviceError as exc:
            raise ConfigError(f"{cfg.path}: machines[{i}].source: {exc}") from None


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

    def __init__(self, channel: int, ring: Ring, shared: _SharedStream):
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
        self._closing: set[_SharedStream] = set()  # being closed by detach(), outside the lock
        self._closing_reported = False

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
            sub = MicSubscription(channel, Ring(int(rate * self.ring_seconds)), shared)
            shared.subs = shared.subs + (sub,)
            return sub

    def detach(self, sub: MicSubscription) -> None:
        """End a subscription; the stream closes with its last subscriber.

        The stream is closed without the lock: closing one whose device is gone can
        hang in the driver (PortAudio issue 1037), and that must stall only the
        caller (whose source the daemon then reports hung), never the other
        microphones' opens and rescans.
        """
        with self._lock:
            shared = sub.shared
            shared.subs = tuple(s for s in shared.subs if s is not sub)
            if shared.subs or shared not in self._open:
                return
            key = (int(shared.info["index"]), shared.rate)
            if self._streams.get(key) is shared:
                del self._streams[key]
            self._open.discard(shared)
            self._closing.add(shared)
        try:
            _abort_and_close(shared.stream)
        finally:
            with self._lock:
                self._closing.discard(shared)
                self._closing_reported = self._closing_reported and bool(self._closing)

    def rescan(self, force: bool = False) -> bool:
        """Re-read PortAudio's device list; True when it did.

        With no stream open this is cheap and always done. With streams open it
        costs every open stream a short gap, so it is done only when a probe in a
        child process (a fresh PortAudio, which sees the devices present now)
        lists an input this process does not know, or when ``force``d.
        """
        sd = _sounddevice()
        with self._lock:
            if self._closing:
                # Re-initializing would close the stream whose close hangs in the driver, and hang
                # with the lock held: the device list waits for the restart the hang leads to.
                (log.debug if self._closing_reported else log.warning)(
                    "audio device list not refreshed: closing the stream of %s has not returned",
                    ", ".join(repr(s.info["name"]) for s in self._closing))
                self._closing_reported = True
                return False
            if not self._open:
                sd._terminate()  # what the sounddevice maintainer recommends to refresh the list (issue #125)
                sd._initialize()
                return True
        # Probed without the lock: a child process takes a while, and other sources must not wait for it.
        if not force and not self._list_is_stale():
            return False
        with self._lock:
            if self._closing:
                return False  # a close began hanging meanwhile (see above)
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
        _abort_and_close(shared.stream)


def _abort_and_close(stream) -> None:
    try:
        stream.abort()
    except Exception:  # a stream whose device vanished may refuse to stop; closing still frees it
        pass
    try:
        stream.close()
    except Exception as exc:
        log.debug("closing a failed stream: %s", exc)
