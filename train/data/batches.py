"""The outlier-exposure batch sampler (t 1:1, at least one target clip, Mixup) and the crop dataset."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from train.data.inventory import ClipTable, Pools
from train.data.stats import read_crop


# One training example: (clip, crop offset, Mixup partner or -1, partner offset, weight of the clip).
Slot = tuple[int, int, int, int, float]


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int = 128
    domain_mode: bool = True
    mixup: bool = False
    mixup_alpha: float = 0.2
    domain_mixup_alpha: float = 1.0
    min_target_per_batch: int = 1
    outlier_fraction: float = 0.5

    @classmethod
    def from_config(cls, cfg) -> "BatchPlan":
        return cls(
            batch_size=cfg.batch_size,
            domain_mode=cfg.domain_head,
            mixup=cfg.mixup,
            mixup_alpha=cfg.mixup_alpha,
            domain_mixup_alpha=cfg.domain_mixup_alpha,
            min_target_per_batch=cfg.min_target_per_batch,
            outlier_fraction=cfg.outlier_fraction,
        )


class OEBatchSampler:
    """Yields each step's examples as :data:`Slot` tuples; see the module docstring.

    Composition of a global batch of B:

    * without the domain head: B/2 normals (``min_target_per_batch`` of them from the
      target domain, the rest source) and B/2 pseudo-anomalous clips;
    * with it (Section 2.4): B/4 normals (``min_target_per_batch`` of them from the
      target domain, the rest source), B/4 pseudo-target Mixups (target normal x
      pseudo-anomalous, ratio ~ Beta(domain_mixup_alpha)), and B/2 pseudo-anomalous
      clips. A pseudo-target Mixup's labels follow its ratio (t = d = ratio), so t
      is 3:5 in expectation here; the report fixes these quarters for the domain
      classifier, and 1:1 holds for the batches without it.

    With ``mixup`` every normal slot is mixed with a pseudo-anomalous clip and every
    pseudo-anomalous slot with a source normal, ratio ~ Beta(mixup_alpha), so the
    expected t stays at 1:1. An epoch passes every source training clip once.

    Multi-process (DDP) runs: every rank draws the same global batch and takes the
    slots ``rank::world_size`` of a seeded shuffle of it, which is what a
    DistributedSampler does for a plain index list.
    """

    def __init__(
        self,
        pools: Pools,
        lengths: np.ndarray,
        segment_samples: int,
        plan: BatchPlan,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if plan.batch_size % world_size:
            raise ValueError(f"batch size {plan.batch_size} is not a multiple of the {world_size} processes")
        self.pools = pools
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.segment = int(segment_samples)
        self.plan = plan
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        b = plan.batch_size
        if plan.domain_mode:
            # Section 2.4's quarters, with Section 2.3's rule kept inside the normal
            # quarter: real target-domain normals (d = 1) in every batch are the
            # domain head's only unmixed examples of the target domain.
            self.n_target = min(plan.min_target_per_batch, b // 4 - 1) if pools.target.size else 0
            self.n_source = b // 4 - self.n_target
            self.n_pseudo_target = b // 4
        else:
            self.n_target = min(plan.min_target_per_batch, b // 2) if pools.target.size else 0
            self.n_source = b // 2 - self.n_target
            self.n_pseudo_target = 0
        if self.n_source < 1:
            raise ValueError(f"batch size {b} leaves no slot for a source-domain clip")
        self.n_anomalous = b - self.n_source - self.n_target - self.n_pseudo_target

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.pools.source.size / self.n_source)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[Slot]]:
        rng = np.random.default_rng([self.seed, 0xBA7C, self.epoch])
        need = self.steps_per_epoch * self.n_source
        reps = math.ceil(need / self.pools.source.size)
        stream = np.concatenate([self.pools.source[rng.permutation(self.pools.source.size)] for _ in range(reps)])
        for step in range(self.steps_per_epoch):
            batch = self._batch(rng, stream[step * self.n_source : (step + 1) * self.n_source])
            order = rng.permutation(len(batch))
            yield [batch[i] for i in order[self.rank :: self.world_size]]

    def _crop(self, rng: np.random.Generator, clip: int) -> int:
        return int(rng.integers(0, self.lengths[clip] - self.segment + 1))

    def _anomaly(self, rng: np.random.Generator) -> int:
        p = self.pools
        use_outliers = p.outliers.size and (not p.machines.size or rng.random() < self.plan.outlier_fraction)
        pool = p.outliers if use_outliers else p.machines
        return int(pool[rng.integers(pool.size)])

    def _slot(self, rng: np.random.Generator, clip: int, partner: int = -1, alpha: float = 0.0) -> Slot:
        if partner < 0:
            return (clip, self._crop(rng, clip), -1, 0, 1.0)
        lam = float(rng.beta(alpha, alpha))
        return (clip, self._crop(rng, clip), partner, self._crop(rng, partner), lam)

    def _batch(self, rng: np.random.Generator, sources: np.ndarray) -> list[Slot]:
        plan, pools = self.plan, self.pools
        normals = [int(i) for i in sources]
        normals += [int(pools.target[rng.integers(pools.target.size)]) for _ in range(self.n_target)]
        batch: list[Slot] = []
        for clip in normals:
            partner = self._anomaly(rng) if plan.mixup else -1
            batch.append(self._slot(rng, clip, partner, plan.mixup_alpha))
        for _ in range(self.n_pseudo_target):
            clip = int(pools.target[rng.integers(pools.target.size)])
            batch.append(self._slot(rng, clip, self._anomaly(rng), plan.domain_mixup_alpha))
        for _ in range(self.n_anomalous):
            clip = self._anomaly(rng)
            partner = int(pools.source[rng.integers(pools.source.size)]) if plan.mixup else -1
            batch.append(self._slot(rng, clip, partner, plan.mixup_alpha))
        return batch


class CropDataset(torch.utils.data.Dataset):
    """Turns a :data:`Slot` into a standardized (possibly mixed) crop and its soft labels.

    Labels are linear in the Mixup, so each follows from the mixed clips' own:
    ``t = l t_a + (1 - l) t_b``; section target ``l t_a y_a + (1 - l) t_b y_b``;
    domain ``d = l t_a [a is target] + (1 - l) t_b [b is target]``.
    """

    def __init__(self, table: ClipTable, n_sections: int, segment_samples: int):
        self.table = table
        self.k = n_sections
        self.segment = segment_samples

    def __len__(self) -> int:
        return len(self.table)

    def _crop(self, clip: int, offset: int) -> np.ndarray:
        if self.table.audio is not None:
            return self.table.audio[clip][offset : offset + self.segment]
        return read_crop(self.table.path(clip), self.table.stats(clip), offset, self.segment)

    def _labels(self, clip: int, weight: float, section: np.ndarray) -> tuple[float, float]:
        if not self.table.normal[clip]:
            return 0.0, 0.0
        section[self.table.section[clip]] += weight
        return weight, weight * float(self.table.target[clip])

    def __getitem__(self, slot: Slot) -> dict[str, torch.Tensor]:
        clip, offset, partner, partner_offset, lam = slot
        section = np.zeros(self.k, dtype=np.float32)
        wave = self._crop(clip, offset)
        t, d = self._labels(clip, lam, section)
        if partner >= 0:
            wave = lam * wave + (1.0 - lam) * self._crop(partner, partner_offset)
            t2, d2 = self._labels(partner, 1.0 - lam, section)
            t, d = t + t2, d + d2
        return {
            "wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            "t": torch.tensor(t, dtype=torch.float32),
            "section": torch.from_numpy(section),
            "d": torch.tensor(d, dtype=torch.float32),
        }
