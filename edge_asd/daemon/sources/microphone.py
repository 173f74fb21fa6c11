"""``mic:`` sources: clips from a PortAudio input device, resampled from its native rate to 16 kHz."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from edge_asd.daemon.sources.base import ClipSource
from edge_asd.daemon.sources.clip import Clip
from edge_asd.daemon.sources.devices import MicSubscription, PortAudioHost
from edge_asd.io.audio import SAMPLE_RATE, dbfs, resample
from edge_asd.io.recording import ClipCutter, fit_length

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages

# Failed opens in a row after which a source forces a device list refresh (with backoff, about half a
# minute after the first failure, then every few minutes).
ESCALATE_AFTER_FAILED_OPENS = 5


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
                # The failure is over: its text must not be reported for a later one (failure_detail).
                self._last_error = None
            mark_written, mark_wall, mark_mono = ring.mark
            for native, clip_end in cutter.feed(x, end_index):
                behind = max(0, mark_written - clip_end) / rate
                samples = fit_length(resample(native, rate, SAMPLE_RATE), out_n)
                clip = Clip(
                    samples=samples,
                    end_time=datetime.fromtimestamp(mark_wall - behind, timezone.utc),
                    dbfs=dbfs(samples),
                    ready_monotonic=mark_mono - behind,
                    origin=str(self.device_name),
                )
                self._emit(clip, wait=False)
        return None
