"""The plain system's scorer with the domains pooled and with each domain its own mean (no training).

    .venv/bin/python benchmarks/bench_plain_domains.py DATA_DIR... [--cache DIR]

Features: the product's default plain features (cached as ``bench_plain_groups.py`` caches them). Each section is
fitted by the product's stage 2 (``edge_asd.scoring.stage2.fit_section`` with ``train.plain.plain_stage2``) on its
normals of both domains, and its test clips scored by the fitted section model, as ``edge-asd score`` does:
  groups             ``--plain-scorer groups``: one Gaussian per feature group of both domains' normals together
  groups-per-domain  ``--plain-scorer groups-per-domain``: each domain its own mean and standardization, one shared
                     covariance, a clip scored against its nearer domain (``FeatureGroupGaussian(per_domain=True)``)
Prints the official score (harmonic mean of AUC source, AUC target and pAUC over every section) per folder and
scorer, and each scorer's lowest section target AUC (target normals against all anomalies, as DCASE counts it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_features import print_table  # noqa: E402
from bench_plain_groups import scored_sections  # noqa: E402
from edge_asd.scoring.combine import DG_DOMAIN  # noqa: E402
from edge_asd.scoring.section import section_parts  # noqa: E402
from edge_asd.scoring.stage2 import fit_section  # noqa: E402
from train.plain import plain_stage2  # noqa: E402

SCORERS = ("groups", "groups-per-domain")


def section_scores(scorer: str, X: np.ndarray, tr: np.ndarray, te: np.ndarray, train_domains: np.ndarray) -> np.ndarray:
    cfg = plain_stage2(scorer=scorer)
    emb = X[tr][:, None, :].astype(np.float32)
    fit = fit_section("00", emb, train_domains, np.zeros((len(emb), 1), dtype=np.float32), cfg)
    return section_parts(fit.model, X[te][:, None, :].astype(np.float32), cfg.aggregator)[DG_DOMAIN]


def folder_figures(data: Path, cache: Path) -> dict[str, float]:
    def scorer_of(machine, files, X, cfg):
        return lambda name, tr, te, dom: section_scores(name, X, tr, te, dom[tr])

    return scored_sections(data, cache, SCORERS, scorer_of)


def main() -> None:
    print_table(__doc__.split("\n\n")[0], (*SCORERS, *(f"min target AUC: {n}" for n in SCORERS)), folder_figures)


if __name__ == "__main__":
    main()
