"""Where a scored clip goes besides the outbox: one typed record, handed to each output in turn.

A pipeline journals every clip in the outbox first (MQTT): the outbox allocates the clip's ``seq``, which
everything after it refers to, and it must hold the score before anyone is told. Evidence is saved next (the
record then names the file). Every other consumer is a :class:`ClipOutput` in :class:`PipelineLinks.outputs`
(``edge_asd.daemon.pipeline``): the page's history and live queue today; a webhook, a CSV log or a second page
is a class with ``clip(record)`` added to that tuple in ``Daemon._pipeline_links``, and the pipeline does not
change. An output that raises is logged (at most once a minute) and the others still run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge_asd.scoring.decision import DecidedClip

if TYPE_CHECKING:
    from edge_asd.daemon.web.server import WebServer


@dataclass(frozen=True)
class ClipRecord:
    """One scored, decided and journaled clip, as every output sees it."""

    machine: str
    seq: int | None  # the outbox's sequence number; None where the outbox refused it (it is retried)
    end_time: datetime
    dbfs: float
    decision: DecidedClip  # score, threshold, p_target, ratio, bands, anomalous, the debounced state and its change
    bands: list[dict] | None  # decision.bands as the payloads write them (computed once per clip)
    evidence: Path | None = None  # the clip's audio as saved, where it was


class ClipOutput(Protocol):
    def clip(self, record: ClipRecord) -> None:
        """Take one clip; called from the machine's scorer thread, so it must not block for long."""


class PageOutput:
    """The page (``[web]``): its history table, the live queue's score and alert rows, and new evidence clips."""

    def __init__(self, web: WebServer):
        self.web = web

    def clip(self, record: ClipRecord) -> None:
        d, mid = record.decision, record.machine
        self.web.score(mid, record.seq, record.end_time, d.score, d.threshold, d.anomalous, d.p_target, record.dbfs,
                       ratio=d.ratio, bands=record.bands, pending=d.pending)
        if d.change is not None:
            self.web.alert(mid, record.end_time, d.change)
        if record.evidence is not None:
            self.web.evidence(mid, record.evidence)
