"""The plain system's scoring rules side by side (no training): nearest neighbours, and one shrunk Gaussian.

    .venv/bin/python benchmarks/bench_plain_rules.py DATA_DIR... [--cache DIR]

Features: the product's plain system (reference log-mel statistics | envelope modulation spectrum, the cache of
``bench_features.py``), z-scored per section with its training normals. Rules (score of a test clip):
  nn    distance to the nearest training normal (the reference's rule; ``--plain-scorer nearest``)
  dn    per domain, that distance divided by the median nearest-neighbour distance inside the domain's training
        normals; the smaller of the two domains (the issue's "score normalization per domain")
  ls    each training normal's distance divided by its own distance to its nearest other normal, smallest ratio
        (``--plain-scorer local``, ``KNNDetector(local_scale=True)``)
  ls3   as ls with the mean distance to its 3 nearest others
  gs    negative log-likelihood under one Gaussian of the section's normals, Ledoit-Wolf shrunk covariance
        (``--plain-scorer gaussian``, ``GMMDetector(1, shrinkage="ledoit-wolf")``: the product's code)
Prints the official score (harmonic mean of AUC source, AUC target, pAUC over every section) per folder and rule.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_features  # noqa: E402
from edge_asd.scoring.gmm import GMMDetector  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402

RULES = ("nn", "dn", "ls", "ls3", "gs")


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1))


def score(X: np.ndarray, tr: np.ndarray, te: np.ndarray, train_domains: np.ndarray, rule: str) -> np.ndarray:
    A, B = X[tr], X[te]
    mu, sd = A.mean(0), A.std(0) + 1e-6
    A, B = (A - mu) / sd, (B - mu) / sd
    if rule == "gs":
        return GMMDetector(1, shrinkage="ledoit-wolf").fit(A).score_samples(B)
    D = _dist(A, B)
    if rule == "nn":
        return D.min(1)
    L = _dist(A, A)
    np.fill_diagonal(L, np.inf)
    if rule in ("ls", "ls3"):
        own = L.min(1) if rule == "ls" else np.sort(L, 1)[:, :3].mean(1)
        return (D / own[None]).min(1)
    per_domain = []
    for dom in ("source", "target"):
        m = train_domains == dom
        if m.sum() >= 2:
            per_domain.append(D[:, m].min(1) / np.median(L[np.ix_(m, m)].min(1)))
    return np.min(per_domain, axis=0)


def folder_figures(data: Path, cache: Path) -> dict[str, float]:
    bench_features.folder_scores(data, cache)  # fills the feature cache
    figures: dict[str, list] = {r: [] for r in RULES}
    for machine in sorted(p.name for p in data.iterdir() if (p / "test").is_dir() and (p / "train").is_dir()):
        files = sorted((data / machine / "train").glob("*.wav")) + sorted((data / machine / "test").glob("*.wav"))
        with np.load(cache / f"{data.name}_{machine}.npz") as z:
            X = np.hstack([z["ref"], z["mod"]])
        meta = [re.match(r"section_(\w+?)_(source|target)_(train|test)_(normal|anomaly)", f.name).groups() for f in files]
        sec, dom, split, lab = (np.array(c) for c in zip(*meta))
        for s in sorted(set(sec)):
            tr, te = (sec == s) & (split == "train"), (sec == s) & (split == "test")
            for rule in RULES:
                m = labelled_metrics(lab[te] == "anomaly", dom[te] == "target", score(X, tr, te, dom[tr], rule))
                figures[rule] += list(m.official().values())
    return {r: 100 * harmonic_mean(present(v)) for r, v in figures.items()}


def main() -> None:
    bench_features.print_table(__doc__.split("\n\n")[0], RULES, folder_figures)


if __name__ == "__main__":
    main()
