"""Decision thresholds: from the anomaly scores of normal clips to one cut-off.

A rule string picks how the threshold is derived from the scores of normal
clips (higher score = more anomalous; a clip is flagged when its score exceeds
the threshold):

``gamma:Q``
    Fit a gamma distribution to the scores by maximum likelihood and take its
    ``Q`` quantile, as the DCASE 2022 Task 2 baselines do (they call
    ``scipy.stats.gamma.fit`` -- shape, location and scale -- and
    ``gamma.ppf(0.9, ...)``). The location matters because scores here are
    usually standardized and so can be negative. It is fitted by ML too, but
    within bounds below the smallest score that make the problem well posed
    (see :func:`fit_gamma`); an unbounded three-parameter fit has no maximum
    for symmetric scores or for shapes below 1, so scipy's answer there depends
    on where its optimiser stops.
``gamma:Q:LOC``
    The same with the location fixed at the number ``LOC`` (``gamma:0.9:0`` for
    scores that are non-negative by construction, e.g. raw KNN distances); every
    score must then be greater than ``LOC``.
``quantile:Q``
    The empirical ``Q`` quantile (linear interpolation between order statistics,
    numpy's default).
``zscore:Z``
    ``mean + Z * std`` with the sample standard deviation (ddof = 1).

The gamma functions (:func:`gamma_cdf`, :func:`gamma_ppf`, :func:`fit_gamma`)
are written here in numpy and the standard library because the runtime must not
depend on scipy; tests check them against ``scipy.stats.gamma``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "GammaFit",
    "ThresholdRule",
    "fit_gamma",
    "fit_threshold",
    "gamma_cdf",
    "gamma_ppf",
    "parse_rule",
]

RULE_FORMS = "'gamma:Q' or 'gamma:Q:LOC' (0 < Q < 1), 'quantile:Q' (0 <= Q <= 1), 'zscore:Z'"

RuleKind = Literal["gamma", "quantile", "zscore"]


@dataclass(frozen=True)
class ThresholdRule:
    """A parsed threshold rule; ``str(rule)`` gives back a string :func:`parse_rule` accepts."""

    kind: RuleKind
    value: float
    loc: float | None = None  # gamma only: a fixed location; None = fitted (see fit_gamma)

    def __post_init__(self) -> None:
        if self.kind not in ("gamma", "quantile", "zscore"):
            raise ValueError(f"unknown threshold rule kind {self.kind!r}; accepted forms: {RULE_FORMS}")
        if not math.isfinite(self.value):
            raise ValueError(f"threshold rule value must be finite, got {self.value!r}")
        if self.kind == "gamma" and not 0.0 < self.value < 1.0:
            raise ValueError(f"gamma quantile must be in (0, 1), got {self.value:g}")
        if self.kind == "quantile" and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {self.value:g}")
        if self.loc is not None and (self.kind != "gamma" or not math.isfinite(self.loc)):
            raise ValueError("a location is accepted only by the gamma rule, and must be finite")

    def __str__(self) -> str:
        text = f"{self.kind}:{self.value!r}"
        return text if self.loc is None else f"{text}:{self.loc!r}"


def parse_rule(rule: str | ThresholdRule) -> ThresholdRule:
    """Parse ``"gamma:0.9"``, ``"gamma:0.9:0"``, ``"quantile:0.95"`` or ``"zscore:3"``."""
    if isinstance(rule, ThresholdRule):
        return rule
    if not isinstance(rule, str):
        raise ValueError(f"threshold rule must be a string, got {type(rule).__name__}; accepted forms: {RULE_FORMS}")
    parts = [p.strip() for p in rule.strip().split(":")]
    kind = parts[0].lower()
    n_numbers = {"gamma": (1, 2), "quantile": (1, 1), "zscore": (1, 1)}.get(kind)
    if n_numbers is None or not n_numbers[0] <= len(parts) - 1 <= n_numbers[1]:
        raise ValueError(f"bad threshold rule {rule!r}; accepted forms: {RULE_FORMS}")
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"bad threshold rule {rule!r}: not a number; accepted forms: {RULE_FORMS}") from None
    try:
        return ThresholdRule(kind, numbers[0], numbers[1] if len(numbers) > 1 else None)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"bad threshold rule {rule!r}: {exc}; accepted forms: {RULE_FORMS}") from None


def fit_threshold(scores: np.ndarray, rule: str | ThresholdRule) -> float:
    """The decision threshold for anomaly scores of normal clips under ``rule``."""
    parsed = parse_rule(rule)
    x = _as_scores(scores, min_count=1 if parsed.kind == "quantile" else 2)
    if parsed.kind == "quantile":
        return float(np.quantile(x, parsed.value))
    if parsed.kind == "zscore":
        return float(x.mean() + parsed.value * x.std(ddof=1))
    fit = fit_gamma(x, loc=parsed.loc)
    return float(gamma_ppf(parsed.value, fit.shape, fit.scale, fit.loc))


# --- gamma fit --------------------------------------------------------------------


@dataclass(frozen=True)
class GammaFit:
    """A gamma distribution in scipy's parametrisation (``a``, ``loc``, ``scale``)."""

    shape: float
    loc: float
    scale: float

    def ppf(self, q: float | np.ndarray) -> float | np.ndarray:
        return gamma_ppf(q, self.shape, self.scale, self.loc)

    def cdf(self, x: float | np.ndarray) -> float | np.ndarray:
        return gamma_cdf(x, self.shape, self.scale, self.loc)


