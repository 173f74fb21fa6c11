"""Label-free clip features beside the plain reference: which time-frequency statistics carry anomalies.

    .venv/bin/python benchmarks/bench_features.py DATA_DIR... [--cache DIR]

For every machine type and section of each data folder (DCASE layout), each feature group is scored the way the
reference scores its own (``shared/reference/plain_baseline.py``): features z-scored with the section's training
normals, score = Euclidean distance to the nearest training normal. Groups are combined by standardizing each
group's test distances with its training normals' leave-one-out nearest-neighbour distances (no labels) and
summing (``ref+mod``). Prints the official score (harmonic mean of AUC source, AUC target, pAUC over every section) per
folder and combination, and per machine type.

Groups:
  ref   the reference itself (64 log-mel bands, mean and standard deviation over time; ``edge_asd.io.features``)
  rob   the same log-mel, median and 10-90 % spread over time (robust to transients)
  fine  mean log power on a 4096-point spectrum in 16 Hz bins to 7.8 kHz (lines, sidebands)
  mod   envelope modulation spectrum: 8 mel bands' power envelopes at 250 Hz, their spectra 2-125 Hz in 16
        log-spaced bins (the envelope analysis of vibration diagnostics: bearing impacts, imbalance, slip;
        ``edge_asd.io.features.ModulationSpectrum``)
  lines the line prominence per modulation bin (``modulation_lines``: the strongest line of any band's envelope
        spectrum above that band's mean in the bin), of the modulation spectrum's envelopes and of the fast
        envelopes (``fast_lines_n_fft``: 8 ms windows at 500 Hz, rates to 250 Hz)
  ref|mod  the two concatenated and z-scored as one vector: --plain-features modulation
  ref|mod|lines  the three concatenated: --plain-features lines

A measurement for choosing what the plain system could become, not product code: a group joins the product
only when it wins on every generator and does not lose on the real recordings.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_asd.io.features import LogMelStats, LogMelStatsConfig, ModulationSpectrum  # noqa: E402
from train.plain import PLAIN_FEATURES  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402

SR = 16000
REF = LogMelStats()
MOD = ModulationSpectrum(LogMelStatsConfig(modulation_bands=8))  # the product's own code
LINES = (ModulationSpectrum(PLAIN_FEATURES["lines"], pooled=False),  # the product's default, after ref|mod
         ModulationSpectrum(PLAIN_FEATURES["lines"].fast_lines(), pooled=False))
COMBOS = {"ref": {"ref": 1}, "ref|mod": {"ref|mod": 1}, "ref|mod|lines": {"ref|mod|lines": 1}, "rob": {"rob": 1}, "fine": {"fine": 1}, "mod": {"mod": 1}, "ref+fine": {"ref": 1, "fine": 1},
          "ref+mod": {"ref": 1, "mod": 1}, "rob+mod": {"rob": 1, "mod": 1}, "ref+fine+mod": {"ref": 1, "fine": 1, "mod": 1}}


def standardized(path: Path) -> np.ndarray:
    x = sf.read(path, dtype="float32", always_2d=True)[0][:, 0].astype(np.float64)
    return (x - x.mean()) / (x.std() + 1e-9)


def frames(x: np.ndarray, n: int, hop: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)


def fine(x: np.ndarray, n: int = 4096) -> np.ndarray:
    p = (np.abs(np.fft.rfft(frames(x, n, n // 2), axis=1)) ** 2).mean(0)[1:int(7800 / (SR / n)) + 1]
    return np.log(p[: p.size // 4 * 4].reshape(-1, 4).mean(1) + 1e-8)


def robust(x: np.ndarray) -> np.ndarray:
    q = np.percentile(REF.logmel(x.astype(np.float32)), [10, 50, 90], axis=0)
    return np.concatenate([q[1], q[2] - q[0]])


GROUPS = {"ref": lambda x: REF(x.astype(np.float32)), "rob": robust, "fine": fine, "mod": lambda x: MOD(x.astype(np.float32)),
          "lines": lambda x: np.concatenate([m(x.astype(np.float32)) for m in LINES])}


def nearest(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Test distances to the nearest training normal, and each training normal's to its nearest other one."""
    mu, sd = train.mean(0), train.std(0) + 1e-8
    a, b = (train - mu) / sd, (test - mu) / sd
    d = np.sqrt(((b[:, None] - a[None]) ** 2).sum(-1)).min(1)
    loo = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    np.fill_diagonal(loo, np.inf)
    return d, loo.min(1)


