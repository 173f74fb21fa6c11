"""How docs/web.png was made: a real daemon replays an hour of recording, the page is photographed.

    .venv/bin/python docs/web_screenshot.py BUNDLE [--threshold T] [--out docs/web.png]

The hour is noise with a machine tone that changes pitch for five minutes in the middle
(the "fault"), replayed faster than real time, so the timeline holds an hour of real scores,
an alert span and anomalous clips with their spectrograms. Needs mosquitto, chromium,
chromium-driver and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import headless_chromium  # noqa: E402
from mqtt_broker import Broker, free_port  # noqa: E402

SR = 16000


def recording(path: Path, minutes: float = 60.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for s in range(int(minutes * 60)):
            t = s + np.arange(SR) / SR
            fault = 30 * 60 <= s < 35 * 60
            tone = 0.2 * np.sin(2 * np.pi * (1800.0 if fault else 300.0) * t)
            f.write((0.05 * rng.standard_normal(SR) + tone + (0.1 * np.sin(2 * np.pi * 3100 * t) if fault else 0))
                    .astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "web.png")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "rec").mkdir()
    (work / "live").mkdir()
    recording(work / "rec" / "pump.wav")
    recording(work / "live" / "fan.wav", minutes=1.0, seed=1)
    port = free_port()
    with Broker(work) as broker:
        cfg = work / "c.toml"
        cfg.write_text(
            f'device_id = "line1-edge"\nstats_interval_s = 2\n[mqtt]\nport = {broker.port}\n'
            f'[storage]\noutbox = "{work / "o.sqlite"}"\nevidence = "{work / "ev"}"\n'
            f'[web]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
            f'[[machines]]\nid = "pump1"\nbundle = "{args.bundle.resolve()}"\nsource = "file:{work / "rec"}"\n'
            f'realtime = false\n' + (f"threshold = {args.threshold}\n" if args.threshold is not None else "")
            # A second machine, live: it keeps the daemon running after the hour's replay has ended.
            + f'[[machines]]\nid = "fan2"\nbundle = "{args.bundle.resolve()}"\nsource = "file:{work / "live"}"\n'
            f'loop = true\n'
        )
        daemon = subprocess.Popen([str(Path(sys.executable).with_name("edge-asd")), "run", "--config", str(cfg)])
        drv = headless_chromium(work / "chromium", window="1100,1000")
        try:
            time.sleep(3)
            drv.get(f"http://127.0.0.1:{port}/")
            time.sleep(2)
            # Replay runs ahead of the wall clock: the panel follows the newest score.
            seen = -1
            while True:
                time.sleep(5)
                seq = drv.execute_script("return Number(document.querySelector('#machine-pump1').dataset.lastSeq)")
                if seq == seen:
                    break
                seen = seq
            drv.refresh()
            time.sleep(3)
            for b in drv.find_elements("css selector", ".range button[data-hours='1']"):
                b.click()
            time.sleep(1)
            drv.save_screenshot(str(args.out))
        finally:
            drv.quit()
            if daemon.poll() is None:
                daemon.terminate()
    shutil.rmtree(work, ignore_errors=True)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
