"""``edge-asd score``: DCASE-named clips into submission files; other recordings window by window (replay.py)."""

from __future__ import annotations

import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_asd.io.audio import DEFAULT_MAX_SECONDS, TooLongError, read_audio
from edge_asd.io.dcase import parse_name
from edge_asd.io.files import expand_paths
from edge_asd.errors import DataError, UserError
from edge_asd.progress import Progress
from edge_asd.runtime.scorer import ClipScorer, load_scorer
from edge_asd.io.submission import write_section

if TYPE_CHECKING:
    from edge_asd.offline.replay import ReplaySettings

def section_of(path: Path, scorer: ClipScorer) -> str:
    return scorer.resolve_section(parse_name(path).section)


def score_files(
    scorer: ClipScorer,
    files: list[Path],
    batch_clips: int = 8,
    progress: bool = True,
    workers: int = 2,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> tuple[dict[Path, tuple[str, float]], dict[Path, str]]:
    """Score every file; bad files are reported and skipped, never the whole run.

    Files are read on a thread pool (soundfile releases the GIL) a batch of
    clips ahead of the extractor, so a core never waits on the disk, and
    ``workers`` clips of a batch are scored at once (``ClipScorer.score_many``).
    """
    results: dict[Path, tuple[str, float]] = {}
    errors: dict[Path, str] = {}
    by_section: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        try:
            by_section[section_of(f, scorer)].append(f)
        except UserError as exc:
            errors[f] = str(exc)

    def load(path: Path):
        try:
            x = read_audio(path, scorer.sample_rate, min_seconds=scorer.segment_seconds, max_seconds=max_seconds)
            return path, x, None
        except TooLongError as exc:
            return path, None, (
                f"{path}: {exc.seconds:.0f} s long, more than the {exc.max_seconds:g} s `edge-asd score` takes as one clip; "
                f"replay it through `edge-asd run` with a `file:` source (realtime = false), which cuts it into clips, "
                f"or raise --max-seconds"
            )
        except UserError as exc:
            return path, None, str(exc)

    bar = Progress(len(files), "scoring", enabled=progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for section, paths in sorted(by_section.items()):
            for lo in range(0, len(paths), batch_clips):
                loaded = list(pool.map(load, paths[lo : lo + batch_clips]))
                good = [(p, s) for p, s, e in loaded if e is None]
                for p, _, e in loaded:
                    if e is not None:
                        errors[p] = e
                if good:
                    scores = scorer.score_many([x for _, x in good], section, workers=workers)
                    for (p, _), sc in zip(good, scores):
                        results[p] = (section, float(sc))
                bar.update(len(loaded))
    bar.close()
    return results, errors


def is_dcase_name(path: Path) -> bool:
    try:
        parse_name(path)
    except DataError:
        return False
    return True


def score_paths(
    bundle: Path,
    paths: list[Path],
    out: Path,
    backend: str = "auto",
    batch_clips: int = 8,
    threads: int = 0,
    progress: bool = True,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    replay: "ReplaySettings | None" = None,
) -> dict[Path, tuple[str, float]]:
    """DCASE-named files into submission files (one score per file); any other file window by window."""
    if max_seconds is not None and not max_seconds > 0:
        raise UserError(f"--max-seconds must be positive, got {max_seconds:g}")
    from edge_asd.offline.replay import ReplaySettings, replay_options

    scorer = load_scorer(bundle, backend=backend, threads=threads)
    opts = replay_options(scorer, replay or ReplaySettings())  # a bad --section is refused before any scoring
    files = expand_paths(paths)
    dcase = [f for f in files if is_dcase_name(f)]
    own = [f for f in files if not is_dcase_name(f)]
    # --threads 1 asks for one core: one clip at a time; otherwise two side by side (score_many)
    results, errors = score_files(scorer, dcase, batch_clips=batch_clips, progress=progress, max_seconds=max_seconds,
                                  workers=1 if threads == 1 else 2)
    if own:
        if opts is None:
            for f in own:
                errors[f] = (f"{f}: not a DCASE name, so its section is unknown and the bundle has several "
                             f"({', '.join(scorer.sections)}); give --section to score it window by window")
        else:
            from edge_asd.offline.replay import replay_recordings

            errors.update(replay_recordings(scorer, own, opts, out, progress=progress).errors)
    by_section: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for path, (section, score) in results.items():
        by_section[section].append((path.name, score))
    for section, rows in sorted(by_section.items()):
        rows.sort()
        names = [n for n, _ in rows]
        scores = np.array([s for _, s in rows])
        decisions = (scores > scorer.thresholds[section]).astype(int)
        write_section(out, scorer.machine_type, section, names, scores, decisions)
    if progress and dcase:
        print(f"scored {len(results)} clips with {scorer.bundle_id} ({scorer.backend_name}) -> {out}", file=sys.stderr)
    for path, msg in errors.items():
        print(f"edge-asd: skipped: {msg}", file=sys.stderr)
    if errors:
        raise UserError(f"{len(errors)} of {len(files)} files could not be scored (listed above); the others were written to {out}")
    return results
