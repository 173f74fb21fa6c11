"""A real virtual microphone for tests: PulseAudio with a pipe source, fed by another process.

PortAudio (through ALSA's ``pulse`` device) reads it exactly as it reads a USB
microphone, so the daemon's capture path is tested for real (ENVIRONMENT.md).
PulseAudio runs in a private ``XDG_RUNTIME_DIR``; the FIFO is fed by a separate
process that writes s16le PCM at real time -- a feeder thread inside the
process that holds the PortAudio stream was seen to hang.

Usage::

    with VirtualMic(rate=16000) as mic:
        mic.feed(wav_path, loop=True)          # starts the feeder process
        env = mic.env                          # for a daemon subprocess
        mic.apply_to(os.environ)               # or for PortAudio in this process
        ...
        mic.stop_feed()

Run as a script, this file is the feeder: ``python vmic.py feed FIFO WAV [--loop]``.
"""

from __future__ import annotations

import argparse
import ctypes.util
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE_NAME = "vmic"
DEVICE = "pulse"  # ALSA's PulseAudio plugin device, as PortAudio lists it


def unavailable_reason() -> str | None:
    """Why a virtual microphone cannot run here, or None when it can."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio is not installed (apt-get install pulseaudio libasound2-plugins)"
    if ctypes.util.find_library("portaudio") is None:
        return "libportaudio2 is not installed"
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so") and not glob.glob(
        "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so"
    ):
        return "ALSA's pulse plugin is not installed (apt-get install libasound2-plugins)"
    return None


class VirtualMic:
    """PulseAudio with a ``module-pipe-source`` named ``vmic`` in a private runtime directory."""

    def __init__(self, rate: int = 16000, channels: int = 1):
        self.rate = rate
        self.channels = channels
        self.runtime_dir: Path | None = None
        self._feeder: subprocess.Popen | None = None
        self._feed_args: tuple | None = None

    @property
    def fifo(self) -> Path:
        assert self.runtime_dir is not None, "start() first"
        return self.runtime_dir / f"{SOURCE_NAME}.fifo"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point libpulse (and so PortAudio's ``pulse`` device) at this mic."""
        assert self.runtime_dir is not None, "start() first"
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.runtime_dir / 'pulse' / 'native'}",
            "PULSE_SOURCE": SOURCE_NAME,
        }

    def apply_to(self, environ) -> None:
        environ.update(self.env)

    def start(self, timeout: float = 10.0, runtime_dir: Path | None = None) -> None:
        if self.runtime_dir is not None:
            raise RuntimeError("virtual microphone already started")
        self.runtime_dir = runtime_dir or Path(tempfile.mkdtemp(prefix="vmic-"))
        if self.fifo.exists():  # left by a killed server; PulseAudio makes its own
            self.fifo.unlink()
        pid = self._pid()
        if pid is not None and not _alive(pid):
            # A killed server's pid file; PulseAudio would take a zombie for a running daemon.
            (self.runtime_dir / "pulse" / "pid").unlink()
        env = {**os.environ, **self.env}
        cmd = [
            "pulseaudio", "-n", "--daemonize=yes", "--exit-idle-time=-1", "--use-pid-file=yes",
            "--log-target=stderr", "--log-level=error",
            "--load=module-native-protocol-unix",
            f"--load=module-pipe-source source_name={SOURCE_NAME} file={self.fifo} format=s16le "
            f"rate={self.rate} channels={self.channels}",
            "--load=module-null-sink sink_name=nullout",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            self._cleanup_dir()
            raise RuntimeError(f"pulseaudio did not start: {proc.stderr.strip()}")
        deadline = time.monotonic() + timeout
        socket_path = self.runtime_dir / "pulse" / "native"
        while not (socket_path.exists() and self.fifo.exists()):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("pulseaudio started but its socket or FIFO did not appear")
            time.sleep(0.05)

    def feed(self, wav: str | Path, loop: bool = True) -> None:
        """Start a separate process writing ``wav`` (at the mic's rate and channels) into the FIFO at real time."""
        self.stop_feed()
        self._feed_args = (wav, loop)
        self._feeder = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "feed", str(self.fifo), str(wav)] + (["--loop"] if loop else []),
            stdin=subprocess.DEVNULL,
        )

    def stop_feed(self) -> None:
        if self._feeder is not None:
            if self._feeder.poll() is None:
                self._feeder.terminate()
                try:
                    self._feeder.wait(5)
                except subprocess.TimeoutExpired:
                    self._feeder.kill()
                    self._feeder.wait()
            self._feeder = None

    def kill_server(self) -> None:
        """Kill PulseAudio (the microphone 'disappears' at once); :meth:`restart_server` brings it back.

        SIGKILL rather than ``pulseaudio --kill``: an orderly exit takes over a
        second and a vanishing device is abrupt anyway. PulseAudio's next start
        replaces the stale pid file and socket.
        """
        assert self.runtime_dir is not None
        feed_args = self._feed_args
        self.stop_feed()
        self._feed_args = feed_args
        pid = self._pid()
        if pid is None:
            subprocess.run(["pulseaudio", "--kill"], env={**os.environ, **self.env}, capture_output=True, timeout=10)
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart_server(self) -> None:
        """Start PulseAudio again at the same socket and FIFO path, and resume the last feed."""
        assert self.runtime_dir is not None
        runtime, self.runtime_dir = self.runtime_dir, None
        self.start(runtime_dir=runtime)
        if self._feed_args is not None:
            self.feed(*self._feed_args)

    def _pid(self) -> int | None:
        assert self.runtime_dir is not None
        try:
            return int((self.runtime_dir / "pulse" / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        self.stop_feed()
        self._feed_args = None
        if self.runtime_dir is not None:
            self.kill_server()
            self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None

    def __enter__(self) -> "VirtualMic":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _feed(fifo: str, wav: str, loop: bool, block_seconds: float = 0.05) -> None:
    """Write ``wav`` as s16le into ``fifo`` paced at real time (the pipe source has no clock of its own)."""
    import numpy as np
    import soundfile as sf

    data, rate = sf.read(wav, dtype="int16", always_2d=True)
    pcm = np.ascontiguousarray(data).astype("<i2")
    frames_per_block = max(1, int(rate * block_seconds))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(fifo, "wb", buffering=0) as out:
        t0 = time.monotonic()
        sent = 0
        while True:
            for lo in range(0, len(pcm), frames_per_block):
                block = pcm[lo : lo + frames_per_block]
                out.write(block.tobytes())
                sent += len(block)
                delay = t0 + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if not loop:
                return


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="feed a WAV file into a PulseAudio pipe source at real time")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("feed")
    f.add_argument("fifo")
    f.add_argument("wav")
    f.add_argument("--loop", action="store_true")
    a = ap.parse_args()
    try:
        _feed(a.fifo, a.wav, a.loop)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
