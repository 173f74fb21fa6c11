"""A process's resident memory as the kernel counts it, split into what the process alone holds and what it maps.

Peak resident memory (VmHWM) counts the pages of every shared library a process has touched: onnxruntime's, ducc0's,
numpy's and OpenBLAS's, some 50-70 MB of the scorer's. Those are clean file pages, shared with every other process
that loads the same library, and how many of them a process maps depends on the page cache's history, not on the
process. On Linux 6.18 (the AMD EPYC 2-core machine, 2026-12-08) the same scorer and bundle peaked at 114-122 MB while
its libraries' files had just been written or read through (a fresh ``pip install``; a ``cat`` of the .so files
after the cache was dropped: the page cache then holds them in large folios, and a page fault maps a whole folio),
and at 99.4-100.1 MB an hour later and after dropping the cache (the libraries then come in by page faults alone);
its anonymous memory was 52 MB in every run. ``RssAnon`` is the memory that is the process's own (heap, onnxruntime's arena,
numpy's arrays), the part that a second machine's daemon would add; the tables give both.
"""

from __future__ import annotations

import platform
import threading
import time
from pathlib import Path

FIELDS = {"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    """``/proc/PID/status``'s memory lines in MB (keys of :data:`FIELDS`' values); {} once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            out[FIELDS[key]] = int(rest.split()[0]) / 1024
    return out


class PeakMemory:
    """Polls another process's memory on a thread until it ends: ``peak_rss_mb`` (the kernel's own high-water mark)
    and ``peak_anon_mb`` (the largest anonymous memory seen at a poll)."""

    def __init__(self, pid: int, every_s: float = 0.05):
        self.pid, self.every_s = pid, every_s
        self.peak_rss_mb = self.peak_anon_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            m = memory_mb(self.pid)
            if not m:
                return
            self.peak_rss_mb = max(self.peak_rss_mb, m["peak_rss_mb"])
            self.peak_anon_mb = max(self.peak_anon_mb, m.get("anon_mb", 0.0))
            time.sleep(self.every_s)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak_rss_mb, "peak_anon_mb": self.peak_anon_mb}


def machine() -> dict[str, str]:
    """What the timings depend on beyond the packages: the CPU's model and the kernel (resident memory, above)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or platform.machine(), "kernel": platform.release()}
