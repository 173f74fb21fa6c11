"""DCASE Task 2 submission files: written by ``edge-asd score``, read by ``edge-asd evaluate``.

Per machine type and section, in one folder (CONTRACT.md)::

    anomaly_score_<machine>_section_<XX>_test.csv     rows "<wav file name>,<score>"  (higher = more anomalous)
    decision_result_<machine>_section_<XX>_test.csv   rows "<wav file name>,<0|1>"

No header. The official evaluators read these with Python's ``csv`` module,
so they are written with it too.

Evaluation-set clip names (``section_00_0000.wav``) say neither domain nor
label; DCASE publishes that ground truth beside its evaluator as
``ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv`` (rows
``<name>,<0 normal|1 anomaly>``) and ``ground_truth_domain/...`` (rows
``<name>,<0 source|1 target>``). :func:`read_ground_truth` reads that layout.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_asd.errors import UserError

SCORE_PREFIX = "anomaly_score"
DECISION_PREFIX = "decision_result"
GROUND_TRUTH_DATA_DIR = "ground_truth_data"
GROUND_TRUTH_DOMAIN_DIR = "ground_truth_domain"

# Greedy machine group: a machine name may itself contain "_section_" only in
# pathological cases, and then the last "_section_XX_test" is the real suffix.
_FILE_RE = re.compile(r"^(?P<kind>anomaly_score|decision_result)_(?P<machine>.+)_section_(?P<section>\d{2})_test\.csv$")

SectionKey = tuple[str, str]  # (machine, section "00")


@dataclass(frozen=True)
class GroundTruth:
    """Official DCASE ground truth of one section: clip name -> anomalous / target domain."""

    anomaly: dict[str, bool]
    target: dict[str, bool]  # empty when no domain file was found


def submission_file_name(kind: str, machine: str, section: str | int) -> str:
    """``anomaly_score_<machine>_section_<XX>_test.csv`` (kind ``anomaly_score``) or the decision file name."""
    if kind not in (SCORE_PREFIX, DECISION_PREFIX):
        raise ValueError(f"unknown submission file kind {kind!r}")
    return f"{kind}_{machine}_section_{_section_id(section)}_test.csv"


def _section_id(section: str | int) -> str:
    text = f"{int(section):02d}" if isinstance(section, numbers.Integral) else str(section)
    if not re.fullmatch(r"\d{2}", text):
        raise ValueError(f"section must be two digits, got {section!r}")
    return text


def _clip_name(name: str | os.PathLike[str]) -> str:
    # Submission rows carry the bare file name, as DCASE's evaluators expect.
    text = Path(name).name
    if not text or any(c in text for c in ',\r\n"'):
        raise ValueError(f"clip name {str(name)!r} cannot be written to a submission row")
    return text


def _write_rows_atomically(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    # A reader (or a crash) never sees half a file: write a temporary file in
    # the same folder, then rename it over the target in one step.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_section(
    out_dir: str | os.PathLike[str],
    machine: str,
    section: str | int,
    names: Sequence[str | os.PathLike[str]],
    scores: Sequence[float],
    decisions: Sequence[int | bool],
) -> tuple[Path, Path]:
    """Write one section's anomaly-score and decision files; returns their paths.

    ``out_dir`` is created if need be. Scores are written with ``repr`` (the
    shortest text that reads back as the same double), so nothing is lost.
    """
    if not machine or any(c in machine for c in "/\\\0"):
        raise ValueError(f"machine name {machine!r} cannot be part of a file name")
    if not (len(names) == len(scores) == len(decisions)):
        raise ValueError(
            f"names, scores and decisions differ in length ({len(names)}, {len(scores)}, {len(decisions)})"
        )
    if not names:
        raise ValueError(f"no clips to write for {machine} section {section}")
    clip_names = [_clip_name(n) for n in names]
    seen: set[str] = set()
    for n in clip_names:
        if n in seen:
            raise ValueError(f"clip name {n!r} occurs twice in {machine} section {section}")
        seen.add(n)
    score_text = []
    for n, s in zip(clip_names, scores):
        value = float(s)
        if not math.isfinite(value):
            raise ValueError(f"score of {n} is {value}; scores must be finite")
        score_text.append(repr(value))
    decision_text = []
    for n, d in zip(clip_names, decisions):
        if int(d) not in (0, 1) or int(d) != d:
            raise ValueError(f"decision of {n} is {d!r}; decisions must be 0 or 1")
        decision_text.append(str(int(d)))

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    score_path = folder / submission_file_name(SCORE_PREFIX, machine, section)
    decision_path = folder / submission_file_name(DECISION_PREFIX, machine, section)
    _write_rows_atomically(score_path, zip(clip_names, score_text))
    _write_rows_atomically(decision_path, zip(clip_names, decision_text))
    return score_path, decision_path


def _read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, name, value) of every non-blank row; UserError naming file and line otherwise."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a valid CSV file ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise UserError(f"{path}:{lineno}: expected 2 fields '<wav file name>,<value>', got {len(row)}")
        name, value = row[0].strip(), row[1].strip()
        if not name:
            raise UserError(f"{path}:{lineno}: empty file name")
        if name in seen:
            raise UserError(f"{path}:{lineno}: {name} already listed on line {seen[name]}")
        seen[name] = lineno
        out.append((lineno, name, value))
    if not out:
        raise UserError(f"{path}: no rows")
    return out


def _parse_score(path: Path, lineno: int, value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        raise UserError(f"{path}:{lineno}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise UserError(f"{path}:{lineno}: score {value!r} is not a finite number")
    return score


def _parse_binary(path: Path, lineno: int, value: str, what: str) -> int:
    # The official evaluators parse these columns as floats, so "1.0" is accepted.
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise UserError(f"{path}:{lineno}: {what} {value!r} is not 0 or 1")
    return int(number)


def read_score_file(path: str | os.PathLike[str]) -> list[tuple[str, float]]:
    """Rows ``(name, score)`` of one anomaly-score file, in file order."""
    p = Path(path)
    return [(name, _parse_score(p, lineno, value)) for lineno, name, value in _read_rows(p)]


def read_decision_file(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Rows ``(name, 0|1)`` of one decision-result file, in file order."""
    p = Path(path)
    return [(name, _parse_binary(p, lineno, value, "decision")) for lineno, name, value in _read_rows(p)]


