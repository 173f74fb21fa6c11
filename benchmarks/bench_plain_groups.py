"""The plain system's scorers side by side on its default features (no training): one shrunk Gaussian of all the
features, and one per group of them.

    .venv/bin/python benchmarks/bench_plain_groups.py DATA_DIR... [--cache DIR]

Features: the product's default plain features (``train.plain.PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]``, computed by
``edge_asd.io.features.LogMelStats`` and cached per folder and machine), each section's normals of both domains.
Scorers, each the product's own class (``edge_asd.scoring``):
  gaussian  ``GMMDetector(1, shrinkage="ledoit-wolf")`` on the features z-scored with the normals (``--plain-scorer
            gaussian``, the default before)
  max       ``FeatureGroupGaussian(edges, joint_weight=0)``: the largest of the groups' standardized log distances
  w1, w1.5, w2, w3
            ``FeatureGroupGaussian(edges, joint_weight=w)``: w x the whole vector's + the largest group's
            (``--plain-scorer groups`` is w2)
Prints the official score (harmonic mean of AUC source, AUC target, pAUC over every section) per folder and scorer,
and the lowest section target AUC of each folder's best and of ``gaussian``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_features import print_table  # noqa: E402
from bench_plain_rules import labelled_machines, score  # noqa: E402
from edge_asd.io.features import LogMelStats, LogMelStatsConfig  # noqa: E402
from edge_asd.scoring.groups import FeatureGroupGaussian  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402
from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES, clip_features  # noqa: E402

WEIGHTS = {"max": 0.0, "w1": 1.0, "w1.5": 1.5, "w2": 2.0, "w3": 3.0}
SCORERS = ("gaussian", *WEIGHTS, "min target AUC: gaussian", "min target AUC: w2")


def cached_features(data: Path, machine: str, files: list[Path], cache: Path, cfg: LogMelStatsConfig,
                    tag: str) -> np.ndarray:
    """``[len(files), cfg.dim]`` plain features of a folder's machine, from ``cache/<tag>_<folder>_<machine>.npy``
    when it holds them, else computed by the product's ``LogMelStats`` and saved there."""
    path = cache / f"{tag}_{data.name}_{machine}.npy"
    if path.is_file():
        X = np.load(path)
        if X.shape == (len(files), cfg.dim):
            return X
    X = clip_features(files, LogMelStats(cfg))[:, 0].astype(np.float64)
    np.save(path, X)
    return X


def _features(data: Path, machine: str, files: list[Path], cache: Path):
    cfg = PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]
    return cached_features(data, machine, files, cache, cfg, f"plain-{DEFAULT_PLAIN_FEATURES}"), cfg


def _score(name: str, X: np.ndarray, tr: np.ndarray, te: np.ndarray, edges: str) -> np.ndarray:
    if name == "gaussian":  # bench_plain_rules.py's "gs" (its other arguments serve other rules)
        return score(X, tr, te, np.array([]), "gs", np.array([]), np.array([]))
    return FeatureGroupGaussian(edges, joint_weight=WEIGHTS[name]).fit(X[tr]).score_samples(X[te])


def folder_figures(data: Path, cache: Path) -> dict[str, float]:
    def scorer_of(machine, files, X, cfg):
        return lambda name, tr, te, dom: _score(name, X, tr, te, cfg.block_edges())

    return scored_sections(data, cache, SCORERS[:-2], scorer_of)


def section_figures(data: Path, names, scorer_of) -> dict[str, float]:
    """:func:`summary` of every section of a folder, scored by each of ``names``: ``scorer_of(machine, files)`` gives,
    per machine type, ``score(name, tr, te, domains)``, the scores of the test clips ``te`` from the training normals
    ``tr`` (boolean masks over ``files``)."""
    figures: dict[str, list] = {n: [] for n in names}
    lowest: dict[str, list] = {n: [] for n in names}
    for machine, files, sec, dom, split, lab in labelled_machines(data):
        score = scorer_of(machine, files)
        for s in sorted(set(sec)):
            tr, te = (sec == s) & (split == "train") & (lab == "normal"), (sec == s) & (split == "test")
            for name in names:
                m = labelled_metrics(lab[te] == "anomaly", dom[te] == "target", score(name, tr, te, dom))
                figures[name] += list(m.official().values())
                lowest[name].append(m.auc_target)
    return summary(figures, lowest)


def scored_sections(data: Path, cache: Path, names: tuple[str, ...], scorer_of) -> dict[str, float]:
    """:func:`section_figures` on the default plain features: ``scorer_of(machine, files, X, cfg)`` gives the
    scorer of a machine type from its features ``X`` and their config."""
    def on_default_features(machine: str, files: list[Path]):
        return scorer_of(machine, files, *_features(data, machine, files, cache))

    return section_figures(data, names, on_default_features)


def variant_figures(data: Path, cache: Path, variants: dict, names: list[str], tag: str,
                    per_domain: bool) -> dict[str, float]:
    """:func:`section_figures` for each of ``names``, a feature setting of ``variants`` (a ``LogMelStatsConfig`` each,
    cached as ``<tag>-<name>``), scored by ``FeatureGroupGaussian`` (weight 2; each domain its own mean with
    ``per_domain``, the scorer of ``--plain-scorer groups-per-domain``)."""
    def scorer_of(machine: str, files: list[Path]):
        X = {n: cached_features(data, machine, files, cache, variants[n], f"{tag}-{n}") for n in names}

        def score(name: str, tr: np.ndarray, te: np.ndarray, dom: np.ndarray) -> np.ndarray:
            detector = FeatureGroupGaussian(variants[name].block_edges(), joint_weight=2.0, per_domain=per_domain)
            return detector.fit(X[name][tr], dom[tr]).score_samples(X[name][te])

        return score

    return section_figures(data, names, scorer_of)


def variants_main(doc: str, variants: dict, default: str, tag: str, per_domain: bool) -> None:
    """The command line of a benchmark of feature settings: ``DATA_DIR... [--cache DIR] [--variants a,b,...]``, one
    row per folder of :func:`variant_figures`, and each variant's lowest section target AUC."""
    pre = argparse.ArgumentParser(add_help=False)  # the columns depend on the variants asked for
    pre.add_argument("--variants", default=default)
    names = pre.parse_known_args()[0].variants.split(",")
    unknown = set(names) - set(variants)
    if unknown:
        sys.exit(f"unknown variants {', '.join(sorted(unknown))} (known: {', '.join(variants)})")

    def options(ap) -> None:
        ap.add_argument("--variants", default=default, help="comma-separated, of: " + ", ".join(variants))

    def figures_of(data: Path, cache: Path, args) -> dict[str, float]:
        return variant_figures(data, cache, variants, names, tag, per_domain)

    print_table(doc.split("\n\n")[0], (*names, *(f"min target AUC: {n}" for n in names)), figures_of, options)


def summary(figures: dict[str, list], lowest: dict[str, list]) -> dict[str, float]:
    """Per scorer, the official score of its sections' figures, and ``"min target AUC: <scorer>"`` of ``lowest``'s
    target AUCs, in %."""
    out = {r: 100 * harmonic_mean(present(v)) for r, v in figures.items()}
    for name, v in lowest.items():
        v = present(v)
        out[f"min target AUC: {name}"] = 100 * min(v) if v else float("nan")
    return out


def main() -> None:
    print_table(__doc__.split("\n\n")[0], SCORERS, folder_figures)


if __name__ == "__main__":
    main()
