"""Log-mel front end that lives inside the model, so the exported graph takes raw waveforms.

The STFT is a fixed DFT over explicit frames, computed as two small matrix
products (one Cooley-Tukey step, see ``LogMel._factorized_dft``) rather than
``torch.stft``: ONNX has no STFT that TensorRT parses, while
MatMul/Mul/Gather/Log run everywhere, so the same module
is trained here and deployed on the device. For training speed the module can
switch to ``torch.stft`` (an FFT, ~100x fewer operations on the 2048-point
window); both compute the same numbers up to float32 rounding (log-mel within ~1e-5
in loud bands, a few 1e-4 in bands 70 dB down) and the DFT path is the one any
loaded or exported model uses.

Frames are computed without centre padding, so a frame depends only on the
samples under its window: the spectrogram of a whole clip sliced at frame
``start // hop`` is the spectrogram of the segment starting at ``start``. The
export uses this to run the front end once per clip (segment starts are
multiples of the hop, see :class:`edge_asd.io.audio.SegmentSpec`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

# The mel filterbank is the runtime's (one definition for training, export and the
# device's plain log-mel features); re-exported here for the front end and its tests.
from edge_asd.io.features import hz_to_mel, mel_filterbank, mel_to_hz  # noqa: E402,F401


def n_frames(n_samples: int, n_fft: int, hop_length: int) -> int:
    """Frames of an uncentred STFT: ``1 + (n_samples - n_fft) // hop`` (0 if shorter than a window)."""
    if n_samples < n_fft:
        return 0
    return 1 + (n_samples - n_fft) // hop_length