def find_submission_files(directory: str | os.PathLike[str], kind: str = SCORE_PREFIX) -> dict[SectionKey, Path]:
    """``{(machine, section): path}`` of every file of ``kind`` in ``directory``.

    Raises :class:`UserError` when the folder is missing or holds no such file.
    """
    folder = Path(directory)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    found: dict[SectionKey, Path] = {}
    for p in sorted(folder.iterdir()):
        m = _FILE_RE.match(p.name)
        if m and m["kind"] == kind and p.is_file():
            found[(m["machine"], m["section"])] = p
    if not found:
        raise UserError(f"{folder}: no {kind}_<machine>_section_<XX>_test.csv files")
    return found


def read_scores(directory: str | os.PathLike[str]) -> dict[SectionKey, list[tuple[str, float]]]:
    """Every anomaly-score file of ``directory``: ``{(machine, section): [(name, score), ...]}``."""
    return {key: read_score_file(p) for key, p in find_submission_files(directory, SCORE_PREFIX).items()}


def read_decisions(directory: str | os.PathLike[str]) -> dict[SectionKey, list[tuple[str, int]]]:
    """Every decision-result file of ``directory``: ``{(machine, section): [(name, 0|1), ...]}``."""
    return {key: read_decision_file(p) for key, p in find_submission_files(directory, DECISION_PREFIX).items()}


def _read_binary_map(path: Path, what: str) -> dict[str, bool]:
    return {name: bool(_parse_binary(path, lineno, value, what)) for lineno, name, value in _read_rows(path)}


def read_ground_truth(roots: Iterable[str | os.PathLike[str]], machine: str, section: str) -> GroundTruth | None:
    """The official ground truth of one section from the first root that has it, or None.

    Each root is searched for ``ground_truth_data/ground_truth_<machine>_section_<XX>_test.csv``
    and, beside it, the matching ``ground_truth_domain/`` file.
    """
    file_name = f"ground_truth_{machine}_section_{section}_test.csv"
    for root in roots:
        data_path = Path(root) / GROUND_TRUTH_DATA_DIR / file_name
        if not data_path.is_file():
            continue
        domain_path = Path(root) / GROUND_TRUTH_DOMAIN_DIR / file_name
        target = _read_binary_map(domain_path, "domain") if domain_path.is_file() else {}
        return GroundTruth(anomaly=_read_binary_map(data_path, "label"), target=target)
    return None
