"""Is the wall clock to be trusted? Synchronisation state and steps of the system clock.

Clip timestamps are wall-clock time (CONTRACT.md: ``ts`` is ISO-8601 UTC), and a
box without a working RTC boots in 1970 or at its last shutdown until NTP syncs;
NTP may then step the clock by hours. ``seq``, not ``ts``, orders a machine's
scores; the heartbeat says whether the clock was synchronised and counts the
steps seen, so a subscriber knows when ``ts`` cannot be trusted.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Callable

log = logging.getLogger("edge_asd.clock")  # the name journals show, kept from before the subpackages

# adjtimex(2) returns the clock state; TIME_ERROR means "not synchronised" (STA_UNSYNC).
_TIME_ERROR = 5
# struct timex is about 208 bytes on 64-bit Linux; zeroed, its modes field asks nothing to change.
_TIMEX_BYTES = 512


@functools.cache
def _libc() -> ctypes.CDLL:
    # loaded once: the daemon asks every second, and each load was a dlopen and a symbol table walk (~0.3 ms)
    return ctypes.CDLL(None, use_errno=True)


def kernel_clock_synced() -> bool | None:
    """True when the kernel's clock is synchronised (NTP, chrony, timesyncd), False when not, None when unknown."""
    try:
        buf = ctypes.create_string_buffer(_TIMEX_BYTES)
        state = _libc().adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class ClockWatch:
    """Notices steps of the wall clock by comparing it with the monotonic clock between two looks.

    The time sources are parameters so that a test can move the clock without
    touching the machine's.
    """

    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 synced: Callable[[], bool | None] = kernel_clock_synced, tolerance_s: float = 2.0):
        self._wall = wall
        self._mono = mono
        self._synced_fn = synced
        self.tolerance_s = tolerance_s
        self.steps = 0
        self.last_step_s: float | None = None
        self.synced = synced()
        self._ref = (wall(), mono())

    def check(self) -> float | None:
        """Look once; returns the step in seconds (positive: forward) when the clock jumped since the last look."""
        wall, mono = self._wall(), self._mono()
        step = (wall - self._ref[0]) - (mono - self._ref[1])
        self._ref = (wall, mono)
        was = self.synced
        self.synced = self._synced_fn()
        if was is False and self.synced:
            log.info("the system clock is synchronised now")
        if abs(step) <= self.tolerance_s:
            return None
        self.steps += 1
        self.last_step_s = step
        log.warning("the wall clock stepped by %+.1f s (clock synchronised: %s); clip timestamps jump with it, "
                    "seq keeps the order", step, self.synced)
        return step
