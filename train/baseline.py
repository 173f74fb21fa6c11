"""The official DCASE 2022 Task 2 autoencoder baseline, re-implemented in torch.

This is the reference row the report compares the two-stage method against, so
it follows ``dcase2022_task2_baseline_ae`` (Keras 2.8 / librosa 0.9.1) rather
than what might work better:

* features (``common.file_to_vectors``): power mel spectrogram with
  ``n_fft=1024``, ``hop=512``, 128 mel bins, ``power=2``; log energies
  ``20 / power * log10(max(mel, DBL_EPSILON))``; 5 consecutive frames
  concatenated into 640-d vectors, one per frame position. The audio is used as
  read: the baseline does not standardize amplitude, so neither does this.
* the STFT is librosa 0.9's: periodic Hann window, frames centred with
  ``n_fft // 2`` samples of *zero* padding at each end (librosa 0.9 changed the
  default ``pad_mode`` from ``reflect`` to ``constant``).
* the mel filterbank is librosa's default (``htk=False, norm="slaney"``),
  built here in numpy because librosa is not a dependency of this project.
* model (``keras_model.get_model``): Dense 640-128-128-128-128-8-128-128-128-128-640,
  every hidden Dense followed by BatchNormalization and ReLU, Keras
  initialization (Glorot-uniform kernels, zero biases) and Keras BatchNorm
  constants; MSE loss, Adam ``lr=1e-3``, 100 epochs, batch 512, shuffled.
* ``validation_split=0.1`` as in ``baseline.yaml``: Keras holds out the *last*
  10 % of the feature vectors, in file order, before shuffling; they are never
  trained on and only report a validation loss. With sorted DCASE file names
  that is the tail of the last section (in the 2022 development set, all of
  section 02's target clips). Set it to 0 to train on every vector.
* one model per machine type over all its training clips (every section, both
  domains); a clip's anomaly score is the mean squared reconstruction error
  over all elements of all its vectors (``01_test.py``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_asd.io.audio import SAMPLE_RATE, read_audio
from edge_asd.io.features import hz_to_mel, mel_filterbank, mel_to_hz
from edge_asd.errors import UserError

_FORMAT = "edge-asd-ae-baseline"
_FORMAT_VERSION = 1

# librosa's log floor in the baseline is sys.float_info.epsilon (a float64
# constant), applied to float32 mel energies.
_LOG_FLOOR = sys.float_info.epsilon

# Keras defaults differ from torch's; the baseline relies on Keras defaults.
# BatchNormalization(momentum=0.99, epsilon=1e-3): torch's momentum is the
# weight of the *new* statistic, so 1 - 0.99.
_KERAS_BN_MOMENTUM = 0.01
_KERAS_BN_EPS = 1e-3
_KERAS_ADAM_EPS = 1e-7


@dataclass
class AEBaselineConfig:
    """Hyper-parameters of the baseline (``baseline.yaml`` of the DCASE 2022 AE baseline)."""

    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    n_mels: int = 128
    n_fft: int = 1024
    hop: int = 512
    frames: int = 5
    power: float = 2.0
    validation_split: float = 0.1
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "n_mels": self.n_mels,
            "n_fft": self.n_fft,
            "hop": self.hop,
            "frames": self.frames,
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise UserError(f"AE baseline: {name} must be a positive integer, got {value!r}")
        if int(self.epochs) != self.epochs or self.epochs < 0:
            raise UserError(f"AE baseline: epochs must be a non-negative integer, got {self.epochs!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"AE baseline: lr must be a positive number, got {self.lr!r}")
        if not (self.power > 0 and math.isfinite(self.power)):
            raise UserError(f"AE baseline: power must be a positive number, got {self.power!r}")
        if not 0.0 <= self.validation_split < 1.0:
            raise UserError(f"AE baseline: validation_split must be in [0, 1), got {self.validation_split!r}")
        if self.n_fft % 2:
            raise UserError(f"AE baseline: n_fft must be even, got {self.n_fft}")

    @property
    def input_dim(self) -> int:
        return self.n_mels * self.frames

    @property
    def min_samples(self) -> int:
        """Shortest clip that yields one vector: centred framing gives ``1 + n // hop`` frames."""
        return (self.frames - 1) * self.hop

    @classmethod
    def from_dict(cls, raw: dict) -> AEBaselineConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# --- Slaney mel scale and filterbank ------------------------------------------
# librosa's default (the Auditory Toolbox scale, area-normalized triangles) is
# the runtime's mel filterbank; the baseline only needs it in float32, as
# librosa hands it out.


def slaney_hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return hz_to_mel(hz)


