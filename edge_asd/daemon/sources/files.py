"""``file:`` sources: recordings replayed through the clip path, as a microphone would deliver them."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import soundfile as sf

from edge_asd.daemon.sources.base import ClipSource
from edge_asd.daemon.sources.clip import Clip
from edge_asd.errors import AudioError
from edge_asd.io.audio import dbfs
from edge_asd.io.files import list_source_files
from edge_asd.io.recording import BLOCK_FRAMES, RecordingClips

from edge_asd.daemon.fileprogress import ReplayPosition, position_key

if TYPE_CHECKING:
    from edge_asd.daemon.fileprogress import FileProgress

log = logging.getLogger("edge_asd.sources")  # the name journals show, kept from before the subpackages


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
      offset of the clip's end in the file (its place in the recording). A file
      starts at the later of "now" and the end of the previous file on that
      timeline, so timestamps always increase: in real time they are the
      wall-clock times the clips became available, as for a microphone; as fast
      as possible they continue the timeline as if the files had been played
      back to back in real time (and so may run ahead of the clock, by the audio
      replayed faster than real time). File modification times are not used:
      copying recordings changes them.
    * Every clip carries its replay position (``Clip.position``), which the
      scorer journals with the clip's message. With a
      :class:`~edge_asd.daemon.fileprogress.FileProgress`, a restarted source
      continues with the first clip after the last one journaled, and its
      timeline continues from that clip's timestamp: no clip is scored twice and
      no timestamp jumps back across a restart.
    * ``realtime=True`` paces clips at the file's duration and drops the oldest
      queued clip when scoring falls behind (exactly like a microphone);
      ``realtime=False`` waits for the scorer, so every clip is scored.
    """

    block_frames = BLOCK_FRAMES

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
        # The checks and the cutting ``edge-asd score`` shares; stopping the source stops it at the next block.
        self.recordings = RecordingClips(name, self.clip_seconds, self.hop_seconds, channel, self.block_frames,
                                         self._stop)
        self._timeline_end: datetime | None = None  # end of the last file on the replay timeline

    def _run(self) -> None:
        # A restarted source continues after the last clip journaled (the first pass only).
        resume = self.progress.resume(self.name, self.target) if self.progress is not None else None
        if resume is not None and resume.end_time is not None:
            self._timeline_end = resume.end_time
        while not self._stop.is_set():
            played = 0
            paths = list_source_files(self.target)
            self.recordings.forget_gone(paths)
            for path in paths:
                if self._stop.is_set():
                    return
                skip_until = 0.0
                if resume is not None and (path < resume.file or (path == resume.file and resume.offset_s is None)):
                    played += 1  # done before the restart: not an empty folder
                    continue
                if resume is not None and path == resume.file:
                    skip_until = float(resume.offset_s or 0.0)
                clips_before = self.clips
                try:
                    with self.recordings.open_file(path) as f:
                        if not self._replay(path, f, skip_until):
                            return
                except AudioError as exc:
                    self.bad_files += 1
                    self._last_error = str(exc)
                    scored = self.clips - clips_before
                    if scored:
                        self.recordings.note(path, "bad", logging.ERROR,
                                             "source %s: skipping the rest of the file after %d clip(s): %s", self.name, scored, exc)
                        played += 1
                    else:
                        self.recordings.note(path, "bad", logging.ERROR, "source %s: skipping %s", self.name, exc)
                    continue
                played += 1
                self.files_played += 1
            resume = None
            if not self.loop:
                return
            if played == 0:
                self._fail("empty", f"{self.target}: no playable audio files; looking again in {self.empty_retry_s:g} s")
                if self._stop.wait(self.empty_retry_s):
                    return

    def _replay(self, path: Path, f: sf.SoundFile, skip_until: float = 0.0) -> bool:
        """Queue one file's clips ending after ``skip_until`` s (those before were journaled), streaming it;
        False when stopped midway."""
        if self._state != "ok":
            self._state = "ok"
        duration = f.frames / f.samplerate
        start_wall = datetime.now(timezone.utc)
        if self._timeline_end is not None and self._timeline_end > start_wall:
            start_wall = self._timeline_end
        # A file resumed midway is placed so that its journaled part ends where the timeline stands.
        start_wall -= timedelta(seconds=skip_until)
        self._timeline_end = start_wall + timedelta(seconds=duration)
        start_mono = time.monotonic() - skip_until
        key = position_key(self.name, self.target)
        for samples, offset, last in self.recordings.cut_clips(path, f):
            if offset <= skip_until + 1e-6:
                continue
            if self.realtime and self._stop.wait(max(0.0, start_mono + offset - time.monotonic())):
                return False
            end_time = start_wall + timedelta(seconds=offset)
            clip = Clip(
                samples=samples,
                end_time=end_time,
                dbfs=dbfs(samples),
                ready_monotonic=time.monotonic(),
                origin=f"{path}@{offset - self.clip_seconds:.3f}s",
                position=(key, ReplayPosition(path, None if last else offset, end_time).encode()),
            )
            if not self._emit(clip, wait=not self.realtime):
                return False
        if self._stop.is_set():
            return False
        if self.realtime:
            # The next file starts when this one would have finished playing.
            return not self._stop.wait(max(0.0, start_mono + duration - time.monotonic()))
        return True
