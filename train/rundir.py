"""The run folder's layout, in one place: every file ``edge-asd-train`` writes and export and the report read.

A run folder (``edge-asd-train --out RUN``)::

    config.json            the training configuration (or, for the plain system, its features)
    split.json             every clip, its section, domain and whether stage 1 trained on it or held it out
    gate.json              the no-regret check's decision and figures
    losses.csv, validation.csv
    checkpoints/           stage 1's checkpoints; ``extractor.pt`` is the trained extractor
    stage2/normal_embeddings.npz   the normals' embeddings (a cache keyed by clip name)
    stage2/default.json    which approach the run deploys
    stage2/<approach>/     stage2.json (configuration and per-section numbers), detectors.npz, oof.npz
    baseline/plain/        the plain system, itself a run folder of this layout
    baseline/ae.pt         the DCASE autoencoder (opt-in)
    eval/test_embeddings.npz       the report's cache of the test clips' embeddings

Torch-free, so that the report and export can find files without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder; :meth:`read_config` and friends read its small JSON files."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # --- files at the top ---------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def gate(self) -> Path:
        return self.root / "gate.json"

    @property
    def losses(self) -> Path:
        return self.root / "losses.csv"

    @property
    def validation(self) -> Path:
        return self.root / "validation.csv"

    # --- stage 1 ------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def extractor(self) -> Path:
        return self.checkpoints / "extractor.pt"

    # --- stage 2 ------------------------------------------------------------------------------
    @property
    def stage2_root(self) -> Path:
        return self.root / "stage2"

    @property
    def normal_embeddings(self) -> Path:
        return self.stage2_root / "normal_embeddings.npz"

    @property
    def default_approach_file(self) -> Path:
        return self.stage2_root / "default.json"

    def stage2(self, approach: str) -> Path:
        return self.stage2_root / approach

    def stage2_json(self, approach: str) -> Path:
        return self.stage2(approach) / "stage2.json"

    def detectors(self, approach: str) -> Path:
        return self.stage2(approach) / "detectors.npz"

    def oof(self, approach: str) -> Path:
        return self.stage2(approach) / "oof.npz"

    # --- references and the report ------------------------------------------------------------
    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    @property
    def plain(self) -> Path:
        """The plain system fitted beside the run (a run folder of its own)."""
        return self.baseline / "plain"

    @property
    def ae(self) -> Path:
        return self.baseline / "ae.pt"

    @property
    def test_embeddings(self) -> Path:
        return self.root / "eval" / "test_embeddings.npz"

    # --- readers ------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config.read_text())

    def read_split(self) -> dict[str, Any]:
        return json.loads(self.split.read_text())

    def read_gate(self) -> dict[str, Any] | None:
        return json.loads(self.gate.read_text()) if self.gate.is_file() else None

    def default_approach(self) -> str:
        return json.loads(self.default_approach_file.read_text())["approach"]
