"""The daemon's logging: root handler on stderr, formatted for journald (``<priority>`` prefix, one
entry per record), as JSON lines, or as timestamped lines on a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from datetime import datetime, timezone

from edge_asd.daemon.config import LoggingConfig


_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` on one line: journald reads the priority prefix and keeps one entry per record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{text}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def setup_logging(cfg: LoggingConfig, stream=None) -> None:
    """Root logging to stderr: journald-style under systemd, JSON if asked, else timestamped lines."""
    stream = stream or sys.stderr
    if cfg.json:
        fmt: logging.Formatter = _JsonFormatter()
    elif os.environ.get("JOURNAL_STREAM"):
        # journald adds its own timestamps; the priority prefix sets the level.
        fmt = _JournalFormatter("%(name)s: %(message)s")
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_edge_asd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler._edge_asd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(cfg.level)
    # paho logs every packet at DEBUG; only its warnings matter to an operator.
    logging.getLogger("edge_asd.mqtt.paho").setLevel(max(logging.INFO, logging.getLevelName(cfg.level)))
    # faiss announces which CPU build it loaded at INFO on every start: noise in a journal.
    logging.getLogger("faiss").setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))
