"""``SynthConfig``: what ``edge-asd synth`` generates, and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.errors import UserError
from edge_asd.io.audio import SAMPLE_RATE
from edge_asd.synth.machines import MACHINE_TYPES

MIN_SECONDS = 2.0
MAX_SECONDS = 600.0
MAX_SECTIONS = 99


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Counts are per section (test: per section, domain and label)."""

    machines: tuple[str, ...] = ("fan", "gearbox", "bearing", "valve")
    sections: int = 2
    train_source: int = 40
    train_target: int = 10
    test: int = 10
    seconds: float = 10.0
    seed: int = 0
    sample_rate: int = SAMPLE_RATE
    # Worker processes; 0 means one per available core. The data set does not
    # depend on it (every clip has its own seed).
    workers: int = 0

    def validate(self) -> None:
        """Raise :class:`UserError` with a one-line message for a bad setting."""
        if not self.machines:
            raise UserError(f"no machine types given (known: {', '.join(MACHINE_TYPES)})")
        seen: set[str] = set()
        for m in self.machines:
            if m not in MACHINE_TYPES:
                raise UserError(f"unknown machine type '{m}' (known: {', '.join(MACHINE_TYPES)})")
            if m in seen:
                raise UserError(f"machine type '{m}' given twice")
            seen.add(m)
        if not _is_int(self.sections) or not 1 <= self.sections <= MAX_SECTIONS:
            raise UserError(f"sections must be an integer from 1 to {MAX_SECTIONS}, got {self.sections}")
        for name in ("train_source", "train_target", "test"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 0, got {value}")
        if self.train_source + self.train_target + self.test == 0:
            raise UserError("nothing to generate: train-source, train-target and test are all 0")
        if not isinstance(self.seconds, (int, float)) or not math.isfinite(self.seconds):
            raise UserError(f"seconds must be a number, got {self.seconds}")
        if not MIN_SECONDS <= self.seconds <= MAX_SECONDS:
            raise UserError(f"seconds must be from {MIN_SECONDS:g} to {MAX_SECONDS:g}, got {self.seconds:g}")
        if not _is_int(self.seed) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed}")
        # The machine designs put energy up to about 7.5 kHz.
        if not _is_int(self.sample_rate) or self.sample_rate < 16000:
            raise UserError(f"sample rate must be an integer >= 16000 Hz, got {self.sample_rate}")
        if not _is_int(self.workers) or self.workers < 0:
            raise UserError(f"workers must be an integer >= 0, got {self.workers}")

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    def clips_per_section(self) -> int:
        return self.train_source + self.train_target + 4 * self.test


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
