"""A Gaussian mixture fitted by EM in numpy; the score is the negative log-likelihood."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.checks import as_matrix, choice, non_negative, positive_int, state_array
from edge_asd.scoring.kmeans import kmeans_labels

__all__ = ["GMMDetector"]

_COVARIANCE_TYPES = ("full", "diag")
_SHRINKAGES = ("none", "ledoit-wolf")
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class _Mixture:
    """Parameters of a fitted mixture plus the factors scoring needs."""

    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, d]
    covariances: np.ndarray  # full: [K, d, d]; diag: [K, d]
    prec_chol: np.ndarray  # full: [K, d, d] U with precision = U U^T; diag: [K, d] 1 / sigma
    log_det_prec_chol: np.ndarray  # [K] log det U = -0.5 log det covariance

    @classmethod
    def build(cls, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, reg_covar: float) -> _Mixture:
        if covariances.ndim == 3:
            prec_chol = np.empty_like(covariances)
            log_det = np.empty(covariances.shape[0])
            eye = np.eye(covariances.shape[1])
            for j, cov in enumerate(covariances):
                try:
                    lower = np.linalg.cholesky(cov)
                except np.linalg.LinAlgError:
                    raise ValueError(
                        f"covariance of GMM component {j} is not positive definite "
                        f"(a collapsed component or duplicated samples); increase reg_covar (now {reg_covar:g})"
                    ) from None
                # cov = L L^T, so precision = L^-T L^-1 = U U^T with U = L^-T.
                prec_chol[j] = np.linalg.solve(lower, eye).T
                log_det[j] = -np.sum(np.log(np.diag(lower)))
        else:
            if np.any(covariances <= 0.0):
                raise ValueError(f"a GMM variance is zero (a constant feature?); increase reg_covar (now {reg_covar:g})")
            prec_chol = 1.0 / np.sqrt(covariances)
            log_det = np.sum(np.log(prec_chol), axis=1)
        return cls(weights=weights, means=means, covariances=covariances, prec_chol=prec_chol, log_det_prec_chol=log_det)

    def mahalanobis_sq(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of every row to every component, [n, K]."""
        full = self.covariances.ndim == 3
        out = np.empty((X.shape[0], self.weights.size))
        for j in range(self.weights.size):
            diff = X - self.means[j]
            y = diff @ self.prec_chol[j] if full else diff * self.prec_chol[j]
            out[:, j] = np.einsum("nd,nd->n", y, y)
        return out

    def weighted_log_prob(self, X: np.ndarray) -> np.ndarray:
        """log(w_j N(x | mu_j, Sigma_j)) for every row and component, [n, K]."""
        out = -0.5 * (X.shape[1] * _LOG_2PI + self.mahalanobis_sq(X)) + self.log_det_prec_chol
        with np.errstate(divide="ignore"):  # a weight of exactly 0 is a legitimate -inf
            return out + np.log(self.weights)