class LogMel(nn.Module):
    """Waveform ``[B, N]`` -> log-mel ``[B, n_mels, F]`` with ``F = 1 + (N - n_fft) // hop``.

    Defaults are the report's: 128 ms Hann window (2048), 16 ms hop (256), 224 mel
    bands over 50-7800 Hz at 16 kHz; ``log(mel_power + 1e-6)``. All constants are
    buffers: moved with the module, never trained, and not persistent -- they are
    rebuilt from the numbers above, so checkpoints do not carry them (an export
    bakes them in as constants).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 2048,
        hop_length: int = 256,
        n_mels: int = 224,
        f_min: float = 50.0,
        f_max: float = 7800.0,
        mel_scale: str = "slaney",
        log_eps: float = 1e-6,
    ):
        super().__init__()
        if hop_length <= 0 or n_fft <= 0:
            raise ValueError("n_fft and hop_length must be positive")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.mel_scale = mel_scale
        self.log_eps = float(log_eps)
        # Training may flip this to use torch.stft (see module docstring); it is not
        # part of the state dict, so a loaded model always runs the DFT convolution.
        self.use_fft = False

        fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale)
        if not np.all(fb.sum(axis=1) > 0):
            empty = int(np.sum(fb.sum(axis=1) == 0))
            raise ValueError(f"{empty} of {n_mels} mel bands cover no DFT bin; use fewer bands or a longer window")
        # Only the DFT bins some mel band uses are computed: the 50-7800 Hz band
        # leaves ~3% of the 1025 bins unused, and the conv is the front end's cost.
        used = np.flatnonzero(fb.sum(axis=0) > 0)
        self.bin_lo, self.bin_hi = int(used[0]), int(used[-1]) + 1
        bins = np.arange(self.bin_lo, self.bin_hi)

        window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window / scipy "hann"
        self.register_buffer("mel_fb", torch.from_numpy(fb[:, self.bin_lo : self.bin_hi]).float(), persistent=False)
        self.register_buffer("window", torch.from_numpy(window).float(), persistent=False)
        self._factorized_dft(bins)

    def _factorized_dft(self, bins: np.ndarray) -> None:
        """Constants of the DFT as two small matrix products (one Cooley-Tukey step).

        With ``n_fft = N1 * N2``, ``n = n1 + N1 n2`` and ``k = k2 + N2 k1``:
        ``X[k] = sum_n1 W_N1^(n1 k1) W_N^(n1 k2) sum_n2 x[n] W_N2^(n2 k2)``. For
        2048 = 32 x 64 that is about a tenth of the dense DFT's multiplications,
        and it stays MatMul/Mul/Gather, which ONNX and TensorRT both run. Only the
        k1 rows that reach ``bin_hi`` are computed. A prime ``n_fft`` gives N1 = 1:
        the dense DFT, still correct.
        """
        n = self.n_fft
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        n2 = min(divisors, key=lambda d: (abs(d - math.sqrt(n)), -d))
        n1 = n // n2
        k1_count = -(-self.bin_hi // n2)
        self.dft_n1, self.dft_n2, self.dft_k1 = n1, n2, k1_count
        a = 2.0 * np.pi * np.outer(np.arange(n2), np.arange(n2)) / n2
        inner = np.concatenate([np.cos(a), -np.sin(a)], axis=1)  # [n2, 2 n2]: x @ inner = [re | im]
        t = -2.0 * np.pi * np.outer(np.arange(n1), np.arange(n2)) / n  # twiddles [n1, k2]
        b = 2.0 * np.pi * np.outer(np.arange(n1), np.arange(k1_count)) / n1
        c, si = np.cos(b), -np.sin(b)
        outer = np.block([[c, si], [-si, c]])  # [2 n1, 2 k1]: [re | im] @ outer = complex product
        # the flat (k2, k1) position of each used bin k = k2 + n2 k1
        order = (bins % n2) * k1_count + bins // n2
        for name, value in (("dft_inner", inner), ("dft_twiddle_re", np.cos(t)), ("dft_twiddle_im", np.sin(t)),
                            ("dft_outer", outer)):
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        self.register_buffer("dft_order", torch.from_numpy(order.astype(np.int64)), persistent=False)

    @property
    def n_bins(self) -> int:
        return self.bin_hi - self.bin_lo

    def n_frames(self, n_samples: int) -> int:
        """Frames this module makes from ``n_samples`` samples (118 for a 2 s segment)."""
        return n_frames(n_samples, self.n_fft, self.hop_length)

    def frame_of_sample(self, start: int) -> int:
        """First frame of a segment starting at sample ``start`` of the clip (must be a hop multiple)."""
        if start % self.hop_length:
            raise ValueError(f"segment start {start} is not a multiple of the hop ({self.hop_length})")
        return start // self.hop_length

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """Power spectrum ``[B, n_bins, F]`` of the used bins, by DFT convolution or FFT."""
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, N], got shape {tuple(wave.shape)}")
        if self.use_fft:
            spec = torch.stft(
                wave,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window.to(wave.dtype),
                center=False,
                return_complex=True,
            )[:, self.bin_lo : self.bin_hi]
            return spec.real.square() + spec.imag.square()
        # Over explicit frames, as matrix products (see _factorized_dft): GEMMs run
        # several times faster in onnxruntime and TensorRT than a strided Conv1d
        # with a 2048-tap kernel, on a whole clip most of all.
        dt = wave.dtype
        frames = self._frames(wave) * self.window.to(dt)  # [B, F, n_fft]
        b, f = frames.shape[0], frames.shape[1]
        n1, n2 = self.dft_n1, self.dft_n2
        x = frames.reshape(b, f, n2, n1).transpose(2, 3)  # [B, F, n1, n2]
        a = torch.matmul(x, self.dft_inner.to(dt))  # [B, F, n1, 2 n2]: the n2-point DFTs
        ar, ai = a[..., :n2], a[..., n2:]
        tr, ti = self.dft_twiddle_re.to(dt), self.dft_twiddle_im.to(dt)
        br, bi = ar * tr - ai * ti, ar * ti + ai * tr  # [B, F, n1, k2]
        y = torch.matmul(torch.cat([br, bi], dim=2).transpose(2, 3), self.dft_outer.to(dt))  # [B, F, k2, 2 k1]
        yr, yi = y[..., : self.dft_k1], y[..., self.dft_k1 :]
        power = (yr * yr + yi * yi).reshape(b, f, n2 * self.dft_k1)
        return power.index_select(2, self.dft_order).transpose(1, 2)

    def _frames(self, wave: torch.Tensor) -> torch.Tensor:
        """``[B, N] -> [B, F, n_fft]`` windows at every hop, built from reshapes and slices.

        With the window a multiple of the hop, frame f is hop-blocks f .. f + r - 1:
        stacking r shifted views of the block matrix needs no gather and keeps the
        number of samples a dynamic axis of the exported graph. Samples after the
        last whole hop block belong to no complete frame and are dropped (outside
        a traced graph; exported graphs are fed whole blocks by the runtime).
        """
        hop, n_fft = self.hop_length, self.n_fft
        if n_fft % hop:
            return wave.unfold(1, n_fft, hop)
        if wave.shape[-1] % hop:
            wave = wave[:, : wave.shape[-1] // hop * hop]
        blocks = wave.reshape(wave.shape[0], -1, hop)
        r = n_fft // hop
        views = [blocks[:, i : i - (r - 1)] if i < r - 1 else blocks[:, r - 1 :] for i in range(r)]
        return torch.cat(views, dim=2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_fb.to(wave.dtype), self.power(wave))
        return torch.log(mel + self.log_eps)

    def clip_frames(self, clip: torch.Tensor) -> torch.Tensor:
        """Log-mel of whole clips ``[B, N]`` of any length ``N >= n_fft``: the export's once-per-clip pass."""
        if clip.shape[-1] < self.n_fft:
            raise ValueError(f"clip of {clip.shape[-1]} samples is shorter than one window ({self.n_fft})")
        return self.forward(clip)

    def slice_segments(self, clip_logmel: torch.Tensor, starts: Sequence[int], segment_samples: int) -> torch.Tensor:
        """Cut per-segment log-mels ``[B, S, n_mels, F_seg]`` out of whole-clip frames ``[B, n_mels, F_clip]``."""
        width = self.n_frames(segment_samples)
        firsts = [self.frame_of_sample(int(s)) for s in starts]
        if firsts and firsts[-1] + width > clip_logmel.shape[-1]:
            raise ValueError("segment runs past the end of the clip")
        return torch.stack([clip_logmel[..., f : f + width] for f in firsts], dim=1)

    def config(self) -> dict:
        """The numbers that define this front end (for run folders and bundle manifests)."""
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "win_length": self.n_fft,
            "window": "hann_periodic",
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "mel_scale": self.mel_scale,
            "mel_norm": "slaney" if self.mel_scale == "slaney" else None,
            "center": False,
            "power": 2.0,
            "log_eps": self.log_eps,
        }


@contextlib.contextmanager
def strict_fp32(device: torch.device | str) -> Iterator[None]:
    """Run the front end in true fp32: no autocast, no TF32 convolution.

    On CUDA cuDNN convolutions use TF32 by default (10-bit mantissa); through the
    2048-tap DFT that noise floor reaches the log of quiet mel bands. The
    encoder after it may still run in bf16: its input is a finished feature.
    """
    device = torch.device(device)
    if device.type != "cuda":
        with torch.autocast(device_type=device.type, enabled=False):
            yield
        return
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type="cuda", enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved
