"""The one clip decision the daemon and ``edge-asd score`` share: threshold, debounce, alert event, evidence."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_asd.scoring.alerts import Debouncer
from edge_asd.scoring.bands import Band
from edge_asd.scoring.decision import ClipDecider


@dataclass(frozen=True)
class Scored:
    """A scorer's word on one clip (the fields of ClipResult the decision reads)."""

    score: float
    threshold: float = 1.0
    p_target: float = 0.5
    section: str = "00"
    ratio: float | None = 0.25
    bands: tuple[Band, ...] | None = None


def decider(raise_after: int = 3, clear_after: int = 2, **kw) -> ClipDecider:
    return ClipDecider(Debouncer(raise_after, clear_after), **kw)


def test_the_bundles_threshold_applies_without_an_override():
    d = decider().decide(Scored(1.5, threshold=1.0, ratio=0.7), -20.0)
    assert (d.score, d.threshold, d.anomalous, d.ratio) == (1.5, 1.0, True, 0.7)


def test_an_override_replaces_the_threshold_and_rescales_the_ratio():
    calls = []

    def rescale(score, section, threshold):
        calls.append((score, section, threshold))
        return 0.5

    dec = decider(threshold=3.0, rescale=rescale)
    d = dec.decide(Scored(1.5, threshold=1.0, ratio=0.7, section="02"), -20.0)
    assert (d.threshold, d.anomalous, d.ratio) == (3.0, False, 0.5)
    assert calls == [(1.5, "02", 3.0)]
    assert dec.decide(Scored(3.5, threshold=9.0), -20.0).anomalous


def test_the_alert_is_raised_after_n_anomalous_clips_and_cleared_after_m_normal_ones():
    dec = decider(raise_after=3, clear_after=2)
    over, under = Scored(2.0), Scored(0.5)
    seen = [dec.decide(s, -20.0) for s in (over, over, over, under, under, over)]
    assert [d.anomalous for d in seen] == [True, True, True, False, False, True]
    assert [d.change for d in seen] == [None, None, "anomalous", None, "normal", None]
    assert [d.event for d in seen] == ["", "", "raised", "", "cleared", ""]
    assert [d.alert for d in seen] == [False, False, True, True, False, False]
    assert [d.state for d in seen] == ["normal", "normal", "anomalous", "anomalous", "normal", "normal"]
    assert [d.pending for d in seen] == [2, 1, None, 1, None, 2]


def test_an_odd_clip_resets_the_count():
    dec = decider(raise_after=2)
    assert [dec.decide(Scored(s), -20.0).change for s in (2.0, 0.5, 2.0, 2.0)] == [None, None, None, "anomalous"]


def test_evidence_is_kept_for_anomalous_clips_only_and_only_when_asked():
    keep = decider(save_evidence=True)
    assert keep.decide(Scored(2.0), -20.0).save_evidence
    assert not keep.decide(Scored(0.5), -20.0).save_evidence
    assert not decider(save_evidence=False).decide(Scored(2.0), -20.0).save_evidence


def test_a_non_finite_number_is_no_decision_and_leaves_the_alert_state_alone():
    dec = decider(raise_after=2, save_evidence=True)
    dec.decide(Scored(2.0), -20.0)
    for bad in (Scored(math.nan), Scored(math.inf), Scored(2.0, p_target=math.nan), Scored(2.0, threshold=math.nan)):
        d = dec.decide(bad, -20.0)
        assert not d.finite and not d.anomalous and not d.save_evidence and d.change is None
    assert not dec.decide(Scored(2.0), math.nan).finite
    assert dec.decide(Scored(2.0), -20.0).change == "anomalous", "the run of 1 before the bad clips still counts"


def test_bands_reach_the_record_and_its_dicts():
    band = Band(100.0, 200.0, 3.5)
    d = decider().decide(Scored(2.0, bands=(band,)), -20.0)
    assert d.bands == (band,) and d.band_dicts() == [band.to_dict()]
    assert decider().decide(Scored(2.0), -20.0).band_dicts() is None
