"""Outlier exposure from any folder of sounds: any format, rate and channel count, decoded once to 16 kHz mono."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asd.io.audio import SAMPLE_RATE, open_audio, resample, short_error
from edge_asd.errors import AudioError

from train.data.stats import ClipStats, ClipStatsCache, measure_clip

log = logging.getLogger("train.data")  # one logger for the package: users filter on it


def soundfile_extensions() -> tuple[str, ...]:
    """File name endings of the formats this libsndfile reads (its format names are their usual extensions)."""
    names = {"." + f.lower() for f in sf.available_formats()}
    return tuple(sorted(names | {".aif", ".oga", ".opus", ".wave"}))


# --- outliers: any format, rate and channel count -------------------------------------------


def decoded_name(key: tuple[str, int, int]) -> str:
    """The 16 kHz mono copy's file name for a source's cache key: a changed source gets a new copy."""
    return hashlib.sha1(repr(key).encode("utf-8")).hexdigest() + ".wav"


def decode_to_16k_mono(src: Path, dst: Path) -> None:
    """Write ``src`` mixed to mono and resampled to 16 kHz as a float32 WAV at ``dst`` (atomically)."""
    with open_audio(src) as f:
        rate = f.samplerate
        try:
            x = f.read(dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{src}: unreadable audio data ({short_error(exc)})") from None
    if x.size == 0:
        raise AudioError(f"{src}: contains no samples")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{src}: contains NaN or infinite samples")
    y = resample(x.mean(axis=1, dtype=np.float64), rate, SAMPLE_RATE)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    sf.write(str(tmp), y, SAMPLE_RATE, subtype="FLOAT", format="WAV")
    os.replace(tmp, dst)


def _measure_outlier(path: Path, decoded: Path) -> tuple[Path, ClipStats]:
    """(the 16 kHz mono file training reads, its statistics); :class:`AudioError` when unusable."""
    if not decoded.is_file():
        with open_audio(path) as f:
            native = f.samplerate == SAMPLE_RATE and f.channels == 1
        if native:
            return path, measure_clip(path)
        decode_to_16k_mono(path, decoded)
    return decoded, measure_clip(decoded)


def outlier_statistics(
    paths: Sequence[Path], cache: ClipStatsCache | None, decoded_dir: Path, threads: int = 8,
    progress: bool = False, warn: bool = True,
) -> list[tuple[Path, Path, ClipStats]]:
    """``(source, file to read, statistics)`` of every usable outlier file, in order.

    16 kHz mono files are read as they are; the others through their decoded copy in
    ``decoded_dir``. Cache look-ups stay in this thread (SQLite connections are not
    shared across threads); decoding and measuring run in ``threads``. Files that
    cannot be read are dropped, each named in one warning when ``warn``.
    """
    keys = [ClipStatsCache.key(p) for p in paths]
    decoded = [decoded_dir / decoded_name(k) for k in keys]
    known = cache.get_many(keys) if cache is not None else {}
    present = [ClipStatsCache.key(d) for d, k in zip(decoded, keys) if k[0] not in known and d.is_file()]
    known_decoded = cache.get_many(present) if cache is not None and present else {}
    done: dict[int, tuple[Path, ClipStats]] = {}
    todo = []
    for i, (k, d) in enumerate(zip(keys, decoded)):
        if k[0] in known:
            done[i] = (paths[i], known[k[0]])
        elif str(d.resolve()) in known_decoded:
            done[i] = (d, known_decoded[str(d.resolve())])
        else:
            todo.append(i)

    def measure(i: int) -> tuple[Path, ClipStats] | AudioError:
        try:
            return _measure_outlier(paths[i], decoded[i])
        except AudioError as exc:
            return exc

    if todo:
        decoded_dir.mkdir(parents=True, exist_ok=True)
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            jobs = pool.map(measure, todo)
            results = list(tqdm(jobs, total=len(todo), disable=not progress, desc="outlier statistics", unit="file"))
        fresh = []
        for i, r in zip(todo, results):
            if isinstance(r, AudioError):
                if warn:
                    log.warning("outliers: %s; skipped", r)
                continue
            done[i] = r
            fresh.append((ClipStatsCache.key(r[0]), r[1]))
        if cache is not None:
            cache.put_many(fresh)
    return [(paths[i], *done[i]) for i in sorted(done)]


def decoded_dir_for(cache_root: Path) -> Path:
    """Where decoded outlier copies live: beside the statistics cache, else a temporary folder."""
    path = cache_root / "decoded"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"edge-asd-decoded-{os.getuid()}"
        warnings.warn(f"{path}: cannot hold decoded outliers ({exc.strerror or exc}); using {fallback}", stacklevel=3)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback
