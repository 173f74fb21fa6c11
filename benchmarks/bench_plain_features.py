"""What the plain member's features cost per 10 s clip on this CPU, part by part (issue 28).

    .venv/bin/python benchmarks/bench_plain_features.py [--repeats 60] [--runs 3]

The default plain features (``train.plain.PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]``): clip standardization, the
1024-point log-mel STFT and its statistics, and the envelope modulation spectrum (a 512-point STFT at hop 64, 8
bands). One real clip (``shared/real-samples``), one thread, each part timed ``--repeats`` times per run; prints
the median of each run's median and the range over runs, in ms. Beside them, the raw real FFTs of the modulation
STFT's frames by numpy (what the runtime uses) and, when installed, by scipy (not a runtime dependency).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_asd.io.audio import read_audio  # noqa: E402
from edge_asd.io.features import LogMelStats  # noqa: E402
from train.plain import DEFAULT_PLAIN_FEATURES, PLAIN_FEATURES  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    clip = read_audio(sorted((ROOT.parent / "shared" / "real-samples" / "fan" / "test").glob("*.wav"))[0])
    cfg = PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]
    f = LogMelStats(cfg)
    x = f.prepare(clip)
    mod = f._modulation
    n = 1 + (x.size - cfg.modulation_n_fft) // cfg.modulation_hop
    frames = np.lib.stride_tricks.as_strided(x, shape=(n, cfg.modulation_n_fft),
                                             strides=(x.strides[0] * cfg.modulation_hop, x.strides[0]))
    windowed = np.ascontiguousarray(frames * np.hanning(cfg.modulation_n_fft).astype(np.float32))
    parts = {
        "plain features, whole": lambda: f(clip),
        "clip standardization": lambda: f.prepare(clip),
        f"log-mel STFT ({cfg.n_fft} points, hop {cfg.hop_length})": lambda: f._stft(x),
        f"modulation spectrum ({cfg.modulation_n_fft} points, hop {cfg.modulation_hop}, {n} frames)": lambda: mod(x),
        "  of it: numpy rFFT of the frames, 64 at a time": lambda: [np.fft.rfft(windowed[i:i + 64], axis=1)
                                                                    for i in range(0, n, 64)],
    }
    try:
        import scipy.fft

        parts["  beside it: scipy rFFT of the same frames (not a runtime dependency)"] = lambda: scipy.fft.rfft(windowed, axis=1)
    except ImportError:
        pass
    runs = {name: [_median_ms(fn, args.repeats) for _ in range(args.runs)] for name, fn in parts.items()}
    print("| part (one 10 s clip, 1 thread) | ms, median of runs | range of runs |")
    print("|---|---|---|")
    for name, v in runs.items():
        print(f"| {name} | {np.median(v):.2f} | {min(v):.2f}-{max(v):.2f} |")


if __name__ == "__main__":
    main()
