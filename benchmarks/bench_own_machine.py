"""Your own machine, measured: importing an hour of 48 kHz stereo, and the whole path for one machine.

    .venv/bin/python benchmarks/bench_own_machine.py [--import-minutes 60] [--path-minutes 30] [--work DIR]

1. Writes an hour (``--import-minutes``) of 48 kHz stereo 16-bit WAV of a made-up pump and times
   ``edge-asd import`` on it, with the peak resident memory of that process (wait4's ru_maxrss).
2. Writes ``--path-minutes`` of normal pump sound (a 44.1 kHz stereo FLAC) and a held-out 5 minutes, and times
   README's "Your own machine" path with the defaults: ``edge-asd import`` -> ``edge-asd-train`` -> ``edge-asd-export``
   -> ``edge-asd score --plot``, each step a subprocess.

Prints a table and writes benchmarks/results/own_machine.json. Generating the audio is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BLOCK_S = 60


def pump_block(seconds: float, rate: int, rng: np.random.Generator, t0: float) -> np.ndarray:
    """A hum at 98 Hz with harmonics in noise; ``t0`` keeps the phase continuous across blocks."""
    t = t0 + np.arange(int(seconds * rate)) / rate
    x = 0.05 * rng.standard_normal(t.size)
    for k, a in enumerate((0.12, 0.06, 0.04, 0.02), start=1):
        x += a * np.sin(2 * np.pi * 98.0 * k * t)
    return x.astype(np.float32)


def write_recording(path: Path, minutes: float, rate: int, channels: int, seed: int, **kw) -> Path:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, **kw) as f:
        done = 0.0
        while done < minutes * 60:
            s = min(BLOCK_S, minutes * 60 - done)
            x = pump_block(s, rate, rng, done)
            f.write(np.stack([x] + [pump_block(s, rate, rng, done) for _ in range(channels - 1)], axis=1))
            done += s
    return path


def timed_rss(name: str, *args) -> tuple[float, float, str]:
    """Like :func:`timed`, with the step's own peak RSS from wait4."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([str(BIN / name), *map(str, args)], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{name} {args} failed ({proc.returncode}):\n{err.read()}")
        return wall, usage.ru_maxrss / 1024, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--import-minutes", type=float, default=60.0)
    ap.add_argument("--path-minutes", type=float, default=30.0)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-own-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: dict = {"cpu_count": os.cpu_count(), "python": platform.python_version()}

        hour = write_recording(work / "pump hall 1h 48k stereo.wav", args.import_minutes, 48000, 2, 1, subtype="PCM_16")
        wall, rss, out = timed_rss("edge-asd", "import", hour, "--data", work / "imp", "--machine", "pump", "--quiet")
        results["import"] = {"minutes": args.import_minutes, "rate": 48000, "channels": 2,
                             "file_mb": round(hour.stat().st_size / 2**20, 1), "wall_s": round(wall, 1),
                             "peak_rss_mb": round(rss, 1), "summary": out.strip()}
        hour.unlink()

        rec = write_recording(work / "pump hall 2 2026-11-30.flac", args.path_minutes, 44100, 2, 2)
        held = work / "held out"
        held.mkdir(exist_ok=True)
        write_recording(held / "pump 2026-12-01T08-00-00.flac", 5, 44100, 2, 3)
        data, run, bundle = work / "mydata", work / "runs" / "pump", work / "pump.asd"
        steps = [
            ("import", "edge-asd", ["import", rec, "--data", data, "--machine", "pump", "--quiet"]),
            ("train", "edge-asd-train", ["--data", data, "--machine", "pump", "--out", run, "--quiet"]),
            ("export", "edge-asd-export", [run, "--out", bundle]),
            ("score --plot", "edge-asd", ["score", bundle, held, "--out", work / "replay", "--plot", "--quiet"]),
        ]
        path = {"minutes": args.path_minutes, "steps": {}}
        for label, exe, step_args in steps:
            wall, rss, _ = timed_rss(exe, *step_args)
            path["steps"][label] = {"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1)}
        path["total_wall_s"] = round(sum(s["wall_s"] for s in path["steps"].values()), 1)
        gate = run / "gate.json"
        path["bundle"] = json.loads(gate.read_text())["decision"] if gate.is_file() else "plain"
        results["path"] = path

    print(f"import of {args.import_minutes:g} min of 48 kHz stereo 16-bit WAV ({results['import']['file_mb']} MB): "
          f"{results['import']['wall_s']} s wall, peak RSS {results['import']['peak_rss_mb']} MB")
    print(f"whole path, {args.path_minutes:g} min of normal audio (44.1 kHz stereo FLAC), defaults:")
    for label, s in path["steps"].items():
        print(f"  {label:<14} {s['wall_s']:>8.1f} s   peak RSS {s['peak_rss_mb']:>7.1f} MB")
    print(f"  {'total':<14} {path['total_wall_s']:>8.1f} s   (bundle: {path['bundle']})")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "own_machine.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
