"""One shrunk Gaussian of the whole feature vector and one of each group of features: the plain system's scorer.

A clip's features come in groups that each describe one aspect of the sound
(the plain system's: the band levels, their spread over time, the envelope
modulation spectrum, its lines, the frame-to-frame change, the envelopes'
spread, the bands' comodulation; :meth:`edge_asd.io.features.LogMelStatsConfig.blocks`).
A fault often shows in one of them: a bearing's impacts in the lines, a rub in
the comodulation. One Gaussian of all 393 features sums that evidence with the
noise of every other feature, tens of clips cannot say which correlations
matter, and the fault drowns. So each group gets a Gaussian of its own, and a
clip's score is

    joint_weight * z(whole vector) + max over the groups of z(group)

where ``z`` is the log of the squared Mahalanobis distance, standardized by the
same statistic of the training normals out of fold (each normal scored by a
Gaussian fitted without it). The log tames the heavy tail of held-out
distances when a Gaussian is fitted on a dozen clips; out of fold, a group
whose Gaussian overfits its few clips does not look quiet on the normals and
loud on every new clip. The joint term keeps a change spread thinly over all
groups (a real fan's imbalance moved every group a little) from being lost to
the max. Measured on the validation seeds of both generators and the real
samples (BENCHMARKS.md, "One Gaussian per group of features").

The features are z-scored with the training normals' mean and standard
deviation first, so the Ledoit-Wolf shrinkage of each Gaussian
(:class:`edge_asd.scoring.gmm.GMMDetector`) sees unit-free features.

``per_domain``: a machine recorded in two conditions (a source domain and a
target one with a handful of clips: another microphone, another hall) puts its
target normals away from the source ones. One Gaussian of both domains scores
every target normal high, above many anomalies of the source domain, and the
DCASE AUC of the target domain (target normals against all anomalies) fell to
0.41 on validation sections with a microphone change. With ``per_domain``, each
domain gets its own mean, all domains share one covariance of the deviations
from their own means (a handful of clips cannot estimate a covariance of their
own), and each domain's log distances are standardized by that domain's own
out-of-fold normals. A clip is scored against the domain it is nearest in each
block (the smaller standardized distance), so its domain need not be known.
A mean estimated from ``n`` clips puts a new clip of its domain, on average,
``1 + 1/n`` times as far (squared) as the true mean would; the distances are
divided by that, so the held-out distances (from a mean of one clip fewer)
and those of new clips are on one scale. A domain with a single clip cannot be
held out and is pooled with the largest one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.checks import as_matrix, non_negative, positive_int, state_array
from edge_asd.scoring.gmm import GMMDetector

__all__ = ["FeatureGroupGaussian", "parse_edges"]

_MIN_STD = 1e-6  # a feature or a score that does not vary among the normals: divided by this instead of 0
_MIN_DOMAIN_CLIPS = 2  # a domain needs another clip beside the held-out one for its own mean


def parse_edges(edges: str) -> tuple[int, ...]:
    """``"0,64,128"`` -> ``(0, 64, 128)``: the groups' boundaries, increasing from 0; "" is no groups."""
    if not isinstance(edges, str):
        raise ValueError(f"edges must be a string of comma-separated feature indices, got {edges!r}")
    if not edges.strip():
        return ()
    try:
        out = tuple(int(e) for e in edges.split(","))
    except ValueError:
        raise ValueError(f"edges must be comma-separated integers, got {edges!r}") from None
    if len(out) < 3 or out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"edges must start at 0, increase, and make at least two groups; got {edges!r}")
    return out


