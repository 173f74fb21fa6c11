"""``edge-asd score`` on a user's own recordings: any name, any length, one row per window.

A recording is replayed exactly as the daemon's ``file:`` source would replay
it: the same :class:`~edge_asd.io.recording.RecordingClips` opens, checks, streams,
cuts and resamples it (block by block, so an hour-long file takes the memory of
a few blocks), the same :meth:`ClipScorer.score` scores each window, the same
:class:`~edge_asd.scoring.decision.ClipDecider` judges each window and turns the
decisions into the alert state that ``[alerts]`` would have raised and cleared, and
the same :class:`~edge_asd.io.evidence.EvidenceStore` keeps the audio of anomalous windows.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import soundfile as sf

from edge_asd.io.audio import dbfs
from edge_asd.ids import ID_RE
from edge_asd.scoring.alerts import CLEAR_AFTER, RAISE_AFTER, Debouncer
from edge_asd.scoring.decision import ClipDecider
from edge_asd.errors import AudioError, UserError
from edge_asd.io.evidence import EvidenceStore
from edge_asd.io.recording import RecordingClips
from edge_asd.offline.window import Window
from edge_asd.progress import Progress
from edge_asd.runtime.scorer import ClipScorer

WINDOWS_CSV = "windows.csv"
CSV_COLUMNS = ("file", "window", "start_s", "end_s", "start_time", "end_time", "score", "threshold", "anomalous",
               "p_target", "dbfs", "alert", "event", "ratio", "bands")

# 2026-11-01T10, 2026-11-01_10-30-00, 20261101T103000, ... (a date, then at least the hour)
_NAME_TIME = re.compile(
    r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})[T_ -]?(\d{2})(?:[:.-]?(\d{2}))?(?:[:.-]?(\d{2}))?(?!\d)"
)


@dataclass(frozen=True)
class ReplayOptions:
    """How recordings are cut and judged; the defaults are the daemon's for the bundle."""

    section: str
    machine: str
    clip_seconds: float
    hop_seconds: float
    threshold: float | None = None  # the daemon's per-machine override; None: the bundle's
    raise_after: int = RAISE_AFTER
    clear_after: int = CLEAR_AFTER
    start: datetime | None = None  # wall time of the first recording whose name carries none
    channel: int = 0
    evidence: Path | None = None
    evidence_max_mb: float = 200.0
    plot: bool = False
    json_lines: bool = False


@dataclass(frozen=True)
class ReplaySettings:
    """What the command line gave; None: the daemon's default for the bundle."""

    section: str | None = None
    machine: str | None = None
    clip_seconds: float | None = None
    hop_seconds: float | None = None
    threshold: float | None = None
    raise_after: int = RAISE_AFTER
    clear_after: int = CLEAR_AFTER
    start: str | None = None
    channel: int = 0
    evidence: Path | None = None
    evidence_max_mb: float = 200.0
    plot: bool = False
    json_lines: bool = False


def replay_options(scorer: ClipScorer, s: ReplaySettings) -> ReplayOptions | None:
    """Checked options, before anything is scored; None when the section is unknowable (several, none given)."""
    if s.section is not None:
        section = scorer.resolve_section(s.section)
    elif len(scorer.sections) == 1:
        section = scorer.sections[0]
    else:
        return None
    machine = s.machine or scorer.machine_type
    if not ID_RE.fullmatch(machine):
        raise UserError(f"--machine {machine!r}: letters, digits, '-' and '_' only (it names the evidence folder)")
    # The daemon's rules (load_scorers): the bundle's clip length, a hop of one clip.
    clip = s.clip_seconds if s.clip_seconds is not None else float(scorer.clip_seconds)
    if clip < float(scorer.segment_seconds):
        raise UserError(f"--clip-seconds {clip:g} is shorter than the bundle's {scorer.segment_seconds:g} s segments")
    hop = s.hop_seconds if s.hop_seconds is not None else clip
    if not hop > 0:
        raise UserError(f"--hop-seconds must be positive, got {hop:g}")
    for name, n in (("--raise-after", s.raise_after), ("--clear-after", s.clear_after)):
        if n < 1:
            raise UserError(f"{name} must be at least 1, got {n}")
    if s.channel < 0:
        raise UserError(f"--channel must be 0 or more, got {s.channel}")
    if not s.evidence_max_mb > 0:
        raise UserError(f"--evidence-max-mb must be positive, got {s.evidence_max_mb:g}")
    return ReplayOptions(
        section, machine, clip, hop, s.threshold, s.raise_after, s.clear_after,
        parse_start(s.start) if s.start is not None else None, s.channel, s.evidence, s.evidence_max_mb, s.plot,
        s.json_lines,
    )


@dataclass
class ReplayResult:
    recordings: int = 0  # with at least one window scored
    windows: int = 0
    alerts: int = 0
    evidence: int = 0
    audio_s: float = 0.0
    plots: list[Path] = field(default_factory=list)
    errors: dict[Path, str] = field(default_factory=dict)


def time_from_name(name: str) -> datetime | None:
    """The wall time a file name states (``pump_2026-11-01T10.wav``), as written: no time zone."""
    m = _NAME_TIME.search(Path(name).stem)
    if not m:
        return None
    try:
        return datetime(*(int(g) if g else 0 for g in m.groups()))  # type: ignore[misc]
    except ValueError:  # 2026-13-45: digits, not a date
        return None


