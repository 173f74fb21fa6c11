"""Audio sources for the daemon: clips of float32 mono 16 kHz audio on a bounded queue.

Two sources share one clip path (:class:`ClipCutter`, in ``edge_asd/io/recording.py``, -> :class:`ClipQueue`,
in ``clip.py``):

* :class:`MicSource` (``microphone.py``) reads a PortAudio input device
  (``devices.py``: a sounddevice callback stream shared by the sources on the
  channels of one device). The callback only copies samples into a lock-free
  ring buffer per source (``ring.py``); a separate thread cuts clips at the
  device's native rate, resamples each clip to 16 kHz
  (:func:`edge_asd.io.audio.resample`, anti-aliased) and queues it. A device that
  fails or stops delivering audio is reported and reopened with backoff.
* :class:`FileSource` (``files.py``) replays recordings (``file:<path, folder or
  glob>``) through the same cutting, in real time or as fast as the scorer takes
  them, once or in a loop, so thresholds can be tuned on recordings through the
  live pipeline.

Nothing is dropped silently: input overflows, ring-buffer overruns, clips
dropped from a full queue and bad files are counted in :class:`SourceHealth`
(``base.py``) and logged (rate-limited). Every module logs as ``edge_asd.sources``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_asd.daemon.sources.base import ClipSource, SourceHealth
from edge_asd.daemon.sources.clip import Clip, ClipQueue
from edge_asd.daemon.sources.devices import (
    DeviceError,
    MicSubscription,
    PortAudioHost,
    check_mic_devices,
    resolve_input_device,
)
from edge_asd.daemon.sources.files import FileSource
from edge_asd.daemon.sources.microphone import MicSource
from edge_asd.io.recording import ClipCutter

if TYPE_CHECKING:
    from edge_asd.daemon.config import MachineConfig
    from edge_asd.daemon.fileprogress import FileProgress


def make_source(
    machine: MachineConfig,
    clip_seconds: float,
    hop_seconds: float | None,
    *,
    host: PortAudioHost | None = None,
    progress: FileProgress | None = None,
) -> ClipSource:
    """The source ``machine`` names (not started), cutting clips of the length its bundle takes."""
    spec = machine.source
    if spec.kind == "mic":
        return MicSource(machine.id, spec.device, clip_seconds, hop_seconds, channel=machine.channel,
                         samplerate=machine.samplerate, queue_clips=machine.queue_clips, host=host)
    if spec.kind == "file":
        return FileSource(machine.id, spec.target, clip_seconds, hop_seconds, realtime=machine.realtime,
                          loop=machine.loop, channel=machine.channel, queue_clips=machine.queue_clips,
                          progress=progress)
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
    "check_mic_devices",
    "make_source",
    "resolve_input_device",
]
