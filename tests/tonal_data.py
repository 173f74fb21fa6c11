"""A tonal DCASE-layout data set for the training tests, and their tiny training configuration.

The target machine ("fan") has three sections whose sounds differ in pitch (and a
target domain shifted up 8% with more noise); another machine type ("pump")
provides the pseudo-anomalous data. tests/conftest.py's ``data_root`` writes one
per test module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from train.config import TrainConfig
from train.models import TINY_MODEL

SR = 16000
FAN_PITCH = [220.0, 470.0, 910.0]


def _tonal(rng: np.random.Generator, f0: float, seconds: float, noise: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.02 * rng.standard_normal())
    x = sum((0.6 / h) * np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi)) for h in range(1, 5))
    x = x + noise * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def write_dataset(root: Path, n_source: int = 16, n_target: int = 3, seconds: float = 3.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    fan = root / "fan" / "train"
    fan.mkdir(parents=True)
    for s, f0 in enumerate(FAN_PITCH):
        for domain, n, shift, noise in (("source", n_source, 1.0, 0.3), ("target", n_target, 1.08, 0.6)):
            for i in range(n):
                x = _tonal(rng, f0 * shift, seconds, noise)
                sf.write(fan / f"section_{s:02d}_{domain}_train_normal_{i:04d}_p_{int(f0)}.wav", x, SR, subtype="PCM_16")
    pump = root / "pump" / "train"
    pump.mkdir(parents=True)
    for i in range(16):
        t = np.arange(int(seconds * SR)) / SR
        x = 0.5 * rng.standard_normal(t.size) * np.sin(2 * np.pi * 3 * t) ** 2 + _tonal(rng, 330.0 + 40 * i, seconds, 1.0)
        sf.write(pump / f"section_{i % 2:02d}_source_train_normal_{i:04d}.wav", (0.2 * x).astype(np.float32), SR)
    return root


def tiny_config(data_root: Path, out: Path, cache_dir: Path, **kw) -> TrainConfig:
    base = dict(
        data=data_root, machine="fan", out=out, backbone="transformer", **TINY_MODEL, batch_size=16, epochs=6, lr=3e-3, r_train=0.5, n_target_train=2, num_workers=0,
        cache_dir=cache_dir, checkpoint_every=100, validate_every=3, val_segments=3, log_every=4, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)
