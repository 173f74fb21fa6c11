"""The clip inventory of a run: normals, pseudo-anomalous pools, the train/held-out split, ``prepare_data``."""

from __future__ import annotations

import os
import sqlite3
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_asd.io.audio import read_audio
from edge_asd.io.dcase import list_clips, list_machines
from edge_asd.io.files import audio_files
from edge_asd.errors import DataError

from train.data.outliers import decoded_dir_for, outlier_statistics, soundfile_extensions
from train.data.pseudo import synthesize_pseudo_anomalous
from train.data.stats import ClipStats, ClipStatsCache, clip_statistics, default_cache_dir, pooled_stats, standardize_with


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

    synthesized = not others and not outliers and getattr(cfg, "pseudo_synth", False)
    if synthesized:
        cache_root = Path(cfg.cache_dir or default_cache_dir())
        others = synthesize_pseudo_anomalous(cache_root, cfg.machine, len(own), cfg.seed, progress and rank == 0)
        for p in others:
            per_machine[f"synth:{p.parent.parent.name}"] = per_machine.get(f"synth:{p.parent.parent.name}", 0) + 1

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
            f"{data}: no pseudo-anomalous data: the data set has no other machine type with train clips, "
            "no outliers folder was given and pseudo_synth is off"
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
            "synthesized": bool(synthesized),  # other machine types from edge_asd.synth (one machine type, no outliers)
            "outliers": str(cfg.outliers) if cfg.outliers is not None else None,
            "n_outliers": int(pools.outliers.size),
        },
        "skipped_short": [str(p) for p in skipped],
        "amplitude": {"mode": "clip"} if level is None else {"mode": "machine", "mean": level.mean, "std": level.std},
    }
    return PreparedData(cfg.machine, sections, table, pools, split_doc, heldout, skipped)
