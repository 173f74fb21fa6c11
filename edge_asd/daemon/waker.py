"""A self-pipe that wakes the daemon's main loop, safe to use from signal handlers and any thread.

Waking never takes a lock: a thread writes one byte, and the C-level signal
handler writes the signal's number (``signal.set_wakeup_fd``) before any
Python code runs. A ``threading.Event`` would not do: its ``set()`` takes the
lock its ``wait()`` and ``clear()`` hold, and a handler that interrupts the main
thread inside those waits for itself forever.
"""

from __future__ import annotations

import os
import select
import signal

# Written by threads; signal numbers start at 1, so it is never mistaken for one.
_THREAD_WAKE = 0


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        # A full pipe already means "wake up": writers must never block on it.
        os.set_blocking(self._w, False)
        self._previous_fd: int | None = None
        self._closed = False

    def wake(self) -> None:
        try:
            os.write(self._w, bytes([_THREAD_WAKE]))
        except (BlockingIOError, OSError):
            pass  # full (the loop will wake anyway) or closed at shutdown

    def attach_signals(self) -> None:
        """Make the interpreter write every caught signal's number into the pipe (main thread only)."""
        self._previous_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def wait(self, timeout: float) -> list[int]:
        """Block until woken or ``timeout`` s passed; returns the signal numbers that arrived meanwhile."""
        if self._closed:
            return []
        ready, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        return self._drain() if ready else []

    def _drain(self) -> list[int]:
        got = bytearray()
        while True:
            try:
                chunk = os.read(self._r, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        return [b for b in got if b != _THREAD_WAKE]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._previous_fd is not None:
            signal.set_wakeup_fd(self._previous_fd)
            self._previous_fd = None
        # Scorer or reload threads may still call wake(); writing to a closed (and
        # possibly reused) descriptor must be impossible, so only the read end goes.
        os.close(self._r)