class GMMDetector(InlierDetector):
    """Gaussian mixture fitted by EM in numpy; score = negative log-likelihood.

    Initialisation: greedy k-means++ seeding (as scikit-learn's, ``2 + ln K``
    candidates per centre), then up to 20 Lloyd iterations, stopping when the
    assignments stop changing; the hard assignments are the first
    responsibilities, from which the first M-step computes weights, means and
    covariances. EM then alternates E- and M-steps until the mean per-sample
    log-likelihood changes by less than ``tol`` or ``max_iter`` M-steps have
    run. ``reg_covar`` is added to every covariance diagonal. With ``n_init > 1``
    the fit with the highest log-likelihood is kept. Everything random draws from
    ``numpy.random.default_rng(seed)``, so a fit is reproducible.

    ``shrinkage="ledoit-wolf"`` (full covariances) shrinks each component's
    correlation matrix toward the identity by the Ledoit-Wolf intensity, computed
    from the data (responsibility-weighted). With tens of clips and a hundred or
    more features the sample covariance is singular and its small eigenvalues are
    noise; shrinking toward the diagonal keeps every feature's own variance
    (so the result does not depend on the features' units) and is the
    well-conditioned estimate a Mahalanobis distance needs. One component with
    it is the shrunk Gaussian of the plain system (``train.plain``).

    Log-densities go through Cholesky factors and the log-sum-exp, so they stay
    finite far from the data. After :meth:`fit`, ``lower_bound_`` is the mean
    log-likelihood of the training data under the returned parameters and
    ``lower_bound_history_`` that of each EM iterate (index 0: the
    initialisation); these are not part of the state.
    """

    kind = "gmm"
    # states written before the option existed were not shrunk
    LATER_PARAMS = frozenset({"shrinkage"})

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-3,
        n_init: int = 1,
        seed: int = 0,
        shrinkage: str = "none",
    ) -> None:
        self.n_components = positive_int("n_components", n_components)
        self.covariance_type = choice("covariance_type", covariance_type, _COVARIANCE_TYPES)
        self.shrinkage = choice("shrinkage", shrinkage, _SHRINKAGES)
        if self.shrinkage != "none" and self.covariance_type != "full":
            raise ValueError(f"shrinkage {shrinkage!r} needs covariance_type 'full' (a diagonal has nothing to shrink)")
        self.reg_covar = non_negative("reg_covar", reg_covar)
        self.max_iter = positive_int("max_iter", max_iter)
        self.tol = non_negative("tol", tol)
        self.n_init = positive_int("n_init", n_init)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._mixture: _Mixture | None = None
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf
        self.lower_bound_history_: list[float] = []

    @property
    def is_fitted(self) -> bool:
        return self._mixture is not None

    def _fitted(self) -> _Mixture:
        self._require_fitted()
        assert self._mixture is not None
        return self._mixture

    @property
    def n_features_in_(self) -> int:
        return self._fitted().means.shape[1]

    @property
    def weights_(self) -> np.ndarray:
        return self._fitted().weights

    @property
    def means_(self) -> np.ndarray:
        return self._fitted().means

    @property
    def covariances_(self) -> np.ndarray:
        return self._fitted().covariances

    # -- fitting --

    def fit(self, X: np.ndarray) -> GMMDetector:
        X = as_matrix(X, np.float64, min_rows=1)
        if X.shape[0] < self.n_components:
            raise ValueError(f"n_components={self.n_components} needs at least {self.n_components} samples, got {X.shape[0]}")
        rng = np.random.default_rng(self.seed)
        best: _EMRun | None = None
        for _ in range(self.n_init):
            run = self._em(X, rng)
            if best is None or run.log_likelihood > best.log_likelihood:
                best = run
        assert best is not None
        self._mixture = best.mixture
        self.converged_, self.n_iter_ = best.converged, best.n_iter
        self.lower_bound_, self.lower_bound_history_ = best.log_likelihood, best.history
        return self

    def _em(self, X: np.ndarray, rng: np.random.Generator) -> _EMRun:
        labels = kmeans_labels(X, self.n_components, rng)
        resp = np.zeros((X.shape[0], self.n_components))
        resp[np.arange(X.shape[0]), labels] = 1.0
        mixture = self._m_step(X, resp)
        ll, log_resp = _e_step(mixture, X)
        history = [ll]
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            mixture = self._m_step(X, np.exp(log_resp))
            new_ll, log_resp = _e_step(mixture, X)
            history.append(new_ll)
            change, ll = new_ll - ll, new_ll
            if abs(change) < self.tol:
                converged = True
                break
        return _EMRun(mixture=mixture, log_likelihood=ll, converged=converged, n_iter=n_iter, history=history)

    def _m_step(self, X: np.ndarray, resp: np.ndarray) -> _Mixture:
        d = X.shape[1]
        # The tiny floor keeps an emptied component's mean finite (scikit-learn does the same).
        nk = resp.sum(axis=0) + 10.0 * np.finfo(np.float64).eps
        means = (resp.T @ X) / nk[:, None]
        if self.covariance_type == "full":
            covariances = np.empty((self.n_components, d, d))
            for j in range(self.n_components):
                diff = X - means[j]
                cov = (resp[:, j, None] * diff).T @ diff / nk[j]
                if self.shrinkage == "ledoit-wolf":
                    cov = _ledoit_wolf_to_diagonal(diff, resp[:, j] / nk[j], cov)
                cov.flat[:: d + 1] += self.reg_covar
                covariances[j] = cov
        else:
            covariances = np.empty((self.n_components, d))
            for j in range(self.n_components):
                diff = X - means[j]
                covariances[j] = resp[:, j] @ (diff * diff) / nk[j] + self.reg_covar
        return _Mixture.build(nk / nk.sum(), means, covariances, self.reg_covar)

    # -- scoring --

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """Log-density of the mixture at each row of ``X`` [n_samples]."""
        mixture = self._fitted()
        X = as_matrix(X, np.float64, dim=mixture.means.shape[1])
        return _logsumexp(mixture.weighted_log_prob(X))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Negative log-likelihood per row; HIGHER = MORE ANOMALOUS (unlike scikit-learn's sign)."""
        return -self.log_likelihood(X)

    def mahalanobis_sq(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each component's mean under its covariance, [n, K]."""
        mixture = self._fitted()
        return mixture.mahalanobis_sq(as_matrix(X, np.float64, dim=mixture.means.shape[1]))

    # -- state --

    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        """``weights`` [K], ``means`` [K, d], ``covariances`` [K, d, d] or [K, d]."""
        mixture = self._fitted()
        return {"weights": mixture.weights, "means": mixture.means, "covariances": mixture.covariances}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], *, use_gpu: bool = False) -> GMMDetector:
        """Rebuild from :meth:`get_state`; ``use_gpu`` is accepted and ignored: the mixture runs in numpy."""
        detector = cls(**cls._params_from_state(state))
        weights = np.asarray(state_array(state, "weights", 1), dtype=np.float64)
        means = np.asarray(state_array(state, "means", 2), dtype=np.float64)
        full = detector.covariance_type == "full"
        covariances = np.asarray(state_array(state, "covariances", 3 if full else 2), dtype=np.float64)
        n_comp, dim = means.shape
        expected = (n_comp, dim, dim) if full else (n_comp, dim)
        if weights.shape != (n_comp,) or covariances.shape != expected or n_comp != detector.n_components or dim == 0:
            raise ValueError(
                f"GMM state shapes disagree: weights {weights.shape}, means {means.shape}, "
                f"covariances {covariances.shape} for n_components={detector.n_components}"
            )
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(means)) and np.all(np.isfinite(covariances))):
            raise ValueError("GMM state contains NaN or infinite values")
        if np.any(weights < 0.0) or not math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6):
            raise ValueError("GMM state weights must be non-negative and sum to 1")
        detector._mixture = _Mixture.build(weights, means, covariances, detector.reg_covar)
        return detector


