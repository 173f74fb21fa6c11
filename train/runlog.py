"""Stage-1 CSV logs (losses, validation) that a resumed run cuts back to its checkpoint and appends to."""

from __future__ import annotations

import csv
from pathlib import Path


LOSS_COLUMNS = ["step", "epoch", "lr", "loss", "l_machine", "l_section", "l_domain"]
VALIDATION_COLUMNS = ["epoch", "step", "n_clips", "section_acc", "section_acc_source", "section_acc_target", "section_loss"]


def truncate_csv(path: Path, columns: list[str], keep) -> None:
    """Rewrite a log keeping the rows ``keep(row)`` accepts (rows past the resumed checkpoint go)."""
    rows = []
    if path.exists():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if keep(r)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def append_rows(path: Path, rows: list[list]) -> None:
    with path.open("a", newline="") as f:
        csv.writer(f).writerows(rows)


def fmt(x: float) -> str:
    return f"{x:.6g}"
