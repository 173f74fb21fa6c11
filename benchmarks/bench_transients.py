"""The plain system with and without its transient gate (no training): the frames of a passing transient left out.

    .venv/bin/python benchmarks/bench_transients.py DATA_DIR... [--cache DIR] [--variants off,s3,s4,...]

Features: the plain features before the gate (``--plain-features dynamics``), then the same with
``edge_asd.io.transients``' gate at each setting, computed by the product's ``LogMelStats`` and cached per folder,
machine and setting; every variant is scored by the plain system's default scorer (``FeatureGroupGaussian``, weight
2, fitted on each section's normals of both domains). Variants:
  off        no gate (``dynamics``, the default before)
  s3, s4     frames loud by 3 or 4 robust deviations and new by 3 (``transient_sigmas`` 3 or 4, novelty 3)
  s3-loud    loud by 3 alone (novelty 0): an on-off machine's loud state is cut at the 10 % cap
  s4-d0      s4 without the neighbouring frames (``transient_dilate`` 0)
  s4-n2      s4, new by 2
Prints the official score (harmonic mean of AUC source, AUC target and pAUC over every section) per folder and
variant, and each variant's lowest section target AUC.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_plain_groups import variants_main  # noqa: E402
from edge_asd.io.features import LogMelStatsConfig  # noqa: E402
from train.plain import PLAIN_FEATURES  # noqa: E402

BASE = PLAIN_FEATURES["dynamics"]
VARIANTS: dict[str, LogMelStatsConfig] = {
    "off": BASE,
    "s3": replace(BASE, transient_sigmas=3.0),
    "s4": replace(BASE, transient_sigmas=4.0),
    "s3-loud": replace(BASE, transient_sigmas=3.0, transient_novelty=0.0),
    "s4-d0": replace(BASE, transient_sigmas=4.0, transient_dilate=0),
    "s4-n2": replace(BASE, transient_sigmas=4.0, transient_novelty=2.0),
}


def main() -> None:
    variants_main(__doc__, VARIANTS, "off,s3,s4", "transients", per_domain=False)


if __name__ == "__main__":
    main()
