"""``edge-asd record``: a microphone's sound into data-set clips, where the microphone already is.

The stream is cut by the same :class:`~edge_asd.io.windows.WindowCutter` as an imported
recording and written by the same :class:`~edge_asd.io.clipset.ClipWriter` (numbering,
import.csv), so a recorded clip is skipped, named and traced exactly as an imported one.
The microphone is opened through the daemon's :class:`PortAudioHost`, so ``--mic`` takes
what a ``mic:`` source takes (``default``, an index, a name or part of one).

Each clip is written as soon as its window is complete; a stop (Ctrl-C) ends the
recording between two reads of the stream, so every finished clip is kept whole with
its provenance row and only the unfinished window is dropped.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from edge_asd.daemon.sources.devices import DeviceError, MicSubscription, PortAudioHost, resolve_input_device
from edge_asd.errors import UserError
from edge_asd.io.audio import dbfs
from edge_asd.io.clipset import ClipWriter, ImportOptions, RecordingImport, Tally
from edge_asd.io.windows import CLIP_RUN, FULL_SCALE_DEFAULT, WindowCutter, in_runs
from edge_asd.progress import Progress

# How often the stream is read (and the meter refreshed): well inside the ring's 10 s.
POLL_S = 0.1
# No audio for this long is a dead device, not a quiet one (a quiet one still delivers samples).
STALL_S = 5.0
# One clipping warning per this many seconds: the meter shows the rest.
CLIP_WARN_EVERY_S = 5.0
METER_FLOOR_DB = -60.0
METER_WIDTH = 20


@dataclass(frozen=True)
class RecordSettings:
    device: int | str
    minutes: float

    def check(self) -> None:
        if not (math.isfinite(self.minutes) and self.minutes > 0):
            raise UserError(f"--minutes {self.minutes:g}: must be a positive number of minutes")


@dataclass(frozen=True)
class RecordResult:
    clips: RecordingImport
    seconds: float  # audio captured
    stopped: bool  # ended by a stop request before --minutes


def meter(x: np.ndarray) -> str:
    """``level -23.1 dBFS  peak  -9.8 dBFS |#######      |``: RMS and peak of a block, a bar of the peak."""
    peak = float(np.max(np.abs(x), initial=0.0))
    peak_db = 20 * math.log10(peak) if peak > 1e-10 else -200.0
    filled = int(round(METER_WIDTH * min(1.0, max(0.0, 1 - peak_db / METER_FLOOR_DB))))
    return f"level {dbfs(x):6.1f} dBFS  peak {peak_db:6.1f} dBFS |{'#' * filled}{' ' * (METER_WIDTH - filled)}|"


def record(options: ImportOptions, settings: RecordSettings, stop: threading.Event, *, progress: bool = True,
           host: PortAudioHost | None = None) -> RecordResult:
    """Record ``settings.minutes`` from the microphone into the data set, or until ``stop`` is set."""
    options.check()
    settings.check()
    host = host or PortAudioHost(block_seconds=POLL_S / 2)
    try:
        resolve_input_device(settings.device, options.channel)  # a mistyped --mic before any folder is made
    except DeviceError as exc:
        raise UserError(f"--mic {settings.device!r}: {exc}") from None
    with ClipWriter(options) as writer:
        try:
            sub = host.attach(settings.device, options.channel)
        except Exception as exc:  # PortAudioError, ValueError: a device that lists but does not open
            raise UserError(f"--mic {settings.device!r}: cannot open the input device ({exc})") from None
        try:
            return _Session(writer, sub, settings, stop, progress).run()
        finally:
            host.detach(sub)


class _Session:
    """One recording: the stream read every POLL_S, cut, metered and written until done or stopped."""

    def __init__(self, writer: ClipWriter, sub: MicSubscription, settings: RecordSettings, stop: threading.Event,
                 progress: bool):
        self.writer, self.sub, self.stop = writer, sub, stop
        self.options = writer.options
        self.rate = sub.rate
        self.source = f"mic:{sub.device_name}"
        self.total = int(round(settings.minutes * 60 * self.rate))
        self.received = 0  # samples of the stream so far, lost ones included: times stay the wall's
        self.tally = Tally()
        self.bar = Progress(int(math.ceil(round(self.total / self.rate, 3))), f"recording {sub.device_name}", enabled=progress,
                            unit="s")
        self.cutter, self.cutter_start = self._new_cutter(), 0.0
        self._last_clip_warning = -math.inf

    def run(self) -> RecordResult:
        seen_overflows = self.sub.input_overflows
        last_audio = time.monotonic()
        try:
            stopped = False
            while self.received < self.total and not stopped:
                # A stop still reads what the stream delivered up to it: that may finish a clip.
                stopped = self.stop.wait(POLL_S)
                if self.sub.failed:
                    self._fail("the stream stopped (device unplugged or driver error)")
                x, _, lost = self.sub.ring.read()
                if lost or self.sub.input_overflows != seen_overflows:
                    seen_overflows = self.sub.input_overflows
                    self.received += lost
                    self._gap(lost)
                now = time.monotonic()
                if x.size == 0:
                    if now - last_audio > STALL_S:
                        self._fail(f"no audio from the device for {STALL_S:g} s")
                    continue
                last_audio = now
                self._take(x[: self.total - self.received])
            self._flush()
        finally:
            self.bar.close()
        return RecordResult(self.tally.result(self.source, self.options), self.received / self.rate,
                            self.received < self.total)

    def _take(self, x: np.ndarray) -> None:
        self.received += x.size
        self.bar.set_status(f"{meter(x)}  {len(self.tally.clips)} clips")
        self.bar.advance_to(round(self.received / self.rate, 1))
        if in_runs(np.abs(x) >= FULL_SCALE_DEFAULT, CLIP_RUN):
            at = self.received / self.rate
            if at - self._last_clip_warning >= CLIP_WARN_EVERY_S:
                self._last_clip_warning = at
                self.bar.note(f"warning: clipping at {at:.1f} s: lower the input gain "
                              "(windows that clip are skipped, not recorded)")
        for w in self.cutter.feed(x):
            self.writer.take(w, self.source, self.tally, self.cutter_start)

    def _flush(self) -> None:
        """The windows the current cutter still holds; its unfinished window counts as short."""
        for w in self.cutter.finish():
            self.writer.take(w, self.source, self.tally, self.cutter_start)
        self.tally.short += self.cutter.short

    def _gap(self, lost: int) -> None:
        """Samples were lost: the window in progress is no continuous audio, so cutting starts afresh."""
        self.bar.note(f"warning: {lost} samples lost at {self.received / self.rate:.1f} s (the system is overloaded "
                      "or the device overflowed); the clip in progress is dropped")
        self._flush()
        self.cutter, self.cutter_start = self._new_cutter(), self.received / self.rate

    def _new_cutter(self) -> WindowCutter:
        return WindowCutter(self.rate, self.options.clip_seconds, self.options.hop, FULL_SCALE_DEFAULT)

    def _fail(self, reason: str) -> None:
        self._flush()
        n = len(self.tally.clips)
        raise UserError(f"--mic {self.sub.device_name!r}: {reason} after {self.received / self.rate:.1f} s; "
                        f"the {n} clip{'' if n == 1 else 's'} before it were kept")
