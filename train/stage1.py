"""Stage 1: train the outlier-exposure feature extractor (report Sections 2.1-2.4, 3.1).

    run_dir = train_extractor(TrainConfig(data=..., machine="fan", out="runs/fan"))

The run folder then holds::

    config.json              the full TrainConfig
    split.json               every normal clip of the machine: train or heldout; the section order
    losses.csv               step, epoch, lr, loss, l_machine, l_section, l_domain (every step; under
                             sub-cluster AdaCos its loss is l_section and l_machine is 0)
    validation.csv           held-out section accuracy per epoch (epoch 0: before training)
    checkpoints/last.pt      full training state after the latest epoch (what resume reads)
    checkpoints/epoch_NNNN.pt  snapshots every `checkpoint_every` epochs (same content; copy one
                             over last.pt to resume from it)
    checkpoints/extractor.pt final weights + the model config: all load_extractor() needs

Multi-GPU: launch with ``torchrun --nproc-per-node N``; with WORLD_SIZE > 1 each
process trains on its share of every global batch under DistributedDataParallel
and only rank 0 writes. ``batch_size`` is the global batch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from edge_asd.io.audio import SegmentSpec
from edge_asd.errors import ConfigError, DataError, UserError

from .checkpoints import atomic_save, check_resumable, cpu_state, prune_snapshots, rng_state, save_extractor, set_rng_state
from .config import TrainConfig
from .distributed import Runtime, setup_runtime
from .runlog import LOSS_COLUMNS, VALIDATION_COLUMNS, append_rows, fmt, truncate_csv
from .data import BatchPlan, OEBatchSampler, PreparedData, iter_clip_batches, prepare_data, segment_spec
from .frontend import strict_fp32
from .losses import LossWeights
from .models import Extractor, build_extractor
from .objectives import objective
from .rundir import RunDir

log = logging.getLogger(__name__)


# --- where it runs ------------------------------------------------------------------------


# --- one optimisation step ----------------------------------------------------------------


class TrainForward(nn.Module):
    """The training forward's precision policy: fp32 front end, bf16 encoder under AMP, fp32 heads.

    Kept as one module so DistributedDataParallel sees a single forward. With
    ``channel_db`` it also gives every clip another microphone and hall
    (:func:`channel_curves`): training only, so it lives here and never in the
    exported graph.
    """

    def __init__(self, model: Extractor, amp: bool, channel_db: float = 0.0, seed: int = 0):
        super().__init__()
        self.model = model
        self.amp = amp
        self.channel_db = float(channel_db)
        self._generator = torch.Generator().manual_seed(int(seed)) if channel_db > 0 else None

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        with strict_fp32(wave.device):
            logmel, spectrum = self.model.wave_features(wave.float())
            if self._generator is not None:
                curves = channel_curves(logmel.shape[0], logmel.shape[1], self.channel_db, self._generator)
                logmel = logmel + curves.to(logmel.device).unsqueeze(-1)
        with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=self.amp):
            emb = self.model.branch_embedding(logmel, spectrum)
        return self.model.output_heads(emb.float())


# Cosines 1..4 over the bands: tilts and broad humps, the shapes a microphone's response or a
# hall's reverberation gives a spectrum. Not a constant (the clip's level is standardized away)
# and nothing narrower than a quarter of the range, which is where faults put their energy.
CHANNEL_COMPONENTS = 4


def channel_curves(batch: int, n_mels: int, channel_db: float, generator: torch.Generator) -> torch.Tensor:
    """``[batch, n_mels]`` random smooth log-power offsets, standard deviation over bands ``channel_db`` dB on average.

    The log-mel is natural-log power, so ``channel_db`` dB is ``channel_db * ln(10) / 10`` in its units.
    """
    k = torch.arange(1, CHANNEL_COMPONENTS + 1, dtype=torch.float32)
    m = torch.arange(n_mels, dtype=torch.float32) + 0.5
    basis = torch.cos(math.pi * k[:, None] * m[None, :] / n_mels)  # [K, n_mels], each of variance 1/2 over bands
    coefs = torch.randn(batch, CHANNEL_COMPONENTS, generator=generator)
    scale = channel_db * math.log(10.0) / 10.0 / math.sqrt(CHANNEL_COMPONENTS / 2.0)
    return scale * coefs @ basis


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # No weight decay on biases, norm scales and the scalar g_affine: decaying them
    # pulls towards zero quantities that have no reason to be small.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(cfg.fused_adamw and device.type == "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


class Trainer:
    """Model + optimiser + OneCycleLR + loss weights; ``step(batch)`` is one update.

    Shared by :func:`train_extractor` and ``benchmarks/bench_train.py`` so the
    benchmark measures the code that trains.
    """

    def __init__(self, model: Extractor, cfg: TrainConfig, device: torch.device, total_steps: int, runtime: Runtime | None = None):
        self.model = model
        self.cfg = cfg
        self.objective = objective(cfg.objective)
        self.device = device
        cuda = device.type == "cuda"
        rank = runtime.rank if runtime is not None else 0
        self.forward = TrainForward(model, amp=bool(cfg.amp and cuda and torch.cuda.is_bf16_supported()),
                                    channel_db=cfg.channel_db, seed=cfg.seed * 1000 + rank)
        if runtime is not None and runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # A domain head outside the loss (lambda_domain 0) gets no gradient, which
            # DDP must be told about or it waits forever for that bucket.
            # So do the section and machine heads under sub-cluster AdaCos, which replaces their losses.
            unused = bool(cfg.domain_head and cfg.lambda_domain == 0) or not self.objective.trains_oe_heads
            self.module: nn.Module = DistributedDataParallel(
                self.forward, device_ids=[device] if cuda else None, find_unused_parameters=unused,
                broadcast_buffers=False,  # Runtime.average_buffers after each epoch instead
            )
        else:
            self.module = self.forward
        self.optimizer = make_optimizer(model, cfg, device)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=cfg.pct_start
        )
        self.weights = LossWeights(cfg.lambda_section, cfg.lambda_domain, cfg.domain_weight_by_t)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One update; returns ``[loss, l_machine, l_section, l_domain]`` on the device (no sync)."""
        nb = self.device.type == "cuda"
        batch = {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()}
        out = self.module(batch["wave"])
        terms = self.objective.loss(self.model, out, batch, batch["d"] if self.cfg.domain_head else None, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return terms.stacked()

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def prepare_model(model: Extractor, cfg: TrainConfig, device: torch.device) -> Extractor:
    """Move to the device and apply the throughput options (FFT front end, NHWC, compile)."""
    model.frontend.use_fft = cfg.frontend_fft
    if model.fft_branch is not None:
        model.fft_branch.frontend.use_fft = cfg.frontend_fft
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.use_channels_last()
    if cfg.compile:
        # In place: state-dict keys stay unprefixed, and the front end stays eager fp32.
        model.encoder.compile()
    return model


# --- validation ----------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_sections(
    model: Extractor,
    clips: Sequence[tuple[Path, int, str]],
    spec: SegmentSpec = SegmentSpec(),
    device: str | torch.device = "cpu",
    batch_clips: int = 16,
) -> dict[str, float]:
    """Section accuracy of whole clips ``(path, section index, domain)``: the section head's
    logits averaged over the clip's S segments, argmax against the true section."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct: list[bool] = []
    losses: list[float] = []
    k = model.config.n_sections
    try:
        for first, segs in iter_clip_batches([c[0] for c in clips], spec, batch_clips):
            n, s, length = segs.shape
            wave = torch.from_numpy(segs.reshape(n * s, length)).to(device)
            with strict_fp32(device):
                logits = model(wave)["section_logits"].float().reshape(n, s, k).mean(dim=1).cpu()
            truth = torch.tensor([clips[first + i][1] for i in range(n)])
            correct += (logits.argmax(dim=1) == truth).tolist()
            onehot = F.one_hot(truth, k).float()
            losses += F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1).tolist()
    finally:
        model.train(was_training)
    domains = np.array([c[2] for c in clips])
    ok = np.array(correct, dtype=bool)

    def acc(mask: np.ndarray) -> float:
        return float(ok[mask].mean()) if mask.any() else float("nan")

    return {
        "n_clips": len(clips),
        "section_acc": acc(np.ones(len(clips), bool)),
        "section_acc_source": acc(domains == "source"),
        "section_acc_target": acc(domains == "target"),
        "section_loss": float(np.mean(losses)) if losses else float("nan"),
    }


def heldout_clips(run_dir: str | Path, data_root: str | Path) -> list[tuple[Path, int, str]]:
    """The held-out normals of a run as ``(path, section index, domain)``, from its split.json."""
    split = RunDir(run_dir).read_split()
    index = {s: i for i, s in enumerate(split["sections"])}
    return [
        (Path(data_root) / c["path"], index[c["section"]], c["domain"])
        for c in split["clips"]
        if c["split"] == "heldout"
    ]


# --- run folder -----------------------------------------------------------------------------


# --- training -------------------------------------------------------------------------------


def train_extractor(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train stage 1 for ``cfg.machine``; returns the run folder (``cfg.out``)."""
    runtime = setup_runtime(cfg.device)
    try:
        return _train(cfg, runtime, progress)
    finally:
        if runtime.initialized_here:
            dist.destroy_process_group()


def _prepare(cfg: TrainConfig, runtime: Runtime, progress: bool) -> PreparedData:
    # Rank 0 reads every clip once and fills the statistics cache; the others
    # then find everything cached instead of all reading the data set at once.
    data = None
    if runtime.is_main:
        data = prepare_data(cfg, rank=0, progress=progress)
    runtime.barrier()
    if data is None:
        data = prepare_data(cfg, rank=runtime.rank)
    return data


def _run_folder(cfg: TrainConfig) -> tuple[Path, Path, Path, bool]:
    """The run folder, its checkpoints and whether this start resumes; refuses to overwrite a run."""
    run_dir = Path(cfg.out)
    ckpt_dir = RunDir(run_dir).checkpoints
    last_path = ckpt_dir / "last.pt"
    resuming = bool(cfg.resume and last_path.exists())
    if last_path.exists() and not cfg.resume:
        raise UserError(f"{run_dir}: already holds a stage-1 run (checkpoints/last.pt); resume it or choose another folder")
    if resuming:
        check_resumable(run_dir, cfg)
    return run_dir, ckpt_dir, last_path, resuming


def _write_run_files(cfg: TrainConfig, runtime: Runtime, data: PreparedData, resuming: bool) -> None:
    """config.json and split.json (rank 0); a resumed run must find the clips it started with."""
    run_dir = Path(cfg.out)
    if resuming and RunDir(run_dir).split.exists():
        stored = RunDir(run_dir).read_split()
        if stored.get("clips") != data.split["clips"] or stored.get("sections") != data.sections:
            raise DataError(f"{cfg.data}: the training clips changed since {run_dir} was started; cannot resume")
    if runtime.is_main:
        RunDir(run_dir).checkpoints.mkdir(parents=True, exist_ok=True)
        RunDir(run_dir).config.write_text(json.dumps(cfg.to_dict(), indent=2))
        RunDir(run_dir).split.write_text(json.dumps(data.split, indent=2))
    runtime.barrier()


