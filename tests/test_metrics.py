"""DCASE metrics, submission files and ``edge-asd evaluate``.

scikit-learn's ``roc_auc_score`` (what the official DCASE evaluator calls) is
the reference for the numpy re-implementation in edge_asd.scoring.metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

from edge_asd.errors import UserError
from edge_asd.scoring.metrics import (
    SectionMetrics,
    evaluate_dir,
    evaluate_sections,
    format_table,
    harmonic_mean,
    labelled_metrics,
    partial_auc,
    roc_auc,
    section_metrics,
)
from edge_asd.io.submission import (
    read_decisions,
    read_score_file,
    read_scores,
    submission_file_name,
    write_section,
)

EDGE_ASD = Path(sys.executable).with_name("edge-asd")
TOL = 1e-9


# ---------------------------------------------------------------- AUC and pAUC against scikit-learn


def _random_case(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(2, 300))
    p = {"balanced": 0.5, "imbalanced": 0.04, "rare_normal": 0.95}.get(kind, rng.uniform(0.1, 0.9))
    y = (rng.random(n) < p).astype(int)
    y[0], y[1] = 0, 1  # both classes, always
    rng.shuffle(y)
    s = rng.normal(size=n) + y * rng.uniform(-1.0, 3.0)
    if kind == "tied_1dp":
        s = np.round(s, 1)
    elif kind == "tied_int":
        s = np.round(s)
    elif kind == "few_values":
        s = rng.integers(0, 3, size=n).astype(float)
    elif kind == "perfect":
        s = y + rng.random(n) * 0.5
    elif kind == "inverted":
        s = -y - rng.random(n) * 0.5
    elif kind == "constant":
        s = np.full(n, 3.25)
    return y, s


KINDS = ["continuous", "balanced", "imbalanced", "rare_normal", "tied_1dp", "tied_int", "few_values", "perfect", "inverted", "constant"]


@pytest.mark.parametrize("kind", KINDS)
def test_auc_and_pauc_match_sklearn(kind: str) -> None:
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(60):
        y, s = _random_case(rng, kind)
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TOL)
        for max_fpr in (0.1, 0.02, 0.5):
            assert partial_auc(y, s, max_fpr) == pytest.approx(roc_auc_score(y, s, max_fpr=max_fpr), abs=TOL)
        assert partial_auc(y, s, 1.0) == pytest.approx(roc_auc_score(y, s), abs=TOL)


def test_perfect_and_inverted_values() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert roc_auc(y, s) == 1.0
    assert partial_auc(y, s) == pytest.approx(1.0, abs=1e-12)
    assert roc_auc(y, -s) == 0.0
    # Area 0 under FPR <= 0.1, standardized: 0.5 * (1 + (0 - 0.005) / 0.095) = 9/19.
    assert partial_auc(y, -s) == pytest.approx(9 / 19, abs=1e-12)


def test_hand_computed_small_case() -> None:
    # Sorted by score: 0.8 (anomaly), 0.4 (normal), 0.35 (anomaly), 0.1 (normal).
    # Anomaly/normal pairs won: 0.8 beats both normals, 0.35 beats 0.1 -> 3 of 4.
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    assert roc_auc(y, s) == pytest.approx(0.75, abs=1e-12)
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1). Area to FPR .1 = .1 * .5 = .05;
    # McClish: .5 * (1 + (.05 - .005) / (.1 - .005)) = 14/19.
    assert partial_auc(y, s) == pytest.approx(14 / 19, abs=1e-12)


def test_hand_computed_ties() -> None:
    # Anomalies score 2 and 1; normals 2, 1, 0. Pairs: 2 vs (2, 1, 0) = .5 + 1 + 1;
    # 1 vs (2, 1, 0) = 0 + .5 + 1. Total 4 of 6.
    assert roc_auc([1, 0, 1, 0, 0], [2, 2, 1, 1, 0]) == pytest.approx(2 / 3, abs=1e-12)
    # All scores equal: the ROC is the diagonal, AUC .5 and standardized pAUC .5.
    assert roc_auc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    assert partial_auc([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.5, abs=1e-12)


def test_hand_computed_interpolated_pauc() -> None:
    # 20 normals, 2 anomalies. Anomaly A ties with one normal at 5; anomaly B ties with
    # the other 19 normals at 0. ROC: (0,0) -> (1/20, 1/2) -> (1, 1).
    y = [1] + [0] + [1] + [0] * 19
    s = [5.0, 5.0] + [0.0] * 20
    # AUC: A wins 19 and ties 1 (19.5), B loses 1 and ties 19 (9.5): 29/40.
    assert roc_auc(y, s) == pytest.approx(29 / 40, abs=1e-12)
    # Up to FPR .1: triangle-ish 1/20 * 1/4 = 1/80, then TPR(.1) = 1/2 + 1/2 * (1/20)/(19/20) = 10/19,
    # trapezoid 1/20 * (1/2 + 10/19) / 2 = 39/1520. Area 29/760;
    # McClish .5 * (1 + (29/760 - 1/200) / (19/200)) = 487/722.
    area = Fraction(1, 80) + Fraction(39, 1520)
    assert area == Fraction(29, 760)
    expected = Fraction(1, 2) * (1 + (area - Fraction(1, 200)) / Fraction(19, 200))
    assert expected == Fraction(487, 722)
    assert partial_auc(y, s) == pytest.approx(487 / 722, abs=1e-12)


@pytest.mark.parametrize(
    ("y", "s"),
    [([0, 0, 0], [1.0, 2.0, 3.0]), ([1, 1], [0.0, 1.0]), ([], [])],
)
def test_missing_class_is_a_user_error(y: list[int], s: list[float]) -> None:
    with pytest.raises(UserError, match="undefined without"):
        roc_auc(y, s)
    with pytest.raises(UserError, match="undefined without"):
        partial_auc(y, s)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        roc_auc([0, 1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        partial_auc([0, 1], [1.0, 2.0], max_fpr=0.0)
    with pytest.raises(UserError, match="finite"):
        roc_auc([0, 1], [float("nan"), 1.0])


def test_harmonic_mean() -> None:
    vals = [0.9, 0.6, 0.75, 0.52]
    assert harmonic_mean(vals) == pytest.approx(hmean(vals), abs=1e-15)
    assert harmonic_mean([0.5, 0.0, 1.0]) == 0.0
    assert harmonic_mean([0.4, 0.4]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        harmonic_mean([])
    with pytest.raises(ValueError):
        harmonic_mean([0.5, -0.1])


scores_st = st.lists(st.integers(-1000, 1000), min_size=2, max_size=60)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), raw=scores_st)
def test_auc_properties(data: st.DataObject, raw: list[int]) -> None:
    n = len(raw)
    labels = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda ls: 0 < sum(ls) < len(ls)))
    y = np.array(labels)
    s = np.array(raw, dtype=float)
    auc = roc_auc(y, s)
    pauc = partial_auc(y, s)
    assert 0.0 <= auc <= 1.0
    assert 0.0 <= pauc <= 1.0
    assert auc + roc_auc(y, -s) == pytest.approx(1.0, abs=1e-12)
    # Strictly increasing maps keep the order (and ties) of the scores, hence the metrics.
    # (Integer inputs keep these exact in float64, so no two scores merge.)
    for transformed in (2.0 * s + 3.0, s**3, np.exp(s / 100.0)):
        assert roc_auc(y, transformed) == pytest.approx(auc, abs=1e-12)
        assert partial_auc(y, transformed) == pytest.approx(pauc, abs=1e-12)


# ---------------------------------------------------------------- section metrics


def _dev_names(section: str, n_per_group: int, rng: np.random.Generator) -> list[str]:
    names = []
    idx = 0
    for domain in ("source", "target"):
        for label in ("normal", "anomaly"):
            for _ in range(n_per_group):
                attrs = f"_vel_{int(rng.integers(1, 9))}_loc_{'AB'[int(rng.integers(0, 2))]}" if rng.random() < 0.7 else ""
                names.append(f"section_{section}_{domain}_test_{label}_{idx:04d}{attrs}.wav")
                idx += 1
    rng.shuffle(names)
    return names


def _truth(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    anomaly = np.array(["_anomaly_" in n for n in names])
    target = np.array(["_target_" in n for n in names])
    return anomaly, target


def _reference(names: list[str], scores: np.ndarray) -> dict[str, float]:
    """The official evaluator's subsets, with scikit-learn."""
    a, t = _truth(names)
    src = (~t) | a
    tgt = t | a
    return {
        "auc_source": roc_auc_score(a[src], scores[src]),
        "auc_target": roc_auc_score(a[tgt], scores[tgt]),
        "pauc": roc_auc_score(a, scores, max_fpr=0.1),
        "pauc_source": roc_auc_score(a[src], scores[src], max_fpr=0.1),
        "pauc_target": roc_auc_score(a[tgt], scores[tgt], max_fpr=0.1),
        "auc_all": roc_auc_score(a, scores),
    }


