"""Stage-1 data: clip inventory and split, per-clip statistics, the outlier-exposure batch sampler.

What the report (Sections 2.1-2.4, 3.1) asks of a training batch:

* normal clips of the target machine type (t = 1) from ``DATA/<machine>/train``;
  pseudo-anomalous clips (t = 0) from the other machine types' ``train`` folders
  and from an optional folder of any other sounds (AudioSet in the report);
* ``r_train`` of each section's source clips and six target clips per section for
  training, the rest held out (validation here, inlier models in stage 2);
* t at 1:1 within a mini-batch, and at least one target-domain clip in each;
* with the domain head: 1/4 source normals (d = 0), 1/4 pseudo-target data made by
  Mixup of target-domain normals and pseudo-anomalous data (d = t = the mixing
  ratio), the rest pseudo-anomalous (d = t = 0);
* every example a random 2 s crop of a clip standardized over the whole clip.

Scale: the DCASE development set alone is tens of thousands of 10 s clips, and
AudioSet millions, so clips are not preloaded unless they fit a memory budget.
Each clip's mean and standard deviation are computed once (cached in SQLite,
keyed by path, size and modification time) and a training example reads only its
crop by seeking. Every random choice of an epoch (clips, crops, Mixup partners and
ratios) is drawn by the batch sampler from ``(seed, epoch)`` alone, so a run is
repeatable whatever the number of DataLoader workers, and a resumed run draws
exactly the batches the uninterrupted one would have.

The outliers folder may hold any sound soundfile reads, at any rate and channel
count. A file that is not 16 kHz mono is decoded once, mixed to mono, resampled
with the runtime's own resampler (:func:`edge_asd.io.audio.resample`) and written as
a 16 kHz float32 WAV beside the statistics cache, named by the source's cache key;
from then on it is an ordinary clip (seekable crops, cached statistics), and the
same source always decodes to the same samples. Unreadable files are logged once
and skipped: one bad file among millions must not stop a run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from edge_asd.io.audio import SAMPLE_RATE, SegmentSpec, clip_segments, open_audio, read_audio, resample, short_error
from edge_asd.io.dcase import list_clips, list_machines
from edge_asd.io.files import audio_files
from edge_asd.errors import AudioError, DataError

log = logging.getLogger(__name__)

# --- per-clip statistics --------------------------------------------------------------


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
    x = read_audio(path).astype(np.float64)
    mean = float(x.mean())
    return ClipStats(x.size, mean, float((x - mean).std()))


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


def run_spec(run_dir: Path, base: SegmentSpec = SegmentSpec()) -> SegmentSpec:
    """The segment spec of a run's extractor: its amplitude normalization from split.json."""
    import dataclasses
    import json

    amp = json.loads((Path(run_dir) / "split.json").read_text()).get("amplitude") or {"mode": "clip"}
    if amp.get("mode") == "machine":
        return dataclasses.replace(base, level=(float(amp["mean"]), float(amp["std"])))
    return base


def read_crop(path: Path, stats: ClipStats, offset: int, length: int) -> np.ndarray:
    """Samples ``[offset, offset + length)`` of the standardized clip, reading only those.

    Bit-identical to ``standardize(read_audio(path))[offset:offset + length]``.
    """
    x, _ = sf.read(str(path), start=offset, stop=offset + length, dtype="float32", always_2d=False)
    return standardize_with(np.asarray(x).reshape(-1), stats)


def standardize_with(x: np.ndarray, stats: ClipStats) -> np.ndarray:
    if stats.std < 1e-8:  # a silent clip, as standardize() treats it
        return np.zeros(x.size, dtype=np.float32)
    return ((x.astype(np.float64) - stats.mean) / stats.std).astype(np.float32)


# --- inventory and split ---------------------------------------------------------------


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


