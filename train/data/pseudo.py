"""Pseudo-anomalous data for a user with one machine type and no outliers folder.

Outlier exposure needs sounds that are not the target machine. The DCASE data
gives other machine types; the person who bolts a microphone to one pump has
none. Rather than refusing to train, stage 1 then draws them from the product's
own generator (:mod:`edge_asd.synth`): every synthetic machine type but one of
the user's name, each a few sections of its own machines, written once into the
cache folder (keyed by seed and count, so a rerun or a resumed run reads the same
files) and used exactly as another machine type's ``train`` folder would be.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

from edge_asd.synth import SynthConfig, generate
from edge_asd.synth.machines import MACHINE_TYPES

log = logging.getLogger("train.data")

SECTIONS = 2
SECONDS = 6.0  # a training example is a 2 s crop: 6 s gives crops enough and costs 60 % less than 10 s
MIN_CLIPS, MAX_CLIPS = 120, 600  # about as many as the machine's own normals, within these bounds
VERSION = 1  # bump when the generator's output for a seed changes, so old caches are not reused


def synthetic_types(machine: str) -> tuple[str, ...]:
    """The generator's machine types that stand in for "other machines" (never one named as the user's)."""
    return tuple(m for m in MACHINE_TYPES if m != machine)


def synthesize_pseudo_anomalous(cache_root: Path, machine: str, n_own: int, seed: int, progress: bool = False) -> list[Path]:
    """Paths of synthetic clips of other machine types (``<type>/train/*.wav``), generated on first use."""
    types = synthetic_types(machine)
    wanted = min(MAX_CLIPS, max(MIN_CLIPS, n_own))
    per_section = max(1, math.ceil(wanted / (len(types) * SECTIONS)))
    cfg = SynthConfig(machines=types, sections=SECTIONS, train_source=per_section, train_target=0, test=0,
                      seconds=SECONDS, seed=seed, workers=0)
    folder = Path(cache_root) / "pseudo_anomalous" / f"synth-v{VERSION}-seed{seed}-n{per_section}-{'-'.join(types)}"
    if not folder.is_dir():
        log.info("no other machine type and no outliers folder: synthesizing %d clips of %s as pseudo-anomalous data "
                 "(once, into %s)", per_section * SECTIONS * len(types), ", ".join(types), folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            generate(tmp / "data", cfg, progress=progress)
            try:
                os.replace(tmp / "data", folder)
            except OSError:
                if not folder.is_dir():  # another process won the race: its copy is as good as ours
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(p for t in types for p in (folder / t / "train").glob("*.wav"))