def test_section_metrics_uses_the_official_subsets() -> None:
    rng = np.random.default_rng(7)
    names = _dev_names("01", 12, rng)
    a, t = _truth(names)
    # Target normals score higher than source normals, so AUC(source) > AUC(target):
    # a metric computed on the wrong subset cannot pass.
    scores = rng.normal(size=len(names)) + 2.0 * a + 1.2 * (t & ~a)
    got = section_metrics(names, scores)
    ref = _reference(names, scores)
    assert isinstance(got, SectionMetrics)
    for key, value in ref.items():
        assert getattr(got, key) == pytest.approx(value, abs=TOL), key
    assert got.auc_source > got.auc_target
    assert (got.n_source_normal, got.n_target_normal, got.n_anomaly) == (12, 12, 24)
    assert got.official() == {"auc_source": got.auc_source, "auc_target": got.auc_target, "pauc": got.pauc}
    assert got.hmean == pytest.approx(hmean([got.auc_source, got.auc_target, got.pauc]))


def test_section_metrics_needs_labels_and_every_group() -> None:
    with pytest.raises(UserError, match="development-set"):
        section_metrics(["section_00_test_0000.wav", "section_00_test_0001.wav"], [0.1, 0.2])
    # a section recorded in one domain has no AUC of the other (left out of the means), not an error
    only_source = ["section_00_source_test_normal_0000.wav", "section_00_source_test_anomaly_0001.wav"]
    m = section_metrics(only_source, [0.1, 0.2])
    assert m.official()["auc_target"] is None and m.auc_source == 1.0
    with pytest.raises(UserError, match="no normal clips"):
        section_metrics(["section_00_source_test_anomaly_0000.wav", "section_00_target_test_anomaly_0001.wav"], [0.1, 0.2])
    with pytest.raises(UserError, match="no anomalous"):
        labelled_metrics([False, False], [False, True], [0.1, 0.2])


