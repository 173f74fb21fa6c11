"""A stand-in for the ``sounddevice`` module: USB microphones a test can plug, pull and hang.

Only for what no test can do to real hardware (issue 17): plugging a microphone in while another
streams, pulling it out, and a driver whose abort never returns (PortAudio issue 1037). Put this
folder first on PYTHONPATH and point ``FAKE_SD_STATE`` at a JSON file::

    {"devices": [{"name": "usb-a", "channels": 1, "rate": 16000, "gen": 1}], "hang_abort": ["usb-a"]}

``mute`` lists devices whose streams open but deliver nothing. ``devices`` is what is plugged in now; ``gen`` changes when a device is plugged in again: it is the
ALSA card number in the listed name (``usb-a (hw:1,0)``), as a re-plug may change it. Like PortAudio, the device list is read once, at ``_initialize()``: a device
plugged in later is unknown until ``_terminate(); _initialize()``, and a listing from before a
re-plug opens nothing. Streams deliver quiet noise in real time and end (``finished_callback``)
when their device is pulled. ``_terminate()`` kills every open stream, as ``Pa_Terminate`` does.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np

__version__ = "0.0-fake"


class PortAudioError(Exception):
    pass


def _state() -> dict:
    with open(os.environ["FAKE_SD_STATE"]) as fh:
        return json.load(fh)


def _plugged() -> dict[str, dict]:
    return {d["name"]: d for d in _state()["devices"]}


class _Default:
    device = [None, None]


default = _Default()
_listing: list[dict] = []
_streams: list["InputStream"] = []
_lock = threading.Lock()


def _initialize() -> None:
    global _listing
    _listing = [dict(d) for d in _state()["devices"]]


def _terminate() -> None:
    with _lock:
        for s in _streams:
            s._killed = True
        _streams.clear()


def _info(i: int, d: dict) -> dict:
    # ALSA names a USB device after its card number, which a re-plug may change.
    return {"name": f"{d['name']} (hw:{d.get('gen', 1)},0)", "index": i, "hostapi": 0, "max_input_channels": d["channels"],
            "max_output_channels": 0, "default_samplerate": float(d["rate"]),
            "default_low_input_latency": 0.01, "default_high_input_latency": 0.1}


def query_devices(device=None, kind=None):
    infos = [_info(i, d) for i, d in enumerate(_listing)]
    if kind == "input":
        if not infos:
            raise PortAudioError("no default input device")
        return infos[0]
    if device is not None:
        return infos[int(device)]
    return infos


class _Status:
    input_overflow = False


class InputStream:
    def __init__(self, device, channels, samplerate, dtype, blocksize, latency, callback, finished_callback):
        if not 0 <= int(device) < len(_listing):
            raise PortAudioError(f"Invalid device [PaErrorCode -9996]: {device}")
        self._entry = _listing[int(device)]
        now = _plugged().get(self._entry["name"])
        if now is None or now.get("gen", 1) != self._entry.get("gen", 1):
            raise PortAudioError(f"Device unavailable [PaErrorCode -9985]: {self._entry['name']}")
        self.channels = int(channels)
        self.samplerate = float(samplerate)
        self.blocksize = int(blocksize)
        self._callback = callback
        self._finished = finished_callback
        self._stop = threading.Event()
        self._killed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fake-sd-{self._entry['name']}")
        with _lock:
            _streams.append(self)

    def start(self) -> None:
        self._thread.start()

    def _still_plugged(self) -> bool:
        now = _plugged().get(self._entry["name"])
        return now is not None and now.get("gen", 1) == self._entry.get("gen", 1)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        period = self.blocksize / self.samplerate
        next_t = time.monotonic()
        while not self._stop.is_set() and not self._killed:
            if not self._still_plugged():
                self._finished()
                return
            if self._entry["name"] not in _state().get("mute", []):
                block = (0.05 * rng.standard_normal((self.blocksize, self.channels))).astype(np.float32)
                self._callback(block, self.blocksize, None, _Status())
            next_t += period
            self._stop.wait(max(0.0, next_t - time.monotonic()))
        self._finished()

    def abort(self) -> None:
        if self._entry["name"] in _state().get("hang_abort", []):
            threading.Event().wait()  # the driver never returns
        self._stop.set()

    stop = abort

    def close(self) -> None:
        self._stop.set()
        with _lock:
            if self in _streams:
                _streams.remove(self)


_initialize()