@dataclass
class ClipTable:
    """Every clip a training batch can draw from; pools index into it.

    Columns are numpy arrays rather than lists of Python objects: DataLoader
    workers are forked, and touching millions of objects (AudioSet-sized outlier
    sets) would copy their pages into every worker through reference counting.
    """

    path_bytes: np.ndarray  # uint8: every path, UTF-8, concatenated
    path_offsets: np.ndarray  # int64: path i is path_bytes[offsets[i]:offsets[i + 1]]
    n_samples: np.ndarray  # int64
    mean: np.ndarray  # float64
    std: np.ndarray  # float64
    normal: np.ndarray  # bool: target machine (t = 1)
    section: np.ndarray  # int64: section index, -1 for pseudo-anomalous clips
    target: np.ndarray  # bool: target domain
    audio: list[np.ndarray] | None = None  # standardized clips when held in memory

    @classmethod
    def build(cls, paths: Sequence[Path], stats: Sequence[ClipStats], normal, section, target) -> "ClipTable":
        encoded = [str(p).encode("utf-8") for p in paths]
        return cls(
            path_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8),
            path_offsets=np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64),
            n_samples=np.array([s.n_samples for s in stats], dtype=np.int64),
            mean=np.array([s.mean for s in stats], dtype=np.float64),
            std=np.array([s.std for s in stats], dtype=np.float64),
            normal=np.asarray(normal, dtype=bool),
            section=np.asarray(section, dtype=np.int64),
            target=np.asarray(target, dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.n_samples)

    @property
    def lengths(self) -> np.ndarray:
        return self.n_samples

    def path(self, i: int) -> Path:
        return Path(self.path_bytes[self.path_offsets[i] : self.path_offsets[i + 1]].tobytes().decode("utf-8"))

    def stats(self, i: int) -> ClipStats:
        return ClipStats(int(self.n_samples[i]), float(self.mean[i]), float(self.std[i]))


@dataclass
class Pools:
    source: np.ndarray  # training normals, source domain
    target: np.ndarray  # training normals, target domain
    machines: np.ndarray  # other machine types
    outliers: np.ndarray  # the outliers folder

    @property
    def anomalous(self) -> bool:
        return bool(self.machines.size or self.outliers.size)


@dataclass
class PreparedData:
    machine: str
    sections: list[str]
    table: ClipTable
    pools: Pools
    split: dict  # what split.json holds
    heldout: list[tuple[Path, int, str]]  # (path, section index, domain) of held-out normals
    skipped: list[Path] = field(default_factory=list)


def split_normals(
    clips: Sequence, sections: Sequence[str], r_train: float, n_target_train: int, seed: int
) -> dict[Path, str]:
    """``train``/``heldout`` for each normal clip: per section, a seeded ``r_train`` share of the
    source clips and ``n_target_train`` target clips train the extractor; the rest are held out."""
    rng = np.random.default_rng([seed, 0x5EC])
    out: dict[Path, str] = {}
    for sec in sections:
        for domain in ("source", "target"):
            group = sorted((c for c in clips if c.section == sec and (c.domain or "source") == domain), key=lambda c: c.name)
            if not group:
                continue
            n_train = min(n_target_train, len(group)) if domain == "target" else max(1, int(round(r_train * len(group))))
            chosen = set(rng.permutation(len(group))[:n_train].tolist())
            for i, c in enumerate(group):
                out[c.path] = "train" if i in chosen else "heldout"
    return out


def _open_cache(cfg) -> ClipStatsCache | None:
    path = Path(cfg.cache_dir or default_cache_dir()) / "clip_stats.sqlite"
    try:
        return ClipStatsCache(path)
    except (OSError, sqlite3.Error) as exc:
        # A read-only home must not stop training; it only costs a re-read next time.
        warnings.warn(f"{path}: clip statistics cache unavailable ({exc}); measuring every clip", stacklevel=3)
        return None


