"""One machine's pipeline: the scorer thread that takes clips from its source, scores them, has them
decided (:class:`~edge_asd.scoring.decision.ClipDecider`: threshold, debounce, evidence, as
``edge-asd score`` decides), journals scores and alerts in the outbox (holding them while it is
full), saves evidence and hands each clip's record to the outputs (the page; ``edge_asd.daemon.outputs``),
all through the :class:`PipelineLinks` it is given; and the machine's source state as the daemon reports it."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edge_asd.daemon.config import AlertConfig, MachineConfig
from edge_asd.daemon.outputs import ClipOutput, ClipRecord
from edge_asd.daemon.machine_scoring import Scoring
from edge_asd.daemon.sources import Clip, ClipSource
from edge_asd.errors import UserError
from edge_asd.mqtt.discovery import ALERT_STATE
from edge_asd.scoring.alerts import Debouncer
from edge_asd.scoring.decision import ClipDecider
from edge_asd.scoring.drift import DriftMonitor

if TYPE_CHECKING:
    from edge_asd.io.evidence import EvidenceStore
    from edge_asd.mqtt.publisher import Publisher

log = logging.getLogger("edge_asd.daemon")  # the name journals show, kept from before the split

# A scorer that fails this many clips in a row is broken (a GPU fault, a bug):
# exiting lets systemd restart the service instead of publishing nothing forever.
MAX_CONSECUTIVE_SCORE_ERRORS = 10
SCORER_JOIN_TIMEOUT_S = 30.0
# The shortest stall that marks a source failing, however short its clips: a scheduling hiccup is not one.
MIN_STALL_S = 10.0
# Scores kept in memory while the outbox refuses them (disk full), retried with every clip.
MAX_UNSTORED_SCORES = 100


def stall_limit(scoring: Scoring, stall_clips: int) -> tuple[float, float]:
    """(seconds between clips, seconds without one after which the source is failing)."""
    every = max(scoring.clip_seconds, scoring.hop_seconds)
    return every, max(stall_clips * every, MIN_STALL_S)


@dataclass(frozen=True)
class PipelineLinks:
    """What a pipeline hands its clips to and asks of the rest of the daemon, passed in rather than
    reached for through the daemon; the daemon hands every pipeline new links when a reload replaces one."""

    alerts: AlertConfig  # silence and stall limits
    publisher: "Publisher"  # journals scores and alerts in the outbox
    evidence: "EvidenceStore | None"  # None: no [storage] evidence folder
    outputs: tuple[ClipOutput, ...]  # every scored clip's record, in this order (the page's, with [web])
    throttled: Callable[..., None]  # (level, key, msg, *args): logged at most once a minute per key
    wake: Callable[[], None]  # the main loop looks again: this pipeline ended or crashed


@dataclass(frozen=True)
class _WaitingScore:
    """A score on its way into the outbox: the payload is built with the seq allocated when it is stored."""

    make_payload: object  # Callable[[int], dict]
    score: float
    threshold: float
    dbfs: float
    position: tuple[str, str] | None = None  # the replay position journaled with it (file sources)
    origin: str = ""


def _decider(scoring: Scoring, debouncer: Debouncer) -> ClipDecider:
    shared = scoring.shared
    # The scorer looked up at each clip, as scoring does: the shared one may be replaced in place.
    return ClipDecider(debouncer, scoring.threshold, lambda *a: shared.scorer.ratio(*a), scoring.save_evidence)


# What a pipeline restarted by a reload keeps: the heartbeat counts since the daemon started. Not its
# published source state: the restarted source (new settings) announces itself again.
_CARRIED_COUNTERS = ("scored", "anomalous_clips", "score_errors", "outbox_errors", "evidence_saved", "bad_clips",
                     "scores_dropped", "last_dbfs", "silent_run")


class Pipeline:
    """One machine: its source and the scorer thread that turns clips into journaled messages."""

    def __init__(
        self,
        machine: MachineConfig,
        scoring: Scoring,
        source: ClipSource,
        links: PipelineLinks,
        debouncer: Debouncer,
    ):
        self.machine = machine
        self.source = source
        self.links = links
        self.scoring = scoring
        self.decider = _decider(scoring, debouncer)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._guarded_loop, name=f"scorer-{machine.id}", daemon=True)
        self._latency_lock = threading.Lock()
        self._latencies: list[float] = []
        self.scored = 0
        self.anomalous_clips = 0
        self.score_errors = 0
        self.outbox_errors = 0
        self.evidence_saved = 0
        self.bad_clips = 0  # clips the model gave a non-finite result for
        self.scores_dropped = 0  # scores lost because the outbox stayed full
        self._unstored_scores: collections.deque = collections.deque(maxlen=MAX_UNSTORED_SCORES)
        self._unstored_alerts: collections.deque = collections.deque()
        self.last_dbfs: float | None = None
        self.silent_run = 0
        self.crashed: BaseException | None = None
        self.busy_since: float | None = None  # monotonic start of the clip being scored
        self.published_state: str | None = None  # last source state announced on MQTT
        self._alert_state_sent: str | None = None  # last debounced state journaled on <machine>/alert_state
        self.started_mono: float | None = None
        self.last_done_mono: float | None = None  # when the last clip was scored and journaled
        self.drift = DriftMonitor(self._reference_quantiles(scoring))

    def use(self, scoring: Scoring) -> None:
        """Score with ``scoring`` from the next clip on (a reload), keeping the alert state."""
        decider = _decider(scoring, self.debouncer)
        self.scoring, self.decider = scoring, decider

    @property
    def debouncer(self) -> Debouncer:
        return self.decider.debouncer

    @staticmethod
    def _reference_quantiles(scoring) -> list[float] | None:
        scorer = scoring.shared.scorer
        section = scoring.section or scorer.sections[0]
        return getattr(scorer, "reference_quantiles", {}).get(section)

    @property
    def id(self) -> str:
        return self.machine.id

    def start(self) -> None:
        self.started_mono = time.monotonic()
        self.source.start()
        self._thread.start()

    @property
    def done(self) -> bool:
        """The source ended and every clip it produced was scored."""
        return not self._thread.is_alive() and self.source.ended

    def stop(self, timeout: float = SCORER_JOIN_TIMEOUT_S, report_lost: bool = True) -> int:
        """Stop capture, let the clip being scored finish, drop the rest; returns how many queued clips were dropped.

        ``report_lost``: log the scores and alerts still waiting for room in the
        outbox, which end with this process (a reload hands them on instead).
        """
        self.source.stop()
        self._halt.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("machine %s: scoring did not finish within %g s", self.id, timeout)
        if report_lost and (self._unstored_scores or self._unstored_alerts):
            log.error("machine %s: %d score(s) and %d alert(s) never found room in the outbox and are lost",
                      self.id, len(self._unstored_scores), len(self._unstored_alerts))
        return self.source.queue.discard()

    @property
    def scores_waiting(self) -> int:
        return len(self._unstored_scores)

    def take_over(self, old: "Pipeline") -> None:
        """Continue the counters and the waiting messages of the pipeline this one replaces (a reload)."""
        for name in _CARRIED_COUNTERS:
            setattr(self, name, getattr(old, name))
        self._unstored_scores.extend(old._unstored_scores)
        self._unstored_alerts.extend(old._unstored_alerts)
        self.drift = old.drift
        self.drift.quantiles = self._reference_quantiles(self.scoring)

    def take_latencies(self) -> list[float]:
        with self._latency_lock:
            out, self._latencies = self._latencies, []
        return out

    def silent(self) -> bool:
        return self.silent_run >= self.links.alerts.silence_clips

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the main loop turns this into exit status 1
            log.exception("machine %s: internal error in the scorer thread", self.id)
            self.crashed = exc
            self.links.wake()

    def _loop(self) -> None:
        queue = self.source.queue
        consecutive_errors = 0
        while not self._halt.is_set():
            clip = queue.get(timeout=0.5)
            if clip is None:
                if queue.exhausted:
                    log.info("machine %s: source ended; %d clips scored", self.id, self.scored)
                    self.links.wake()
                    return
                continue
            try:
                self._process(clip)
                consecutive_errors = 0
                self.last_done_mono = time.monotonic()
            except UserError as exc:  # e.g. a clip the bundle cannot take: this clip's problem only
                self.score_errors += 1
                consecutive_errors += 1
                log.error("machine %s: cannot score the clip from %s: %s", self.id, clip.origin, exc)
            except Exception:
                self.score_errors += 1
                consecutive_errors += 1
                log.exception("machine %s: scoring the clip from %s failed", self.id, clip.origin)
            if consecutive_errors >= MAX_CONSECUTIVE_SCORE_ERRORS:
                raise RuntimeError(f"machine {self.id}: {consecutive_errors} clips in a row failed to score")

    def _process(self, clip: Clip) -> None:
        from edge_asd.mqtt.payloads import alert_payload, score_payload

        # One snapshot per clip: a reload may replace them meanwhile, and the threshold must be the scorer's.
        sc, decider, links = self.scoring, self.decider, self.links
        self.busy_since = time.monotonic()
        try:
            with sc.shared.lock:
                result = sc.shared.scorer.score(clip.samples, sc.section)
        finally:
            self.busy_since = None
        d = decider.decide(result, clip.dbfs)
        self.last_dbfs = clip.dbfs
        if not d.finite:
            # JSON cannot carry it and no decision can rest on it: this clip's problem, not the scorer's.
            self.bad_clips += 1
            self.links.throttled(logging.WARNING, f"nonfinite-{self.id}",
                                  "machine %s: non-finite result for the clip from %s (score %s, threshold %s, "
                                  "p_target %s, dbfs %s); counted in bad_clips, not published",
                                  self.id, clip.origin, d.score, d.threshold, d.p_target, clip.dbfs)
            return
        model = sc.bundle_id
        self._track_silence(clip.dbfs)
        bands = d.band_dicts()
        end_time = clip.end_time  # not the clip: a waiting score must not hold its samples
        seq = self._journal_score(_WaitingScore(
            lambda n: score_payload(end_time, n, d.score, d.threshold, d.anomalous, d.p_target, d.dbfs, model,
                                    d.ratio, bands),
            d.score, d.threshold, d.dbfs, clip.position, clip.origin))
        with self._latency_lock:
            self._latencies.append((time.monotonic() - clip.ready_monotonic) * 1e3)
        self.scored += 1
        self.drift.add(d.score, d.p_target)
        if d.anomalous:
            self.anomalous_clips += 1

        if d.change is not None:
            (log.warning if d.change == "anomalous" else log.info)(
                "machine %s: state %s (score %.3f, threshold %.3f, clip ending %s)",
                self.id, d.change, d.score, d.threshold, clip.end_time.isoformat(timespec="seconds"),
            )
            self._unstored_alerts.append(("alert", alert_payload(clip.end_time, d.change, self.id, d.score,
                                                                 d.threshold, seq or 0, model, d.ratio, bands)))
        if d.state != self._alert_state_sent:
            # Retained, so a dashboard (Home Assistant's "Anomalous") knows the debounced state at
            # once; the alert topic is not, as an alert replayed on subscribe would read as new.
            self._unstored_alerts.append((ALERT_STATE, alert_payload(clip.end_time, d.state, self.id, d.score,
                                                                     d.threshold, seq or 0, model, d.ratio, bands)))
            self._alert_state_sent = d.state
        self._journal_alerts()

        store, saved = links.evidence, None
        if d.save_evidence and store is not None:
            saved = store.save(self.id, clip.samples, clip.end_time, seq or 0)
            if saved is not None:
                self.evidence_saved += 1
        record = ClipRecord(self.id, seq, end_time, clip.dbfs, d, bands, saved)
        for output in links.outputs:
            try:
                output.clip(record)
            except Exception as exc:  # noqa: BLE001 - one output's fault must not cost the others, nor the clip
                links.throttled(logging.ERROR, f"output-{self.id}-{type(output).__name__}",
                                "machine %s: output %s failed on a clip: %r", self.id, type(output).__name__, exc)

    def _journal_score(self, waiting: "_WaitingScore") -> int | None:
        """Journal this clip's score after any that could not be stored before, in clip order.

        Returns its seq, or None while it waits (the outbox is full); waiting scores
        are retried with every clip, and the oldest is dropped, counted, beyond
        MAX_UNSTORED_SCORES.
        """
        if len(self._unstored_scores) == self._unstored_scores.maxlen:
            self.scores_dropped += 1
            self.links.throttled(logging.ERROR, f"dropped-{self.id}",
                                  "machine %s: the oldest of %d scores waiting for room in the outbox is dropped "
                                  "(%d dropped so far)", self.id, len(self._unstored_scores), self.scores_dropped)
        self._unstored_scores.append(waiting)
        return self._retry_journal()

    def _retry_journal(self) -> int | None:
        from edge_asd.mqtt.outbox import OutboxError

        seq = None
        while self._unstored_scores:
            w = self._unstored_scores[0]
            try:
                seq = self.links.publisher.enqueue_score(self.id, w.make_payload, w.position)
            except OutboxError as exc:
                self.outbox_errors += 1
                self.links.throttled(logging.ERROR, f"outbox-{self.id}",
                                      "machine %s: score not stored: %s (%d waiting, retried with the next clip)",
                                      self.id, exc, len(self._unstored_scores))
                return None
            self._unstored_scores.popleft()
            # One line per journaled seq (the fault-injection tests count them).
            log.debug("machine %s: seq %s score %.3f threshold %.3f dbfs %.1f from %s", self.id, seq, w.score,
                      w.threshold, w.dbfs, w.origin)
        return seq

    def _journal_alerts(self) -> None:
        """Journal the alerts waiting, oldest first; one the outbox refuses is retried with the next clip."""
        from edge_asd.mqtt.outbox import OutboxError

        while self._unstored_alerts:
            kind, payload = self._unstored_alerts[0]
            try:
                self.links.publisher.enqueue(self.id, kind, payload, retain=kind == ALERT_STATE)
            except OutboxError as exc:
                self.outbox_errors += 1
                self.links.throttled(logging.ERROR, f"alert-{self.id}",
                                      "machine %s: alert not stored: %s (retried with the next clip)", self.id, exc)
                return
            self._unstored_alerts.popleft()

    def _track_silence(self, level: float) -> None:
        was = self.silent()
        if level < self.links.alerts.silence_dbfs:
            self.silent_run += 1
        else:
            self.silent_run = 0
        now = self.silent()
        if now and not was:
            log.warning("machine %s: source is silent (%d clips below %g dBFS); check the microphone",
                        self.id, self.silent_run, self.links.alerts.silence_dbfs)
        elif was and not now:
            log.info("machine %s: sound is back (%.1f dBFS)", self.id, level)

    def stall(self, now: float | None = None) -> str | None:
        """Why this running source counts as failing for want of clips, or None.

        Progress, not the source's own word: a capture thread stuck in a driver
        call reports nothing at all, and a source that never delivered is not ok.
        """
        if self.started_mono is None or self.done or self.source.ended:
            return None
        if self.busy_since is not None or len(self.source.queue):
            return None  # the scorer has work: a slow scorer is not a dead source
        now = time.monotonic() if now is None else now
        last = max(t for t in (self.started_mono, self.source.last_clip_mono, self.last_done_mono) if t is not None)
        every, limit = stall_limit(self.scoring, self.links.alerts.stall_clips)
        if now - last <= limit:
            return None
        return f"no audio clip for {now - last:.0f} s (one is due every {every:g} s)"

    def source_state(self) -> str:
        """ok, silent, failing, ended, or starting (no clip yet)."""
        h = self.source.health()
        if self.done or h.state == "ended":
            return "ended"
        if h.state == "failing" or self.stall() is not None:
            return "failing"
        if self.silent():
            return "silent"
        return "ok" if h.state == "ok" and self.source.last_clip_mono is not None else "starting"

    def failure_detail(self) -> str | None:
        return self.source.health().last_error or self.stall()