def _build_model(cfg: TrainConfig, data: PreparedData, runtime: Runtime):
    """The extractor on its device, and the labels its objective trains on (None where it needs none)."""
    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config(data.sections)
    obj = objective(cfg.objective)
    labels = obj.prepare(cfg, data, model_cfg)
    if labels is not None:
        model_cfg.validate()
        note = obj.describe(cfg, labels)
        if note and runtime.is_main:
            log.info("%s", note)
    model = build_extractor(model_cfg, cfg.pretrained_weights)
    if runtime.rank:
        torch.manual_seed(cfg.seed + runtime.rank)  # different dropout masks per process
    prepare_model(model, cfg, runtime.device)
    return model, labels


def _make_loader(cfg: TrainConfig, data: PreparedData, labels, runtime: Runtime):
    """This process's batch sampler (its share of every global batch) and the DataLoader over it."""
    device = runtime.device
    seg = cfg.segment_samples
    if cfg.batch_size % runtime.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not a multiple of the {runtime.world_size} processes")
    sampler = OEBatchSampler(
        data.pools, data.table.lengths, seg, BatchPlan.from_config(cfg), cfg.seed, runtime.rank, runtime.world_size
    )
    workers = cfg.num_workers
    loader = torch.utils.data.DataLoader(
        objective(cfg.objective).dataset(data, seg, labels),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # A private generator: the loader's per-epoch seed draw must not consume
        # the global RNG that dropout uses, or resumed runs would diverge.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return sampler, loader


def _resume(last_path: Path, model: Extractor, trainer: "Trainer", runtime: Runtime) -> tuple[int, int]:
    """Weights, optimiser, schedule and this rank's random state from ``last.pt``: (epoch, step) done."""
    # Loaded on the CPU: RNG states must stay CPU tensors, and the optimiser's
    # load_state_dict moves its moments next to the parameters itself.
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    trainer.load_state(state)
    # each rank its own generator (its dropout masks differ from the others'), as before the stop
    ranks = state.get("rng_ranks") or [state["rng"]]
    set_rng_state(ranks[runtime.rank] if runtime.rank < len(ranks) else state["rng"], runtime.device)
    start_epoch, step = int(state["epoch"]), int(state["step"])
    if runtime.is_main:
        log.info("resuming %s after epoch %d (step %d)", last_path.parent.parent, start_epoch, step)
    return start_epoch, step


def _apply_step_budget(cfg: TrainConfig, steps_per_epoch: int) -> tuple[TrainConfig, str]:
    """``cfg`` with the epochs a step budget asks for, and why that many (for the log).

    A budget in optimizer steps trains 35 clips and 3,000 clips alike: counted in
    epochs, the first gets a few dozen steps and the second hours. Whole epochs
    (the sampler's unit), the fewest that reach the budget; derived from the data
    alone, so a resumed run derives the same number.
    """
    if cfg.steps is None:
        return cfg, f"epochs: {cfg.epochs} as configured"
    epochs = max(1, math.ceil(cfg.steps / steps_per_epoch))
    return replace(cfg, epochs=epochs), f"budget of {cfg.steps} optimizer steps"


def _train(cfg: TrainConfig, runtime: Runtime, progress: bool) -> Path:
    """The run folder, the data, the model and its loader, then the epochs: losses, validation, checkpoints."""
    cfg.validate()
    device = runtime.device
    run_dir, ckpt_dir, last_path, resuming = _run_folder(cfg)
    data = _prepare(cfg, runtime, progress)
    _write_run_files(cfg, runtime, data, resuming)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuning pays off
    model, labels = _build_model(cfg, data, runtime)

    sampler, loader = _make_loader(cfg, data, labels, runtime)
    steps_per_epoch = len(sampler)
    cfg, budget_note = _apply_step_budget(cfg, steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    trainer = Trainer(model, cfg, device, total_steps, runtime)

    start_epoch, step = _resume(last_path, model, trainer, runtime) if resuming else (0, 0)

    losses_csv, val_csv = RunDir(run_dir).losses, RunDir(run_dir).validation
    if runtime.is_main:
        truncate_csv(losses_csv, LOSS_COLUMNS, lambda r: int(r["step"]) <= step)
        truncate_csv(val_csv, VALIDATION_COLUMNS, lambda r: int(r["epoch"]) <= start_epoch)
        log.info(
            "stage 1 %s: %d sections, %d source + %d target training normals, %d held out, "
            "%d pseudo-anomalous (%d outliers); %d steps/epoch x %d epochs = %d steps (%s) on %s",
            cfg.machine, len(data.sections), data.pools.source.size, data.pools.target.size, len(data.heldout),
            data.pools.machines.size + data.pools.outliers.size, data.pools.outliers.size,
            steps_per_epoch, cfg.epochs, total_steps, budget_note, device,
        )

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps, initial=step, disable=not (progress and runtime.is_main), desc=f"stage 1 {cfg.machine}", unit="step"
    )
    spec = segment_spec(cfg.to_dict(), data.split["amplitude"])

    def validate(epoch: int) -> None:
        if not data.heldout:
            return
        res = evaluate_sections(model, data.heldout, spec, device)
        append_rows(val_csv, [[epoch, step, res["n_clips"]] + [fmt(res[c]) for c in VALIDATION_COLUMNS[3:]]])
        bar.set_postfix_str(f"val acc {res['section_acc']:.3f}", refresh=False)

    if runtime.is_main and not resuming and start_epoch == 0:
        validate(0)
    runtime.barrier()

    pending: list[tuple[int, int, float, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        values = torch.stack([p[3] for p in pending]).float().cpu().numpy()
        if runtime.is_main:
            append_rows(losses_csv, [[s, e, fmt(lr)] + [fmt(v) for v in row] for (s, e, lr, _), row in zip(pending, values)])
            bar.set_postfix_str(f"loss {values[-1, 0]:.4f}", refresh=False)
        pending.clear()

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for batch in loader:
            lr = trainer.lr
            values = trainer.step(batch)
            step += 1
            pending.append((step, epoch + 1, lr, values))
            if len(pending) >= cfg.log_every:
                flush()
            bar.update(1)
        flush()
        done = epoch + 1
        runtime.average_buffers(model)
        rngs = runtime.gather(rng_state(device))  # before validation, which draws nothing but runs on rank 0 only
        if runtime.is_main:
            if done % cfg.validate_every == 0 or done == cfg.epochs:
                validate(done)
            state = {"model": cpu_state(model), "epoch": done, "step": step, "rng": rngs[0], "rng_ranks": rngs,
                     **trainer.state()}
            atomic_save(state, last_path)
            if done % cfg.checkpoint_every == 0:
                shutil.copyfile(last_path, ckpt_dir / f"epoch_{done:04d}.pt")
                prune_snapshots(ckpt_dir, cfg.keep_checkpoints)
        runtime.barrier()
    bar.close()

    if runtime.is_main:
        save_extractor(model, RunDir(run_dir).extractor, {"epochs": cfg.epochs, "steps": step, "seed": cfg.seed})
    runtime.barrier()
    return run_dir


