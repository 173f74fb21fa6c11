"""``edge-asd run`` as a subprocess for the daemon tests: its configuration file, the
recordings it replays, a stand-in for systemd's notify socket, and the score messages' schema."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
SCORE_KEYS = {"v", "ts", "seq", "score", "threshold", "anomalous", "p_target", "dbfs", "model"}
EVIDENCE_KEYS = {"ratio", "bands"}  # from a bundle with band statistics (issue "Why is it anomalous")


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket (path or abstract)."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.address = address
        self.messages: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self.sock.settimeout(0.2)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def fields(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.split("\n")]

    def wait_for(self, field: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while field not in self.fields():
            assert time.monotonic() < deadline, f"systemd never got {field}; got {self.fields()}"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def noise_wavs(folder: Path, n: int, seconds: float, seed: int = 0) -> list[Path]:
    """Short recordings of noise at distinct, known levels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = (0.05 * (i + 1) * rng.standard_normal(int(seconds * SR))).clip(-1, 1).astype(np.float32)
        p = folder / f"rec_{i:02d}.wav"
        sf.write(p, x, SR, subtype="PCM_16")
        out.append(p)
    return out


def bundle_manifest(bundle: Path) -> dict:
    import zipfile

    with zipfile.ZipFile(bundle) as z:
        return json.loads(z.read("manifest.json"))


def write_config(path: Path, port: int, bundle: Path, source: str, *, machine: str = "", top: str = "",
                 storage: str = "", alerts: str = "", device_id: str = "box1") -> Path:
    workdir = path.parent
    path.write_text(
        f"""device_id = "{device_id}"
stats_interval_s = 0.5
shutdown_timeout_s = 30
{top}
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
keepalive = 10
[storage]
outbox = "{workdir / 'state' / 'outbox.sqlite'}"
{storage}
[alerts]
{alerts}
[logging]
level = "DEBUG"
[[machines]]
id = "fan1"
bundle = "{bundle}"
source = "{source}"
{machine}
"""
    )
    return path


class Daemon:
    """``edge-asd run`` in a subprocess, with its log lines collected as they come."""

    def __init__(self, exe: str, config: Path, env: dict | None = None):
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
        full_env.update(env or {})
        self.proc = subprocess.Popen([exe, "run", "--config", str(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        rx = re.compile(pattern)

        def found():
            for line in self.lines:
                m = rx.search(line)
                if m:
                    return m
            return None

        with self._cond:
            self._cond.wait_for(lambda: found() is not None or self.proc.poll() is not None, timeout)
            m = found()
        assert m is not None, f"no log line matching {pattern!r} (exit {self.proc.poll()}); log:\n" + self.log()
        return m

    def seqs(self) -> list[int]:
        """The seq of every clip this process scored and journaled, in order (its ``seq N score`` log lines)."""
        with self._cond:
            return [int(m.group(1)) for line in self.lines for m in [re.search(r"fan1: seq (\d+) score", line)] if m]

    def last_seq(self) -> int:
        return max(self.seqs(), default=0)

    def wait_scored(self, n: int, timeout: float = 60.0) -> list[int]:
        """Wait until this process has scored ``n`` clips (whatever their seqs); returns the seqs so far."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.seqs()) >= n or self.proc.poll() is not None, timeout)
        got = self.seqs()
        assert len(got) >= n, f"scored {len(got)} of {n} clips (exit {self.proc.poll()}); log:\n" + self.log()
        return got

    def wait_seq(self, n: int, timeout: float = 60.0) -> None:
        self.wait_log(rf"fan1: seq {n} score", timeout)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 90.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def scores(sub, topic: str = "edge_asd/box1/fan1/score") -> list[dict]:
    return [m.json() for m in sub.on(topic)]


def check_score_schema(msg: dict, model: str) -> None:
    # ratio is absent where a threshold override lies at or below the normals' median (no scale to give)
    assert set(msg) - EVIDENCE_KEYS == SCORE_KEYS, msg
    assert isinstance(msg.get("ratio", 0.0), float)
    if "bands" in msg:
        assert isinstance(msg["bands"], list) and len(msg["bands"]) <= 3
        assert all(set(b) == {"lo_hz", "hi_hz", "z"} and b["lo_hz"] < b["hi_hz"] for b in msg["bands"]), msg
    assert msg["v"] == 1 and msg["model"] == model
    assert isinstance(msg["seq"], int) and isinstance(msg["anomalous"], bool)
    for k in ("score", "threshold", "p_target", "dbfs"):
        assert isinstance(msg[k], float) and np.isfinite(msg[k]), (k, msg)
    assert 0.0 <= msg["p_target"] <= 1.0
    assert msg["ts"].endswith("Z")
    ts = datetime.fromisoformat(msg["ts"])
    assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0)
    assert msg["anomalous"] == (msg["score"] > msg["threshold"])


def fill_file_system(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