@dataclass(frozen=True)
class _EMRun:
    mixture: _Mixture
    log_likelihood: float  # mean per sample, under ``mixture``
    converged: bool
    n_iter: int
    history: list[float]


def _ledoit_wolf_to_diagonal(diff: np.ndarray, w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``cov`` (= sum_i w_i diff_i diff_i^T, weights summing to 1) shrunk toward its own diagonal.

    In correlation units (each feature divided by its standard deviation) the target is the identity and the
    intensity is Ledoit and Wolf's (2004): the estimated variance of the sample covariance, sum_i w_i^2
    ||z_i z_i^T - R||^2, over its distance to the target, ||R - I||^2, capped at 1.
    """
    sd = np.sqrt(np.diag(cov))
    sd = np.where(sd > 0.0, sd, 1.0)  # a constant feature: reg_covar alone keeps it definite
    z = diff / sd
    r = cov / np.outer(sd, sd)
    target = np.eye(r.shape[0]) * (np.diag(cov) > 0.0)
    distance = float(np.sum((r - target) ** 2))
    if distance <= 0.0:
        return cov
    # ||z z^T - R||^2 = |z|^4 - 2 z^T R z + ||R||^2, without forming an outer product per sample
    sq = np.einsum("nd,nd->n", z, z)
    spread = sq**2 - 2.0 * np.einsum("nd,de,ne->n", z, r, z) + float(np.sum(r * r))
    intensity = min(float(np.sum(w**2 * spread)), distance) / distance
    return ((1.0 - intensity) * r + intensity * target) * np.outer(sd, sd)


def _e_step(mixture: _Mixture, X: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean log-likelihood and log-responsibilities [n, K]."""
    weighted = mixture.weighted_log_prob(X)
    log_norm = _logsumexp(weighted)
    return float(np.mean(log_norm)), weighted - log_norm[:, None]


def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=1)) without overflow or underflow."""
    top = np.max(a, axis=1)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top[:, None]), axis=1)) + top
