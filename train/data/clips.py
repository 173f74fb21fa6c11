"""Whole clips in batches of segments, for validation and embedding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_asd.io.audio import SAMPLE_RATE, SegmentSpec, clip_segments


def iter_clip_batches(
    paths: Sequence[Path], spec: SegmentSpec = SegmentSpec(), batch_clips: int = 16, threads: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first clip index, segments [n, S, T*sr])`` for consecutive groups of clips.

    Each clip is read, standardized and cut by :func:`edge_asd.io.audio.clip_segments`,
    the same code the device runs. The next group is read in threads while the
    caller computes on the current one; only two groups are ever held.
    """
    if spec.sample_rate != SAMPLE_RATE:
        raise ValueError("the extractor runs at 16 kHz")
    groups = [list(range(lo, min(lo + batch_clips, len(paths)))) for lo in range(0, len(paths), batch_clips)]
    if not groups:
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        def submit(g: list[int]):
            return [pool.submit(clip_segments, paths[i], spec) for i in g]

        pending = submit(groups[0])
        for gi, g in enumerate(groups):
            current = pending
            if gi + 1 < len(groups):
                pending = submit(groups[gi + 1])
            yield g[0], np.stack([f.result() for f in current])
