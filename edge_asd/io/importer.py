"""``edge-asd import``: a user's own recordings made into DCASE clips that training reads.

A recording of any name, length, rate, channel count and format soundfile reads is
streamed block by block (an hour takes the memory of a few blocks) through a
:class:`~edge_asd.io.windows.WindowCutter`, and every usable window becomes a 16-bit WAV
clip written by the data set's one :class:`~edge_asd.io.clipset.ClipWriter` (numbering,
``DATA/<machine>/import.csv``), as ``edge-asd record`` writes what a microphone hears.

Every recording is opened and checked before the first clip is written, so a refused
import changes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import soundfile as sf

from edge_asd.errors import AudioError
from edge_asd.io.audio import channel_blocks, open_audio
from edge_asd.io.clipset import ClipWriter, ImportOptions, RecordingImport, Tally
from edge_asd.io.files import expand_paths
from edge_asd.io.windows import FULL_SCALE, FULL_SCALE_DEFAULT, WindowCutter
from edge_asd.progress import Progress

__all__ = ["ImportOptions", "RecordingImport", "import_recordings", "open_recording"]

# The daemon's file: sources read the same 64 Ki frames at a time: 1.4 s at 48 kHz,
# a few MB even for many channels.
BLOCK_FRAMES = 65536
# Below a minute an import takes about a second: a progress bar would only flicker.
PROGRESS_MIN_SECONDS = 60.0


def import_recordings(
    paths: list[Path],
    options: ImportOptions,
    *,
    progress: bool = False,
    on_recording: Callable[[RecordingImport], None] | None = None,
    block_frames: int = BLOCK_FRAMES,
) -> list[RecordingImport]:
    """Import recordings (files, or folders of .wav and .flac) into the data set, in the order given.

    Everything is checked first (:class:`UserError` naming the file or option; nothing
    written). A recording that turns out damaged midway stops the import with an
    :class:`AudioError`; the clips written before it stay, each with its provenance row.
    """
    options.check()
    recordings = expand_paths(paths)
    for path in recordings:
        with open_recording(path, options.channel):
            pass
    results = []
    with ClipWriter(options) as writer:
        for path in recordings:
            result = _import_one(path, writer, progress, block_frames)
            results.append(result)
            if on_recording is not None:
                on_recording(result)
    return results


def open_recording(path: Path, channel: int) -> sf.SoundFile:
    """An open recording that has ``channel``; :class:`AudioError` naming the file otherwise."""
    f = open_audio(path)
    if channel >= f.channels:
        n = f.channels
        f.close()
        raise AudioError(f"{path}: has {n} channel{'' if n == 1 else 's'}; --channel {channel} does not exist "
                         "(channels count from 0)")
    return f


def _import_one(path: Path, writer: ClipWriter, progress: bool, block_frames: int) -> RecordingImport:
    options = writer.options
    tally = Tally()
    recording = os.path.abspath(path)
    with open_recording(path, options.channel) as f:
        cutter = WindowCutter(f.samplerate, options.clip_seconds, options.hop,
                              FULL_SCALE.get(f.subtype, FULL_SCALE_DEFAULT))
        bar = Progress(cutter.expected_windows(f.frames), path.name,
                       enabled=progress and f.frames >= PROGRESS_MIN_SECONDS * f.samplerate)
        try:
            for block in channel_blocks(path, f, options.channel, block_frames):
                for w in cutter.feed(block):
                    bar.update()
                    writer.take(w, recording, tally)
            for w in cutter.finish():
                bar.update()
                writer.take(w, recording, tally)
        except AudioError as exc:
            if tally.clips:
                raise AudioError(f"{exc}; the {len(tally.clips)} clip(s) before it were imported") from None
            raise
        finally:
            bar.close()
    tally.short = cutter.short
    return tally.result(path, options)
