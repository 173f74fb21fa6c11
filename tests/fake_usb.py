"""A fake USB bus for the daemon's microphones (tests/fake_sounddevice reads its state file), and the
daemon configuration and score queries the hot-plug tests share (test_reliability.py, test_small_faults.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from daemon_proc import scores

FAKE_SD = Path(__file__).parent / "fake_sounddevice"


class UsbBus:
    """The fake sounddevice's state file: which microphones are plugged in, and which hang on abort."""

    def __init__(self, path: Path, *names: str):
        self.path = path
        self.devices = {n: {"name": n, "channels": 1, "rate": 16000, "gen": 1} for n in names}
        self.hang: list[str] = []
        self.mute: list[str] = []
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"devices": list(self.devices.values()), "hang_abort": self.hang, "mute": self.mute}))
        os.replace(tmp, self.path)  # the fake reads it from other threads: never half-written

    def pull(self, name: str) -> None:
        self.gen = self.devices.pop(name)["gen"]
        self._write()

    def plug(self, name: str) -> None:
        # A device plugged in again enumerates anew (ALSA may give it another card number).
        self.devices[name] = {"name": name, "channels": 1, "rate": 16000, "gen": self.gen + 1}
        self._write()

    def hang_abort(self, name: str) -> None:
        self.hang.append(name)
        self._write()

    def mute_device(self, name: str) -> None:
        self.mute.append(name)
        self._write()

    @property
    def env(self) -> dict[str, str]:
        return {"FAKE_SD_STATE": str(self.path),
                "PYTHONPATH": os.pathsep.join([str(FAKE_SD), os.environ.get("PYTHONPATH", "")])}


def mic_config(path: Path, port: int, bundle: Path, mics: dict[str, str], alerts: str = "") -> Path:
    machines = "".join(f'[[machines]]\nid = "{mid}"\nbundle = "{bundle}"\nsource = "mic:{dev}"\nclip_seconds = 2.0\n'
                       for mid, dev in mics.items())
    path.write_text(f"""device_id = "box1"
stats_interval_s = 0.5
shutdown_timeout_s = 10
[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
[storage]
outbox = "{path.parent / 'state' / 'outbox.sqlite'}"
[alerts]
{alerts}
[logging]
level = "DEBUG"
{machines}""")
    return path


def seqs_of(sub, machine: str) -> set[int]:
    return {m["seq"] for m in scores(sub, f"edge_asd/box1/{machine}/score")}


def latest_source_state(sub, machine: str) -> str | None:
    msgs = sub.on(f"edge_asd/box1/{machine}/source")
    return msgs[-1].json()["state"] if msgs else None
