"""``edge-asd score --plot``: one PNG timeline per recording, readable at a glance.

matplotlib is a desktop dependency (the ``train`` extra), not the device
runtime's, so it is imported only when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edge_asd.errors import UserError

if TYPE_CHECKING:
    from edge_asd.offline.window import Window


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib, which the runtime does not install: "
                        "pip install matplotlib (or the desktop extra, '.[train]')") from None


def plot_timeline(rows: list["Window"], path: Path, title: str) -> Path:
    """Score and threshold over time, shaded where the alert was raised; the deviating bands and the level below."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    wall = rows[0].start_time is not None
    if wall:
        mid = [r.start_time + (r.end_time - r.start_time) / 2 for r in rows]  # type: ignore[operator]
        edges = [(r.start_time, r.end_time) for r in rows]
        xlabel = f"wall time (from {rows[0].start_time.isoformat(sep=' ', timespec='seconds')})"
    else:
        scale, unit = (60.0, "min") if rows[-1].end_s > 600 else (1.0, "s")
        mid = [(r.start_s + r.end_s) / 2 / scale for r in rows]
        edges = [(r.start_s / scale, r.end_s / scale) for r in rows]
        xlabel = f"time into the recording ({unit})"
    fig = Figure(figsize=(11, 7), layout="constrained")
    top, strip, bottom = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4, 1]})
    spans = _alert_spans(rows)
    for k, (a, b) in enumerate(spans):
        top.axvspan(edges[a][0], edges[b][1], color="tab:red", alpha=0.15, lw=0, label="alert" if k == 0 else None)
        bottom.axvspan(edges[a][0], edges[b][1], color="tab:red", alpha=0.15, lw=0)
    _band_strip(strip, rows, edges)
    top.plot(mid, [r.score for r in rows], color="tab:blue", lw=1.2, marker=".", ms=4, label="score")
    top.step(mid, [r.threshold for r in rows], where="mid", color="black", ls="--", lw=1, label="threshold")
    hot = [i for i, r in enumerate(rows) if r.anomalous]
    top.scatter([mid[i] for i in hot], [rows[i].score for i in hot], color="tab:red", s=14, zorder=3,
                label="anomalous window")
    thr = max(abs(r.threshold) for r in rows)
    if thr > 0 and max(abs(r.score) for r in rows) > 20 * thr:
        # A loud fault scores hundreds of times the threshold: on a linear axis the
        # normal windows and the threshold would merge into one line at the bottom.
        top.set_yscale("symlog", linthresh=thr)
        top.set_ylabel("anomaly score (log above the threshold)")
    else:
        top.set_ylabel("anomaly score")
    fig.suptitle(f"{title}: {len(rows)} windows, {len(spans)} alert(s)", fontsize=10)
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncols=4, frameon=False)
    top.grid(alpha=0.3)
    bottom.plot(mid, [r.dbfs for r in rows], color="tab:gray", lw=1)
    bottom.set_ylabel("level (dBFS)")
    bottom.set_xlabel(xlabel)
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return path


def _band_strip(ax, rows: list["Window"], edges: list) -> None:
    """Each window's deviating bands as boxes over frequency: red louder, blue quieter than its normal neighbours."""
    ax.set_yscale("log")
    ax.set_ylabel("deviating bands (Hz)\nred louder, blue quieter", fontsize=8)
    ax.grid(alpha=0.3, which="both", axis="y")
    if all(r.bands is None for r in rows):
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no band evidence for this bundle", transform=ax.transAxes, ha="center", va="center",
                color="tab:gray", fontsize=9)
        return
    for (x0, x1), r in zip(edges, rows):
        for b in r.bands or ():
            # opacity by strength: a z of 5 (just named) is faint, 20 and more solid
            alpha = min(1.0, 0.25 + abs(b.z) / 25.0)
            ax.fill_between([x0, x1], b.lo_hz, b.hi_hz, color="tab:red" if b.z > 0 else "tab:blue", alpha=alpha, lw=0)
    ax.set_ylim(40.0, 8000.0)  # the plain features' 50-7800 Hz, the same in every plot


def _alert_spans(rows: list["Window"]) -> list[tuple[int, int]]:
    """(first, last) window index of each stretch in the alert state; one still open ends with the recording."""
    spans, start = [], None
    for i, r in enumerate(rows):
        if r.alert and start is None:
            start = i
        elif not r.alert and start is not None:
            spans.append((start, i - 1))
            start = None
    if start is not None:
        spans.append((start, len(rows) - 1))
    return spans