# ---------------------------------------------------------------- submission files


def test_write_and_read_round_trip_is_exact(tmp_path: Path) -> None:
    names = ["section_00_source_test_normal_0000_a_1.wav", "section_00_target_test_anomaly_0001.wav", "x.wav"]
    scores = [0.1 + 0.2, np.float32(1 / 3), -1e-300]
    out = tmp_path / "new" / "dir"
    score_path, decision_path = write_section(out, "ToyCar", 0, names, scores, [0, True, 1])
    assert score_path.name == "anomaly_score_ToyCar_section_00_test.csv"
    assert decision_path.name == "decision_result_ToyCar_section_00_test.csv"
    assert sorted(p.name for p in out.iterdir()) == sorted([score_path.name, decision_path.name])  # no temp files left
    first_line = score_path.read_text().splitlines()[0]
    assert first_line == "section_00_source_test_normal_0000_a_1.wav,0.30000000000000004"
    back = read_score_file(score_path)
    assert [n for n, _ in back] == names
    assert [s for _, s in back] == [float(v) for v in scores]  # bit-exact
    assert read_decisions(out) == {("ToyCar", "00"): [(names[0], 0), (names[1], 1), (names[2], 1)]}
    # Rewriting replaces the file, it does not append.
    write_section(out, "ToyCar", "00", names[:1], [5.0], [1])
    assert read_scores(out) == {("ToyCar", "00"): [(names[0], 5.0)]}


def test_machine_names_with_underscores(tmp_path: Path) -> None:
    write_section(tmp_path, "toy_car_v2", "03", ["a.wav"], [1.0], [0])
    write_section(tmp_path, "fan", "00", ["b.wav"], [2.0], [1])
    (tmp_path / "notes.csv").write_text("ignored\n")
    assert read_scores(tmp_path) == {("fan", "00"): [("b.wav", 2.0)], ("toy_car_v2", "03"): [("a.wav", 1.0)]}
    assert submission_file_name("decision_result", "toy_car_v2", 3) == "decision_result_toy_car_v2_section_03_test.csv"


