"""What the CPU front ends cost per 10 s clip, part by part, with each FFT engine (issue 28).

    .venv/bin/python benchmarks/bench_plain_features.py [--repeats 60] [--runs 3]

The default plain features (``train.plain.PLAIN_FEATURES[DEFAULT_PLAIN_FEATURES]``): clip standardization, the
1024-point log-mel STFT and its statistics, and the envelope modulation spectrum (a 512-point STFT at hop 64, 8
bands); beside them the learned member's log-mel (the extractor's front end, ``train.frontend.LogMel``'s numbers:
2048 points, hop 256, 224 bands). One real clip (``shared/real-samples``), one thread, each part timed
``--repeats`` times per run, once per installed engine of ``edge_asd.io.fft``; prints the median of each run's
median and the range over runs, in ms, and the package versions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_runtime import package_versions  # noqa: E402
from edge_asd.io.audio import read_audio, standardize  # noqa: E402
from edge_asd.io.features import LogMelStats  # noqa: E402
from edge_asd.io.fft import PowerSpectrum, available_engines  # noqa: E402
from edge_asd.runtime.frontend import FFTFrontEnd  # noqa: E402
from edge_asd.runtime.manifest import LogMelFrontEnd  # noqa: E402
from train.frontend import LogMel  # noqa: E402
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
    lm = LogMel()
    learned_cfg = LogMelFrontEnd.from_dict(lm.config())
    wave = standardize(clip)
    n = 1 + (clip.size - cfg.modulation_n_fft) // cfg.modulation_hop
    windowed = np.random.default_rng(0).standard_normal((n, cfg.modulation_n_fft)).astype(np.float32)
    parts = {}
    for engine in available_engines():
        f = LogMelStats(cfg, fft=engine)
        x = f.prepare(clip)
        learned = FFTFrontEnd(learned_cfg, np.ones(lm.n_mels), np.zeros(lm.n_mels), fft=engine)
        power = PowerSpectrum(cfg.modulation_n_fft, engine)
        parts.update({
            f"{engine}: learned member's log-mel ({learned_cfg.n_fft} points, hop {learned_cfg.hop_length}, "
            f"{learned_cfg.n_mels} bands)": lambda learned=learned: learned(wave),
            f"{engine}: plain features, whole": lambda f=f: f(clip),
            f"{engine}:   clip standardization": lambda f=f: f.prepare(clip),
            f"{engine}:   log-mel STFT ({cfg.n_fft} points, hop {cfg.hop_length})": lambda f=f, x=x: f._stft(x),
            f"{engine}:   modulation spectrum ({cfg.modulation_n_fft} points, hop {cfg.modulation_hop}, {n} frames)":
                lambda f=f, x=x: f._modulation(x),
            f"{engine}:     of it: power spectra of the frames, 64 at a time":
                lambda power=power: [power(windowed[i:i + 64]) for i in range(0, n, 64)],
        })
    runs = {name: [_median_ms(fn, args.repeats) for _ in range(args.runs)] for name, fn in parts.items()}
    print("packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items() if k != "torch"))
    print()
    print("| engine: part (one 10 s clip, 1 thread) | ms, median of runs | range of runs |")
    print("|---|---|---|")
    for name, v in runs.items():
        print(f"| {name} | {np.median(v):.2f} | {min(v):.2f}-{max(v):.2f} |")


if __name__ == "__main__":
    main()