def parse_start(text: str) -> datetime:
    try:
        # Python 3.10's fromisoformat does not take the "Z" that ISO-8601 UTC times usually end in.
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise UserError(f"--start {text!r}: not an ISO-8601 time such as 2026-11-01T10:00:00") from None


def replay_recordings(scorer: ClipScorer, files: list[Path], opts: ReplayOptions, out: Path,
                      progress: bool = True) -> ReplayResult:
    """Score every recording window by window into ``out/windows.csv``; bad files are named and skipped."""
    if opts.plot:
        from edge_asd.offline.timeline import require_matplotlib

        require_matplotlib()  # before hours of scoring, not after
    reader = RecordingClips(opts.machine, float(opts.clip_seconds), float(opts.hop_seconds), opts.channel)
    store = None
    if opts.evidence is not None:
        try:
            store = EvidenceStore(opts.evidence, int(opts.evidence_max_mb * 1024 * 1024))
        except OSError as exc:
            raise UserError(f"--evidence: cannot use {opts.evidence}: {exc.strerror or exc}") from None
    result = ReplayResult()
    bar = Progress(sum(_expected_windows(f, opts) for f in files), "replaying", enabled=progress)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    next_start = opts.start
    with open(out / WINDOWS_CSV, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for path in files:
            named = time_from_name(path.name)
            wall = named if named is not None else next_start
            rows: list[Window] = []
            # Each recording is its own timeline: a fresh alert state.
            decider = ClipDecider(Debouncer(opts.raise_after, opts.clear_after), opts.threshold, scorer.ratio,
                                  save_evidence=store is not None)
            try:
                with reader.open_file(path) as f:
                    duration = f.frames / f.samplerate
                    for i, (samples, end_s, _) in enumerate(reader.cut_clips(path, f)):
                        d = decider.decide(scorer.score(samples, opts.section), dbfs(samples))
                        start_s = end_s - opts.clip_seconds
                        row = Window(
                            path.name, i, round(start_s, 6), round(end_s, 6),
                            None if wall is None else wall + timedelta(seconds=start_s),
                            None if wall is None else wall + timedelta(seconds=end_s),
                            d.score, d.threshold, d.anomalous, d.p_target, d.dbfs, d.alert, d.event, d.ratio, d.bands,
                        )
                        rows.append(row)
                        _write(writer, row, opts.json_lines)
                        if d.save_evidence and _save_evidence(store, opts, path, row, samples):
                            result.evidence += 1
                        bar.update()
            except AudioError as exc:
                result.errors[path] = (f"{exc} (the {len(rows)} window(s) before it were scored)" if rows else str(exc))
                if not rows:
                    continue
                duration = rows[-1].end_s
            if wall is not None and named is None:
                next_start = wall + timedelta(seconds=duration)  # the next unnamed file follows this one
            result.recordings += 1
            result.windows += len(rows)
            result.alerts += sum(r.event == "raised" for r in rows)
            result.audio_s += duration
            if opts.plot and rows:
                from edge_asd.offline.timeline import plot_timeline

                png = out / f"{path.stem}.png"
                plot_timeline(rows, png, f"{path.name}: {scorer.machine_type} section {opts.section} "
                                         f"({scorer.bundle_id})")
                result.plots.append(png)
    bar.close()
    elapsed = time.monotonic() - t0
    if progress:
        speed = f", {result.audio_s / elapsed:.0f}x real time" if elapsed > 0 and result.audio_s else ""
        print(f"replayed {result.recordings} recording(s): {result.windows} windows, "
              f"{result.alerts} alert(s) raised, {result.evidence} evidence clip(s), in {elapsed:.1f} s{speed} "
              f"-> {out / WINDOWS_CSV}", file=sys.stderr)
    return result


def _write(writer, row: Window, json_lines: bool) -> None:
    rec = row.record()
    writer.writerow([_cell(rec[c]) for c in CSV_COLUMNS])
    if json_lines:
        print(json.dumps(rec), flush=True)


def _cell(v) -> str | int:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v)  # every digit: a CSV row gives back the number the scorer gave
    if isinstance(v, list):  # bands: "lo-hi:z" each, strongest first, e.g. "2834-3108:+15.28;330-369:-5.10"
        return ";".join(f"{b['lo_hz']:.0f}-{b['hi_hz']:.0f}:{b['z']:+.2f}" for b in v)
    return v


def _save_evidence(store: EvidenceStore, opts: ReplayOptions, path: Path, row: Window, samples) -> bool:
    # EvidenceStore names files by UTC time; with no wall time known the offset into
    # the recording stands in (as a time after 1970-01-01T00:00:00Z), still in order.
    end = row.end_time or datetime(1970, 1, 1) + timedelta(seconds=row.end_s)
    end = end if end.tzinfo is not None else end.replace(tzinfo=timezone.utc)
    # A folder per recording: two recordings without wall times would otherwise share names.
    return store.save(f"{opts.machine}/{path.stem}", samples, end, row.window) is not None


def _expected_windows(path: Path, opts: ReplayOptions) -> int:
    """From the header, for the progress bar only (a bad file is found and named when it is replayed)."""
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - reported properly by RecordingClips.open_file
        return 0
    n = int(info.frames) - int(round(opts.clip_seconds * info.samplerate))
    return 0 if n < 0 else n // max(1, int(round(opts.hop_seconds * info.samplerate))) + 1