def test_write_section_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="length"):
        write_section(tmp_path, "fan", 0, ["a.wav", "b.wav"], [1.0], [0])
    with pytest.raises(ValueError, match="finite"):
        write_section(tmp_path, "fan", 0, ["a.wav"], [float("nan")], [0])
    with pytest.raises(ValueError, match="0 or 1"):
        write_section(tmp_path, "fan", 0, ["a.wav"], [1.0], [2])
    with pytest.raises(ValueError, match="twice"):
        write_section(tmp_path, "fan", 0, ["d1/a.wav", "d2/a.wav"], [1.0, 2.0], [0, 0])
    with pytest.raises(ValueError, match="two digits"):
        write_section(tmp_path, "fan", "1", ["a.wav"], [1.0], [0])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.wav,0.5\nb.wav\n", r":2: expected 2 fields"),
        ("a.wav,0.5\nb.wav,0.1,3\n", r":2: expected 2 fields"),
        ("file,score\na.wav,0.5\n", r":1: score 'score' is not a number"),
        ("a.wav,0.5\nb.wav,nan\n", r":2: score 'nan' is not a finite number"),
        ("a.wav,0.5\nb.wav,inf\n", r":2: score 'inf' is not a finite number"),
        ("a.wav,0.5\na.wav,0.7\n", r":2: a.wav already listed on line 1"),
        ("\n\n", r"no rows"),
    ],
)
def test_malformed_score_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "anomaly_score_fan_section_00_test.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        read_scores(tmp_path)
    assert str(path) in str(info.value)


def test_malformed_decision_file(tmp_path: Path) -> None:
    path = tmp_path / "decision_result_fan_section_00_test.csv"
    path.write_text("a.wav,1\nb.wav,0.0\nc.wav,2\n")
    with pytest.raises(UserError, match=r"decision_result_fan_section_00_test.csv:3: decision '2' is not 0 or 1"):
        read_decisions(tmp_path)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        read_scores(tmp_path / "absent")
    with pytest.raises(UserError, match="no anomaly_score"):
        evaluate_dir(tmp_path)


# ---------------------------------------------------------------- evaluate, end to end


def _write_submission(folder: Path, rng: np.random.Generator) -> dict[tuple[str, str], tuple[list[str], np.ndarray]]:
    written = {}
    for machine, quality in (("fan", 1.5), ("ToyCar", 0.6)):
        for section in ("00", "01", "02"):
            names = _dev_names(section, int(rng.integers(5, 15)), rng)
            a, t = _truth(names)
            scores = rng.normal(size=len(names)) + quality * a + 0.5 * (t & ~a)
            if section == "02":
                scores = np.round(scores, 1)  # ties, as coarse scores give
            write_section(folder, machine, section, names, scores, (scores > 0.5).astype(int))
            written[(machine, section)] = (names, scores)
    return written


def _check_result(result: dict, written: dict) -> None:
    assert set(result) == {"machines", "official_score"}
    assert set(result["machines"]) == {"fan", "ToyCar"}
    everything = []
    for machine, entry in result["machines"].items():
        assert set(entry) == {"sections", "hmean"}
        assert list(entry["sections"]) == ["00", "01", "02"]
        machine_values = []
        for section, got in entry["sections"].items():
            names, scores = written[(machine, section)]
            ref = _reference(names, scores)
            assert set(got) == {"auc_source", "auc_target", "pauc"}
            for key in got:
                assert got[key] == pytest.approx(ref[key], abs=TOL), (machine, section, key)
                assert 0.0 <= got[key] <= 1.0
                machine_values.append(ref[key])
        assert entry["hmean"] == pytest.approx(hmean(machine_values), abs=TOL)
        everything += machine_values
    assert len(everything) == 2 * 3 * 3
    assert result["official_score"] == pytest.approx(hmean(everything), abs=TOL)


def test_evaluate_dir_matches_sklearn(tmp_path: Path) -> None:
    written = _write_submission(tmp_path, np.random.default_rng(11))
    result = evaluate_dir(tmp_path)
    _check_result(result, written)
    assert json.loads(json.dumps(result)) == result
    table = format_table(result)
    assert "ToyCar" in table and "fan" in table
    assert f"{100 * result['official_score']:.2f}" in table
    fan_hmean_line = [ln for ln in table.splitlines() if ln.startswith("fan") and "hmean" in ln][0]
    assert fan_hmean_line.endswith(f"{100 * result['machines']['fan']['hmean']:.2f}")
    detailed = evaluate_sections(tmp_path)
    assert list(detailed) == [("ToyCar", "00"), ("ToyCar", "01"), ("ToyCar", "02"), ("fan", "00"), ("fan", "01"), ("fan", "02")]