def prepare_data(cfg, rank: int = 0, threads: int | None = None, progress: bool = False) -> PreparedData:
    """Inventory, statistics and split for ``cfg`` (a :class:`train.config.TrainConfig`)."""
    data = Path(cfg.data)
    seg = cfg.segment_samples
    own = [c for c in list_clips(data, cfg.machine, "train") if c.label in (None, "normal")]
    others: list[Path] = []
    per_machine: dict[str, int] = {}
    for m in list_machines(data):
        if m == cfg.machine or not (data / m / "train").is_dir():
            continue
        files = audio_files(data / m / "train")
        per_machine[m] = len(files)
        others += files
    outliers = audio_files(Path(cfg.outliers), soundfile_extensions()) if cfg.outliers is not None else []
    if cfg.outliers is not None and not outliers:
        raise DataError(f"{cfg.outliers}: outliers folder holds no audio files (searched recursively for {', '.join(soundfile_extensions())})")
    # An outliers folder that contains the data set (or the machine's folder) must
    # not turn the target machine's own normals into pseudo-anomalous examples.
    own_root = (data / cfg.machine).resolve()
    inside = [p for p in outliers if p.resolve().is_relative_to(own_root)]
    if inside:
        warnings.warn(f"{cfg.outliers}: ignoring {len(inside)} clip(s) of the target machine {cfg.machine!r}", stacklevel=2)
        outliers = [p for p in outliers if not p.resolve().is_relative_to(own_root)]

    outlier_names = list(outliers)  # what messages call them (a decoded copy's name means nothing to a user)
    cache = _open_cache(cfg)
    threads = threads if threads is not None else min(16, os.cpu_count() or 1)
    try:
        own_stats = clip_statistics([c.path for c in own], cache, threads, progress)
        other_stats = clip_statistics(others, cache, threads, progress)
        if outliers:
            n_files = len(outliers)
            cache_root = Path(cfg.cache_dir or default_cache_dir())
            usable = outlier_statistics(outliers, cache, decoded_dir_for(cache_root), threads, progress, warn=rank == 0)
            if not usable:
                raise DataError(f"{cfg.outliers}: none of its {n_files} audio file(s) could be read")
            # From here on an outlier is the 16 kHz mono file training reads.
            outliers = [u[1] for u in usable]
            outlier_names = [u[0] for u in usable]
            other_stats += [u[2] for u in usable]
    finally:
        if cache is not None:
            cache.close()

    skipped = [c.path for c, s in zip(own, own_stats) if s.n_samples < seg]
    skipped += [p for p, s in zip(others + outlier_names, other_stats) if s.n_samples < seg]
    if skipped and rank == 0:
        shown = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warnings.warn(f"skipped {len(skipped)} clip(s) shorter than {cfg.segment_seconds:g} s: {shown}", stacklevel=2)
    own_ok = [(c, s) for c, s in zip(own, own_stats) if s.n_samples >= seg]
    if not own_ok:
        raise DataError(f"{data / cfg.machine / 'train'}: no normal clip of at least {cfg.segment_seconds:g} s")
    level = None
    if getattr(cfg, "amplitude", "clip") == "machine":
        # One scale per machine type from its clips, so the level a machine runs
        # at stays in the input; other machine types by their own scale, the
        # outliers folder (no types) clip by clip.
        level = pooled_stats([s for _, s in own_ok])
        own_ok = [(c, ClipStats(s.n_samples, level.mean, level.std)) for c, s in own_ok]
        by_machine: dict[str, list[int]] = {}
        for i, p in enumerate(others):
            by_machine.setdefault(p.parent.parent.name, []).append(i)
        for idx in by_machine.values():
            pooled = pooled_stats([other_stats[i] for i in idx if other_stats[i].n_samples >= seg] or [other_stats[idx[0]]])
            for i in idx:
                other_stats[i] = ClipStats(other_stats[i].n_samples, pooled.mean, pooled.std)
    sections = sorted({c.section for c, _ in own_ok})
    sec_index = {s: i for i, s in enumerate(sections)}
    split = split_normals([c for c, _ in own_ok], sections, cfg.r_train, cfg.n_target_train, cfg.seed)

    paths: list[Path] = []
    stats: list[ClipStats] = []
    normal, section, target = [], [], []
    heldout: list[tuple[Path, int, str]] = []
    for c, s in own_ok:
        if split[c.path] == "heldout":
            heldout.append((c.path, sec_index[c.section], c.domain or "source"))
            continue
        paths.append(c.path)
        stats.append(s)
        normal.append(True)
        section.append(sec_index[c.section])
        target.append(c.domain == "target")
    n_own = len(paths)
    n_machine_ok = 0
    for i, (p, s) in enumerate(zip(others + outliers, other_stats)):
        if s.n_samples < seg:
            continue
        n_machine_ok += i < len(others)
        paths.append(p)
        stats.append(s)
        normal.append(False)
        section.append(-1)
        target.append(False)
    normal_a, target_a = np.array(normal, bool), np.array(target, bool)
    idx = np.arange(len(paths))
    pools = Pools(
        source=idx[:n_own][~target_a[:n_own]],
        target=idx[:n_own][target_a[:n_own]],
        machines=idx[n_own : n_own + n_machine_ok],
        outliers=idx[n_own + n_machine_ok :],
    )
    if not pools.anomalous:
        raise DataError(
            f"{data}: no pseudo-anomalous data: the data set has no other machine type with train clips "
            "and no outliers folder was given"
        )
    if pools.source.size == 0:
        raise DataError(f"{data / cfg.machine / 'train'}: no source-domain normal clip left for training")
    if cfg.domain_head and pools.target.size == 0:
        raise DataError(
            f"{data / cfg.machine / 'train'}: the domain head needs target-domain training clips "
            "(n_target_train > 0 and target clips in the data), or turn domain_head off"
        )

    table = ClipTable.build(paths, stats, normal_a, section, target_a)
    total_mb = float(table.n_samples.sum()) * 4 / 2**20
    if total_mb <= cfg.memory_cache_mb:
        # Small sets: hold the standardized clips in RAM (DataLoader workers share
        # them copy-on-write) instead of opening a file per example.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            table.audio = list(pool.map(lambda ps: standardize_with(read_audio(ps[0]), ps[1]), zip(paths, stats)))

    split_doc = {
        "machine": cfg.machine,
        "sections": sections,
        "seed": cfg.seed,
        "r_train": cfg.r_train,
        "n_target_train": cfg.n_target_train,
        "clips": [
            {
                "name": c.name,
                "path": c.path.relative_to(data).as_posix() if c.path.is_relative_to(data) else str(c.path),
                "section": c.section,
                "domain": c.domain or "source",
                "split": split[c.path],
            }
            for c, _ in own_ok
        ],
        "pseudo_anomalous": {
            "machines": per_machine,
            "outliers": str(cfg.outliers) if cfg.outliers is not None else None,
            "n_outliers": int(pools.outliers.size),
        },
        "skipped_short": [str(p) for p in skipped],
        "amplitude": {"mode": "clip"} if level is None else {"mode": "machine", "mean": level.mean, "std": level.std},
    }
    return PreparedData(cfg.machine, sections, table, pools, split_doc, heldout, skipped)


