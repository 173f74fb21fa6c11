"""An evidence clip's log-mel spectrogram as a PNG, in numpy and zlib alone.

The runtime must not depend on matplotlib (or Pillow), and a spectrogram is a
small image: a colour map lookup and a PNG writer are a few lines each.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from edge_asd.io.features import LogMelStats, LogMelStatsConfig
from edge_asd.scoring.bands import band_edges

# The dynamic range shown: quieter than this below the clip's loudest cell is black.
RANGE_DB = 80.0
MAX_COLUMNS = 640
ROW_SCALE = 2  # each mel band two pixels high: 64 bands make a readable 128-pixel image
# A perceptually ordered dark-to-bright map (anchors of matplotlib's "magma").
_ANCHORS = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
    [252, 253, 191],
], dtype=np.float64)


def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, interpolated between the anchors."""
    x = np.clip(v, 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(x.astype(np.int64), len(_ANCHORS) - 2)
    frac = (x - lo)[..., None]
    return np.round(_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """An ``[height, width, 3]`` uint8 array as PNG bytes (8-bit RGB, no filtering)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, c = rgb.shape
    if c != 3:
        raise ValueError("encode_png takes RGB images")
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _page_features(rate: int) -> LogMelStatsConfig:
    # The page shows the level as recorded, in dB over the whole band (not the plain system's standardized clip).
    return LogMelStatsConfig(sample_rate=rate, f_min=0.0, f_max=rate / 2, mel_scale="slaney", amplitude="recorded",
                             log="db", log_eps=1e-10)


def mel_axis_hz(rate: int) -> list[float]:
    """The frequency at each band edge of the page's spectrograms, bottom (0) to top (n_mels): the page's Hz axis.

    The rows are mel bands, so the axis is not linear in Hz; the page
    interpolates in this table to place its tick labels and the marked bands.
    """
    lo, hi = band_edges(_page_features(rate))
    return [round(float(v), 1) for v in np.r_[lo, hi[-1]]]


def spectrogram_png(wav: Path | BinaryIO, features: LogMelStats | None = None) -> bytes:
    """The log-mel spectrogram of an audio file (WAV, FLAC): time left to right, low frequencies at the bottom."""
    x, rate = sf.read(wav, dtype="float32", always_2d=True)
    features = features or LogMelStats(_page_features(rate))
    x = x[:, 0]
    if x.size < features.cfg.n_fft:
        x = np.pad(x, (0, features.cfg.n_fft - x.size))
    lm = features.logmel(x).astype(np.float64)  # [frames, mels]
    if lm.shape[0] > MAX_COLUMNS:
        # Mean over groups of frames: a long clip still fits a phone's screen.
        step = -(-lm.shape[0] // MAX_COLUMNS)
        n = lm.shape[0] // step * step
        lm = lm[:n].reshape(-1, step, lm.shape[1]).mean(axis=1)
    top = lm.max()
    img = colormap((lm - (top - RANGE_DB)) / RANGE_DB)  # [frames, mels, 3]
    img = np.repeat(img.transpose(1, 0, 2)[::-1], ROW_SCALE, axis=0)
    return encode_png(img)


def favicon_ico(size: int = 32) -> bytes:
    """The page's icon: a ring with a spectrum's bars, as an ICO holding one PNG (what every browser reads).

    Drawn here rather than shipped as a binary file: a few lines, and no file to keep in step with the colours.
    """
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    r = np.hypot(xx - size / 2, yy - size / 2)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:] = (17, 20, 24)
    img[(r > size * 0.38) & (r < size * 0.48)] = (88, 166, 255)
    for i, h in enumerate((0.2, 0.42, 0.3, 0.16)):
        x0 = int(size * (0.3 + 0.11 * i))
        img[int(size * (0.66 - h)):int(size * 0.66), x0:x0 + max(2, size // 14)] = (63, 185, 80)
    png = encode_png(img)
    # ICONDIR (reserved, type 1 = icon, 1 image), then one ICONDIRENTRY pointing at the PNG after them
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(png), 22) + png
