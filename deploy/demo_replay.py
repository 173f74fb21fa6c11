"""Replay recorded clips through the real daemon to a private Mosquitto, and watch it.

Used by deploy/demo.sh: starts `mosquitto` on a free loopback port, writes a
daemon configuration with a file source, runs `edge-asd run` until the source
ends (the daemon then drains its outbox and exits 0), while `edge-asd watch`
prints every message. Needs the `mosquitto` binary (deploy/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--clips", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--section", default="00", help="the section of the bundle the replayed machine is")
    args = ap.parse_args()
    if not shutil.which("mosquitto"):
        print("demo_replay: mosquitto is not installed (run deploy/setup.sh as root); skipping the daemon replay", file=sys.stderr)
        return 0
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = str(Path(args.clips).resolve() / f"section_{args.section}_*.wav")
    n_clips = len(glob.glob(pattern))
    config = work / "config.toml"
    config.write_text(
        f"""device_id = "demo-edge"
[mqtt]
host = "127.0.0.1"
port = {port}
prefix = "edge_asd"
[storage]
outbox = "{work / 'outbox.sqlite'}"
[[machines]]
id = "machine1"
bundle = "{Path(args.bundle).resolve()}"
source = "file:{pattern}"
section = "{args.section}"
realtime = false
loop = false
"""
    )
    try:
        time.sleep(0.5)
        watch = subprocess.Popen(
            [str(BIN / "edge-asd"), "watch", "--port", str(port), "--device", "demo-edge"],
            stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        t0 = time.monotonic()
        rc = subprocess.run([str(BIN / "edge-asd"), "run", "--config", str(config)]).returncode
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # the last acknowledged messages reach the subscriber
        watch.terminate()
        out, _ = watch.communicate(timeout=30)
        lines = [l for l in out.splitlines() if l.strip()]
        for line in lines[:5] + (["..."] if len(lines) > 10 else []) + lines[-5:]:
            print(line)
        scores = [l for l in lines if re.search(r" seq=\d+ score=", l)]
        print(f"daemon exit {rc}; replayed {n_clips} clips in {elapsed:.1f} s; the subscriber received {len(scores)} score messages")
        return 0 if rc == 0 else rc
    finally:
        broker.terminate()
        broker.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
