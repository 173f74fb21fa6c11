"""What band evidence costs per clip on the device, beside the plain features it reads.

    .venv/bin/python benchmarks/bench_bands.py [--normals 200,1000] [--repeats 50]

Synthetic 10 s fan clips (``edge-asd synth``): a section reference is fitted from N normal clips' plain features
(N above the clips written: the features repeated with a small jitter, as a section of N clips would be to the
search), then one clip is timed through the plain features (``LogMelStats``: what a bundle without a plain member
computes extra per clip) and through the band evidence alone (neighbour search, z per band, naming). Prints the
median ms of each and the reference's size in the bundle. Results: ``benchmarks/results/bands.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_asd.io.audio import read_audio  # noqa: E402
from edge_asd.io.features import LogMelStats  # noqa: E402
from edge_asd.scoring.bands import BandEvidence, fit_reference  # noqa: E402
from edge_asd.synth import SynthConfig, generate  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--normals", default="200,1000")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bands.json")
    a = p.parse_args(argv)
    lm = LogMelStats()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), SynthConfig(machines=("fan",), sections=1, train_source=40, train_target=0, test=2,
                                        seconds=10.0, seed=1, workers=1), progress=False)
        clips = [read_audio(f) for f in sorted((Path(tmp) / "fan" / "train").glob("*.wav"))]
    feats = np.stack([lm(c) for c in clips[1:]])
    clip = clips[0]
    rows = {"clip_seconds": 10.0, "plain_features_ms": median_ms(lambda: lm(clip), a.repeats), "bands": {}}
    rng = np.random.default_rng(0)
    f = lm(clip)
    for n in (int(x) for x in a.normals.split(",")):
        ref_feats = feats[np.arange(n) % len(feats)] + rng.normal(0, 0.02, (n, feats.shape[1])).astype(np.float32)
        ev = BandEvidence(lm.cfg, {"00": fit_reference(ref_feats, lm.cfg)})
        rows["bands"][n] = {"band_evidence_ms": median_ms(lambda: ev.bands(f, "00"), a.repeats),
                            "bundle_kb": round(sum(v.nbytes for v in ev.sections["00"].arrays("").values()) / 1024, 1)}
    print(json.dumps(rows, indent=2))
    a.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
