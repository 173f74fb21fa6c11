"""Per-clip statistics (cached in SQLite), amplitude normalization of a run, crops read by seeking."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from edge_asd.io.audio import SegmentSpec, centre, read_audio
from edge_asd.errors import AudioError
from ..rundir import RunDir


@dataclass(frozen=True)
class ClipStats:
    n_samples: int
    mean: float
    std: float


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-asd"


class ClipStatsCache:
    """SQLite map ``(absolute path, size, mtime) -> (n_samples, mean, std)``.

    A file that changes gets a new key, so stale statistics are never used. Only
    clips that passed :func:`edge_asd.io.audio.read_audio`'s checks are stored.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), timeout=60.0)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS clip_stats (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " n_samples INTEGER, mean REAL, std REAL)"
        )

    @staticmethod
    def key(path: Path) -> tuple[str, int, int]:
        st = path.stat()
        return str(path.resolve()), st.st_size, st.st_mtime_ns

    def get_many(self, keys: Sequence[tuple[str, int, int]]) -> dict[str, ClipStats]:
        found: dict[str, ClipStats] = {}
        cur = self._db.cursor()
        for lo in range(0, len(keys), 500):
            chunk = keys[lo : lo + 500]
            rows = cur.execute(
                f"SELECT path, size, mtime_ns, n_samples, mean, std FROM clip_stats WHERE path IN ({','.join('?' * len(chunk))})",
                [k[0] for k in chunk],
            ).fetchall()
            wanted = {k[0]: k for k in chunk}
            for p, size, mtime, n, mean, std in rows:
                if wanted[p][1:] == (size, mtime):
                    found[p] = ClipStats(int(n), float(mean), float(std))
        return found

    def put_many(self, items: Sequence[tuple[tuple[str, int, int], ClipStats]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO clip_stats VALUES (?, ?, ?, ?, ?, ?)",
                [(k[0], k[1], k[2], s.n_samples, s.mean, s.std) for k, s in items],
            )

    def close(self) -> None:
        self._db.close()


def measure_clip(path: Path) -> ClipStats:
    """Mean and standard deviation of a whole clip, as :func:`edge_asd.io.audio.standardize` computes them."""
    x = read_audio(path)
    _, std = centre(x)
    return ClipStats(x.size, float(x.mean(dtype=np.float64)), std)


def clip_statistics(
    paths: Sequence[Path], cache: ClipStatsCache | None, threads: int = 8, progress: bool = False
) -> list[ClipStats]:
    """Statistics of every clip, reading only those the cache lacks (in parallel threads:
    libsndfile and numpy release the GIL). Bad audio raises :class:`AudioError` naming the file."""
    for p in paths:
        if not p.is_file():
            raise AudioError(f"{p}: no such file")
    keys = [ClipStatsCache.key(p) for p in paths]
    known = cache.get_many(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k[0] not in known]
    if todo:
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            jobs = pool.map(lambda i: measure_clip(paths[i]), todo)
            measured = list(tqdm(jobs, total=len(todo), disable=not progress, desc="clip statistics", unit="clip"))
        if cache is not None:
            cache.put_many([(keys[i], s) for i, s in zip(todo, measured)])
        for i, s in zip(todo, measured):
            known[keys[i][0]] = s
    return [known[k[0]] for k in keys]


def pooled_stats(stats: Sequence[ClipStats]) -> ClipStats:
    """Mean and standard deviation of the samples of all these clips together."""
    n = np.array([s.n_samples for s in stats], dtype=np.float64)
    m = np.array([s.mean for s in stats])
    sd = np.array([s.std for s in stats])
    mean = float((n * m).sum() / n.sum())
    var = float((n * (sd**2 + (m - mean) ** 2)).sum() / n.sum())
    return ClipStats(int(n.sum()), mean, math.sqrt(var))


def segment_spec(config: Mapping[str, Any], amplitude: Mapping[str, Any] | None,
                 base: SegmentSpec = SegmentSpec()) -> SegmentSpec:
    """How a run's extractor cuts clips, from its training configuration and amplitude normalization.

    The one derivation: stage 1's validation, stage 2, the check and the export all cut clips with it, so a run
    trained on 3 s segments is never embedded or deployed on 2 s ones. Keys an older config lacks keep ``base``'s.
    """
    amp = amplitude or {"mode": "clip"}
    return dataclasses.replace(
        base,
        segment_seconds=float(config.get("segment_seconds", base.segment_seconds)),
        n_segments=int(config.get("val_segments", base.n_segments)),
        align=int(config.get("hop_length", base.align)),  # starts on the run's hop: the split graphs slice whole frames
        level=(float(amp["mean"]), float(amp["std"])) if amp.get("mode") == "machine" else None,
    )


def run_spec(run_dir: Path, base: SegmentSpec = SegmentSpec()) -> SegmentSpec:
    """:func:`segment_spec` of a run folder (config.json and split.json's amplitude)."""
    run = RunDir(run_dir)
    config = run.read_config() if run.config.is_file() else {}
    return segment_spec(config, run.read_split().get("amplitude"), base)


def read_crop(path: Path, stats: ClipStats, offset: int, length: int) -> np.ndarray:
    """Samples ``[offset, offset + length)`` of the standardized clip, reading only those.

    Bit-identical to ``standardize(read_audio(path))[offset:offset + length]``.
    """
    x, _ = sf.read(str(path), start=offset, stop=offset + length, dtype="float32", always_2d=False)
    return standardize_with(np.asarray(x).reshape(-1), stats)


def standardize_with(x: np.ndarray, stats: ClipStats) -> np.ndarray:
    if stats.std < 1e-8:  # a silent clip, as standardize() treats it
        return np.zeros(x.size, dtype=np.float32)
    # The same float32 operations as standardize(), so a crop is bit for bit a slice of the whole clip.
    centered = np.asarray(x, dtype=np.float32) - np.float32(stats.mean)
    centered *= np.float32(1.0 / stats.std)
    return centered
