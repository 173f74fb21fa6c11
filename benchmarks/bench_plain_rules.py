"""The plain system's scoring rules side by side (no training): nearest neighbours, and one shrunk Gaussian.

    .venv/bin/python benchmarks/bench_plain_rules.py DATA_DIR... [--cache DIR] [--features modulation|lines]

Features: the product's plain system (reference log-mel statistics | envelope modulation spectrum, and with
``--features lines`` | the line prominences of both envelopes, the default; the cache of ``bench_features.py``),
z-scored per section with its training normals. Rules (score of a test clip):
  nn    distance to the nearest training normal (the reference's rule; ``--plain-scorer nearest``)
  dn    per domain, that distance divided by the median nearest-neighbour distance inside the domain's training
        normals; the smaller of the two domains (the issue's "score normalization per domain")
  ls    each training normal's distance divided by its own distance to its nearest other normal, smallest ratio
        (``--plain-scorer local``, ``KNNDetector(local_scale=True)``)
  ls3   as ls with the mean distance to its 3 nearest others
  gs    negative log-likelihood under one Gaussian of the section's normals, Ledoit-Wolf shrunk covariance
        (``--plain-scorer gaussian``, ``GMMDetector(1, shrinkage="ledoit-wolf")``: the product's code)
  gt    per domain its own mean, one Ledoit-Wolf covariance of both domains' deviations from their means; the
        smaller of the two Mahalanobis distances (a tied two-component Gaussian with known components)
  gs*   not a rule, a ceiling: gs with the target domain's test scores shifted by the gap between the medians of
        the two domains' test normals (labels used): what any per-domain score normalization could gain at most
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
from edge_asd.scoring.gmm import GMMDetector, _ledoit_wolf_to_diagonal  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402

RULES = ("nn", "dn", "ls", "ls3", "gs", "gt", "gs*")


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1))


def _tied(A: np.ndarray, B: np.ndarray, train_domains: np.ndarray) -> np.ndarray:
    means = [A[train_domains == d].mean(0) for d in ("source", "target") if np.any(train_domains == d)]
    R = np.vstack([A[train_domains == d] - m for d, m in zip(("source", "target"), means)])
    cov = _ledoit_wolf_to_diagonal(R, np.full(len(R), 1.0 / len(R)), R.T @ R / len(R))
    P = np.linalg.inv(cov + 1e-6 * np.eye(len(cov)))
    return np.min([np.einsum("nd,de,ne->n", B - m, P, B - m) for m in means], axis=0)


def score(X: np.ndarray, tr: np.ndarray, te: np.ndarray, train_domains: np.ndarray, rule: str,
          test_target: np.ndarray, test_normal: np.ndarray) -> np.ndarray:
    A, B = X[tr], X[te]
    mu, sd = A.mean(0), A.std(0) + 1e-6
    A, B = (A - mu) / sd, (B - mu) / sd
    if rule in ("gs", "gs*"):
        s = GMMDetector(1, shrinkage="ledoit-wolf").fit(A).score_samples(B)
        if rule == "gs*" and np.any(test_target & test_normal) and np.any(~test_target & test_normal):
            s = s - test_target * (np.median(s[test_target & test_normal]) - np.median(s[~test_target & test_normal]))
        return s
    if rule == "gt":
        return _tied(A, B, train_domains)
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


FEATURES = {"modulation": ("ref", "mod"), "lines": ("ref", "mod", "lines")}


def labelled_machines(data: Path):
    """Per machine type of a development folder: ``(machine, files, section, domain, split, label)``, the files
    train then test (sorted), the four arrays parsed from their names."""
    for machine in sorted(p.name for p in data.iterdir() if (p / "test").is_dir() and (p / "train").is_dir()):
        files = sorted((data / machine / "train").glob("*.wav")) + sorted((data / machine / "test").glob("*.wav"))
        meta = [re.match(r"section_(\w+?)_(source|target)_(train|test)_(normal|anomaly)", f.name).groups() for f in files]
        yield (machine, files, *(np.array(c) for c in zip(*meta)))


def folder_figures(data: Path, cache: Path, args) -> dict[str, float]:
    bench_features.folder_scores(data, cache)  # fills the feature cache
    figures: dict[str, list] = {r: [] for r in RULES}
    for machine, files, sec, dom, split, lab in labelled_machines(data):
        with np.load(cache / f"{data.name}_{machine}.npz") as z:
            X = np.hstack([z[g] for g in FEATURES[args.features]])
        for s in sorted(set(sec)):
            tr, te = (sec == s) & (split == "train"), (sec == s) & (split == "test")
            for rule in RULES:
                target = dom[te] == "target"
                m = labelled_metrics(lab[te] == "anomaly", target,
                                     score(X, tr, te, dom[tr], rule, target, lab[te] == "normal"))
                figures[rule] += list(m.official().values())
    return {r: 100 * harmonic_mean(present(v)) for r, v in figures.items()}


def main() -> None:
    def options(ap) -> None:
        ap.add_argument("--features", default="modulation", choices=sorted(FEATURES),
                        help="the plain features: --plain-features modulation or lines")

    bench_features.print_table(__doc__.split("\n\n")[0], RULES, folder_figures, options)


if __name__ == "__main__":
    main()
