"""Full-segment FFT-spectrum branch: the second branch of Wilkinghoff's multi-branch CNN (DCASE 2023/2024,
re-run in ASDKit by Fujimura et al. 2025), beside the log-mel encoder.

The branch sees the magnitude spectrum of the whole 2 s segment (16000 bins of
0.5 Hz at 16 kHz), which resolves the fine harmonic structure a 2048-point STFT
frame cannot, and summarises it with strided 1-D convolutions and a small MLP.
Its embedding is concatenated to the log-mel branch's.

The spectrum is part of the module, as the log-mel front end is, so exported
graphs still take raw waveforms. ONNX's DFT operator is not parsed by TensorRT,
and a dense 32000-point DFT matrix would hold 2 x 32000 x 16000 float32 (4 GB),
so :class:`SegmentSpectrum` factorises the DFT into two small GEMMs (one
Cooley-Tukey step, 32000 = 200 x 160): about 23 M multiply-adds per segment and
~0.8 MB of constants, all MatMul/Mul/Gather.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def split_length(n: int) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols = n`` and ``cols`` the divisor closest to sqrt(n)
    (fewest multiplications for one Cooley-Tukey step); a prime gives ``(n, 1)``: the dense DFT."""
    cols = min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - math.sqrt(n)), -d))
    return n // cols, cols


class SegmentSpectrum(nn.Module):
    """Waveform ``[B, N]`` -> ``|rfft(x)|`` bins ``0 .. n_bins - 1`` ``[B, n_bins]`` (default N / 2 bins:
    the Nyquist bin is dropped so the count divides the branch's strides).

    With ``N = rows * cols``, sample ``n = r + rows * c`` and bin ``k = q + cols * p``
    (``r, p < rows``; ``c, q < cols``)::

        X[k] = sum_r  W_rows^(r p) * W_N^(r q) * sum_c x[r + rows c] W_cols^(c q)

    The inner sums are one GEMM ``[B, rows, cols] @ [cols, 2 cols]``, then a twiddle
    product, then the outer sums are one GEMM over ``r`` for every ``q``; only the
    ``p`` that reach ``n_bins`` are computed. Constants are non-persistent buffers,
    rebuilt from ``n_samples``, so checkpoints do not carry them.
    """

    def __init__(self, n_samples: int, n_bins: int | None = None):
        super().__init__()
        n = int(n_samples)
        self.n_samples = n
        self.n_bins = int(n_bins) if n_bins is not None else n // 2
        if not 0 < self.n_bins <= n // 2 + 1:
            raise ValueError(f"n_bins must be in 1 .. {n // 2 + 1} for a {n}-sample segment")
        # Training may switch to torch.fft.rfft (the same values to float32
        # rounding, much faster on a GPU); loaded and exported models run the GEMMs.
        self.use_fft = False
        rows, cols = split_length(n)
        p_count = -(-self.n_bins // cols)
        self.rows, self.cols, self.p_count = rows, cols, p_count
        c = np.arange(cols)
        inner = 2.0 * np.pi * np.outer(c, c) / cols
        r = np.arange(rows)
        twiddle = -2.0 * np.pi * np.outer(r, c) / n  # [rows, cols]: W_N^(r q)
        outer = 2.0 * np.pi * np.outer(r, np.arange(p_count)) / rows  # [rows, p]
        cos_o, sin_o = np.cos(outer), np.sin(outer)
        constants = {
            # x @ inner_cs = [Re | Im] of the cols-point DFTs
            "inner_cs": np.concatenate([np.cos(inner), -np.sin(inner)], axis=1),
            "twiddle_cos": np.cos(twiddle),
            "twiddle_sin": np.sin(twiddle),
            # [Re | Im] (over r) @ outer_cs = [Re | Im] of the sum weighted by W_rows^(r p)
            "outer_cs": np.block([[cos_o, -sin_o], [sin_o, cos_o]]),
        }
        for name, value in constants.items():
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        k = np.arange(self.n_bins)
        # the flat (q, p) position of each wanted bin k = q + cols * p
        self.register_buffer("bin_index", torch.from_numpy((k % cols) * p_count + k // cols), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2 or wave.shape[1] != self.n_samples:
            raise ValueError(f"expected segments [B, {self.n_samples}], got shape {tuple(wave.shape)}")
        if self.use_fft:
            return torch.fft.rfft(wave, dim=1)[:, : self.n_bins].abs()
        dt, b = wave.dtype, wave.shape[0]
        x = wave.reshape(b, self.cols, self.rows).transpose(1, 2)  # [B, rows, cols]: x[r + rows c]
        a = torch.matmul(x, self.inner_cs.to(dt))  # [B, rows, 2 cols]
        ar, ai = a[..., : self.cols], a[..., self.cols :]
        tc, ts = self.twiddle_cos.to(dt), self.twiddle_sin.to(dt)
        br, bi = ar * tc - ai * ts, ar * ts + ai * tc
        y = torch.matmul(torch.cat([br, bi], dim=1).transpose(1, 2), self.outer_cs.to(dt))  # [B, cols, 2 p]
        yr, yi = y[..., : self.p_count], y[..., self.p_count :]
        mag = torch.sqrt(yr * yr + yi * yi).reshape(b, self.cols * self.p_count)
        return mag.index_select(1, self.bin_index)


# (kernel, stride) of the three strided convolutions over the spectrum, as in
# Wilkinghoff's branch: 16000 bins -> 250 -> 8 -> 2 positions.
FFT_CONVS = ((256, 64), (64, 32), (16, 4))
FFT_DENSE_LAYERS = 4


class FFTBranch(nn.Module):
    """Waveform ``[B, N]`` -> FFT-branch embedding ``[B, embedding_dim]``.

    ``features`` (the spectrum, fixed and fp32) and ``encode`` (the trained layers)
    are separate so training and the fp16 export can run them in different precisions.
    """

    def __init__(self, segment_samples: int, channels: int = 128, embedding_dim: int = 128):
        super().__init__()
        self.frontend = SegmentSpectrum(segment_samples)
        # |X| of a unit-variance segment is ~sqrt(N) per bin for noise and up to
        # ~N/2 for a tone; dividing by sqrt(N) keeps activations O(1) at any
        # segment length and a tone's bins far below fp16's 65504.
        self.scale = 1.0 / math.sqrt(segment_samples)
        layers: list[nn.Module] = []
        length, in_ch = self.frontend.n_bins, 1
        for kernel, stride in FFT_CONVS:
            out_len = -(-length // stride)
            # TensorFlow-style "same" padding as the reference branch: ceil(L / stride) outputs
            pad = max((out_len - 1) * stride + kernel - length, 0)
            layers += [nn.ConstantPad1d((pad // 2, pad - pad // 2), 0.0), nn.Conv1d(in_ch, channels, kernel, stride, bias=False), nn.ReLU()]
            length, in_ch = out_len, channels
        self.convs = nn.Sequential(*layers)
        dense: list[nn.Module] = []
        width = channels * length
        for _ in range(FFT_DENSE_LAYERS):
            dense += [nn.Linear(width, channels, bias=False), nn.BatchNorm1d(channels), nn.ReLU()]
            width = channels
        self.mlp = nn.Sequential(*dense)
        self.proj = nn.Linear(channels, embedding_dim, bias=False)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        return self.frontend(wave) * self.scale

    def encode(self, spectrum: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mlp(self.convs(spectrum.unsqueeze(1)).flatten(1)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.encode(self.features(wave))
