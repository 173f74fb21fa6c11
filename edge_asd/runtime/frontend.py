"""The learned extractor's front end in numpy: what the bundle's ``frontend.onnx`` computes, by rFFT.

``frontend.onnx`` maps a standardized clip to the encoder's input: the
log-mel of an uncentred STFT (periodic Hann), then the per-band affine map
the extractor's input normalization folds into at inference. The graph does
the DFT as matrix products so that ONNX and TensorRT run it anywhere; on a CPU
that was two thirds of a clip's time for the small Transformer (issue 28).
This computes the same numbers with numpy's real FFT (see
:mod:`edge_asd.io.stft`); the bundle carries the numbers it needs next to the
split graphs (``split.logmel`` and ``split.input_norm`` in a member's
manifest), and a bundle without them keeps the graph.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_asd.io.features import mel_filterbank
from edge_asd.io.stft import LogMelSTFT, frame_count, hann
from edge_asd.runtime.manifest import LogMelFrontEnd


class FrontEnd(Protocol):
    """Standardized waveform ``[N]`` -> encoder input frames ``[n_mels, F]`` (float32)."""

    name: str
    n_fft: int

    def __call__(self, wave: np.ndarray) -> np.ndarray: ...


class FFTFrontEnd:
    """``frontend.onnx`` by rFFT: ``scale * ln(mel + eps) + shift`` per band."""

    def __init__(self, cfg: LogMelFrontEnd, scale: np.ndarray, shift: np.ndarray, fft: str = "auto"):
        scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        shift = np.asarray(shift, dtype=np.float32).reshape(-1)
        if scale.shape != (cfg.n_mels,) or shift.shape != (cfg.n_mels,):
            raise ValueError(f"input normalization has {scale.size} scales and {shift.size} shifts for {cfg.n_mels} bands")
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
            raise ValueError("input normalization holds NaN or infinite values")
        cfg.check_rfft()
        self.cfg = cfg
        self.n_fft = cfg.n_fft
        fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale)
        self._stft = LogMelSTFT(cfg.n_fft, cfg.hop_length, hann(cfg.n_fft, cfg.window or "hann_periodic"), fb, log="ln",
                                eps=cfg.log_eps, fft=fft)
        self._scale, self._shift = scale[:, None], shift[:, None]
        self.name = f"rfft ({self._stft.fft})"

    def n_frames(self, n_samples: int) -> int:
        return frame_count(n_samples, self.cfg.n_fft, self.cfg.hop_length)

    def logmel(self, wave: np.ndarray) -> np.ndarray:
        """``[n_mels, F]`` log-mel before the input normalization: what training's ``LogMel`` gives."""
        return self._stft(wave).T

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        frames = self.logmel(wave) * self._scale  # one pass makes the [n_mels, F] layout the encoder reads
        frames += self._shift
        return frames

