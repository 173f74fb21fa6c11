"""The JSON messages the daemon publishes: score, alert and stats payloads, and the status words.

The fields and their types are CONTRACT.md's ("MQTT"); ``PAYLOAD_VERSION`` is the
``v`` every message carries. Timestamps are ISO-8601 UTC with millisecond
precision and a ``Z`` suffix, e.g. ``2026-11-25T10:00:00.000Z`` (JavaScript's
``toISOString`` format, which ``datetime.fromisoformat`` reads from Python 3.11).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

PAYLOAD_VERSION = 1
# The retained payloads of <prefix>/<device_id>/status.
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
STATUS_STOPPED = "stopped"


def format_ts(t: float | datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z`` from a POSIX time or an aware datetime."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (a naive datetime is ambiguous)")
        dt = t.astimezone(timezone.utc)
    else:
        dt = datetime.fromtimestamp(float(t), tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; NaN or infinity is refused (they are not JSON)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


BAND_KEYS = ("lo_hz", "hi_hz", "z")


def evidence_keys(ratio: float | None, bands: Sequence[Mapping[str, float]] | None) -> dict[str, Any]:
    """The keys a bundle with band statistics adds to score and alert messages; none from an older bundle.

    ``ratio``: the score on one scale for every bundle (0 at the section's median
    held-out normal, 1 at the threshold). ``bands``: at most 3 ``{"lo_hz",
    "hi_hz", "z"}``, strongest first, ``z`` > 0 where the clip is louder than its
    nearest normal clips; an empty list when no band deviates.
    """
    out: dict[str, Any] = {}
    if ratio is not None:
        out["ratio"] = _finite("ratio", ratio)
    if bands is not None:
        out["bands"] = [{k: _finite(k, b[k]) for k in BAND_KEYS} for b in bands]
    return out


def score_payload(
    ts: float | datetime,
    seq: int,
    score: float,
    threshold: float,
    anomalous: bool,
    p_target: float,
    dbfs: float,
    model: str,
    ratio: float | None = None,
    bands: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The per-clip score message; ``ts`` is the end of the clip (CONTRACT.md); ``ratio``, ``bands``: :func:`evidence_keys`."""
    return {
        "v": PAYLOAD_VERSION,
        "ts": format_ts(ts),
        "seq": int(seq),
        "score": _finite("score", score),
        "threshold": _finite("threshold", threshold),
        "anomalous": bool(anomalous),
        "p_target": _finite("p_target", p_target),
        "dbfs": _finite("dbfs", dbfs),
        "model": str(model),
        **evidence_keys(ratio, bands),
    }


ALERT_STATES = ("anomalous", "normal")


def alert_payload(
    ts: float | datetime,
    state: str,
    machine: str,
    score: float,
    threshold: float,
    seq: int,
    model: str,
    ratio: float | None = None,
    bands: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """A state change of one machine: ``state`` is "anomalous" when it turns, "normal" when it clears.

    ``seq``, ``score``, ``ts``, ``ratio`` and ``bands`` are those of the clip that caused
    the change, so a subscriber can find the score message that triggered it.
    """
    if state not in ALERT_STATES:
        raise ValueError(f"alert state must be one of {ALERT_STATES}, got {state!r}")
    return {
        "v": PAYLOAD_VERSION,
        "ts": format_ts(ts),
        "state": state,
        "machine": str(machine),
        "score": _finite("score", score),
        "threshold": _finite("threshold", threshold),
        "seq": int(seq),
        "model": str(model),
        **evidence_keys(ratio, bands),
    }


# "starting": no clip yet (a source is never "ok" before it delivered audio).
SOURCE_STATES = ("ok", "silent", "failing", "ended", "starting")


@dataclass(frozen=True)
class MachineStats:
    """One machine's counters since the daemon started, for the stats heartbeat."""

    clips: int                        # clips scored
    overruns: int                     # clips dropped because scoring fell behind real time
    latency_ms_mean: float | None     # mean scoring time per clip (None before the first clip)
    latency_ms_max: float | None
    source: str                       # one of SOURCE_STATES
    dbfs: float | None = None         # level of the last clip
    last_error: str | None = None     # the source's last error, when it is failing


def stats_payload(
    ts: float | datetime,
    *,
    uptime_s: float,
    outbox_depth: int,
    machines: Mapping[str, MachineStats],
    outbox_errors: int = 0,
    mqtt_counters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The periodic heartbeat on ``<prefix>/<device_id>/stats``."""

    def opt(name: str, value: float | None) -> float | None:
        return None if value is None else _finite(name, value)

    out: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "ts": format_ts(ts),
        "uptime_s": _finite("uptime_s", uptime_s),
        "outbox_depth": int(outbox_depth),
        "outbox_errors": int(outbox_errors),
        "machines": {},
    }
    for machine_id, m in machines.items():
        if m.source not in SOURCE_STATES:
            raise ValueError(f"source state must be one of {SOURCE_STATES}, got {m.source!r}")
        out["machines"][str(machine_id)] = {
            "clips": int(m.clips),
            "overruns": int(m.overruns),
            "latency_ms": {"mean": opt("latency_ms_mean", m.latency_ms_mean), "max": opt("latency_ms_max", m.latency_ms_max)},
            "source": m.source,
            "dbfs": opt("dbfs", m.dbfs),
            "last_error": m.last_error,
        }
    if mqtt_counters is not None:
        out["mqtt"] = dict(mqtt_counters)
    return out
