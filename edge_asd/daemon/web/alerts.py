"""Alert events for the page: each raise with its clear, peak, bands and clips, from what the history holds.

The history keeps alert state changes and every clip's score; an event is
the span from a change to "anomalous" to the next change to "normal" (or
now). Its clips start with the run of anomalous clips that raised it (the
debouncer waits for several), so the peak and the evidence clips include the
clips a technician wants to hear first.
"""

from __future__ import annotations

from edge_asd.daemon.web.history import History

MAX_EVENTS = 50
# How far before a raise the clips that raised it are looked for: a debouncer of many
# clips of a minute each still fits, and the query stays small.
LEAD_S = 3600.0


def _spans(changes: list[dict]) -> list[tuple[float, float | None]]:
    spans, raised = [], None
    for c in changes:
        if c["state"] == "anomalous" and raised is None:
            raised = c["t"]
        elif c["state"] == "normal" and raised is not None:
            spans.append((raised, c["t"]))
            raised = None
    if raised is not None:
        spans.append((raised, None))
    return spans


def _peak_key(row: dict) -> float:
    return row["ratio"] if row.get("ratio") is not None else row["score"]


def alert_events(history: History, machine: str, since: float, now: float, clips: list[dict]) -> list[dict]:
    """The machine's alerts since ``since``, newest first: raised, cleared (None while open), duration, peak, clips.

    ``clips`` are the evidence clip entries the page lists (``name``, ``t``); an
    event names those whose clip ended within it.
    """
    events = []
    for raised, cleared in _spans(history.alerts(machine, since))[-MAX_EVENTS:]:
        rows = history.scores(machine, raised - LEAD_S, until=raised if cleared is None else cleared)
        # From the anomalous run that ended in the raise: walk back while clips stayed above the threshold.
        first = next((i for i, r in enumerate(rows) if r["t"] >= raised), len(rows))
        while first > 0 and rows[first - 1]["anomalous"]:
            first -= 1
        if cleared is None:
            rows = rows[first:] + history.scores(machine, raised, until=now)
        else:
            rows = rows[first:]
        start = rows[0]["t"] if rows else raised
        peak = max((r for r in rows if r["anomalous"]), key=_peak_key, default=None)
        end = now if cleared is None else cleared
        events.append({
            "raised": raised, "cleared": cleared, "duration_s": max(0.0, end - raised), "first_clip_t": start,
            "peak_ratio": None if peak is None else peak["ratio"], "peak_score": None if peak is None else peak["score"],
            "peak_seq": None if peak is None else peak["seq"], "bands": [] if peak is None else (peak["bands"] or []),
            "anomalous_clips": sum(r["anomalous"] for r in rows),
            "clips": [c["name"] for c in clips if c.get("t") is not None and start - 1e-3 <= c["t"] <= end + 1e-3],
        })
    return events[::-1]
