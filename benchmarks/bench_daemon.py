"""The daemon end to end: latency from a clip's end to its MQTT message, and resident memory.

    .venv/bin/python benchmarks/bench_daemon.py BUNDLE CLIPS_DIR [--clips-count 6] [--threads 2] [--mic] [--web]

Starts a private Mosquitto, runs `edge-asd run` on a real-time file source (the
same path a microphone takes after capture), subscribes to the scores, and
measures for each clip the time from the clip's end (the payload's `ts`) to the
message's arrival at the subscriber. Reports medians, the daemon's own part of it
(a clip complete to its score journaled, from its heartbeats), the daemon's peak
resident memory (VmHWM; and its largest anonymous part, benchmarks/procmem.py) and
the time from start to the first score.
With ``--mic`` the source is a real PortAudio stream instead: a PulseAudio
virtual microphone (tests/vmic.py) fed the clips at real time, so PortAudio's
libraries count in the memory; the daemon is stopped with SIGTERM after
``--clips-count`` scores. With ``--web`` the page is on (``[web]`` on loopback) and one
headless Chromium (selenium, Debian's chromium-driver) keeps it open, live, for the
whole run. Writes benchmarks/results/daemon[_mic][_web][_TAG].json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procmem import PeakMemory  # noqa: E402  (benchmarks/ is not a package)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("clips")
    ap.add_argument("--clips-count", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mic", action="store_true", help="capture from a virtual microphone through PortAudio")
    ap.add_argument("--web", action="store_true", help="the page enabled, with one headless browser attached")
    ap.add_argument("--tag", default="", help="appended to the result file's name")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    src = work / "clips"
    src.mkdir()
    for p in sorted(Path(args.clips).glob("*.wav"))[: args.clips_count]:
        shutil.copy(p, src / p.name)
    port = free_port()
    (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(work / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (work / "c.toml").write_text(
        f'device_id = "bench"\nstats_interval_s = 5\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[storage]\noutbox = "{work / "o.sqlite"}"\n'
        f'[[machines]]\nid = "m1"\nbundle = "{Path(args.bundle).resolve()}"\n'
        + ('source = "mic:pulse"\n' if args.mic else f'source = "file:{src}"\nrealtime = true\nloop = false\n')
        + f"threads = {args.threads}\n"
    )
    web_port = free_port()
    if args.web:
        with open(work / "c.toml", "a") as fh:
            fh.write(f'[web]\nenabled = true\nlisten = "127.0.0.1:{web_port}"\n')
    env = None
    mic = None
    if args.mic:
        import soundfile as sf

        sys.path.insert(0, str(HERE.parent / "tests"))
        from vmic import VirtualMic

        wavs = sorted(src.glob("*.wav"))
        sf.write(work / "feed.wav", np.concatenate([sf.read(w, dtype="float32")[0] for w in wavs]), 16000, subtype="PCM_16")
        mic = VirtualMic(rate=16000)
        mic.start()
        mic.feed(work / "feed.wav", loop=True)
        env = {**os.environ, **mic.env}
    arrivals: list[tuple[float, dict]] = []
    stats: list[dict] = []

    def on_message(c, u, m) -> None:
        if m.topic.endswith("/stats"):
            stats.append(json.loads(m.payload))
        else:
            arrivals.append((time.time(), json.loads(m.payload)))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    time.sleep(0.5)
    client.connect("127.0.0.1", port)
    client.subscribe([("edge_asd/bench/m1/score", 1), ("edge_asd/bench/stats", 1)])
    client.loop_start()
    t_start = time.time()
    cmd = [str(Path(sys.executable).with_name("edge-asd")), "run", "--config", str(work / "c.toml")]
    if args.threads:
        cmd = ["taskset", "-c", ",".join(str(i) for i in range(args.threads))] + cmd
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # taskset execs the daemon in place, so the pid is the daemon's
    memory = PeakMemory(daemon.pid, every_s=0.2)
    browser = attach_browser(web_port, work) if args.web else None
    if args.mic:
        deadline = time.time() + 60 + 15 * args.clips_count
        while len(arrivals) < args.clips_count and daemon.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=600)
    peak = memory.stop()
    if browser is not None:
        browser.quit()
    if mic is not None:
        mic.stop()
    time.sleep(1)
    client.loop_stop()
    broker.terminate()
    latencies = [
        (t - datetime.fromisoformat(p["ts"].replace("Z", "+00:00")).timestamp()) * 1e3 for t, p in arrivals
    ]
    first = min(t for t, _ in arrivals) - t_start if arrivals else float("nan")
    # the daemon's own part of the latency (a clip complete -> its score journaled), as its heartbeats report it:
    # what is left of the latency above is the outbox, the broker and the subscriber
    scoring = [m["m1"]["latency_ms"] for m in (s.get("machines", {}) for s in stats) if m.get("m1", {}).get("clips")]
    clip_s = 10.0
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "clips": len(arrivals),
        "latency_ms_median": float(np.median(latencies)) if latencies else None,
        "latency_ms_max": float(np.max(latencies)) if latencies else None,
        "latencies_ms": [round(x, 1) for x in latencies],
        "scoring_ms_median_per_heartbeat": [s.get("median") for s in scoring],
        "scoring_ms_max_per_heartbeat": [s.get("max") for s in scoring],
        **peak,
        "first_score_after_start_s": first,
        "first_score_after_first_clip_s": first - clip_s,
        "threads": args.threads,
        "daemon_exit": daemon.returncode,
        "source": "microphone (PortAudio, PulseAudio virtual source)" if args.mic else "file, real time",
        "web": "page on, one headless Chromium attached" if args.web else "off",
        "bundle": Path(args.bundle).name,
    }
    print(json.dumps(result, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    name = "daemon" + ("_mic" if args.mic else "") + ("_web" if args.web else "") + (f"_{args.tag}" if args.tag else "")
    (HERE / "results" / f"{name}.json").write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def attach_browser(port: int, work: Path):
    """Headless Chromium on the page once it answers; it stays subscribed to the live events."""
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"the page never listened on port {port}")
            time.sleep(0.2)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from browser import headless_chromium

    drv = headless_chromium(work / "chromium")
    drv.get(f"http://127.0.0.1:{port}/")
    return drv


if __name__ == "__main__":
    main()
