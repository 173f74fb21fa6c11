"""One clip from its job: the machine through its housing, the background
scaled against it, the microphone, the final level; and the plan of jobs a
data set is made of."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from edge_asd.synth.config import SynthConfig
from edge_asd.synth.machines import MACHINES
from edge_asd.synth.machines.base import Anomaly, OperatingPoint
from edge_asd.synth.seeding import rng_for
from edge_asd.synth.signal import Clip, db_gain

# Final level of a clip: RMS uniform in this range, so level carries no label
# information; the range is low enough that the crest factor of impulsive
# clips rarely reaches the peak ceiling (which would lower their RMS).
RMS_RANGE_DBFS = (-38.0, -26.0)
PEAK_CEILING_DBFS = -3.0


@dataclass(frozen=True)
class ClipJob:
    """Everything that determines one clip (the rest follows from the seed)."""

    machine: str
    section: int
    domain: str
    split: str
    label: str
    index: int
    seed: int
    n_samples: int
    sample_rate: int


@dataclass(frozen=True)
class Rendered:
    """A clip's samples and what went into it."""

    samples: np.ndarray  # float32 in [-1, 1]
    attributes: str
    anomaly: Anomaly | None
    point: OperatingPoint
    snr_db: float
    rms_dbfs: float

    def file_name(self, job: ClipJob) -> str:
        return (
            f"section_{job.section:02d}_{job.domain}_{job.split}_{job.label}_{job.index:04d}"
            f"_{self.attributes}.wav"
        )


def render_clip(job: ClipJob) -> Rendered:
    """Render one clip: machine through its housing, plus background, through the microphone."""
    machine = MACHINES[job.machine]
    section = machine.section(job.seed, job.section)
    domain = section.domain(job.domain)
    rng = rng_for(job.seed, "clip", job.machine, job.section, job.domain, job.split, job.label, job.index)
    clip = Clip(job.n_samples, job.sample_rate)

    point = domain.points[int(rng.integers(len(domain.points)))]
    anomaly = None
    if job.label == "anomaly":
        anomaly = Anomaly(str(rng.choice(machine.anomalies)), float(rng.uniform()))
    sound = machine.render(clip, rng, section, point, anomaly)

    snr = domain.background.snr_db + rng.normal(0.0, 2.0)
    background = domain.background.render(clip, rng)
    spec = sound.spectrum + background * np.float32(math.sqrt(sound.healthy_power) * db_gain(-snr))
    samples = np.fft.irfft(spec * domain.mic.gain(clip), clip.n)

    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    level = rng.uniform(*RMS_RANGE_DBFS)
    samples *= db_gain(level) / rms
    peak = float(np.max(np.abs(samples)))
    ceiling = db_gain(PEAK_CEILING_DBFS)
    if peak > ceiling:
        samples *= ceiling / peak
        level += 20.0 * math.log10(ceiling / peak)
    return Rendered(samples.astype(np.float32), point.attributes, anomaly, point, float(snr), float(level))


def clip_jobs(cfg: SynthConfig, machine: str) -> Iterator[ClipJob]:
    plan = (
        ("source", "train", "normal", cfg.train_source),
        ("target", "train", "normal", cfg.train_target),
        ("source", "test", "normal", cfg.test),
        ("source", "test", "anomaly", cfg.test),
        ("target", "test", "normal", cfg.test),
        ("target", "test", "anomaly", cfg.test),
    )
    for section in range(cfg.sections):
        for domain, split, label, count in plan:
            for index in range(count):
                yield ClipJob(machine, section, domain, split, label, index, cfg.seed, cfg.n_samples, cfg.sample_rate)
