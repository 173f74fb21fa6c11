"""Per-clip random generators that depend only on the seed and a key."""

from __future__ import annotations

import hashlib

import numpy as np


def rng_for(seed: int, *key: object) -> np.random.Generator:
    """A Generator that depends only on ``seed`` and ``key`` (not on Python's hash salt)."""
    digest = hashlib.blake2b("/".join(str(k) for k in key).encode(), digest_size=16).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))
