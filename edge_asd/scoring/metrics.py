"""DCASE 2022 Task 2 metrics: AUC per domain, partial AUC, harmonic means.

The official evaluator calls scikit-learn's ``roc_auc_score``; the runtime may
not depend on scikit-learn (it is far larger than the rest of the runtime on a
small device), so :func:`roc_curve`, :func:`roc_auc` and :func:`partial_auc`
re-implement exactly what it computes -- thresholds at the distinct score
values, collinear points dropped, trapezoids, and for ``max_fpr`` the McClish
standardization -- and tests/test_metrics.py holds them to it within 1e-9.

Per section (CONTRACT.md, as the official evaluator does it):

* AUC(source): source-domain normal clips and *all* anomalous clips;
* AUC(target): target-domain normal clips and all anomalous clips;
* pAUC (max FPR 0.1): all clips of the section.

Official score: the harmonic mean of every section's AUC(source), AUC(target)
and pAUC over all machine types.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.io.dcase import ClipInfo, parse_name
from edge_asd.errors import DataError, UserError
from edge_asd.io.submission import SectionKey, find_submission_files, read_ground_truth, read_score_file

MAX_FPR = 0.1
OFFICIAL_KEYS = ("auc_source", "auc_target", "pauc")


def _binary_inputs(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"y_true and scores must be 1-D and of equal length, got shapes {y.shape} and {s.shape}")
    if y.dtype != bool:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError("y_true must hold 0 (normal) and 1 (anomalous) only")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise UserError("scores must be finite numbers (found NaN or infinity)")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        present, missing = ("normal", "anomalous") if n_pos == 0 else ("anomalous", "normal")
        raise UserError(f"AUC is undefined without {missing} clips (all {y.size} clips are {present})")
    return y, s


def roc_curve(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, the points scikit-learn's ``roc_curve`` returns.

    One point per distinct score (tied clips move the curve diagonally), plus
    (0, 0); points collinear with their neighbours are dropped, as scikit-learn
    does by default, so that the interpolation in :func:`partial_auc` uses the
    same two points and gives the same number.
    """
    y, s = _binary_inputs(y_true, scores)
    # Stable sort, then reverse, as scikit-learn: only cumulative counts at the
    # ends of tie groups are used, so the order inside a tie cannot matter.
    order = np.argsort(s, kind="mergesort")[::-1]
    s = s[order]
    y = y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[last_of_value]
    fps = 1 + last_of_value - tps
    if fps.size > 2:
        corner = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps = tps[corner]
        fps = fps[corner]
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    return fps / fps[-1], tps / tps[-1]


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    # The same expression numpy's trapezoid evaluates (scikit-learn's ``auc``).
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; ``y_true`` 1 = anomalous, higher score = more anomalous.

    Equals ``sklearn.metrics.roc_auc_score(y_true, scores)``. Raises
    :class:`UserError` when either class is missing.
    """
    fpr, tpr = roc_curve(y_true, scores)
    return _trapezoid(fpr, tpr)


def partial_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """McClish-standardized partial AUC over FPR in [0, max_fpr].

    Equals ``sklearn.metrics.roc_auc_score(y_true, scores, max_fpr=max_fpr)``:
    0.5 for a non-discriminating detector, 1 for a perfect one.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    fpr, tpr = roc_curve(y_true, scores)
    if max_fpr == 1:
        return _trapezoid(fpr, tpr)
    # fpr[-1] == 1 > max_fpr, so the point after ``stop - 1`` always exists.
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    tpr_at_max = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    area = _trapezoid(np.r_[fpr[:stop], max_fpr], np.r_[tpr[:stop], tpr_at_max])
    min_area = 0.5 * max_fpr**2
    max_area = max_fpr
    return float(0.5 * (1 + (area - min_area) / (max_area - min_area)))


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean of non-negative numbers; 0 when any of them is 0 (as scipy's ``hmean``)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("harmonic mean of no values")
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise ValueError(f"harmonic mean needs finite non-negative values, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


@dataclass(frozen=True)
class SectionMetrics:
    """The metrics of one section; :meth:`official` is the part ``evaluate --json`` prints."""

    auc_source: float
    auc_target: float
    pauc: float
    pauc_source: float  # pAUC over the AUC(source) subset, for per-domain tables
    pauc_target: float
    auc_all: float  # AUC over every clip of the section, as the official evaluator also reports
    n_source_normal: int
    n_target_normal: int
    n_anomaly: int

    def official(self) -> dict[str, float | None]:
        """The three official figures; None for a domain the section has no normal test clips of."""
        return {k: (None if math.isnan(v) else v) for k, v in
                (("auc_source", self.auc_source), ("auc_target", self.auc_target), ("pauc", self.pauc))}

    @property
    def hmean(self) -> float:
        return harmonic_mean(present(self.official().values()))


def present(values: Iterable[float | None]) -> list[float]:
    """The figures that exist (a missing domain's AUC is None or NaN)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def labelled_metrics(
    anomaly: Sequence[bool] | np.ndarray,
    target: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    max_fpr: float = MAX_FPR,
) -> SectionMetrics:
    """Section metrics from per-clip truth: anomalous?, target domain?, and the scores."""
    a = np.asarray(anomaly, dtype=bool)
    t = np.asarray(target, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not (a.shape == t.shape == s.shape) or a.ndim != 1:
        raise ValueError(f"anomaly, target and scores must be 1-D and of equal length, got {a.shape}, {t.shape}, {s.shape}")
    src_normal = ~a & ~t
    tgt_normal = ~a & t
    counts = f"{int(src_normal.sum())} source normal, {int(tgt_normal.sum())} target normal, {int(a.sum())} anomalous clips"
    if not a.any():
        raise UserError(f"no anomalous clips ({counts}); AUC needs both classes")
    if not (src_normal.any() or tgt_normal.any()):
        raise UserError(f"no normal clips ({counts}); AUC needs both classes")
    source = src_normal | a
    target_subset = tgt_normal | a

    def per_domain(normals: np.ndarray, subset: np.ndarray, metric) -> float:
        # A section recorded in one domain only (real recordings often are) has
        # no AUC of the other: NaN, left out of every harmonic mean.
        return metric(a[subset], s[subset]) if normals.any() else math.nan

    return SectionMetrics(
        auc_source=per_domain(src_normal, source, roc_auc),
        auc_target=per_domain(tgt_normal, target_subset, roc_auc),
        pauc=partial_auc(a, s, max_fpr),
        pauc_source=per_domain(src_normal, source, lambda y, x: partial_auc(y, x, max_fpr)),
        pauc_target=per_domain(tgt_normal, target_subset, lambda y, x: partial_auc(y, x, max_fpr)),
        auc_all=roc_auc(a, s),
        n_source_normal=int(src_normal.sum()),
        n_target_normal=int(tgt_normal.sum()),
        n_anomaly=int(a.sum()),
    )


_UNLABELLED_HELP = (
    "evaluate needs development-set clip names (section_XX_<source|target>_test_<normal|anomaly>_NNNN...) "
    "or the official DCASE ground truth (ground_truth_data/ and ground_truth_domain/) in DIR or in the --data folder"
)


def section_metrics(
    clips: Sequence[str | os.PathLike[str] | ClipInfo],
    scores: Sequence[float] | np.ndarray,
    max_fpr: float = MAX_FPR,
) -> SectionMetrics:
    """Metrics of one section from labelled (development-set) clip names or parsed clips."""
    infos = [c if isinstance(c, ClipInfo) else parse_name(c) for c in clips]
    for info in infos:
        if info.label is None or info.domain is None:
            raise UserError(f"{info.name}: the name says no {'label' if info.label is None else 'domain'}; {_UNLABELLED_HELP}")
    if len(infos) != len(scores):
        raise ValueError(f"{len(infos)} clips but {len(scores)} scores")
    return labelled_metrics(
        [i.is_anomaly for i in infos], [i.domain == "target" for i in infos], scores, max_fpr
    )


def _truth_of_file(path: Path, machine: str, section: str, names: list[str], roots: list[Path]) -> tuple[list[bool], list[bool]]:
    """(anomalous?, target?) per clip: from the name when it says, else from the official ground truth."""
    anomaly: list[bool] = []
    target: list[bool] = []
    ground_truth = None
    looked_up = False
    for name in names:
        try:
            info: ClipInfo | None = parse_name(name, machine)
        except DataError:
            info = None  # not a DCASE name: only ground truth can say what it is
        if info is not None and info.section != section:
            raise UserError(f"{path}: {name} is a section {info.section} clip, not section {section}")
        label = info.label if info else None
        domain = info.domain if info else None
        if label is None or domain is None:
            if not looked_up:
                ground_truth = read_ground_truth(roots, machine, section)
                looked_up = True
            if ground_truth is not None:
                if label is None and name in ground_truth.anomaly:
                    label = "anomaly" if ground_truth.anomaly[name] else "normal"
                if domain is None and name in ground_truth.target:
                    domain = "target" if ground_truth.target[name] else "source"
        if label is None or domain is None:
            missing = "label (normal/anomaly)" if label is None else "domain (source/target)"
            where = "has no entry for it" if ground_truth is not None else "was not found"
            raise UserError(f"{path}: no {missing} for {name}: the name does not say and the ground truth {where}; {_UNLABELLED_HELP}")
        anomaly.append(label == "anomaly")
        target.append(domain == "target")
    return anomaly, target


def evaluate_sections(
    directory: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    max_fpr: float = MAX_FPR,
) -> dict[SectionKey, SectionMetrics]:
    """Metrics of every ``anomaly_score_*`` file in ``directory``, keyed ``(machine, section)``, sorted.

    Clip truth comes from development-set names; for names that do not carry
    it, from the official ground-truth CSVs in ``directory`` or ``data_root``.
    """
    folder = Path(directory)
    files = find_submission_files(folder)
    roots = [folder]
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise UserError(f"{root}: no such folder")
        roots.append(root)
    out: dict[SectionKey, SectionMetrics] = {}
    for (machine, section), path in sorted(files.items()):
        rows = read_score_file(path)
        names = [name for name, _ in rows]
        anomaly, target = _truth_of_file(path, machine, section, names, roots)
        try:
            out[(machine, section)] = labelled_metrics(anomaly, target, [s for _, s in rows], max_fpr)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
    return out


def official_result(sections: Mapping[SectionKey, SectionMetrics]) -> dict:
    """The ``evaluate --json`` object (CONTRACT.md) from per-section metrics."""
    if not sections:
        raise ValueError("no sections to summarize")
    machines: dict[str, dict] = {}
    for machine, section in sorted(sections):
        entry = machines.setdefault(machine, {"sections": {}, "hmean": 0.0})
        entry["sections"][section] = sections[(machine, section)].official()
    for entry in machines.values():
        entry["hmean"] = harmonic_mean(present(v for sec in entry["sections"].values() for v in sec.values()))
    official = harmonic_mean(present(v for m in sections.values() for v in m.official().values()))
    return {"machines": machines, "official_score": official}


def evaluate_dir(directory: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None) -> dict:
    """``edge-asd evaluate``: the CONTRACT's JSON object for the submission files in ``directory``."""
    return official_result(evaluate_sections(directory, data_root))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def format_table(result: Mapping) -> str:
    """A plain-text table of an :func:`evaluate_dir` result, in percent."""
    header = ("machine", "section", "AUC (source)", "AUC (target)", "pAUC", "hmean")
    rows: list[tuple[str, ...]] = []
    for machine, entry in result["machines"].items():
        secs = entry["sections"]
        for section, m in secs.items():
            values = [m[k] for k in OFFICIAL_KEYS]
            rows.append((machine, section, *map(_pct, values), _pct(harmonic_mean(present(values)))))
        column = [present(s[k] for s in secs.values()) for k in OFFICIAL_KEYS]
        rows.append((machine, "hmean", *(_pct(harmonic_mean(c)) if c else "n/a" for c in column), _pct(entry["hmean"])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [cells[i].ljust(widths[i]) for i in range(2)]
        right = [cells[i].rjust(widths[i]) for i in range(2, len(cells))]
        return "  ".join(left + right).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule]
    previous = None
    for r in rows:
        if previous is not None and r[0] != previous:
            out.append(rule)
        out.append(line(r))
        previous = r[0]
    out.append(rule)
    out.append(f"official score (harmonic mean of all AUC (source), AUC (target) and pAUC, %): {100 * result['official_score']:.2f}")
    return "\n".join(out)