# --- batches -------------------------------------------------------------------------------

# One training example: (clip, crop offset, Mixup partner or -1, partner offset, weight of the clip).
Slot = tuple[int, int, int, int, float]


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int = 128
    domain_mode: bool = True
    mixup: bool = False
    mixup_alpha: float = 0.2
    domain_mixup_alpha: float = 1.0
    min_target_per_batch: int = 1
    outlier_fraction: float = 0.5

    @classmethod
    def from_config(cls, cfg) -> "BatchPlan":
        return cls(
            batch_size=cfg.batch_size,
            domain_mode=cfg.domain_head,
            mixup=cfg.mixup,
            mixup_alpha=cfg.mixup_alpha,
            domain_mixup_alpha=cfg.domain_mixup_alpha,
            min_target_per_batch=cfg.min_target_per_batch,
            outlier_fraction=cfg.outlier_fraction,
        )


class OEBatchSampler:
    """Yields each step's examples as :data:`Slot` tuples; see the module docstring.

    Composition of a global batch of B:

    * without the domain head: B/2 normals (``min_target_per_batch`` of them from the
      target domain, the rest source) and B/2 pseudo-anomalous clips;
    * with it (Section 2.4): B/4 normals (``min_target_per_batch`` of them from the
      target domain, the rest source), B/4 pseudo-target Mixups (target normal x
      pseudo-anomalous, ratio ~ Beta(domain_mixup_alpha)), and B/2 pseudo-anomalous
      clips. A pseudo-target Mixup's labels follow its ratio (t = d = ratio), so t
      is 3:5 in expectation here; the report fixes these quarters for the domain
      classifier, and 1:1 holds for the batches without it.

    With ``mixup`` every normal slot is mixed with a pseudo-anomalous clip and every
    pseudo-anomalous slot with a source normal, ratio ~ Beta(mixup_alpha), so the
    expected t stays at 1:1. An epoch passes every source training clip once.

    Multi-process (DDP) runs: every rank draws the same global batch and takes the
    slots ``rank::world_size`` of a seeded shuffle of it, which is what a
    DistributedSampler does for a plain index list.
    """

    def __init__(
        self,
        pools: Pools,
        lengths: np.ndarray,
        segment_samples: int,
        plan: BatchPlan,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if plan.batch_size % world_size:
            raise ValueError(f"batch size {plan.batch_size} is not a multiple of the {world_size} processes")
        self.pools = pools
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.segment = int(segment_samples)
        self.plan = plan
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        b = plan.batch_size
        if plan.domain_mode:
            # Section 2.4's quarters, with Section 2.3's rule kept inside the normal
            # quarter: real target-domain normals (d = 1) in every batch are the
            # domain head's only unmixed examples of the target domain.
            self.n_target = min(plan.min_target_per_batch, b // 4 - 1) if pools.target.size else 0
            self.n_source = b // 4 - self.n_target
            self.n_pseudo_target = b // 4
        else:
            self.n_target = min(plan.min_target_per_batch, b // 2) if pools.target.size else 0
            self.n_source = b // 2 - self.n_target
            self.n_pseudo_target = 0
        if self.n_source < 1:
            raise ValueError(f"batch size {b} leaves no slot for a source-domain clip")
        self.n_anomalous = b - self.n_source - self.n_target - self.n_pseudo_target

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.pools.source.size / self.n_source)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[Slot]]:
        rng = np.random.default_rng([self.seed, 0xBA7C, self.epoch])
        need = self.steps_per_epoch * self.n_source
        reps = math.ceil(need / self.pools.source.size)
        stream = np.concatenate([self.pools.source[rng.permutation(self.pools.source.size)] for _ in range(reps)])
        for step in range(self.steps_per_epoch):
            batch = self._batch(rng, stream[step * self.n_source : (step + 1) * self.n_source])
            order = rng.permutation(len(batch))
            yield [batch[i] for i in order[self.rank :: self.world_size]]

    def _crop(self, rng: np.random.Generator, clip: int) -> int:
        return int(rng.integers(0, self.lengths[clip] - self.segment + 1))

    def _anomaly(self, rng: np.random.Generator) -> int:
        p = self.pools
        use_outliers = p.outliers.size and (not p.machines.size or rng.random() < self.plan.outlier_fraction)
        pool = p.outliers if use_outliers else p.machines
        return int(pool[rng.integers(pool.size)])

    def _slot(self, rng: np.random.Generator, clip: int, partner: int = -1, alpha: float = 0.0) -> Slot:
        if partner < 0:
            return (clip, self._crop(rng, clip), -1, 0, 1.0)
        lam = float(rng.beta(alpha, alpha))
        return (clip, self._crop(rng, clip), partner, self._crop(rng, partner), lam)

    def _batch(self, rng: np.random.Generator, sources: np.ndarray) -> list[Slot]:
        plan, pools = self.plan, self.pools
        normals = [int(i) for i in sources]
        normals += [int(pools.target[rng.integers(pools.target.size)]) for _ in range(self.n_target)]
        batch: list[Slot] = []
        for clip in normals:
            partner = self._anomaly(rng) if plan.mixup else -1
            batch.append(self._slot(rng, clip, partner, plan.mixup_alpha))
        for _ in range(self.n_pseudo_target):
            clip = int(pools.target[rng.integers(pools.target.size)])
            batch.append(self._slot(rng, clip, self._anomaly(rng), plan.domain_mixup_alpha))
        for _ in range(self.n_anomalous):
            clip = self._anomaly(rng)
            partner = int(pools.source[rng.integers(pools.source.size)]) if plan.mixup else -1
            batch.append(self._slot(rng, clip, partner, plan.mixup_alpha))
        return batch


class CropDataset(torch.utils.data.Dataset):
    """Turns a :data:`Slot` into a standardized (possibly mixed) crop and its soft labels.

    Labels are linear in the Mixup, so each follows from the mixed clips' own:
    ``t = l t_a + (1 - l) t_b``; section target ``l t_a y_a + (1 - l) t_b y_b``;
    domain ``d = l t_a [a is target] + (1 - l) t_b [b is target]``.
    """

    def __init__(self, table: ClipTable, n_sections: int, segment_samples: int):
        self.table = table
        self.k = n_sections
        self.segment = segment_samples

    def __len__(self) -> int:
        return len(self.table)

    def _crop(self, clip: int, offset: int) -> np.ndarray:
        if self.table.audio is not None:
            return self.table.audio[clip][offset : offset + self.segment]
        return read_crop(self.table.path(clip), self.table.stats(clip), offset, self.segment)

    def _labels(self, clip: int, weight: float, section: np.ndarray) -> tuple[float, float]:
        if not self.table.normal[clip]:
            return 0.0, 0.0
        section[self.table.section[clip]] += weight
        return weight, weight * float(self.table.target[clip])

    def __getitem__(self, slot: Slot) -> dict[str, torch.Tensor]:
        clip, offset, partner, partner_offset, lam = slot
        section = np.zeros(self.k, dtype=np.float32)
        wave = self._crop(clip, offset)
        t, d = self._labels(clip, lam, section)
        if partner >= 0:
            wave = lam * wave + (1.0 - lam) * self._crop(partner, partner_offset)
            t2, d2 = self._labels(partner, 1.0 - lam, section)
            t, d = t + t2, d + d2
        return {
            "wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            "t": torch.tensor(t, dtype=torch.float32),
            "section": torch.from_numpy(section),
            "d": torch.tensor(d, dtype=torch.float32),
        }


# --- whole clips (validation, embedding) -------------------------------------------------------


def iter_clip_batches(
    paths: Sequence[Path], spec: SegmentSpec = SegmentSpec(), batch_clips: int = 16, threads: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first clip index, segments [n, S, T*sr])`` for consecutive groups of clips.

    Each clip is read, standardized and cut by :func:`edge_asd.io.audio.clip_segments`,
    the same code the device runs. The next group is read in threads while the
    caller computes on the current one; only two groups are ever held.
    """
    if spec.sample_rate != SAMPLE_RATE:
        raise ValueError("the extractor runs at 16 kHz")
    groups = [list(range(lo, min(lo + batch_clips, len(paths)))) for lo in range(0, len(paths), batch_clips)]
    if not groups:
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        def submit(g: list[int]):
            return [pool.submit(clip_segments, paths[i], spec) for i in g]

        pending = submit(groups[0])
        for gi, g in enumerate(groups):
            current = pending
            if gi + 1 < len(groups):
                pending = submit(groups[gi + 1])
            yield g[0], np.stack([f.result() for f in current])
