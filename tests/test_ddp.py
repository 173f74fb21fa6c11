"""Stage 1 under DistributedDataParallel: real ``torchrun --nproc-per-node 2`` launches on the CPU (gloo).

tests/ddp_worker.py is each rank's process: the ordinary ``train_extractor`` with probes
that write what this test compares (the weights each rank ends with, the labels of every
batch each rank trained on, and every path under the run folder each rank wrote).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = {
    "backbone": "transformer", "embedding_dim": 16, "d_model": 16, "n_layers": 1, "n_heads": 2, "batch_size": 8,
    "epochs": 2, "num_workers": 0, "r_train": 0.8, "n_target_train": 3, "device": "cpu",
    "validate_every": 1, "checkpoint_every": 1,
}
# (configuration, the global batch of 8 as train/data.py's OEBatchSampler composes it:
#  source normals, target normals, pseudo-target Mixups, pseudo-anomalous clips)
SETUPS = {
    # the report's: the domain head's quarters (report 2.4), so every rule of the sampler shows in the labels
    "oe+domain_head": ({**TINY, "domain_head": True}, (1, 1, 2, 4)),
    # the cpu preset's objective: sub-cluster AdaCos (its adaptive scale is a buffer), no domain head, 1:1
    "subcluster_adacos": ({**TINY, "domain_head": False, "objective": "subcluster_adacos", "n_subclusters": 4,
                           "amplitude": "machine"}, (3, 1, 0, 4)),
}


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    from edge_asd.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("ddpdata")
    generate(root, SynthConfig(machines=("fan", "pump"), sections=2, train_source=10, train_target=4, test=1, seconds=3.0,
                               seed=5, workers=1), progress=False)
    return root


def torchrun(cfg: dict, probe: Path, *extra: str) -> subprocess.CompletedProcess:
    config = probe.with_suffix(".json")
    config.write_text(json.dumps(cfg))
    # torchrun's own module, so the launch uses this interpreter whatever a torchrun script's #! says
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [*launcher, "--nproc-per-node", "2", "--standalone", str(WORKER), str(config), str(probe), *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )


def load_extractor_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def states(probe: Path) -> tuple[dict, dict]:
    return tuple(torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ: {differ}"


@pytest.fixture(scope="module", params=list(SETUPS))
def setup(request) -> tuple[dict, tuple[int, int, int, int]]:
    return SETUPS[request.param]


@pytest.fixture(scope="module")
def ddp_run(ddp_data, setup, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    run, probe = root / "run", root / "probe"
    cfg = {**setup[0], "data": str(ddp_data), "machine": "fan", "out": str(run), "cache_dir": str(root / "cache")}
    res = torchrun(cfg, probe)
    assert res.returncode == 0, res.stderr[-3000:]
    return run, probe


@pytest.mark.slow
def test_both_ranks_end_with_the_weights_rank_0_saved(ddp_run):
    run, probe = ddp_run
    rank0, rank1 = states(probe)
    assert_same(rank0, rank1)  # parameters and buffers (the input BatchNorm's running statistics)
    assert_same(rank0, load_extractor_state(run / "checkpoints" / "extractor.pt"))


@pytest.mark.slow
def test_only_rank_0_writes_the_run_folder(ddp_run):
    run, probe = ddp_run
    written = [json.loads((probe / f"writes{r}.json").read_text()) for r in (0, 1)]
    assert written[1] == []
    # the probe sees rank 0's writes, so an empty list for rank 1 means something
    for name in ("config.json", "split.json", "losses.csv", "validation.csv", "checkpoints/extractor.pt.tmp"):
        assert any(w.endswith(str(run / name)) for w in written[0]), name


@pytest.mark.slow
def test_global_batch_keeps_the_sampler_rules(ddp_run, setup):
    run, probe = ddp_run
    n_source, n_target, n_mixed, n_anomalous = setup[1]
    per_rank = [json.loads((probe / f"batches{r}.json").read_text()) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    steps = sum(1 for _ in open(run / "losses.csv")) - 1
    assert len(per_rank[0]) == steps
    for b0, b1 in zip(*per_rank):
        assert len(b0["t"]) == len(b1["t"]) == 4  # each rank half of the global batch
        t = torch.tensor(b0["t"] + b1["t"])
        d = torch.tensor(b0["d"] + b1["d"])
        normal = t == 1
        assert int((normal & (d == 0)).sum()) == n_source
        assert int((normal & (d == 1)).sum()) == n_target >= 1  # at least one real target clip per global batch
        mixed = (t > 0) & (t < 1)
        assert int(mixed.sum()) == n_mixed and torch.equal(t[mixed], d[mixed])  # pseudo-target: t = d = ratio
        assert int((t == 0).sum()) == n_anomalous
        assert n_source + n_target + n_mixed + n_anomalous == len(t) == 8  # the two halves are the whole batch


@pytest.mark.slow
def test_resumed_ddp_run_continues_where_it_stopped(ddp_data, ddp_run, setup, tmp_path):
    full_run, full_probe = ddp_run
    run, probe = tmp_path / "run", tmp_path / "probe"
    cfg = {**setup[0], "data": str(ddp_data), "machine": "fan", "out": str(run), "cache_dir": str(tmp_path / "cache")}
    stopped = torchrun(cfg, probe, "--stop-before-epoch", "1")
    assert stopped.returncode != 0 and (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "checkpoints" / "extractor.pt").exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = torchrun({**cfg, "resume": True}, tmp_path / "probe2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # only epoch 2 trained after the restart, on the batches the uninterrupted run had there,
    # ending with its weights and its losses
    for r in (0, 1):
        after = json.loads((tmp_path / "probe2" / f"batches{r}.json").read_text())
        full = json.loads((full_probe / f"batches{r}.json").read_text())
        assert len(after) * 2 == len(full) and after == full[len(after):]
    assert_same(*states(tmp_path / "probe2"))
    assert_same(load_extractor_state(run / "checkpoints" / "extractor.pt"),
                load_extractor_state(full_run / "checkpoints" / "extractor.pt"))
    assert (run / "losses.csv").read_text() == (full_run / "losses.csv").read_text()


@pytest.mark.slow
def test_edge_asd_train_under_torchrun_makes_one_complete_run(ddp_data, tmp_path):
    """The README's multi-GPU command, on the CPU: stage 1 on both ranks, then stage 2 on rank 0 alone."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**SETUPS["oe+domain_head"][0], "epochs": 1, "cache_dir": str(tmp_path / "cache")}))
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "train.cli",
         "--data", str(ddp_data), "--machine", "fan", "--out", str(run), "--config", str(config), "--device", "cpu",
         "--baseline-epochs", "0"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run ready:") == 1  # rank 1 stopped after stage 1
    assert (run / "stage2" / "default.json").is_file() and (run / "baseline" / "plain").is_dir()
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8  # the global batch, as configured
