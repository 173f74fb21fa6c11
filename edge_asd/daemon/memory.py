"""The daemon's resident memory: glibc's malloc arenas, limited before any thread starts.

glibc gives each thread that allocates while another holds an arena an arena of
its own, up to eight per core, and each keeps the memory its thread freed for
later. The daemon's threads (source, scorer, the plain member beside the learned
one, publisher, MQTT) each hold one, and freed clip-sized arrays stay resident in
all of them: with one machine on the 2-core machine, peak RSS 110.3 MB with the
default, 107.0 MB with 2 arenas, 104.7 with 1 (``benchmarks/bench_daemon.py``,
2026-12-07). Two, not one: the plain member's thread and the scorer's allocate
at the same time for every clip, and one arena would serialize them.
``MALLOC_ARENA_MAX`` in the environment, where set, wins (a unit file may set it).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("edge_asd.daemon")

DAEMON_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt(3)'s parameter number, glibc's malloc.h


def limit_malloc_arenas(n: int = DAEMON_ARENAS) -> bool:
    """At most ``n`` malloc arenas for threads started from now on; False where the C library is not glibc
    (nothing to do: musl has no per-thread arenas) or the environment already says."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(n)))
    if not ok:
        log.debug("mallopt(M_ARENA_MAX, %d) was refused; glibc's default arenas stay", n)
    return ok