class FeatureGroupGaussian(InlierDetector):
    """``joint_weight * z(all features) + max_g z(group g)``, each ``z`` a standardized log Mahalanobis distance.

    ``edges``: the groups' boundaries (``"0,64,128,..."``, ending at the feature
    count); "" scores the whole vector alone. ``folds``: the out-of-fold split
    of the normals that standardizes each Gaussian's scores (leave-one-out when
    there are fewer normals). ``reg_covar``: added to each covariance's diagonal.
    ``per_domain``: each domain its own mean and standardization, one shared
    covariance (module docstring); :meth:`fit` then takes each row's domain.
    """

    kind = "gauss-groups"
    fits_domains = True
    # states written before the option existed pooled the domains
    LATER_PARAMS = frozenset({"per_domain"})

    def __init__(self, edges: str = "", joint_weight: float = 2.0, folds: int = 10, reg_covar: float = 1e-6,
                 per_domain: bool = False) -> None:
        self.edges = edges
        self._edges = parse_edges(edges)
        self.joint_weight = non_negative("joint_weight", joint_weight)
        self.folds = positive_int("folds", folds)
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {folds!r}")
        self.reg_covar = non_negative("reg_covar", reg_covar)
        if not isinstance(per_domain, (bool, np.bool_)):
            raise ValueError(f"per_domain must be true or false, got {per_domain!r}")
        self.per_domain = bool(per_domain)
        self._centre: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._models: list[GMMDetector] = []
        # per block b: the domains' means [K, d_b] (K = 1 when pooled), in the shared Gaussian's coordinates
        self._means: list[np.ndarray] = []
        self._log_mean: np.ndarray | None = None  # [B] pooled; [K, B] per domain
        self._log_std: np.ndarray | None = None  # [B]

    # -- blocks --

    def _blocks(self, dim: int) -> list[slice]:
        """The whole vector, then each group."""
        if self._edges and self._edges[-1] != dim:
            raise ValueError(f"the groups end at feature {self._edges[-1]} but the features have {dim} dimensions")
        return [slice(0, dim)] + [slice(a, b) for a, b in zip(self._edges, self._edges[1:])]

    def _gaussian_spec(self) -> GMMDetector:
        """Each block's Gaussian, unfitted: its settings in one place for fitting and for reading a state back."""
        return GMMDetector(1, "full", reg_covar=self.reg_covar, shrinkage="ledoit-wolf")

    def _gaussian(self, X: np.ndarray) -> GMMDetector:
        return self._gaussian_spec().fit(X)

    def _fit_block(self, Z: np.ndarray, codes: np.ndarray, k: int) -> tuple[GMMDetector, np.ndarray, np.ndarray]:
        """The shared Gaussian of the deviations from each domain's own mean, the ``k`` means, and the log of each
        domain's ``1 + 1/n`` (0 pooled: the pooled scorer has always compared raw distances)."""
        if k == 1:
            model = self._gaussian(Z)
            return model, model.means_[:1], np.zeros(1)
        counts = np.bincount(codes, minlength=k)
        means = np.stack([Z[codes == j].mean(axis=0) for j in range(k)])
        model = self._gaussian(Z - means[codes])
        return model, means, np.log1p(1.0 / counts)

    @staticmethod
    def _log_distances(model: GMMDetector, means: np.ndarray, inflation: np.ndarray, X: np.ndarray) -> np.ndarray:
        """``[K, n]``: each row's log squared Mahalanobis distance to each domain's mean, less that mean's inflation.
        The floor keeps the log finite for a clip at the very mean (a distance is never negative)."""
        shift = model.means_[0] - means  # the shared Gaussian is centred on its own fitted mean
        logs = np.stack([np.log(np.maximum(model.mahalanobis_sq(X + sh)[:, 0], 1e-12)) for sh in shift])
        return logs - inflation[:, None]

    def _domain_codes(self, n: int, domains: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Each row's domain as 0..K-1. Pooled (one code) unless ``per_domain``; a domain of a single row joins the
        largest one."""
        if not self.per_domain or domains is None:
            return np.zeros(n, dtype=np.intp), 1
        domains = np.asarray(domains).reshape(-1)
        if domains.shape != (n,):
            raise ValueError(f"got {domains.size} domains for {n} rows")
        _, codes, counts = np.unique(domains, return_inverse=True, return_counts=True)
        small = counts < _MIN_DOMAIN_CLIPS
        if small.any() and not small.all():
            codes = np.where(small[codes], int(np.argmax(counts)), codes)
        _, codes = np.unique(codes, return_inverse=True)
        return codes.astype(np.intp), int(codes.max()) + 1

    def _held_out(self, Z: np.ndarray, block: slice, codes: np.ndarray, k: int) -> np.ndarray:
        """Each normal's log distance to its own domain's mean, under a Gaussian fitted on the other folds. Every
        domain's normals are dealt over the folds in turn, so a fold's fit keeps every domain."""
        n = Z.shape[0]
        n_folds = min(self.folds, n)
        fold = np.empty(n, dtype=np.intp)
        for j in range(k):
            rows = np.flatnonzero(codes == j)
            fold[rows] = np.arange(rows.size) % n_folds
        out = np.empty(n)
        for f in range(n_folds):
            held = fold == f
            if not held.any():
                continue
            fitted = self._fit_block(Z[~held][:, block], codes[~held], k)
            dist = self._log_distances(*fitted, Z[held][:, block])
            out[held] = dist[codes[held], np.arange(int(held.sum()))]
        return out

    # -- fit / score --

    def fit(self, X: np.ndarray, domains: np.ndarray | None = None) -> FeatureGroupGaussian:
        """``domains``: each row's domain (any labels); used with ``per_domain``, ignored otherwise."""
        X = as_matrix(X, np.float64, min_rows=2)
        codes, k = self._domain_codes(X.shape[0], domains)
        blocks = self._blocks(X.shape[1])
        centre, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > _MIN_STD, scale, _MIN_STD)
        Z = (X - centre) / scale
        models, block_means, offsets, stds = [], [], [], []
        for block in blocks:
            held = self._held_out(Z, block, codes, k)
            own = np.array([held[codes == j].mean() for j in range(k)])
            model, means, inflation = self._fit_block(Z[:, block], codes, k)
            # the pooled scorer's offset is its normals' mean; per domain, each domain's, with the final fit's
            # inflation folded in so that scoring is one subtraction
            offsets.append(own + inflation)
            stds.append(max(float((held - own[codes]).std()), _MIN_STD))
            models.append(model)
            block_means.append(means)
        self._centre, self._scale, self._models, self._means = centre, scale, models, block_means
        offsets_kb = np.stack(offsets, axis=1)  # [K, B]
        self._log_mean = offsets_kb if self.per_domain else offsets_kb[0]
        self._log_std = np.array(stds)
        return self

    def block_scores(self, X: np.ndarray) -> np.ndarray:
        """``[n, 1 + groups]``: each row's standardized log distance under the whole vector's Gaussian, then each
        group's (what :meth:`score_samples` combines; a group's column says where a clip departs). Per domain, each
        block's smaller over the domains."""
        return self.domain_block_scores(X).min(axis=0)

    def domain_block_scores(self, X: np.ndarray) -> np.ndarray:
        """``[domains, n, 1 + groups]``: :meth:`block_scores` against each domain's mean and standardization
        (domains in sorted order of their labels; one row when pooled)."""
        self._require_fitted()
        assert self._centre is not None and self._scale is not None and self._log_mean is not None
        X = as_matrix(X, np.float64, dim=self._centre.size)
        Z = (X - self._centre) / self._scale
        blocks = self._blocks(Z.shape[1])
        offsets = self._log_mean.reshape(-1, len(blocks))  # [K, B]; the inflation is folded into them
        z = []
        for i, (m, means, b) in enumerate(zip(self._models, self._means, blocks)):
            logs = self._log_distances(m, means, np.zeros(len(means)), Z[:, b])
            z.append((logs - offsets[:, i, None]) / self._log_std[i])
        return np.stack(z, axis=2)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        z = self.block_scores(X)
        if z.shape[1] == 1:
            return z[:, 0]
        return self.joint_weight * z[:, 0] + z[:, 1:].max(axis=1)

    # -- state --

    @property
    def is_fitted(self) -> bool:
        return self._centre is not None

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        assert self._centre is not None
        return int(self._centre.size)

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``centre``/``scale`` [D]; ``log_std`` [B]; ``log_mean`` [B] pooled, [K, B] per domain; per block ``b``:
        ``mean_b`` [d_b] pooled, each domain's [K, d_b] per domain, ``covariance_b`` [d_b, d_b] (B = 1 + groups, the
        whole vector first; K domains)."""
        assert self._centre is not None and self._scale is not None
        out = {"centre": self._centre, "scale": self._scale, "log_mean": self._log_mean, "log_std": self._log_std}
        for i, (m, means) in enumerate(zip(self._models, self._means)):
            out[f"mean_{i}"] = means if self.per_domain else m.means_[0]
            out[f"covariance_{i}"] = m.covariances_[0]
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> FeatureGroupGaussian:
        """Rebuild from :meth:`get_state`; ``use_gpu`` is accepted and ignored: it runs in numpy."""
        det = cls(**cls._params_from_state(state))
        centre = np.asarray(state_array(state, "centre", 1), dtype=np.float64)
        scale = np.asarray(state_array(state, "scale", 1), dtype=np.float64)
        blocks = det._blocks(centre.size)
        per = det.per_domain
        log_mean = np.asarray(state_array(state, "log_mean", 2 if per else 1), dtype=np.float64)
        log_std = np.asarray(state_array(state, "log_std", 1), dtype=np.float64)
        k = log_mean.shape[0] if per else 1
        if scale.shape != centre.shape or log_mean.shape[-1] != len(blocks) or log_std.shape != (len(blocks),):
            raise ValueError(f"gauss-groups state shapes disagree: centre {centre.shape}, scale {scale.shape}, "
                             f"log_mean {log_mean.shape}, log_std {log_std.shape} for {len(blocks)} blocks")
        if np.any(scale <= 0) or np.any(log_std <= 0):
            raise ValueError("gauss-groups state holds a zero or negative spread")
        models, block_means = [], []
        for i, block in enumerate(blocks):
            d = block.stop - block.start
            mean = np.asarray(state_array(state, f"mean_{i}", 2 if per else 1), dtype=np.float64)
            cov = np.asarray(state_array(state, f"covariance_{i}", 2), dtype=np.float64)
            if mean.shape != ((k, d) if per else (d,)) or cov.shape != (d, d):
                raise ValueError(f"gauss-groups state block {i}: mean {mean.shape} and covariance {cov.shape} for "
                                 f"{d} features" + (f" and {k} domains" if per else ""))
            # per domain the shared Gaussian is centred at 0 and each domain's mean is applied as a shift
            centre_b = np.zeros(d) if per else mean
            models.append(GMMDetector.from_state({
                **det._gaussian_spec()._header(),
                "weights": np.ones(1), "means": centre_b[None], "covariances": cov[None],
            }))
            block_means.append(mean if per else mean[None])
        if not all(np.all(np.isfinite(a)) for a in (centre, scale, log_mean, log_std, *block_means)):
            raise ValueError("gauss-groups state contains NaN or infinite values")
        det._centre, det._scale, det._models, det._means = centre, scale, models, block_means
        det._log_mean, det._log_std = log_mean, log_std
        return det
