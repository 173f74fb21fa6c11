"""What a section's inlier model is fitted on: its normal segments, k-means source centres, Mixup pseudo-normals.

A :data:`BankBuilder` turns a set of normal clips (``[n, S, D]`` embeddings and
their domains) into the rows a detector is fitted on; the out-of-fold scores
build each fold's bank with the same rule as the final model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "BankBuilder", "N_MIXUP_PSEUDO_NORMAL", "all_segments", "augmented_bank", "centres_bank", "genrep_mixup",
    "kmeans_centres", "mixup_pseudo_normals", "row_domains", "target_smote",
]

N_MIXUP_PSEUDO_NORMAL = 50  # report 2.3

BankBuilder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def all_segments(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
    return emb.reshape(-1, emb.shape[-1])


def row_domains(build: BankBuilder, emb: np.ndarray, domains: np.ndarray, extra_rows: int = 0) -> np.ndarray | None:
    """The domain of each row ``build`` makes, where a row is one clip's segment (:func:`all_segments`); None where
    rows are made across domains or clips (k-means centres, Mixup, SMOTE and GenRep points), or where ``extra_rows``
    made elsewhere (Mixup pseudo-normals) are appended to the bank."""
    if build is not all_segments or extra_rows:
        return None
    return np.repeat(np.asarray(domains), emb.shape[1])


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


# --- more target domain for a bank that has a handful of target clips ---------------------------
# Both are built inside each fold's bank (augmented_bank), from that fold's clips only: made from
# all clips, the held-out clip's own segments would shape the points beside it and flatter its
# out-of-fold score, and with it the standardization and the threshold.


def _nearest(x: np.ndarray, bank: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Indices ``[len(x), k]`` of each row's k nearest rows of ``bank`` (L2; brute force: banks are small)."""
    d = (x**2).sum(1)[:, None] - 2.0 * x @ bank.T + (bank**2).sum(1)[None, :]
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    k = min(k, bank.shape[0] - (1 if exclude_self else 0))
    return np.argsort(d, axis=1)[:, :k]


def target_smote(tgt: np.ndarray, n: int, rng: np.random.Generator, k: int = 5) -> np.ndarray:
    """SMOTE (as ASDKit's back end oversamples the target domain): ``n`` points each on the segment
    between a random target embedding and one of its ``k`` nearest target neighbours."""
    if n <= 0 or len(tgt) < 2:
        return np.zeros((0, tgt.shape[-1]), dtype=np.float32)
    tgt = np.asarray(tgt, dtype=np.float32)
    nn = _nearest(tgt, tgt, k, exclude_self=True)
    i = rng.integers(0, len(tgt), n)
    j = nn[i, rng.integers(0, nn.shape[1], n)]
    lam = rng.uniform(0.0, 1.0, size=(n, 1)).astype(np.float32)
    return (tgt[i] + lam * (tgt[j] - tgt[i])).astype(np.float32)


def genrep_mixup(src: np.ndarray, tgt: np.ndarray, n: int, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """GenRep's memory-bank Mixup (arXiv 2409.05035): ``n`` points between a random target embedding
    and one of its ``k`` nearest source embeddings, nearer the target (ratio uniform in [0.5, 1]).

    Unlike the report's pseudo-normals (random pairs, any ratio), the partner is a neighbour, so
    the new points fill the target domain's surroundings rather than the space between domains.
    """
    if n <= 0 or len(src) == 0 or len(tgt) == 0:
        return np.zeros((0, (src if len(src) else tgt).shape[-1]), dtype=np.float32)
    src, tgt = np.asarray(src, dtype=np.float32), np.asarray(tgt, dtype=np.float32)
    nn = _nearest(tgt, src, k, exclude_self=False)
    i = rng.integers(0, len(tgt), n)
    j = nn[i, rng.integers(0, nn.shape[1], n)]
    lam = rng.uniform(0.5, 1.0, size=(n, 1)).astype(np.float32)
    return (lam * tgt[i] + (1.0 - lam) * src[j]).astype(np.float32)


def augmented_bank(base: BankBuilder, smote: int, genrep: int, seed: int) -> BankBuilder:
    """``base``'s rows plus ``smote`` SMOTE and ``genrep`` GenRep points made from the same clips."""
    if smote <= 0 and genrep <= 0:
        return base

    def build(emb: np.ndarray, domains: np.ndarray) -> np.ndarray:
        d = emb.shape[-1]
        rng = np.random.default_rng([seed, 0x5307E, len(emb)])
        src = emb[domains == "source"].reshape(-1, d)
        tgt = emb[domains == "target"].reshape(-1, d)
        return np.concatenate([base(emb, domains), target_smote(tgt, smote, rng), genrep_mixup(src, tgt, genrep, rng)])

    return build
