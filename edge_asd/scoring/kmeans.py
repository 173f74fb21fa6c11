"""k-means++ seeding and Lloyd iterations in numpy: the initial responsibilities of the GMM's EM.

Reproducible from a numpy generator alone, which faiss's k-means is not.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["kmeans_labels"]

# k-means iterations that seed EM; they only need to separate the components
# roughly, EM does the rest.
KMEANS_MAX_ITER = 20


def squared_distances(X: np.ndarray, X_sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = X_sq[:, None] - 2.0 * (X @ centres.T) + np.einsum("kd,kd->k", centres, centres)[None, :]
    return np.maximum(d2, 0.0)


def kmeans_labels(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels from greedy k-means++ seeding and a few Lloyd iterations."""
    n = X.shape[0]
    X_sq = np.einsum("nd,nd->n", X, X)
    centres = np.empty((k, X.shape[1]))
    first = int(rng.integers(n))
    centres[0] = X[first]
    closest = squared_distances(X, X_sq, centres[:1])[:, 0]
    trials = 2 + int(math.log(k))
    for c in range(1, k):
        potential = closest.sum()
        if potential > 0.0:
            candidates = np.searchsorted(np.cumsum(closest), rng.uniform(size=trials) * potential)
            candidates = np.minimum(candidates, n - 1)
        else:  # every point coincides with a centre already: any choice is as good
            candidates = rng.integers(n, size=trials)
        cand_dist = np.minimum(closest[None, :], squared_distances(X, X_sq, X[candidates]).T)
        best = int(np.argmin(cand_dist.sum(axis=1)))
        centres[c] = X[candidates[best]]
        closest = cand_dist[best]
    labels = np.argmin(squared_distances(X, X_sq, centres), axis=1)
    for _ in range(KMEANS_MAX_ITER):
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, X)
        occupied = counts > 0
        # An emptied cluster keeps its centre; EM can still revive or starve it.
        centres[occupied] = sums[occupied] / counts[occupied, None]
        new_labels = np.argmin(squared_distances(X, X_sq, centres), axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels
