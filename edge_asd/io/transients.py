"""Which frames of a clip a passing transient covers: a door, a dropped tool, a forklift's horn.

A transient adds a few frames of loud, broadband sound that the machine does
not make. Over a 10 s clip it moves every statistic the plain system keeps: the
spread of each band's level over time, the envelope's modulation spectrum and
its lines, how the bands move together. On ``machines_b`` (whose clips carry
such transients, in normals and anomalies alike) the normals with a transient
scored +1.4 standard deviations above those without, and they were the
highest-scoring normals, which is what the partial AUC counts.

A frame is a transient's when, in the same clip, it is

* **loud**: its broadband log power stands ``sigmas`` robust deviations above the
  clip's median frame (a steady machine's frames lie within a fraction of a dB);
* **new**: its log-mel spectrum stands ``novelty`` robust deviations above the
  clip's typical distance to the frame's nearest other frames (the 5th nearest,
  away from its own neighbourhood). A machine's own loud parts come back: the
  strokes of a valve, the clicks of every cycle, the loud state of an on-off
  machine are near one another; a door slam resembles nothing else in the clip.
  Without this test the loud state of a valve (38 % of its frames) was cut away.

At most ``cap`` of a clip's frames are taken (those standing highest): what
lasts longer than a tenth of the clip is the machine's, as the plain system's
other robust statistics assume. ``dilate`` frames either side go with each
taken frame (a slam's attack and its ring).

numpy only: it runs in the device's scorer.
"""

from __future__ import annotations

import numpy as np

from edge_asd.io.blas import serial_rows
from edge_asd.io.rowstats import MAD_SIGMA

NEIGHBOURS = 5  # a frame's novelty: its distance to the 5th nearest frame of the clip ...
OWN_REACH = 3  # ... that lies more than 3 frames (about 100 ms) away
# fewer frames leave some frame without NEIGHBOURS others beyond its own reach: too short a clip to tell a new
# frame from a recurring one
MIN_NOVELTY_FRAMES = 2 * OWN_REACH + NEIGHBOURS + 1


def _robust_z(v: np.ndarray) -> np.ndarray:
    med = np.median(v)
    sd = MAD_SIGMA * np.median(np.abs(v - med))
    return (v - med) / max(sd, 1e-9)


def frame_novelty(log_mel: np.ndarray) -> np.ndarray:
    """``[T]``: each frame's root-mean-square log-mel distance to its :data:`NEIGHBOURS`-th nearest frame of the clip
    outside its own :data:`OWN_REACH` frames (inf where the clip has too few frames)."""
    t = log_mel.shape[0]
    if t < MIN_NOVELTY_FRAMES:
        return np.full(t, np.inf)
    # float32 and centred: the distances between frames of one clip need no more, and cost half
    z = np.asarray(log_mel, dtype=np.float32)
    z = z - z.mean(axis=0)
    sq = np.einsum("ij,ij->i", z, z)
    gram = np.empty((t, t), dtype=np.float32)
    rows = serial_rows(t * z.shape[1])  # on this thread (edge_asd/io/blas.py): 311 frames x 64 bands, 13 rows
    for lo in range(0, t, rows):
        np.matmul(z[lo : lo + rows], z.T, out=gram[lo : lo + rows])
    d2 = sq[:, None] + sq[None, :]
    d2 -= 2.0 * gram
    for k in range(-OWN_REACH, OWN_REACH + 1):  # each frame's own neighbourhood: the band around the diagonal
        np.fill_diagonal(d2[max(0, -k):, max(0, k):], np.inf)
    nearest = np.partition(d2, NEIGHBOURS - 1, axis=1)[:, NEIGHBOURS - 1]
    return np.sqrt(np.maximum(nearest, 0.0) / max(z.shape[1], 1), dtype=np.float64)


def transient_frames(log_power: np.ndarray, log_mel: np.ndarray, sigmas: float, novelty: float, cap: float,
                     dilate: int) -> np.ndarray:
    """``[T]`` bool: the frames a transient covers (see the module's docstring).

    ``log_power``: each frame's broadband log power ``[T]`` (natural log); ``log_mel``: its spectrum ``[T, bands]``
    (any log, any scale: only distances between frames of the clip are compared); ``novelty`` 0: loudness alone.
    """
    loud = _robust_z(np.asarray(log_power, dtype=np.float64))
    taken = loud > sigmas
    if taken.any() and novelty > 0:
        if log_mel.shape[0] < MIN_NOVELTY_FRAMES:  # too short a clip to tell a new frame from a recurring one
            return np.zeros(taken.shape, dtype=bool)
        taken &= _robust_z(frame_novelty(log_mel)) > novelty
    most = int(cap * taken.size)
    if taken.sum() > most:  # the highest-standing ones
        keep = np.flatnonzero(taken)[np.argsort(-loud[taken], kind="stable")[:most]]
        taken = np.zeros_like(taken)
        taken[keep] = True
    if dilate and taken.any():
        grown = taken.copy()
        for d in range(1, dilate + 1):
            grown[d:] |= taken[:-d]
            grown[:-d] |= taken[d:]
        taken = grown
    return taken


def envelope_mask(taken: np.ndarray, n: int, hop: int, n_fft: int, frame_hop: int, frame_n_fft: int) -> np.ndarray:
    """``[n]`` bool: which of an envelope's ``n`` samples (window ``n_fft``, hop ``hop``, in waveform samples) centre
    inside a taken frame of the log-mel (window ``frame_n_fft``, hop ``frame_hop``)."""
    centres = hop * np.arange(n) + n_fft // 2
    last = taken.size - 1
    first_cover = np.clip((centres - frame_n_fft) // frame_hop + 1, 0, last)  # the frames whose window holds a centre
    last_cover = np.clip(centres // frame_hop, 0, last)
    counts = np.concatenate([[0], np.cumsum(taken)])
    return (counts[last_cover + 1] - counts[first_cover]) > 0


def fill(envelope: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``envelope [n, bands]`` with the masked samples replaced by each band's median of the others (a copy; the
    envelope itself where nothing is masked or everything is)."""
    if not mask.any() or mask.all():
        return envelope
    out = envelope.copy()
    out[mask] = np.median(np.ascontiguousarray(envelope[~mask].T), axis=1)  # each band's run contiguous: 3x faster
    return out
