"""Progress on stderr for long runtime commands.

tqdm is the desktop's progress bar; the runtime does not depend on it, so this
uses tqdm when it is installed and prints a plain line every few percent when
not (a Jetson running ``edge-asd score`` over SSH still shows progress).
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "clip"):
        self.total, self.desc, self.enabled = total, desc, enabled and total > 0
        self.done = 0
        self.status = ""
        self._bar = None
        self._last = 0.0
        self._t0 = time.monotonic()
        if not self.enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
        except ImportError:
            pass

    def describe(self, desc: str) -> None:
        """Name what is being counted now (e.g. the machine type being written)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def set_status(self, text: str) -> None:
        """A short live reading shown after the bar (a level meter), refreshed with it."""
        self.status = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def note(self, text: str) -> None:
        """A line of its own on stderr (a warning) that leaves the bar intact below it."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def advance_to(self, done: float) -> None:
        """Set the count (a running total in seconds stays exact where adding up blocks would drift)."""
        if self._bar is not None and self.enabled:
            self.done = done
            self._bar.n = done
            self._bar.refresh()
            return
        self.update(done - self.done)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last > 2.0 or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self._t0, 1e-9)
            status = f" {self.status}" if self.status else ""
            print(f"{self.desc}: {self.done:g}/{self.total:g} ({rate:.1f}/s){status}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