def slaney_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return mel_to_hz(mel)


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` float32 triangles, as ``librosa.filters.mel`` builds by default."""
    return mel_filterbank(sample_rate, n_fft, n_mels, fmin, sample_rate / 2.0 if fmax is None else fmax).astype(np.float32)


# --- features -----------------------------------------------------------------


class LogMel(nn.Module):
    """Waveform ``[n]`` -> log-mel frames ``[T, n_mels]`` (librosa 0.9 ``melspectrogram`` + baseline log)."""

    def __init__(self, cfg: AEBaselineConfig, sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop = cfg.hop
        self.power = cfg.power
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        basis = slaney_mel_filterbank(sample_rate, cfg.n_fft, cfg.n_mels)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave,
            n_fft=self.n_fft,
            hop_length=self.hop,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.abs().pow(self.power)  # [F, T]
        mel = self.mel_basis @ power  # [M, T]
        return (20.0 / self.power) * torch.log10(mel.clamp_min(_LOG_FLOOR)).T.contiguous()


def frame_starts(n_frames: int, frames: int) -> torch.Tensor:
    """First-frame index of every ``frames``-wide vector in a clip of ``n_frames`` frames (hop 1)."""
    return torch.arange(max(0, n_frames - frames + 1), dtype=torch.long)


def gather_vectors(logmel: torch.Tensor, starts: torch.Tensor, frames: int) -> torch.Tensor:
    """Stack ``frames`` consecutive log-mel frames into one vector per start.

    Layout as ``file_to_vectors``: element ``t * n_mels + m`` is mel bin ``m``
    of frame ``start + t``. Vectors are built on demand from the frames, which
    keeps training data 5 times smaller in memory than the baseline's matrix.
    """
    offsets = torch.arange(frames, device=logmel.device)
    return logmel[starts[:, None] + offsets[None, :]].reshape(starts.shape[0], -1)


# --- model --------------------------------------------------------------------


class DenseAutoencoder(nn.Module):
    """``keras_model.get_model``: 4 x 128, bottleneck 8, 4 x 128, linear output."""

    HIDDEN = (128, 128, 128, 128, 8, 128, 128, 128, 128)

    def __init__(self, input_dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in self.HIDDEN:
            layers += [
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden, eps=_KERAS_BN_EPS, momentum=_KERAS_BN_MOMENTUM),
                nn.ReLU(),
            ]
            width = hidden
        layers.append(nn.Linear(width, input_dim))
        self.net = nn.Sequential(*layers)
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- the fitted baseline ------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"AE baseline: unknown device {device!r} (use cpu, cuda or auto)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("AE baseline: device cuda requested but torch sees no CUDA GPU")
    return resolved


class AEBaseline:
    """A trained baseline autoencoder for one machine type."""

    def __init__(self, cfg: AEBaselineConfig, model: DenseAutoencoder, history: dict[str, list[float]] | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device).eval()
        self.frontend = LogMel(cfg).to(self.device)
        # Per-epoch mean losses, as Keras' History reports them.
        self.history = history if history is not None else {"loss": [], "val_loss": []}

    def logmel(self, path: Path) -> torch.Tensor:
        """Log-mel frames ``[T, n_mels]`` of one clip, on the model's device."""
        wave = read_audio(path)
        if wave.size < self.cfg.min_samples:
            raise UserError(
                f"{path}: {wave.size} samples, too short for one {self.cfg.frames}-frame "
                f"AE baseline vector (needs {self.cfg.min_samples})"
            )
        with torch.no_grad():
            return self.frontend(torch.from_numpy(wave).to(self.device))

    @torch.no_grad()
    def score_paths(self, paths: list[Path], batch_clips: int = 16) -> np.ndarray:
        """Anomaly score of each clip (higher = more anomalous), in the order given."""
        if batch_clips < 1:
            raise ValueError(f"batch_clips must be positive, got {batch_clips}")
        self.model.eval()
        scores = np.empty(len(paths), dtype=np.float64)
        for lo in range(0, len(paths), batch_clips):
            chunk = paths[lo : lo + batch_clips]
            # One forward pass per chunk; clips may differ in length, so the
            # vectors are concatenated and the errors split back per clip.
            vectors = [self._vectors(self.logmel(Path(p))) for p in chunk]
            counts = [v.shape[0] for v in vectors]
            x = torch.cat(vectors)
            row_error = (self.model(x) - x).pow(2).mean(dim=1)
            for i, errors in enumerate(torch.split(row_error, counts)):
                # Every row has the same width, so the mean of row means is the
                # baseline's mean over all elements of the clip.
                scores[lo + i] = float(errors.double().mean())
        return scores

    def _vectors(self, logmel: torch.Tensor) -> torch.Tensor:
        starts = frame_starts(logmel.shape[0], self.cfg.frames).to(logmel.device)
        return gather_vectors(logmel, starts, self.cfg.frames)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "config": asdict(self.cfg),
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "history": {k: [float(x) for x in v] for k, v in self.history.items()},
            },
            path,
        )

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> AEBaseline:
        """Load a saved baseline.

        ``device`` overrides the one it was trained on; without it, a model
        trained on a GPU loads onto a GPU when there is one and the CPU otherwise.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such AE baseline file")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or foreign files
            raise UserError(f"{path}: not a readable AE baseline file ({type(exc).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise UserError(f"{path}: not an AE baseline file")
        if blob.get("version") != _FORMAT_VERSION:
            raise UserError(f"{path}: AE baseline format version {blob.get('version')!r}, expected {_FORMAT_VERSION}")
        cfg = AEBaselineConfig.from_dict(blob["config"])
        if device is not None:
            cfg.device = device
        elif cfg.device.startswith("cuda") and not torch.cuda.is_available():
            cfg.device = "cpu"
        model = DenseAutoencoder(cfg.input_dim)
        model.load_state_dict(blob["state_dict"])
        return cls(cfg, model, history=blob.get("history"))


# --- training -----------------------------------------------------------------


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch bounds over ``n`` items; a last batch of one joins the previous one.

    Keras trains on a trailing batch of one; torch's training-mode BatchNorm
    cannot (zero variance is an error there), and one vector in an epoch of
    hundreds of thousands changes nothing.
    """
    bounds = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_ae_baseline(train_paths: list[Path], cfg: AEBaselineConfig, progress: bool = True) -> AEBaseline:
    """Fit the baseline autoencoder on one machine type's normal training clips.

    ``train_paths`` are used in the order given (the baseline sorts them by file
    name); that order decides which vectors the validation split holds out.
    """
    if not train_paths:
        raise UserError("AE baseline: no training clips")
    init_gen = torch.Generator().manual_seed(cfg.seed)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
    baseline = AEBaseline(cfg, DenseAutoencoder(cfg.input_dim, generator=init_gen))
    device = baseline.device

    # All log-mel frames of all clips in one tensor, plus the global index of
    # each vector's first frame: vectors never cross a clip boundary.
    frame_blocks: list[torch.Tensor] = []
    start_blocks: list[torch.Tensor] = []
    offset = 0
    for path in tqdm(train_paths, desc="AE baseline features", unit="clip", disable=not progress):
        logmel = baseline.logmel(Path(path))
        frame_blocks.append(logmel)
        start_blocks.append(frame_starts(logmel.shape[0], cfg.frames) + offset)
        offset += logmel.shape[0]
    all_frames = torch.cat(frame_blocks)
    del frame_blocks
    starts = torch.cat(start_blocks).to(device)

    n_train = int(math.floor(starts.shape[0] * (1.0 - cfg.validation_split)))
    if n_train < 2:
        raise UserError(f"AE baseline: {n_train} training vectors; BatchNorm needs at least 2 (more or longer clips)")
    train_starts, val_starts = starts[:n_train], starts[n_train:]

    model = baseline.model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=_KERAS_ADAM_EPS)
    bounds = _batches(n_train, cfg.batch_size)

    bar = tqdm(range(cfg.epochs), desc="AE baseline", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = train_starts[torch.randperm(n_train, generator=shuffle_gen).to(device)]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for lo, hi in bounds:
            x = gather_vectors(all_frames, order[lo:hi], cfg.frames)
            loss = nn.functional.mse_loss(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * (hi - lo)
        epoch_loss = float(total) / n_train
        baseline.history["loss"].append(epoch_loss)
        postfix = {"loss": f"{epoch_loss:.3f}"}
        if val_starts.shape[0]:
            val_loss = _mean_error(model, all_frames, val_starts, cfg)
            baseline.history["val_loss"].append(val_loss)
            postfix["val_loss"] = f"{val_loss:.3f}"
        bar.set_postfix(postfix)
    model.eval()
    return baseline


@torch.no_grad()
def _mean_error(model: DenseAutoencoder, all_frames: torch.Tensor, starts: torch.Tensor, cfg: AEBaselineConfig) -> float:
    """Mean squared reconstruction error over the given vectors, in inference mode (as Keras validates)."""
    model.eval()
    total = 0.0
    for lo, hi in _batches(starts.shape[0], cfg.batch_size):
        x = gather_vectors(all_frames, starts[lo:hi], cfg.frames)
        total += float(nn.functional.mse_loss(model(x), x)) * (hi - lo)
    return total / starts.shape[0]