def test_evaluate_with_official_ground_truth(tmp_path: Path) -> None:
    """Evaluation-set names carry no truth; the DCASE ground-truth CSVs (in --data) supply it."""
    rng = np.random.default_rng(5)
    dev_names = _dev_names("00", 8, rng)
    a, t = _truth(dev_names)
    scores = rng.normal(size=len(dev_names)) + a
    eval_names = [f"section_00_{i:04d}.wav" for i in range(len(dev_names))]
    sub = tmp_path / "sub"
    write_section(sub, "valve", "00", eval_names, scores, np.zeros(len(scores), dtype=int))
    with pytest.raises(UserError, match="ground truth was not found"):
        evaluate_dir(sub)
    gt = tmp_path / "gt"
    (gt / "ground_truth_data").mkdir(parents=True)
    (gt / "ground_truth_domain").mkdir()
    (gt / "ground_truth_data" / "ground_truth_valve_section_00_test.csv").write_text(
        "".join(f"{n},{int(x)}\n" for n, x in zip(eval_names, a))
    )
    (gt / "ground_truth_domain" / "ground_truth_valve_section_00_test.csv").write_text(
        "".join(f"{n},{int(x)}\n" for n, x in zip(eval_names, t))
    )
    got = evaluate_dir(sub, data_root=gt)["machines"]["valve"]["sections"]["00"]
    ref = _reference(dev_names, scores)
    for key in got:
        assert got[key] == pytest.approx(ref[key], abs=TOL)
    # A clip the ground truth does not list is named in the error.
    write_section(sub, "valve", "00", [*eval_names, "section_00_9999.wav"], [*scores, 0.0], [0] * (len(scores) + 1))
    with pytest.raises(UserError, match=r"section_00_9999.wav.*has no entry"):
        evaluate_dir(sub, data_root=gt)


def test_evaluate_rejects_inconsistent_sections(tmp_path: Path) -> None:
    names = ["section_01_source_test_normal_0000.wav", "section_01_target_test_normal_0001.wav", "section_01_source_test_anomaly_0002.wav"]
    write_section(tmp_path, "fan", "00", names, [0.1, 0.2, 0.3], [0, 0, 1])
    with pytest.raises(UserError, match="section 01 clip, not section 00"):
        evaluate_dir(tmp_path)


def test_evaluate_names_the_file_of_an_incomplete_section(tmp_path: Path) -> None:
    names = ["section_00_source_test_anomaly_0000.wav", "section_00_source_test_anomaly_0001.wav"]
    path, _ = write_section(tmp_path, "fan", "00", names, [0.1, 0.2], [1, 1])
    with pytest.raises(UserError, match="no normal clips") as info:
        evaluate_dir(tmp_path)
    assert str(path) in str(info.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EDGE_ASD), *args], capture_output=True, text=True, timeout=120)


def test_cli_evaluate_json_and_table(tmp_path: Path) -> None:
    written = _write_submission(tmp_path, np.random.default_rng(23))
    proc = _cli("evaluate", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    _check_result(json.loads(proc.stdout), written)
    proc = _cli("evaluate", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "official score" in proc.stdout and "ToyCar" in proc.stdout


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "no such folder"),
        ("empty", "no anomaly_score"),
        ("bad_row", "anomaly_score_fan_section_00_test.csv:2: expected 2 fields"),
        ("nan", "anomaly_score_fan_section_00_test.csv:3: score 'NaN' is not a finite number"),
    ],
)
def test_cli_evaluate_bad_input(tmp_path: Path, case: str, expect: str) -> None:
    folder = tmp_path / "sub"
    if case != "missing":
        folder.mkdir()
    good = "section_00_source_test_normal_0000.wav,0.1\nsection_00_target_test_anomaly_0001.wav,0.9\n"
    if case == "bad_row":
        (folder / "anomaly_score_fan_section_00_test.csv").write_text(good.replace(",0.9", ";0.9"))
    elif case == "nan":
        (folder / "anomaly_score_fan_section_00_test.csv").write_text(good + "section_00_target_test_normal_0002.wav,NaN\n")
    proc = _cli("evaluate", str(folder), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edge-asd: error: ")
    assert expect in lines[0]
    assert str(folder) in lines[0]
    assert "Traceback" not in proc.stderr


def test_no_scipy_or_sklearn_in_the_runtime() -> None:
    code = (
        "import sys, edge_asd.scoring.metrics, edge_asd.io.submission;"
        "bad = [m for m in ('scipy', 'sklearn', 'torch') if m in sys.modules];"
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