def fit_gamma(scores: np.ndarray, loc: float | None = None) -> GammaFit:
    """Maximum-likelihood gamma fit: shape and scale for a given location, or all three.

    For a fixed ``loc`` the ML shape ``a`` solves
    ``log(a) - digamma(a) = log(mean(y)) - mean(log(y))`` with ``y = x - loc``,
    and the scale is ``mean(y) / a`` -- what ``scipy.stats.gamma.fit(x, floc=loc)``
    computes.

    With ``loc=None`` the location is fitted too, by maximising the profile
    log-likelihood over ``loc = min(x) - d`` for ``d`` between the mean gap of the
    sorted scores, ``(max - min) / (n - 1)``, and ``30 * std(x)``. The bounds are
    what makes the three-parameter fit well posed: the likelihood grows without
    limit as ``loc`` approaches the minimum whenever the shape is below 1, and for
    symmetric scores it keeps growing as ``loc`` recedes (the gamma tends to a
    normal), so an unbounded optimiser stops wherever it happens to. At
    ``d = 30 std`` the gamma's skewness is about 0.07, already normal for any
    quantile a threshold uses. The search is a grid over ``log(d)`` refined by
    golden-section search: deterministic and cheap (each point costs one
    one-dimensional root finding).
    """
    x = _as_scores(scores, min_count=2)
    if loc is not None:
        return _fit_gamma_fixed_loc(x, float(loc))
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        raise ValueError("all scores are equal; a gamma distribution cannot be fitted")
    near = math.log((hi - lo) / (x.size - 1))
    far = math.log(max(30.0 * float(x.std()), (hi - lo) / (x.size - 1)))

    def neg_profile(u: float) -> float:
        return -_gamma_loglik(x, _fit_gamma_fixed_loc(x, lo - math.exp(u)))

    grid = np.linspace(near, far, 41) if far > near else np.array([near])
    values = [neg_profile(float(u)) for u in grid]
    best = int(np.argmin(values))
    if grid.size > 1:
        u = _golden_section(neg_profile, float(grid[max(best - 1, 0)]), float(grid[min(best + 1, grid.size - 1)]))
        if neg_profile(u) > values[best]:
            u = float(grid[best])
    else:
        u = float(grid[0])
    return _fit_gamma_fixed_loc(x, lo - math.exp(u))


def _fit_gamma_fixed_loc(x: np.ndarray, loc: float) -> GammaFit:
    if not math.isfinite(loc):
        raise ValueError(f"gamma location must be finite, got {loc!r}")
    y = x - loc
    if np.any(y <= 0.0):
        raise ValueError(f"every score must be greater than the gamma location {loc:g} (smallest is {x.min():g})")
    mean = float(y.mean())
    s = math.log(mean) - float(np.mean(np.log(y)))
    if not s > 0.0:
        raise ValueError("all scores are equal; a gamma distribution cannot be fitted")
    shape = _solve_gamma_shape(s)
    return GammaFit(shape=shape, loc=loc, scale=mean / shape)


