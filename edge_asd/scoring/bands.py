"""Band evidence: where in the spectrum a clip deviates from its nearest normal clips.

A technician who gets an alert asks where in the sound it changed. The plain
system's features (:mod:`edge_asd.io.features`, per band the mean and the
standard deviation of the log-mel over time of the clip-standardized
waveform) already answer it: a clip's per-band mean log-mel is compared with
that of its k nearest normal training clips of the section (nearest in the
plain system's z-scored feature space, so the neighbours are clips of the same
operating condition: the domain, the speed, the load), and each band's
difference is divided by how much that difference varies among the normals
themselves (leave one out: each normal against its own k nearest others). The
bands where ``|z|`` passes :data:`Z_THRESHOLD` are named, adjacent ones of one
sign merged, strongest first.

The export fits a :class:`BandReference` per section (``fit_reference``); the
device only searches and divides (``deviation``), in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_asd.io.features import LogMelStatsConfig, hz_to_mel, mel_to_hz
from edge_asd.io.rowstats import MAD_SIGMA

# |z| a band must pass to be named. The spread is MAD_SIGMA (1.4826) x the median |residual|
# of the section's normals against their own neighbours, a robust standard
# deviation: were the residuals Gaussian, 5 would name a given band of a normal
# clip 6e-7 of the time. Real residuals have heavier tails and a section's
# spread is estimated from few clips: on a synthetic fan with 15 normals, each
# normal left out in turn, 4 named a band in 3 clips of 16 and 5 in 1, while a
# tone 20 dB below the clip's level reached z 15 (tests/test_bands.py holds the
# tone case). Lower, and normals name bands as often as faults do; higher, and
# a fault a technician could hear goes unnamed.
Z_THRESHOLD = 5.0
MAX_BANDS = 3
K_NEIGHBOURS = 5
# Spreads below this (in nepers of power, 0.2 dB) are numeric noise: a band
# whose normals never vary must not turn float rounding into evidence.
SPREAD_FLOOR_LN = 0.05
SCALE_FLOOR = 1e-6


@dataclass(frozen=True)
class Band:
    """One stretch of adjacent mel bands that deviates one way; ``z`` > 0: louder than the normal neighbours."""

    lo_hz: float
    hi_hz: float
    z: float

    def to_dict(self) -> dict:
        return {"lo_hz": round(self.lo_hz, 1), "hi_hz": round(self.hi_hz, 1), "z": round(self.z, 2)}


@dataclass(frozen=True)
class BandReference:
    """One section's normals as band evidence needs them.

    ``features`` [n, 2 * n_mels] are the normals' plain features; ``centre`` and
    ``scale`` [2 * n_mels] z-score them for the neighbour search (as the plain
    system does before its 1-NN); ``spread`` [n_mels] is the robust spread of a
    normal clip's per-band mean log-mel around its neighbours'.
    """

    features: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    spread: np.ndarray
    k: int

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {prefix + name: getattr(self, name) for name in ("features", "centre", "scale", "spread")}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, k: int) -> "BandReference":
        f, centre, scale, spread = (np.asarray(arrays[prefix + n], dtype=np.float32) for n in ("features", "centre", "scale", "spread"))
        # a section with few normals was fitted with fewer neighbours (each normal has n - 1 others)
        ref = cls(f, centre, scale, spread, k=max(1, min(int(k), f.shape[0] - 1)))
        n_mels = ref.spread.shape[0]
        if ref.features.ndim != 2 or ref.features.shape[1] != 2 * n_mels or ref.centre.shape != (2 * n_mels,) \
                or ref.scale.shape != (2 * n_mels,) or ref.features.shape[0] < 2 or ref.k < 1:
            raise ValueError(f"band reference {prefix!r}: inconsistent shapes")
        return ref


def band_edges(cfg: LogMelStatsConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each mel band's ``(lo_hz, hi_hz)``: half way (in mel) to its neighbours' centres, so that they tile the range."""
    htk = cfg.mel_scale == "htk"
    mels = np.linspace(hz_to_mel(cfg.f_min, htk), hz_to_mel(cfg.f_max, htk), cfg.n_mels + 2)
    half = (mels[1] - mels[0]) / 2.0
    centres = mels[1:-1]
    return mel_to_hz(centres - half, htk), mel_to_hz(centres + half, htk)


def spread_floor(cfg: LogMelStatsConfig) -> float:
    return SPREAD_FLOOR_LN * (10.0 / math.log(10.0) if cfg.log == "db" else 1.0)


