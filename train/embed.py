"""Embeddings from a trained extractor: the input of stage 2 and the desktop reference of the export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edge_asd.io.audio import SegmentSpec
from edge_asd.errors import UserError

from .data import iter_clip_batches
from .frontend import strict_fp32
from .models import Extractor, ModelConfig, build_extractor
from .checkpoints import EXTRACTOR_FORMAT
from .rundir import RunDir


def load_extractor(run_dir: str | Path, device: str | torch.device = "cpu") -> Extractor:
    """The trained extractor of a run folder (or an ``extractor.pt`` path), in eval mode."""
    path = Path(run_dir)
    if path.is_dir():
        path = RunDir(path).extractor
    if not path.is_file():
        raise UserError(f"{path}: no trained extractor (run stage 1 first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: unreadable extractor checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != EXTRACTOR_FORMAT:
        raise UserError(f"{path}: not an edge-asd extractor checkpoint")
    model = build_extractor(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval().to(torch.device(device))


def _resolve(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but no CUDA device is available")
    return device


@torch.inference_mode()
def embed_segments(
    model: Extractor, segments: np.ndarray, batch_size: int = 256, device: str | torch.device = "cpu", fft: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Segments ``[N, T*sr]`` float32 (already standardized per clip) -> ``(embedding [N, D], domain_logit [N])``.

    ``fft`` computes the log-mel with torch.stft instead of the exported DFT
    convolution: the same values to float rounding (~1e-5, tests/test_frontend.py)
    at a fraction of the cost, which is what desktop stage-2 fitting and reports
    need. The export traces the DFT convolution whatever this says.
    """
    device = _resolve(device)
    previous = model.frontend.use_fft
    model.frontend.use_fft = fft
    try:
        return _embed_segments(model, segments, batch_size, device)
    finally:
        model.frontend.use_fft = previous


def _embed_segments(model: Extractor, segments: np.ndarray, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    model.eval().to(device)
    segments = np.asarray(segments, dtype=np.float32)
    if segments.ndim != 2:
        raise ValueError(f"expected segments [N, samples], got shape {segments.shape}")
    embs, logits = [], []
    for lo in range(0, len(segments), batch_size):
        wave = torch.from_numpy(np.ascontiguousarray(segments[lo : lo + batch_size])).to(device)
        with strict_fp32(device):
            e, l = model.embed(wave)
        embs.append(e.float().cpu().numpy())
        logits.append(l.float().cpu().numpy())
    if not embs:
        return np.zeros((0, model.config.embedding_size), np.float32), np.zeros(0, np.float32)
    return np.concatenate(embs), np.concatenate(logits)


def embed_clips(
    model: Extractor,
    paths: Sequence[str | Path],
    spec: SegmentSpec = SegmentSpec(),
    batch_clips: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    fft: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip files -> ``(embedding [n_clips, S, D], domain_logit [n_clips, S])``.

    Each clip goes through :func:`edge_asd.io.audio.clip_segments` (read, standardize,
    cut into S segments), exactly as the device prepares it.
    """
    paths = [Path(p) for p in paths]
    s, dim = spec.n_segments, model.config.embedding_size
    emb = np.zeros((len(paths), s, dim), np.float32)
    logit = np.zeros((len(paths), s), np.float32)
    from tqdm import tqdm

    with tqdm(total=len(paths), disable=not progress, desc="embedding", unit="clip") as bar:
        for first, segs in iter_clip_batches(paths, spec, batch_clips):
            n = segs.shape[0]
            e, l = embed_segments(model, segs.reshape(n * s, -1), batch_size=n * s, device=device, fft=fft)
            emb[first : first + n] = e.reshape(n, s, dim)
            logit[first : first + n] = l.reshape(n, s)
            bar.update(n)
    return emb, logit
