"""Stage-1 training configuration: one typed dataclass with every knob, JSON round-trip.

Defaults are the report's (Section 3.1) where it gives a value: AdamW at 1e-3 with
OneCycleLR, batch 128, lambda_section 10, lambda_domain 1, r_train 0.9
(the report tried 0.8/0.85/0.9), six target clips per section, 150 epochs (the
shortest of its 150/200/250/300).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edge_asd.io.dcase import list_clips, list_machines
from edge_asd.errors import ConfigError, DataError

from .models import ModelConfig, check_pretrained
from .names import BACKBONES, CNN_BACKBONES

_PATH_FIELDS = ("data", "out", "outliers", "pretrained_weights", "cache_dir")
DEVICES = ("auto", "cpu", "cuda")
AMPLITUDES = ("clip", "machine")


# The extractor's knobs are ModelConfig's: their defaults are read from it, never written twice.
_MODEL = ModelConfig()


# Keys that configurations once held and that no longer set anything: accepted and
# ignored, so a config.json of an older run (or a --config file copied from one) still
# loads. kappa, Eq. 7's temperature, was validated here but never read: the one that
# scores is stage 2's (edge_asd.scoring.stage2.Stage2Config.kappa).
RETIRED_KEYS = frozenset({"kappa"})


@dataclass
class TrainConfig:
    # --- what to train on, where to write -------------------------------------------
    data: Path  # DCASE-layout root; only DATA/<machine>/train (and other machines' train) is read
    machine: str
    out: Path  # run folder
    outliers: Path | None = None  # any other sounds (AudioSet in the report), searched recursively
    # --- model --------------------------------------------------------------------
    backbone: str = _MODEL.backbone
    embedding_dim: int = _MODEL.embedding_dim
    domain_head: bool = _MODEL.domain_head  # Section 2.4's domain classifier (and its batch composition)
    pretrained_weights: Path | None = None  # local timm/torch/safetensors weights of a CNN backbone, or "imagenet" (packaged Lite0); never downloaded
    d_model: int = _MODEL.d_model
    n_layers: int = _MODEL.n_layers
    n_heads: int = _MODEL.n_heads
    ff_mult: int = _MODEL.ff_mult
    conv_kernel: int = _MODEL.conv_kernel
    subsample: int = _MODEL.subsample
    max_rel_distance: int = _MODEL.max_rel_distance
    pool: str = _MODEL.pool
    dropout: float = _MODEL.dropout
    drop_rate: float = _MODEL.drop_rate
    drop_path_rate: float = _MODEL.drop_path_rate
    # --- front end (report Section 3.1) ---------------------------------------------
    n_fft: int = _MODEL.n_fft
    hop_length: int = _MODEL.hop_length
    n_mels: int = _MODEL.n_mels
    f_min: float = _MODEL.f_min
    f_max: float = _MODEL.f_max
    mel_scale: str = _MODEL.mel_scale
    segment_seconds: float = 2.0
    amplitude: str = "clip"  # "clip": standardize each clip (the report); "machine": one mean/std per machine type
    # --- data split and batches ---------------------------------------------------
    r_train: float = 0.9  # fraction of each section's source clips used for training
    n_target_train: int = 6  # target-domain clips per section used for training
    min_target_per_batch: int = 1  # Section 2.3: target-domain normals in every mini-batch
    pseudo_synth: bool = True  # no other machine type and no outliers folder: other machine types from edge-asd synth
    outlier_fraction: float = 0.5  # share of pseudo-anomalous slots drawn from `outliers` when both pools exist
    mixup: bool = False  # Mixup between normal and pseudo-anomalous data (soft t and section labels)
    mixup_alpha: float = 0.2  # Beta(alpha, alpha) of that Mixup
    domain_mixup_alpha: float = 1.0  # Beta(alpha, alpha) of the pseudo-target mixing ratio (uniform)
    channel_db: float = 0.0  # each training clip's log-mel tilted by a random smooth curve of this spread (dB): another microphone or hall
    # --- loss (Eq. 3, 6, 7) -------------------------------------------------------------
    lambda_section: float = 10.0
    lambda_domain: float = 1.0
    domain_weight_by_t: bool = True  # Eq. 5's t_i weighting (see train.losses.LossWeights)
    # --- optimisation -----------------------------------------------------------------
    epochs: int = 150
    steps: int | None = None  # optimizer-step budget: when set, epochs = ceil(steps / steps per epoch), whatever `epochs` says
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    pct_start: float = 0.3  # OneCycleLR warm-up share
    grad_clip: float | None = None
    seed: int = 0
    # --- execution ----------------------------------------------------------------------
    device: str = "auto"
    num_workers: int = 4
    amp: bool = True  # bf16 autocast of the encoder on CUDA (the front end and losses stay fp32)
    channels_last: bool = True  # NHWC EfficientNet on CUDA
    compile: bool = False  # torch.compile the encoder (CUDA throughput)
    fused_adamw: bool = True  # fused AdamW kernel on CUDA
    frontend_fft: bool = True  # train with the FFT front end; exports always use the DFT convolution
    memory_cache_mb: int = 2048  # hold all clips in RAM when their float32 audio fits in this
    cache_dir: Path | None = None  # per-clip statistics cache; None: $XDG_CACHE_HOME/edge-asd
    checkpoint_every: int = 10  # epochs between numbered snapshots (last.pt is written every epoch)
    keep_checkpoints: int = 3  # numbered snapshots kept (0: all)
    validate_every: int = 1  # epochs between held-out section-accuracy checks
    val_segments: int = 10  # segments per held-out clip in those checks (S of Eq. 4)
    log_every: int = 50  # steps between flushes of losses.csv (avoids a device sync per step)
    resume: bool = False
    # --- beyond the report: objective and FFT branch (train/adacos.py, train/fft_branch.py) ---------
    objective: str = _MODEL.objective  # "oe": the report's Eq. 3/6; "subcluster_adacos": Wilkinghoff's sub-cluster AdaCos
    n_subclusters: int = _MODEL.n_subclusters  # AdaCos centres per class
    adacos_trainable_centres: bool = _MODEL.adacos_trainable_centres  # False: centres stay at their random start, as in Wilkinghoff's DCASE 2023 code
    adacos_pseudo_classes: bool = True  # other machine types (and the outliers folder) as AdaCos classes; False: left out
    fft_branch: bool = _MODEL.fft_branch  # full-segment magnitude-spectrum branch, its embedding concatenated to the log-mel one
    fft_channels: int = _MODEL.fft_channels  # width of the FFT branch's convolutions and MLP
    fft_embedding_dim: int | None = _MODEL.fft_embedding_dim  # FFT branch's share of the embedding; None: embedding_dim

    # fields a resumed run may change without changing what is computed
    RESUMABLE_CHANGES = (
        "data", "out", "device", "num_workers", "resume", "compile", "cache_dir", "memory_cache_mb", "log_every",
        "validate_every", "val_segments", "checkpoint_every", "keep_checkpoints",
    )

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    # --- serialization ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in _PATH_FIELDS:
            if d[name] is not None:
                d[name] = str(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], ignore_unknown: bool = False) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known) - RETIRED_KEYS)
        if unknown and not ignore_unknown:
            raise ConfigError(f"unknown training config key(s): {', '.join(unknown)}")
        missing = [k for k in ("data", "machine", "out") if d.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"training config needs {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    # --- derived ----------------------------------------------------------------------
    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * 16000))

    def model_config(self, sections: list[str]) -> ModelConfig:
        shared = ({f.name for f in fields(ModelConfig)} & {f.name for f in fields(self)}) - {"machine"}
        return ModelConfig(
            **{k: getattr(self, k) for k in shared},
            sections=list(sections),
            machine=self.machine,
            segment_samples=self.segment_samples,
        )

    def frontend_dict(self) -> dict[str, Any]:
        """The front-end numbers, for manifests that describe what the exported graph computes."""
        return {
            "sample_rate": 16000,
            "n_fft": self.n_fft,
            "win_length": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "mel_scale": self.mel_scale,
            "center": False,
            "log_eps": 1e-6,
        }

    # --- validation -----------------------------------------------------------------
    def validate(self) -> None:
        """Check values and the data folder; raises :class:`UserError` naming the problem."""
        def bad(msg: str) -> ConfigError:
            return ConfigError(f"training config: {msg}")

        if self.backbone not in BACKBONES:
            raise bad(f"backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.amplitude not in AMPLITUDES:
            raise bad(f"amplitude {self.amplitude!r} is not one of {', '.join(AMPLITUDES)}")
        if self.device not in DEVICES:
            raise bad(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        quantum = 4 if self.domain_head else 2
        if self.batch_size < quantum or self.batch_size % quantum:
            raise bad(f"batch_size {self.batch_size} must be a positive multiple of {quantum}")
        if self.epochs < 1:
            raise bad("epochs must be at least 1")
        if self.steps is not None and self.steps < 1:
            raise bad("steps must be at least 1 (or null: train `epochs` epochs)")
        if not 0.0 < self.r_train <= 1.0:
            raise bad(f"r_train {self.r_train} must be in (0, 1]")
        for name in ("n_target_train", "min_target_per_batch", "num_workers", "memory_cache_mb", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must not be negative")
        for name in ("checkpoint_every", "validate_every", "val_segments", "log_every", "embedding_dim", "n_layers", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be at least 1")
        if not (math.isfinite(self.channel_db) and 0.0 <= self.channel_db <= 20.0):
            raise bad(f"channel_db {self.channel_db} must be between 0 and 20 (dB)")
        for name in ("lr", "mixup_alpha", "domain_mixup_alpha", "segment_seconds"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise bad(f"{name} must be a positive number")
        for name in ("lambda_section", "lambda_domain", "weight_decay"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must not be negative")
        if not 0.0 <= self.outlier_fraction <= 1.0 or not 0.0 < self.pct_start < 1.0:
            raise bad("outlier_fraction must be in [0, 1] and pct_start in (0, 1)")
        self.model_config(["00"]).validate()
        if self.segment_samples < self.n_fft:
            raise bad(f"segment of {self.segment_samples} samples is shorter than the {self.n_fft}-sample window")

        if not Path(self.data).is_dir():
            raise DataError(f"{self.data}: data folder does not exist")
        machines = list_machines(self.data)
        if self.machine not in machines:
            listed = ", ".join(machines) if machines else "none"
            raise DataError(f"{self.data}: no machine type {self.machine!r} (found: {listed})")
        list_clips(self.data, self.machine, "train")  # raises DataError when there are no train clips
        if self.outliers is not None and not Path(self.outliers).is_dir():
            raise DataError(f"{self.outliers}: outliers folder does not exist")
        if self.pretrained_weights is not None:
            if self.backbone not in CNN_BACKBONES:
                raise bad(f"pretrained_weights applies to the {', '.join(CNN_BACKBONES)} backbones only")
            # Loaded once here, so a file that does not fit stops the run before the data is read.
            check_pretrained(self.pretrained_weights, self.backbone)