def _residuals(ref_features: np.ndarray, centre: np.ndarray, scale: np.ndarray, clips: np.ndarray, k: int,
               exclude_self: bool = False) -> np.ndarray:
    """``[n, n_mels]``: each clip's per-band mean log-mel minus its k nearest normals' mean, less its median.

    The median over bands is taken out because the waveform is standardized
    before the features: a tone that adds power pushes every other band down
    by the same amount, and that broad shift is the level, not a place in the
    spectrum (and a broad real change is what the score already says).
    """
    n_mels = ref_features.shape[1] // 2
    zr = (ref_features - centre) / scale
    zc = (clips - centre) / scale
    d = (zc * zc).sum(1)[:, None] - 2.0 * zc @ zr.T + (zr * zr).sum(1)[None, :]
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = min(k, ref_features.shape[0] - (1 if exclude_self else 0))
    nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
    r = clips[:, :n_mels] - ref_features[nearest, :n_mels].mean(axis=1)
    return r - np.median(r, axis=1, keepdims=True)


def _logmel_statistics(features: np.ndarray, n_mels: int) -> np.ndarray:
    """The per-band means and standard deviations that lead the plain features.

    What follows them (the envelope modulation spectrum) says how a band's
    power moves, not where in the spectrum: it has no band of its own to name.
    """
    return features[:, : 2 * n_mels]


def fit_reference(features: np.ndarray, cfg: LogMelStatsConfig, k: int = K_NEIGHBOURS) -> BandReference:
    """A section's reference from its normal clips' plain features ``[n, cfg.dim]`` (n >= 3)."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if f.shape[0] < 3 or f.shape[1] != cfg.dim:
        raise ValueError(f"band evidence needs 3 or more normal clips of {cfg.dim} features, got {f.shape}")
    f = _logmel_statistics(f, cfg.n_mels)
    centre = f.mean(axis=0)
    scale = np.maximum(f.std(axis=0), SCALE_FLOOR)
    k = max(1, min(k, f.shape[0] - 1))
    r = _residuals(f, centre, scale, f, k, exclude_self=True)
    spread = np.maximum(MAD_SIGMA * np.median(np.abs(r), axis=0), spread_floor(cfg))
    return BandReference(f.astype(np.float32), centre.astype(np.float32), scale.astype(np.float32),
                         spread.astype(np.float32), k)


def deviation(ref: BandReference, features: np.ndarray) -> np.ndarray:
    """``[n_mels]`` signed z of one clip's plain features against its nearest normals."""
    f = _logmel_statistics(np.asarray(features, dtype=np.float64).reshape(1, -1), ref.spread.shape[0])
    r = _residuals(ref.features.astype(np.float64), ref.centre.astype(np.float64), ref.scale.astype(np.float64), f, ref.k)
    return r[0] / ref.spread


def name_bands(z: np.ndarray, lo_hz: np.ndarray, hi_hz: np.ndarray, threshold: float = Z_THRESHOLD,
               max_bands: int = MAX_BANDS) -> list[Band]:
    """The runs of adjacent bands past ``threshold`` with one sign, as one band each (its strongest z), strongest first."""
    runs: list[Band] = []
    i, n = 0, len(z)
    while i < n:
        if abs(z[i]) <= threshold:
            i += 1
            continue
        j, sign = i, np.sign(z[i])
        while j + 1 < n and abs(z[j + 1]) > threshold and np.sign(z[j + 1]) == sign:
            j += 1
        peak = i + int(np.argmax(np.abs(z[i : j + 1])))
        runs.append(Band(float(lo_hz[i]), float(hi_hz[j]), float(z[peak])))
        i = j + 1
    return sorted(runs, key=lambda b: -abs(b.z))[:max_bands]


class BandEvidence:
    """A bundle's band evidence: its feature settings, band edges and every section's reference."""

    def __init__(self, cfg: LogMelStatsConfig, sections: dict[str, BandReference]):
        self.cfg = cfg
        self.sections = sections
        self.lo_hz, self.hi_hz = band_edges(cfg)

    def bands(self, features: np.ndarray, section: str) -> list[Band] | None:
        """The clip's deviating bands; None where the section has no reference."""
        ref = self.sections.get(section)
        if ref is None:
            return None
        return name_bands(deviation(ref, features), self.lo_hz, self.hi_hz)


def ratio(score: float, median: float | None, threshold: float) -> float | None:
    """The score on one scale for every bundle: 0 at the section's median held-out normal, 1 at the threshold."""
    if median is None or not threshold > median or not math.isfinite(score):
        return None
    return (float(score) - median) / (threshold - median)
