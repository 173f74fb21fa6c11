"""Spectral-line groups and one domain per clip, beside the plain system's default scorer (no training).

    .venv/bin/python benchmarks/bench_plain_lines.py DATA_DIR... [--cache DIR]

Features: the product's default plain features (cached as ``bench_plain_groups.py`` caches them), and a fine
low-frequency spectrum of each clip (standardized waveform, 4096-point Hann frames every 2048 samples, the mean power
of each DFT bin of 20-1000 Hz, its log less its 15-bin moving average: how far each bin stands above the spectrum's
floor; cached as ``fine_<folder>_<machine>.npy``). Each section's normals of both domains fit
``FeatureGroupGaussian(per_domain=True)`` (``--plain-scorer groups-per-domain``, the default) with:
  default       the default features and groups
  harmonics     + a ninth group: the prominence (the detail's largest value within one bin) at the first 8
                harmonics of the strongest line below 500 Hz
  lines         + a ninth group: the 8 largest local maxima of the detail, sorted (blind to where: a speed shift
                moves the lines, not their prominences)
  both          + both groups
  one domain    the default, each clip scored against the one domain that gives its whole score (the joint block
                and the worst group) the lowest, instead of the nearer domain in each group separately
Prints the official score (harmonic mean of AUC source, AUC target and pAUC over every section) per folder.
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
from edge_asd.io.audio import read_audio  # noqa: E402
from edge_asd.scoring.groups import FeatureGroupGaussian  # noqa: E402

VARIANTS = ("default", "harmonics", "lines", "both", "one domain")
N_FFT, HOP, SR = 4096, 2048, 16000
FREQS = np.fft.rfftfreq(N_FFT, 1 / SR)
BINS = np.flatnonzero((FREQS >= 20) & (FREQS <= 1000))
TREND_BINS = 15
N_LINES = 8


def fine_detail(path: Path) -> np.ndarray:
    """``[len(BINS)]``: each low-frequency bin's mean log power less its moving average over ``TREND_BINS``."""
    x = read_audio(path).astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-9)
    n = 1 + (len(x) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, N_FFT), (4 * HOP, 4))
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)[:, BINS]) ** 2
    log_power = np.log(power.mean(axis=0) + 1e-6)
    half = TREND_BINS // 2
    trend = np.convolve(np.pad(log_power, half, mode="edge"), np.ones(TREND_BINS) / TREND_BINS, mode="valid")
    return (log_power - trend).astype(np.float64)


def cached_detail(data: Path, machine: str, files: list[Path], cache: Path) -> np.ndarray:
    path = cache / f"fine_{data.name}_{machine}.npy"
    if path.is_file():
        D = np.load(path)
        if D.shape == (len(files), BINS.size):
            return D
    D = np.stack([fine_detail(f) for f in files])
    np.save(path, D)
    return D


def harmonics(D: np.ndarray) -> np.ndarray:
    """``[n, N_LINES]``: the detail at h * f0, h = 1..N_LINES (the largest within one bin), f0 the strongest line
    below 500 Hz; 0 past the band's top."""
    out = np.zeros((len(D), N_LINES))
    f, below = FREQS[BINS], np.searchsorted(FREQS[BINS], 500.0)
    for i, d in enumerate(D):
        f0 = f[int(np.argmax(d[:below]))]
        for h in range(1, N_LINES + 1):
            k = int(round((h * f0 - f[0]) / (f[1] - f[0])))
            if k < len(d) - 1:
                out[i, h - 1] = d[max(k - 1, 0) : k + 2].max()
    return out


def largest_lines(D: np.ndarray) -> np.ndarray:
    """``[n, N_LINES]``: the largest local maxima of each detail, in falling order (0 where there are fewer)."""
    out = np.zeros((len(D), N_LINES))
    for i, d in enumerate(D):
        peaks = d[1:-1][(d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])]
        top = np.sort(peaks)[::-1][:N_LINES]
        out[i, : top.size] = top
    return out


def variant_scores(name: str, X: np.ndarray, groups: dict[str, np.ndarray], edges: str, tr: np.ndarray,
                   te: np.ndarray, domains: np.ndarray) -> np.ndarray:
    extra = {"harmonics": [groups["harmonics"]], "lines": [groups["lines"]],
             "both": [groups["harmonics"], groups["lines"]]}.get(name, [])
    M = np.hstack([X, *extra])
    edges = edges + "".join(f",{X.shape[1] + N_LINES * (j + 1)}" for j in range(len(extra)))
    g = FeatureGroupGaussian(edges, per_domain=True).fit(M[tr], domains[tr])
    if name != "one domain":
        return g.score_samples(M[te])
    z = g.domain_block_scores(M[te])  # [domains, n, 1 + groups]
    return (g.joint_weight * z[:, :, 0] + z[:, :, 1:].max(axis=2)).min(axis=0)


def folder_figures(data: Path, cache: Path) -> dict[str, float]:
    def scorer_of(machine, files, X, cfg):
        D = cached_detail(data, machine, files, cache)
        groups = {"harmonics": harmonics(D), "lines": largest_lines(D)}
        return lambda name, tr, te, dom: variant_scores(name, X, groups, cfg.block_edges(), tr, te, dom)

    return scored_sections(data, cache, VARIANTS, scorer_of)


def main() -> None:
    print_table(__doc__.split("\n\n")[0], (*VARIANTS, *(f"min target AUC: {v}" for v in VARIANTS)), folder_figures)


if __name__ == "__main__":
    main()