def _gamma_loglik(x: np.ndarray, fit: GammaFit) -> float:
    y = (x - fit.loc) / fit.scale
    a = fit.shape
    return float(np.sum((a - 1.0) * np.log(y) - y)) - x.size * (math.lgamma(a) + math.log(fit.scale))


def _golden_section(f, lo: float, hi: float, tol: float = 1e-7) -> float:
    """Minimiser of a unimodal ``f`` on [lo, hi]."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = f(d)
    return 0.5 * (lo + hi)


def _solve_gamma_shape(s: float) -> float:
    """Root of ``log(a) - digamma(a) = s`` (s > 0): Newton in log(a), safeguarded by bisection.

    The left side falls monotonically from +inf to 0 as ``a`` grows, so the root
    is unique; Minka's closed-form approximation starts within a few percent.
    """
    a = (3.0 - s + math.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    lo, hi = 0.0, math.inf  # bracket in a
    for _ in range(200):
        f = math.log(a) - _digamma(a) - s
        if f > 0.0:
            lo = a
        else:
            hi = a
        slope = 1.0 - a * _trigamma(a)  # d f / d log(a), always negative
        step = f / slope
        candidate = a * math.exp(-max(min(step, 50.0), -50.0))
        if not lo < candidate < hi:
            candidate = math.sqrt(lo * hi) if lo > 0.0 and math.isfinite(hi) else (a * 4.0 if f > 0 else a / 4.0)
        if abs(candidate - a) <= 1e-15 * a:
            return candidate
        a = candidate
    return a


def _digamma(x: float) -> float:
    """psi(x) for x > 0: upward recurrence to x >= 10, then the asymptotic series."""
    result = 0.0
    while x < 10.0:
        result -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f * (1 / 132)))))
    return result + math.log(x) - 0.5 / x - series


def _trigamma(x: float) -> float:
    """psi'(x) for x > 0, the same way as :func:`_digamma`."""
    result = 0.0
    while x < 10.0:
        result += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    series = f * (1 / 6 - f * (1 / 30 - f * (1 / 42 - f * (1 / 30 - f * (5 / 66)))))
    return result + 1.0 / x + 0.5 * f + series / x


# --- gamma cdf / ppf -------------------------------------------------------------------
# Regularized incomplete gamma functions after Numerical Recipes (3rd ed., 6.2):
# the power series for P when x < a + 1, the continued fraction (modified Lentz)
# for Q = 1 - P otherwise. Each is computed directly in the region where it does
# not suffer cancellation, so both P and its complement keep full relative
# precision; the ppf inverts whichever of the two is the smaller.

_EPS = 1e-16
_TINY = 1e-300


def _log_prefactor(a: float, x: float) -> float:
    return a * math.log(x) - x - math.lgamma(a)


def _gamma_pq(a: float, x: float) -> tuple[float, float]:
    """(P(a, x), Q(a, x)) for a > 0, x >= 0."""
    if x <= 0.0:
        return 0.0, 1.0
    if math.isinf(x):
        return 1.0, 0.0
    max_iter = 1000 + int(20.0 * math.sqrt(a + x))
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(max_iter):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        p = total * math.exp(_log_prefactor(a, x))
        p = min(p, 1.0)
        return p, 1.0 - p
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, max_iter):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        if abs(d) < _TINY:
            d = _TINY
        c = b + an / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    q = math.exp(_log_prefactor(a, x)) * h
    q = min(q, 1.0)
    return 1.0 - q, q


