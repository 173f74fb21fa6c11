"""Checks of a data folder against what was asked, before any training.

Stage 1 is the expensive part, so every data-shape problem that would make
stage 2 impossible is found here, from the file names alone, and reported in
one line naming the machine, the section and what is missing (exit status 2,
nothing written). The same split rule as stage 1 (:func:`train.data.split_normals`)
says which clips the stage-2 bank will hold.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_asd.io.audio import SILENT_PEAK
from edge_asd.io.dcase import list_clips
from edge_asd.errors import DataError
from edge_asd.scoring.stage2 import Stage2Config, check_fittable

from .data import split_normals

log = logging.getLogger(__name__)


# Below this many normal clips a learned extractor has nothing to learn from that the plain system does
# not already use (and the no-regret check has too few held-out clips to judge it): plain system alone.
MIN_LEARNED_CLIPS = 10




def count_normals(data: Path, machine: str) -> int:
    """Normal training clips of ``machine`` after :func:`check_audible` (DataError when there are none)."""
    clips = [c for c in list_clips(data, machine, "train") if c.label in (None, "normal")]
    check_audible([c.path for c in clips], data / machine / "train")
    return len(clips)


def check_audible(paths: list[Path], where: Path) -> None:
    """:class:`DataError` when every clip is silent: no system can learn a machine from a muted microphone.

    Some silent clips among sounding ones are only counted in the log (a machine that was off).
    """
    import soundfile as sf

    silent = 0
    for p in paths:
        try:
            peak = float(np.max(np.abs(sf.read(str(p), dtype="float32", always_2d=True)[0]), initial=0.0))
        except Exception:  # unreadable files are the readers' to name, with their own message
            continue
        silent += peak < SILENT_PEAK
    if paths and silent == len(paths):
        raise DataError(f"{where}: all {silent} normal training clip(s) are silent (peak below -90 dBFS); "
                        "check the microphone (muted, unplugged, gain at zero)")
    if silent:
        log.warning("%s: %d of %d normal training clips are silent (peak below -90 dBFS)", where, silent, len(paths))


def bank_counts(data: Path, machine: str, bank: str, r_train: float, n_target_train: int, seed: int) -> dict[str, Counter]:
    """Per section, the number of source and target normal clips stage 2 will be fitted on."""
    clips = [c for c in list_clips(data, machine, "train") if c.label in (None, "normal")]
    sections = sorted({c.section for c in clips})
    if bank == "heldout":
        split = split_normals(clips, sections, r_train, n_target_train, seed)
        clips = [c for c in clips if split[c.path] == "heldout"]
    counts: dict[str, Counter] = {s: Counter() for s in sections}
    for c in clips:
        counts[c.section][c.domain or "source"] += 1
    return counts


def heldout_for_check(data: Path, machine: str, r_train: float, n_target_train: int, seed: int) -> int:
    """The most normals any section holds out from stage 1: what the no-regret check can judge a learned member on."""
    clips = [c for c in list_clips(data, machine, "train") if c.label in (None, "normal")]
    sections = sorted({c.section for c in clips})
    split = split_normals(clips, sections, r_train, n_target_train, seed)
    held = Counter(c.section for c in clips if split[c.path] == "heldout")
    return max(held.values(), default=0)


def choose_approach(data: Path, machine: str, bank: str, r_train: float, n_target_train: int, seed: int) -> str:
    """``--approach auto``: specialization where every section has the target clips Eq. 8 needs, else generalization."""
    counts = bank_counts(data, machine, bank, r_train, n_target_train, seed)
    specialization = Stage2Config(approach="specialization", bank=bank)
    short = []
    for section, n in counts.items():
        try:  # the rule stage 2 itself applies, not a copy of its numbers
            check_fittable(section, n["source"], n["target"], specialization)
        except ValueError:
            short.append(section)
    if not short:
        return "specialization"
    log.info("%s: section(s) %s lack the clips domain specialization needs: domain generalization (one model for both domains)",
             machine, ", ".join(short))
    return "generalization"


def preflight(cfg, approaches: list[str], s2: Stage2Config):
    """``cfg`` (a TrainConfig) as it can run, or :class:`DataError` before anything is written.

    A data set without any target-domain clip can only be scored by domain
    generalization: the domain head is switched off (said once in the log) and
    a request for specialization is refused.
    """
    data = Path(cfg.data)
    counts = bank_counts(data, cfg.machine, s2.bank, cfg.r_train, cfg.n_target_train, cfg.seed)
    all_counts = bank_counts(data, cfg.machine, "all", cfg.r_train, cfg.n_target_train, cfg.seed)
    n_target = sum(c["target"] for c in all_counts.values())
    if n_target == 0 and "specialization" in approaches:
        raise DataError(
            f"{data / cfg.machine / 'train'}: no target-domain clips, so domain specialization cannot be fitted; "
            "use --approach generalization"
        )
    for approach in approaches:
        a_cfg = replace(s2, approach=approach)
        for section, n in counts.items():
            try:
                check_fittable(section, n["source"], n["target"], a_cfg)
            except ValueError as exc:
                hint = "" if s2.bank == "all" else " (--bank all also uses the clips stage 1 trains on)"
                raise DataError(f"{cfg.machine}: {exc}{hint}") from None
    if n_target == 0 and cfg.domain_head:
        log.info("%s: no target-domain clips in the data: domain generalization only, trained without the domain head", cfg.machine)
        cfg = replace(cfg, domain_head=False)
    return cfg
