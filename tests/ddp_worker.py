"""One process of a ``torchrun`` stage-1 launch, for tests/test_ddp.py.

    torchrun --nproc-per-node 2 tests/ddp_worker.py CONFIG.json PROBE_DIR [--stop-before-epoch E]

Trains with :func:`train.stage1.train_extractor` exactly as ``edge-asd-train`` does, and
writes what the test compares into PROBE_DIR (never into the run folder):
``rank<R>.pt`` (the weights this rank ends with), ``batches<R>.json`` (the t and d labels of
every batch this rank trained on) and ``writes<R>.json`` (every path under the run folder this
process opened for writing, created, renamed or removed, seen by a Python audit hook).
``--stop-before-epoch E`` ends every rank when epoch E would start (after epoch E-1's
checkpoint), as a crash would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import train.stage1 as stage1
from train.config import TrainConfig

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.copyfile", "os.truncate"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("probe")
    p.add_argument("--stop-before-epoch", type=int)
    args = p.parse_args()
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)  # two ranks on two cores
    cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    run_dir, probe = str(Path(cfg.out).resolve()), Path(args.probe)
    writes: list[str] = []

    def audit(event: str, hook_args: tuple) -> None:
        if event == "open":
            path, mode = hook_args[0], hook_args[1]
            if isinstance(path, (str, os.PathLike)) and isinstance(mode, str) and set(mode) & set("wax+"):
                if str(Path(path).resolve()).startswith(run_dir):
                    writes.append(f"{event} {path}")
        elif event in WRITE_EVENTS:
            for a in hook_args[:2]:
                if isinstance(a, (str, os.PathLike)) and str(Path(a).resolve()).startswith(run_dir):
                    writes.append(f"{event} {a}")

    sys.addaudithook(audit)

    trainers: list[stage1.Trainer] = []
    batches: list[dict] = []

    class ProbedTrainer(stage1.Trainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainers.append(self)

        def step(self, batch):
            batches.append({"t": batch["t"].tolist(), "d": batch["d"].tolist()})
            return super().step(batch)

    stage1.Trainer = ProbedTrainer
    if args.stop_before_epoch is not None:
        set_epoch = stage1.OEBatchSampler.set_epoch

        def stop(self, epoch: int) -> None:
            if epoch == args.stop_before_epoch:
                dump(probe, rank, trainers, batches, writes)
                os._exit(3)
            set_epoch(self, epoch)

        stage1.OEBatchSampler.set_epoch = stop

    stage1.train_extractor(cfg, progress=False)
    dump(probe, rank, trainers, batches, writes)


def dump(probe: Path, rank: int, trainers: list, batches: list, writes: list) -> None:
    probe.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in trainers[0].model.state_dict().items()}, probe / f"rank{rank}.pt")
    (probe / f"batches{rank}.json").write_text(json.dumps(batches))
    (probe / f"writes{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main()