def _check_shape_scale(shape: float, scale: float, loc: float) -> tuple[float, float, float]:
    shape, scale, loc = float(shape), float(scale), float(loc)
    if not (shape > 0.0 and math.isfinite(shape)):
        raise ValueError(f"gamma shape must be positive and finite, got {shape!r}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"gamma scale must be positive and finite, got {scale!r}")
    if not math.isfinite(loc):
        raise ValueError(f"gamma loc must be finite, got {loc!r}")
    return shape, scale, loc


def gamma_cdf(x: float | np.ndarray, shape: float, scale: float = 1.0, loc: float = 0.0) -> float | np.ndarray:
    """CDF of the gamma distribution (``scipy.stats.gamma.cdf(x, shape, loc, scale)``)."""
    shape, scale, loc = _check_shape_scale(shape, scale, loc)
    arr = np.asarray(x, dtype=np.float64)
    out = np.empty(arr.shape, dtype=np.float64)
    for idx, value in np.ndenumerate(arr):
        if math.isnan(value):
            out[idx] = math.nan
        else:
            out[idx] = _gamma_pq(shape, max((value - loc) / scale, 0.0))[0]
    return float(out) if out.ndim == 0 else out


def gamma_ppf(q: float | np.ndarray, shape: float, scale: float = 1.0, loc: float = 0.0) -> float | np.ndarray:
    """Inverse CDF of the gamma distribution (``scipy.stats.gamma.ppf(q, shape, loc, scale)``).

    ``q`` outside [0, 1] gives NaN, 0 gives ``loc`` and 1 gives infinity, as in scipy.
    """
    shape, scale, loc = _check_shape_scale(shape, scale, loc)
    arr = np.asarray(q, dtype=np.float64)
    out = np.empty(arr.shape, dtype=np.float64)
    for idx, value in np.ndenumerate(arr):
        if not 0.0 <= value <= 1.0:
            out[idx] = math.nan
        elif value == 0.0:
            out[idx] = loc
        elif value == 1.0:
            out[idx] = math.inf
        else:
            out[idx] = loc + scale * _standard_gamma_ppf(shape, value)
    return float(out) if out.ndim == 0 else out


def _standard_gamma_ppf(a: float, q: float) -> float:
    """x with P(a, x) = q, 0 < q < 1: a geometric bracket, then Newton kept inside it."""
    upper = q > 0.5
    target = 1.0 - q if upper else q

    def residual(x: float) -> float:
        # Increases with x; uses the tail that is the smaller, hence exact, one.
        p, qq = _gamma_pq(a, x)
        return target - qq if upper else p - target

    # Start near the root: P(a, x) ~ x^a / Gamma(a + 1) as x -> 0 gives the lower
    # tail; the mean a is a fair start elsewhere. Doubling/halving then brackets.
    x = math.exp((math.log(q) + math.lgamma(a + 1.0)) / a) if q < 0.05 else max(a, 1e-3)
    x = min(max(x, 1e-300), 1e300)
    lo, hi = 0.0, math.inf
    while True:
        if residual(x) < 0.0:
            lo = x
            if math.isfinite(hi):
                break
            x *= 2.0
            if math.isinf(x):
                return math.inf
        else:
            hi = x
            if lo > 0.0:
                break
            x *= 0.5
            if x == 0.0:
                return 0.0
    x = math.sqrt(lo) * math.sqrt(hi)  # the product could underflow
    for _ in range(400):
        r = residual(x)
        if r == 0.0:
            return x
        if r < 0.0:
            lo = x
        else:
            hi = x
        pdf = math.exp((a - 1.0) * math.log(x) - x - math.lgamma(a))
        candidate = x - r / pdf if pdf > 0.0 else math.nan
        if not lo < candidate < hi:
            # Geometric bisection while the bracket spans decades, arithmetic after.
            candidate = math.sqrt(lo) * math.sqrt(hi) if hi > 4.0 * lo else 0.5 * (lo + hi)
        if abs(candidate - x) <= 1e-15 * candidate or hi - lo <= 1e-15 * hi:
            return candidate
        x = candidate
    return x


def _as_scores(scores: np.ndarray, min_count: int) -> np.ndarray:
    x = np.asarray(scores)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"scores must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64).reshape(-1)
    if x.size < min_count:
        raise ValueError(f"need at least {min_count} scores to fit a threshold, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores contain NaN or infinite values")
    return x
