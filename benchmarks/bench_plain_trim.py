"""The plain system's envelope spectra with and without their loudest windows (no training).

    .venv/bin/python benchmarks/bench_plain_trim.py DATA_DIR... [--cache DIR] [--variants off,trim1,trim2]

Features: the plain features before the trim (``--plain-features transients``), then the same with each envelope
spectrum's 2 s windows averaged without the largest one or two at each frequency (``modulation_trim`` 1 or 2: the
modulation spectrum and the lines of both envelopes), computed by the product's ``LogMelStats`` and cached per
folder, machine and setting; every variant is scored by the plain system's default scorer
(``--plain-scorer groups-per-domain``: ``FeatureGroupGaussian(per_domain=True)``, weight 2, fitted on each section's
normals of both domains). Variants:
  off      the Welch mean of every window (``transients``, the default before)
  trim1    each frequency's largest window left out (``trimmed``, the default)
  trim2    its two largest
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

BASE = PLAIN_FEATURES["transients"]
VARIANTS: dict[str, LogMelStatsConfig] = {
    "off": BASE,
    "trim1": replace(BASE, modulation_trim=1),
    "trim2": replace(BASE, modulation_trim=2),
}


def main() -> None:
    variants_main(__doc__, VARIANTS, "off,trim1,trim2", "trim", per_domain=True)


if __name__ == "__main__":
    main()