def folder_scores(data: Path, cache: Path) -> dict:
    out = {}
    for machine in sorted(p.name for p in data.iterdir() if (p / "test").is_dir() and (p / "train").is_dir()):
        files = sorted((data / machine / "train").glob("*.wav")) + sorted((data / machine / "test").glob("*.wav"))
        cached = cache / f"{data.name}_{machine}.npz"
        feats = {}
        if cached.is_file():
            with np.load(cached) as z:
                feats = {g: z[g] for g in GROUPS if g in z.files}
        missing = [g for g in GROUPS if g not in feats]
        if missing:  # a cache written before a group existed gets the new group only
            rows = {g: [] for g in missing}
            for f in files:
                x = standardized(f)
                for g in missing:
                    rows[g].append(GROUPS[g](x))
            feats.update({g: np.array(v) for g, v in rows.items()})
            np.savez(cached, **feats)
        # one vector, z-scored and searched as one: what --plain-features modulation fits
        feats["ref|mod"] = np.hstack([feats["ref"], feats["mod"]])
        feats["ref|mod|lines"] = np.hstack([feats["ref"], feats["mod"], feats["lines"]])
        meta = [re.match(r"section_(\w+?)_(source|target)_(train|test)_(normal|anomaly)", f.name).groups() for f in files]
        sec, dom, split, lab = (np.array(c) for c in zip(*meta))
        out[machine] = {}
        for s in sorted(set(sec)):
            tr, te = (sec == s) & (split == "train"), (sec == s) & (split == "test")
            z = {}
            for g in feats:
                d, loo = nearest(feats[g][tr], feats[g][te])
                z[g] = (d - loo.mean()) / (loo.std() + 1e-9)
            out[machine][s] = {"z": z, "anomaly": lab[te] == "anomaly", "target": dom[te] == "target"}
    return out


def official(scores: dict, combo: dict[str, float]) -> tuple[float, dict[str, float]]:
    every, per = [], {}
    for machine, sections in scores.items():
        figures = []
        for r in sections.values():
            m = labelled_metrics(r["anomaly"], r["target"], sum(w * r["z"][g] for g, w in combo.items()))
            figures += list(m.official().values())
        per[machine] = 100 * harmonic_mean(present(figures))
        every += figures
    return 100 * harmonic_mean(present(every)), per


def print_table(description: str, columns: tuple[str, ...], figures_of, options=None) -> None:
    """Command line ``DATA_DIR... [--cache DIR]``: one markdown row per folder, ``figures_of(data, cache[, args])``
    per column; ``options(parser)`` adds a caller's own options, and then ``figures_of`` gets the parsed arguments."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("data", nargs="+")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "edge-asd-bench-features"))
    if options:
        options(ap)
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print("| data | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for data in map(Path, args.data):
        figures = figures_of(data, cache, args) if options else figures_of(data, cache)
        print(f"| {data.name} | " + " | ".join(f"{figures[c]:.2f}" for c in columns) + " |", flush=True)


def main() -> None:
    def figures_of(data: Path, cache: Path) -> dict[str, float]:
        scores = folder_scores(data, cache)
        return {name: official(scores, combo)[0] for name, combo in COMBOS.items()}

    print_table(__doc__.split("\n\n")[0], tuple(COMBOS), figures_of)


if __name__ == "__main__":
    main()
