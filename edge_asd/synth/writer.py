"""The DCASE layout writer: ``OUT/<machine>/{train,test}/*.wav`` and the
manifest beside them, clips rendered by a process pool; ``generate`` is the
entry point behind ``edge-asd synth``."""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf

from edge_asd.errors import UserError
from edge_asd.progress import Progress
from edge_asd.synth.clips import ClipJob, clip_jobs, render_clip
from edge_asd.synth.config import SynthConfig

MANIFEST_NAME = "synth_meta.csv"
MANIFEST_FIELDS = ("file", "section", "domain", "split", "label", "anomaly", "severity",
                   "speed_hz", "load", "snr_db", "rms_dbfs")


def write_clip(job_and_dir: tuple[ClipJob, str]) -> dict[str, str]:
    """Render and write one clip (runs in a worker process); return its manifest row."""
    job, machine_dir = job_and_dir
    r = render_clip(job)
    name = r.file_name(job)
    pcm = np.round(np.clip(r.samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    sf.write(os.path.join(machine_dir, job.split, name), pcm, job.sample_rate, subtype="PCM_16")
    return {
        "file": f"{job.split}/{name}",
        "section": f"{job.section:02d}",
        "domain": job.domain,
        "split": job.split,
        "label": job.label,
        "anomaly": r.anomaly.kind if r.anomaly else "",
        "severity": f"{r.anomaly.severity:.3f}" if r.anomaly else "",
        "speed_hz": f"{r.point.speed_hz:.3f}",
        "load": f"{r.point.load:g}",
        "snr_db": f"{r.snr_db:.2f}",
        "rms_dbfs": f"{r.rms_dbfs:.2f}",
    }


def write_manifest(machine_dir: Path, rows: list[dict[str, str]]) -> None:
    """``<machine>/synth_meta.csv``: every clip with its anomaly kind, severity and operating point."""
    with open(machine_dir / MANIFEST_NAME, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def prepare_folders(out: Path, machines: Iterable[str]) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    for m in machines:
        folder = out / m
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UserError(f"{folder}: already exists and is not empty; remove it or choose another output folder")
    for m in machines:
        for split in ("train", "test"):
            try:
                (out / m / split).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"{out / m / split}: cannot create folder ({exc.strerror})") from None


def worker_count(cfg: SynthConfig, total: int) -> int:
    if cfg.workers:
        wanted = cfg.workers
    else:
        try:
            wanted = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            wanted = os.cpu_count() or 1
    # A pool costs a process start per worker: not worth it for a handful of clips.
    return max(1, min(wanted, total // 8))


def generate(out: Path, cfg: SynthConfig, progress: bool = False) -> int:
    """Write the data set ``cfg`` describes under ``out`` in the DCASE layout; return the clip count.

    Raises :class:`UserError` for a bad configuration or an output folder that
    cannot be written or already holds one of the machines.
    """
    cfg.validate()
    out = Path(out)
    prepare_folders(out, cfg.machines)
    per_machine = cfg.sections * cfg.clips_per_section()
    total = per_machine * len(cfg.machines)
    workers = worker_count(cfg, total)
    bar = Progress(total, "synth", enabled=progress)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    written = 0
    try:
        for machine in cfg.machines:
            bar.describe(f"synth {machine}")
            machine_dir = str(out / machine)
            work = ((job, machine_dir) for job in clip_jobs(cfg, machine))
            results = pool.map(write_clip, work, chunksize=4) if pool else map(write_clip, work)
            rows = []
            for row in results:
                rows.append(row)
                bar.update()
            write_manifest(out / machine, rows)
            written += len(rows)
    except OSError as exc:
        raise UserError(f"{exc.filename or out}: cannot write ({exc.strerror})") from None
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return written
