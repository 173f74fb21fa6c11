"""What a section's inlier model is fitted on: its normal segments, k-means source centres, Mixup pseudo-normals.

A :data:`BankBuilder` turns a set of normal clips (``[n, S, D]`` embeddings and
their domains) into the rows a detector is fitted on; the out-of-fold scores
build each fold's bank with the same rule as the final model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["BankBuilder", "N_MIXUP_PSEUDO_NORMAL", "all_segments", "centres_bank", "kmeans_centres", "mixup_pseudo_normals"]

N_MIXUP_PSEUDO_NORMAL = 50  # report 2.3

BankBuilder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def all_segments(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
    return emb.reshape(-1, emb.shape[-1])


def kmeans_centres(x: np.ndarray, k: int, seed: int = 0, niter: int = 25) -> np.ndarray:
    """``k`` k-means centres of the rows of ``x`` (faiss: Lloyd iterations from a seeded start).

    With no more rows than ``k`` the rows themselves are the centres.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) <= k:
        return x.copy()
    import faiss

    km = faiss.Kmeans(x.shape[1], int(k), niter=niter, seed=int(seed) + 1, verbose=False, min_points_per_centroid=1)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def centres_bank(n_centres: int, seed: int) -> BankBuilder:
    """Source segments compressed to k-means centres, target segments kept whole.

    A section with no target normals keeps every source segment: compressing
    only pays when it balances the two domains' densities.
    """

    def build(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
        d = emb.shape[-1]
        src = emb[domains == "source"].reshape(-1, d)
        tgt = emb[domains == "target"].reshape(-1, d)
        if len(tgt) == 0 or len(src) == 0:
            return emb.reshape(-1, d)
        return np.concatenate([kmeans_centres(src, n_centres, seed), tgt])

    return build


def mixup_pseudo_normals(src: np.ndarray, tgt: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Report 2.3: ``n`` embeddings between random source and target segments.

    The report mixes in the detector's input space, i.e. the embeddings; the
    ratio is uniform in [0, 1] so the whole path between the domains is covered.
    """
    if n <= 0 or len(src) == 0 or len(tgt) == 0:
        return np.zeros((0, src.shape[-1]), dtype=np.float32)
    lam = rng.uniform(0.0, 1.0, size=(n, 1))
    a = src[rng.integers(0, len(src), n)]
    b = tgt[rng.integers(0, len(tgt), n)]
    return (lam * a + (1.0 - lam) * b).astype(np.float32)
