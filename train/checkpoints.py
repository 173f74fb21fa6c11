"""Stage-1 files that outlive a process: the extractor file, snapshots to resume from, random states."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from edge_asd.errors import ConfigError, UserError

from .config import TrainConfig
from .models import Extractor
from .rundir import RunDir


EXTRACTOR_FORMAT = "edge-asd-extractor"
EXTRACTOR_VERSION = 1


def atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def check_resumable(run_dir: Path, cfg: TrainConfig) -> None:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise UserError(f"{path}: missing; cannot tell how the run in {run_dir} was configured")
    try:
        stored = TrainConfig.from_dict(json.loads(path.read_text()), ignore_unknown=True)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable training config ({exc})") from None
    a, b = stored.to_dict(), cfg.to_dict()
    differ = [k for k in a if k not in TrainConfig.RESUMABLE_CHANGES and a[k] != b[k]]
    if differ:
        raise ConfigError(
            f"{path}: cannot resume with a different {', '.join(differ)} "
            f"(stored: {', '.join(f'{k}={a[k]!r}' for k in differ)})"
        )


def rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_extractor(model: Extractor, path: Path, extra: dict | None = None) -> None:
    """Final weights with everything needed to rebuild the module (plain tensors and builtins)."""
    atomic_save(
        {
            "format": EXTRACTOR_FORMAT,
            "version": EXTRACTOR_VERSION,
            "model_config": model.config.to_dict(),
            "frontend": model.frontend.config(),
            "state_dict": cpu_state(model),
            **(extra or {}),
        },
        path,
    )


def prune_snapshots(ckpt_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    snaps = sorted(ckpt_dir.glob("epoch_*.pt"))
    for old in snaps[:-keep]:
        old.unlink()
