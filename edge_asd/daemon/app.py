"""``edge-asd run --config FILE``: the monitoring daemon systemd runs.

Per machine, one pipeline::

    source (mic or file) -> bounded clip queue -> scorer thread -> outbox -> MQTT

Capture never waits for inference: the source thread only cuts clips and a full
queue drops the oldest clip, counted. The scorer thread scores a clip, decides
(threshold, debounce), journals the score on disk (the outbox) and only then
considers it done; the publisher delivers the outbox in order whenever the
broker is reachable. The main thread handles signals, systemd notifications
(ready, watchdog, reload, stop), the stats heartbeat and source health.

Signals: SIGTERM/SIGINT stop cleanly (the clip being scored is finished and
journaled, the outbox is flushed for up to ``shutdown_timeout_s``, ``stopped`` is
published, exit 0); SIGHUP reloads the configuration and bundles without
stopping sources whose settings did not change, and keeps the running
configuration when the new one is bad. The handlers only set flags; the main
loop is woken through a self-pipe (:mod:`edge_asd.daemon.waker`), so a signal can never
wait for a lock its own thread holds. When every source has ended (file
replay without loop), the outbox is delivered, waiting for the broker as long
as it takes, and the daemon exits 0.

Health is judged by progress: a source with no clip for ``stall_clips`` clip
lengths is ``failing``; a capture thread stuck for ``source_hang_s``, a hung
scorer or a dead MQTT thread is an internal error (exit 1: systemd restarts the
service, since a stuck thread cannot be freed from inside the process).

Exit status: 0 clean, 2 a user's mistake (configuration, bundle, outbox file),
1 an internal error.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edge_asd import __version__
from edge_asd.scoring.alerts import Debouncer
from edge_asd.daemon.config import DaemonConfig, LoggingConfig, MachineConfig, load_config
from edge_asd.errors import BundleError, ConfigError, UserError
from edge_asd.daemon.clock import ClockWatch
from edge_asd.scoring.drift import DriftMonitor
from edge_asd.daemon.evidence import EvidenceStore
from edge_asd.daemon.fileprogress import FileProgress, progress_path
from edge_asd.daemon.sdnotify import Notifier
from edge_asd.daemon.sources import Clip, ClipSource, PortAudioHost, make_source
from edge_asd.daemon.waker import Waker

log = logging.getLogger("edge_asd.daemon")

# A scorer that fails this many clips in a row is broken (a GPU fault, a bug):
# exiting lets systemd restart the service instead of publishing nothing forever.
MAX_CONSECUTIVE_SCORE_ERRORS = 10
SCORER_JOIN_TIMEOUT_S = 30.0
# One clip normally takes well under a second. A scorer stuck for this long (a
# hung GPU driver, a deadlock) is treated as a crash, so that systemd restarts
# the service; the main loop alone would keep pinging the watchdog.
SCORER_HANG_S = 300.0
# The shortest stall that marks a source failing, however short its clips: a scheduling hiccup is not one.
MIN_STALL_S = 10.0
# Scores kept in memory while the outbox refuses them (disk full), retried with every clip.
MAX_UNSTORED_SCORES = 100


# --- logging ------------------------------------------------------------------------

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message`` on one line: journald reads the priority prefix and keeps one entry per record."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{text}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def setup_logging(cfg: LoggingConfig, stream=None) -> None:
    """Root logging to stderr: journald-style under systemd, JSON if asked, else timestamped lines."""
    stream = stream or sys.stderr
    if cfg.json:
        fmt: logging.Formatter = _JsonFormatter()
    elif os.environ.get("JOURNAL_STREAM"):
        # journald adds its own timestamps; the priority prefix sets the level.
        fmt = _JournalFormatter("%(name)s: %(message)s")
    else:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_edge_asd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    handler._edge_asd = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(cfg.level)
    # paho logs every packet at DEBUG; only its warnings matter to an operator.
    logging.getLogger("edge_asd.mqtt.paho").setLevel(max(logging.INFO, logging.getLevelName(cfg.level)))
    # faiss announces which CPU build it loaded at INFO on every start: noise in a journal.
    logging.getLogger("faiss").setLevel(max(logging.WARNING, logging.getLevelName(cfg.level)))


# --- scorers ------------------------------------------------------------------------


@dataclass
class _SharedScorer:
    """A loaded bundle and the lock that serializes its use.

    Machines with the same bundle share one scorer (its extractor and
    detectors are the device's largest memory use); on a small device parallel
    inference would not be faster anyway.
    """

    scorer: object  # edge_asd.runtime.scorer.ClipScorer
    lock: threading.Lock


@dataclass(frozen=True)
class _Scoring:
    """What a pipeline scores with; replaced as a whole on reload."""

    shared: _SharedScorer
    section: str
    threshold: float | None
    clip_seconds: float
    hop_seconds: float
    save_evidence: bool

    @property
    def bundle_id(self) -> str:
        return self.shared.scorer.bundle_id  # type: ignore[attr-defined]


def load_scorers(cfg: DaemonConfig) -> dict[str, _Scoring]:
    """Load every bundle the configuration names and check each machine against its bundle.

    Raises :class:`BundleError` / :class:`ConfigError` naming the configuration key.
    """
    from edge_asd.runtime.scorer import load_scorer

    cache: dict[tuple, _SharedScorer] = {}
    out: dict[str, _Scoring] = {}
    cache_dir = str(cfg.storage.engine_cache) if cfg.storage.engine_cache else None
    for i, m in enumerate(cfg.machines):
        key = (str(m.bundle.resolve()), m.backend, m.threads)
        if key not in cache:
            try:
                scorer = load_scorer(m.bundle, backend=m.backend, threads=m.threads, cache_dir=cache_dir)
            except UserError as exc:
                raise BundleError(f"{cfg.path}: machines[{i}].bundle: {exc}") from None
            cache[key] = _SharedScorer(scorer, threading.Lock())
        shared = cache[key]
        scorer = shared.scorer
        sections = list(scorer.sections)
        section = m.section if m.section is not None else sections[0]
        if section not in sections:
            raise ConfigError(
                f"{cfg.path}: machines[{i}].section: {section!r} is not a section of {m.bundle} "
                f"(it has {', '.join(sections)})"
            )
        clip_seconds = m.clip_seconds or float(scorer.clip_seconds)
        if clip_seconds < float(scorer.segment_seconds):
            raise ConfigError(
                f"{cfg.path}: machines[{i}].clip_seconds: {clip_seconds:g} s is shorter than the bundle's "
                f"{float(scorer.segment_seconds):g} s segments"
            )
        out[m.id] = _Scoring(shared, section, m.threshold, clip_seconds, m.hop_seconds or clip_seconds, m.save_evidence)
    return out


@dataclass(frozen=True)
class _Reload:
    """A configuration prepared by a reload, ready to switch to."""

    cfg: DaemonConfig
    scorings: dict[str, _Scoring]
    evidence: EvidenceStore | None
    publisher: object | None  # a new Publisher when MQTT settings or machines changed


# --- one machine ----------------------------------------------------------------------


@dataclass(frozen=True)
class _WaitingScore:
    """A score on its way into the outbox: the payload is built with the seq allocated when it is stored."""

    make_payload: object  # Callable[[int], dict]
    score: float
    threshold: float
    dbfs: float


# What a pipeline restarted by a reload keeps: the heartbeat counts since the daemon started. Not its
# published source state: the restarted source (new settings) announces itself again.
_CARRIED_COUNTERS = ("scored", "anomalous_clips", "score_errors", "outbox_errors", "evidence_saved", "bad_clips",
                     "scores_dropped", "last_dbfs", "silent_run")


class Pipeline:
    """One machine: its source and the scorer thread that turns clips into journaled messages."""

    def __init__(
        self,
        machine: MachineConfig,
        scoring: _Scoring,
        source: ClipSource,
        daemon: "Daemon",
        debouncer: Debouncer,
    ):
        self.machine = machine
        self.scoring = scoring
        self.source = source
        self.daemon = daemon
        self.debouncer = debouncer
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
        self.started_mono: float | None = None
        self.last_done_mono: float | None = None  # when the last clip was scored and journaled
        self.drift = DriftMonitor(self._reference_quantiles(scoring))

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
        return self.silent_run >= self.daemon.cfg.alerts.silence_clips

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the main loop turns this into exit status 1
            log.exception("machine %s: internal error in the scorer thread", self.id)
            self.crashed = exc
            self.daemon.wake()

    def _loop(self) -> None:
        queue = self.source.queue
        consecutive_errors = 0
        while not self._halt.is_set():
            clip = queue.get(timeout=0.5)
            if clip is None:
                if queue.exhausted:
                    log.info("machine %s: source ended; %d clips scored", self.id, self.scored)
                    self.daemon.wake()
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

        sc = self.scoring  # one snapshot per clip: a reload may replace it meanwhile
        self.busy_since = time.monotonic()
        try:
            with sc.shared.lock:
                result = sc.shared.scorer.score(clip.samples, sc.section)  # type: ignore[attr-defined]
        finally:
            self.busy_since = None
        threshold = sc.threshold if sc.threshold is not None else float(result.threshold)
        score = float(result.score)
        p_target = float(result.p_target)
        self.last_dbfs = clip.dbfs
        if not all(math.isfinite(v) for v in (score, threshold, p_target, clip.dbfs)):
            # JSON cannot carry it and no decision can rest on it: this clip's problem, not the scorer's.
            self.bad_clips += 1
            self.daemon.throttled(logging.WARNING, f"nonfinite-{self.id}",
                                  "machine %s: non-finite result for the clip from %s (score %s, threshold %s, "
                                  "p_target %s, dbfs %s); counted in bad_clips, not published",
                                  self.id, clip.origin, score, threshold, p_target, clip.dbfs)
            return
        anomalous = score > threshold
        model = sc.bundle_id
        self._track_silence(clip.dbfs)
        end_time, level = clip.end_time, clip.dbfs  # not the clip: a waiting score must not hold its samples
        seq = self._journal_score(_WaitingScore(
            lambda n: score_payload(end_time, n, score, threshold, anomalous, p_target, level, model),
            score, threshold, level))
        with self._latency_lock:
            self._latencies.append((time.monotonic() - clip.ready_monotonic) * 1e3)
        web = self.daemon.web
        if web is not None:
            web.score(self.id, seq, clip.end_time, score, threshold, anomalous, float(result.p_target), clip.dbfs)
        self.scored += 1
        self.drift.add(score, p_target)
        if anomalous:
            self.anomalous_clips += 1

        change = self.debouncer.update(anomalous)
        if change is not None:
            (log.warning if change == "anomalous" else log.info)(
                "machine %s: state %s (score %.3f, threshold %.3f, clip ending %s)",
                self.id, change, score, threshold, clip.end_time.isoformat(timespec="seconds"),
            )
            self._unstored_alerts.append(alert_payload(clip.end_time, change, self.id, score, threshold, seq or 0, model))
            if web is not None:
                web.alert(self.id, clip.end_time, change)
        self._journal_alerts()

        store = self.daemon.evidence
        if anomalous and sc.save_evidence and store is not None:
            saved = store.save(self.id, clip.samples, clip.end_time, seq or 0)
            if saved is not None:
                self.evidence_saved += 1
                if web is not None:
                    web.evidence(self.id, saved)
        if clip.completes is not None and seq is not None:
            self.source.file_finished(clip.completes)  # type: ignore[attr-defined]

    def _journal_score(self, waiting: "_WaitingScore") -> int | None:
        """Journal this clip's score after any that could not be stored before, in clip order.

        Returns its seq, or None while it waits (the outbox is full); waiting scores
        are retried with every clip, and the oldest is dropped, counted, beyond
        MAX_UNSTORED_SCORES.
        """
        if len(self._unstored_scores) == self._unstored_scores.maxlen:
            self.scores_dropped += 1
            self.daemon.throttled(logging.ERROR, f"dropped-{self.id}",
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
                seq = self.daemon.publisher.enqueue_score(self.id, w.make_payload)
            except OutboxError as exc:
                self.outbox_errors += 1
                self.daemon.throttled(logging.ERROR, f"outbox-{self.id}",
                                      "machine %s: score not stored: %s (%d waiting, retried with the next clip)",
                                      self.id, exc, len(self._unstored_scores))
                return None
            self._unstored_scores.popleft()
            # One line per journaled seq (the fault-injection tests count them).
            log.debug("machine %s: seq %s score %.3f threshold %.3f dbfs %.1f", self.id, seq, w.score, w.threshold,
                      w.dbfs)
        return seq

    def _journal_alerts(self) -> None:
        """Journal the alerts waiting, oldest first; one the outbox refuses is retried with the next clip."""
        from edge_asd.mqtt.outbox import OutboxError

        while self._unstored_alerts:
            try:
                self.daemon.publisher.enqueue(self.id, "alert", self._unstored_alerts[0])
            except OutboxError as exc:
                self.outbox_errors += 1
                self.daemon.throttled(logging.ERROR, f"alert-{self.id}",
                                      "machine %s: alert not stored: %s (retried with the next clip)", self.id, exc)
                return
            self._unstored_alerts.popleft()

    def _track_silence(self, level: float) -> None:
        was = self.silent()
        if level < self.daemon.cfg.alerts.silence_dbfs:
            self.silent_run += 1
        else:
            self.silent_run = 0
        now = self.silent()
        if now and not was:
            log.warning("machine %s: source is silent (%d clips below %g dBFS); check the microphone",
                        self.id, self.silent_run, self.daemon.cfg.alerts.silence_dbfs)
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
        every = max(self.scoring.clip_seconds, self.scoring.hop_seconds)
        limit = max(self.daemon.cfg.alerts.stall_clips * every, MIN_STALL_S)
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


# --- the daemon ----------------------------------------------------------------------


class Daemon:
    """Owns the configuration, the outbox, the publisher and the pipelines; runs the main loop."""

    def __init__(self, cfg: DaemonConfig, scorings: dict[str, _Scoring], notifier: Notifier | None = None):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.started_mono = time.monotonic()
        self.host = PortAudioHost()
        self.pipelines: dict[str, Pipeline] = {}
        self.evidence: EvidenceStore | None = None
        self.outbox = None
        self.publisher = None
        self._scorings = scorings
        self._waker = Waker()
        self.clock = ClockWatch()
        self._stop_requested = False
        self._reload_requested = False
        self._reload_thread: threading.Thread | None = None
        self._reload_result: object = None  # a _Reload, or the exception that refused it
        self._reload_again = False
        self._throttle_last: dict[str, float] = {}
        self._last_state_publish = 0.0
        self.file_progress = FileProgress(progress_path(cfg.storage.outbox))
        self.web = None  # edge_asd.daemon.web.WebServer when [web] is enabled

    # -- signals and waking ---------------------------------------------------------
    def wake(self) -> None:
        self._waker.wake()

    def install_signal_handlers(self) -> None:
        """Stop on SIGTERM/SIGINT, reload on SIGHUP.

        The handlers only store a flag: a handler runs on the main thread between
        two bytecodes, possibly while that thread holds a lock (an Event's, the
        logging module's), so taking any lock there can deadlock the loop. The
        loop is woken by the signal number that ``signal.set_wakeup_fd`` makes
        the C-level handler write into the waker's pipe.
        """
        def on_stop(signum, frame):
            self._stop_requested = True

        def on_reload(signum, frame):
            self._reload_requested = True

        self._waker.attach_signals()
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)

    def release_signal_handlers(self) -> None:
        """Ignore further stop and reload signals once the daemon is done.

        Python's finalization puts its handlers back to the default action, so a
        SIGHUP (a log rotation) that lands while the interpreter exits would kill
        a daemon that had already stopped cleanly; an ignored signal stays ignored.
        """
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        self._waker.close()

    def _wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout``; signal numbers read from the pipe count even before their handler ran."""
        for signum in self._waker.wait(timeout):
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._stop_requested = True
            elif signum == signal.SIGHUP:
                self._reload_requested = True

    def throttled(self, level: int, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._throttle_last.get(key, -1e9) >= 60.0:
            self._throttle_last[key] = now
            log.log(level, msg, *args)

    # -- building blocks -------------------------------------------------------------
    def _make_publisher(self, cfg: DaemonConfig):
        from edge_asd.mqtt.publisher import Publisher

        return Publisher(cfg.mqtt, cfg.device_id, self.outbox, machines=[m.id for m in cfg.machines])

    def _make_evidence(self, cfg: DaemonConfig) -> EvidenceStore | None:
        if cfg.storage.evidence is None or not any(m.save_evidence for m in cfg.machines):
            return None
        try:
            return EvidenceStore(cfg.storage.evidence, int(cfg.storage.evidence_max_mb * 1024 * 1024))
        except OSError as exc:
            raise ConfigError(f"{cfg.path}: storage.evidence: cannot use {cfg.storage.evidence}: {exc.strerror or exc}") from None

    def _make_pipeline(self, m: MachineConfig, scoring: _Scoring, debouncer: Debouncer | None = None) -> Pipeline:
        source = make_source(
            m.id, m.source, scoring.clip_seconds, scoring.hop_seconds, realtime=m.realtime, loop=m.loop,
            channel=m.channel, samplerate=m.samplerate, queue_clips=m.queue_clips, host=self.host,
            progress=self.file_progress,
        )
        deb = debouncer or Debouncer(self.cfg.alerts.raise_after, self.cfg.alerts.clear_after)
        return Pipeline(m, scoring, source, self, deb)

    def start(self) -> None:
        from edge_asd.mqtt.outbox import Outbox

        cfg = self.cfg
        if cfg.web.enabled:
            from edge_asd.daemon.web import start_web

            # First: a port already taken is a configuration error, found before anything else starts.
            self.web = start_web(self)
        max_bytes = int(cfg.storage.outbox_max_mb * 1024 * 1024) if cfg.storage.outbox_max_mb else None
        self.outbox = Outbox(cfg.storage.outbox, max_bytes=max_bytes)
        depth = self.outbox.depth()
        if depth:
            log.info("outbox %s holds %d undelivered message(s) from before; delivering them first",
                     cfg.storage.outbox, depth)
        self.evidence = self._make_evidence(cfg)
        self.publisher = self._make_publisher(cfg)
        self.publisher.start()
        for m in cfg.machines:
            p = self._make_pipeline(m, self._scorings[m.id])
            self.pipelines[m.id] = p
            p.start()
            sc = p.scoring
            log.info("machine %s: %s -> bundle %s section %s on %s (clip %g s, hop %g s, threshold %s)",
                     m.id, m.source, sc.bundle_id, sc.section, getattr(sc.shared.scorer, "backend_name", "?"),
                     sc.clip_seconds, sc.hop_seconds,
                     f"{sc.threshold:g} (override)" if sc.threshold is not None else "from the bundle")

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Start, serve until stopped or every source ended; returns the exit status."""
        self.start()
        log.info("edge-asd %s running as %s with %d machine(s); mqtt %s:%d prefix %s", __version__,
                 self.cfg.device_id, len(self.pipelines), self.cfg.mqtt.host, self.cfg.mqtt.port, self.cfg.mqtt.prefix)
        self.notifier.ready(self._status_line())
        wd = self.notifier.watchdog_interval
        tick = min(1.0, wd) if wd else 1.0
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        next_status = time.monotonic() + 10.0
        draining = False
        while True:
            self._wait(tick)
            self.clock.check()
            if wd:
                # Pinged from the main loop: if this loop hangs, systemd restarts the service.
                self.notifier.watchdog()
            crashed = self._crashed()
            if crashed:
                log.critical("internal error (%s); exiting so that systemd restarts the service", crashed)
                self.shutdown(clean=False)
                return 1
            if self._stop_requested:
                log.info("stop requested")
                self.shutdown(clean=True)
                return 0
            if self._reload_requested:
                self._reload_requested = False
                self.begin_reload()
            if self._reload_result is not None:
                self._finish_reload()
                next_stats = min(next_stats, time.monotonic() + self.cfg.stats_interval_s)
            self._update_source_states()
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.cfg.stats_interval_s
                self.publish_stats()
            if now >= next_status:
                next_status = now + 10.0
                self.notifier.status(self._status_line())
            if self.pipelines and all(p.done for p in self.pipelines.values()):
                if not draining:
                    draining = True
                    depth = self.outbox.depth()
                    log.info("every source has ended; delivering the %d message(s) left in the outbox", depth)
                    self.notifier.status(f"sources ended; delivering {depth} message(s)")
                    self.publish_stats()
                # Bounded by the tick so that signals and the watchdog are still served
                # while waiting for a broker that may take hours to come back.
                if self.publisher.flush(tick):
                    log.info("outbox delivered; exiting")
                    self.shutdown(clean=True)
                    return 0

    def _crashed(self) -> str | None:
        now = time.monotonic()
        dead = self.publisher.dead_thread() if self.publisher is not None else None
        if dead is not None:
            # Delivery would stop silently while scores pile up on disk; a restart resumes it.
            return f"{dead} of the MQTT publisher has ended"
        for p in self.pipelines.values():
            busy = p.busy_since
            if busy is not None and now - busy > SCORER_HANG_S:
                return f"machine {p.id}: scoring one clip has taken {now - busy:.0f} s; the scorer is hung"
            if p.crashed is not None:
                return f"machine {p.id} scorer: {p.crashed!r}"
            if p.source.crashed is not None:
                return f"machine {p.id} source: {p.source.crashed!r}"
            stuck = p.source.stuck_for(now)
            if stuck is not None and stuck > self.cfg.alerts.source_hang_s:
                return (f"machine {p.id} source: its capture thread has made no progress for {stuck:.0f} s "
                        "(a hung audio driver call)")
        return None

    def shutdown(self, clean: bool) -> None:
        self.notifier.stopping("stopping")
        for p in self.pipelines.values():
            p.source.stop()
        for p in self.pipelines.values():
            dropped = p.stop()
            if dropped:
                log.info("machine %s: %d captured clip(s) not scored at shutdown", p.id, dropped)
        if self.publisher is not None:
            timeout = self.cfg.shutdown_timeout_s
            if not self.publisher.flush(timeout):
                self._report_undelivered(timeout)
            if clean:
                # The final counters: an outage that ended just before the exit, or the last clips,
                # would otherwise never reach the stats topic (heartbeats are skipped while offline).
                self.publish_stats(final=True)
            self.publisher.stop(clean=clean)
        if self.outbox is not None:
            self.outbox.close()
        if self.web is not None:
            self.web.stop()
        self.notifier.close()

    def _report_undelivered(self, timeout: float) -> None:
        left = self.outbox.depth()
        acked = self.publisher.acked_not_removed
        if left > acked:
            log.warning("%d message(s) not delivered within %g s; they stay in %s for the next start",
                        left - acked, timeout, self.cfg.storage.outbox)
        if acked:
            log.warning("%d message(s) delivered but not removed from %s (it cannot be written); "
                        "the next start sends them again", acked, self.cfg.storage.outbox)

    # -- health and stats ------------------------------------------------------------
    def _update_source_states(self) -> None:
        from edge_asd.mqtt.payloads import format_ts
        from edge_asd.mqtt.outbox import OutboxError

        for p in list(self.pipelines.values()):
            state = p.source_state()
            if state == "starting" or state == p.published_state:
                continue
            payload = {
                "v": 1,
                "ts": format_ts(datetime.now(timezone.utc)),
                "state": state,
                "source": str(p.machine.source),
                "detail": p.failure_detail() if state == "failing" else None,
            }
            try:
                # Retained: a dashboard that subscribes later still sees a dead microphone.
                self.publisher.enqueue(p.id, "source", payload, retain=True)
            except OutboxError as exc:
                # Not marked as published: the next pass of the main loop stores it again.
                self.throttled(logging.ERROR, f"source-state-{p.id}", "machine %s: source state not stored: %s",
                               p.id, exc)
                continue
            p.published_state = state
            if self.web is not None:
                self.web.source(p.id, state, payload["detail"])

    def stats_payload(self) -> dict:
        from edge_asd.mqtt.payloads import MachineStats, stats_payload

        machines = {}
        extra = {}
        for p in self.pipelines.values():
            lat = p.take_latencies()
            h = p.source.health()
            state = p.source_state()
            machines[p.id] = MachineStats(
                clips=p.scored,
                overruns=h.dropped_clips,
                latency_ms_mean=statistics.fmean(lat) if lat else None,
                latency_ms_max=max(lat) if lat else None,
                source=state,
                dbfs=p.last_dbfs,
                last_error=p.failure_detail() if state == "failing" else None,
            )
            extra[p.id] = {
                "latency_ms_median": statistics.median(lat) if lat else None,
                "latency_ms_p95": _percentile(lat, 95) if lat else None,
                "dropped_clips": h.dropped_clips,
                "audio_overruns": h.overruns,
                "input_overflows": h.input_overflows,
                "bad_files": h.bad_files,
                "reopens": h.reopens,
                "anomalous_clips": p.anomalous_clips,
                "alert_state": "anomalous" if p.debouncer.anomalous else "normal",
                "score_errors": p.score_errors,
                "bad_clips": p.bad_clips,
                "scores_waiting": p.scores_waiting,
                "scores_dropped": p.scores_dropped,
                "evidence_saved": p.evidence_saved,
                "model": p.scoring.bundle_id,
                "backend": getattr(p.scoring.shared.scorer, "backend_name", None),
                "drift": p.drift.summary(),
            }
        out = stats_payload(
            datetime.now(timezone.utc),
            uptime_s=time.monotonic() - self.started_mono,
            outbox_depth=self.outbox.depth(),
            machines=machines,
            outbox_errors=sum(p.outbox_errors for p in self.pipelines.values()),
            mqtt_counters=self.publisher.counters,
        )
        for mid, more in extra.items():
            lat = out["machines"][mid]["latency_ms"]
            lat["median"] = more.pop("latency_ms_median")
            lat["p95"] = more.pop("latency_ms_p95")
            out["machines"][mid].update(more)
        out["connected"] = self.publisher.connected
        out["outbox_acked_not_removed"] = self.publisher.acked_not_removed
        # ts is wall-clock time: say whether it can be trusted (seq orders the scores either way).
        out["clock_synced"] = self.clock.synced
        out["clock_steps"] = self.clock.steps
        out["clock_last_step_s"] = None if self.clock.last_step_s is None else round(self.clock.last_step_s, 3)
        out["rss_mb"] = _rss_mb()
        out["silent_sources"] = sorted(mid for mid, m in machines.items() if m.source == "silent")
        out["failing_sources"] = sorted(mid for mid, m in machines.items() if m.source == "failing")
        if self.evidence is not None:
            out["evidence_mb"] = round(self.evidence.total_bytes / 1048576, 3)
        return out

    def publish_stats(self, final: bool = False) -> None:
        payload = self.stats_payload()
        log.debug("stats: %s", json.dumps(payload))
        self.publisher.publish_stats(payload, final=final)
        if self.web is not None:
            self.web.stats(payload)

    def _status_line(self) -> str:
        scored = sum(p.scored for p in self.pipelines.values())
        bad = [p.id for p in self.pipelines.values() if p.source_state() in ("failing", "silent")]
        mq = "connected" if self.publisher is not None and self.publisher.connected else "not connected"
        text = f"{len(self.pipelines)} machine(s), {scored} clips scored, mqtt {mq}"
        if self.outbox is not None:
            text += f", outbox {self.outbox.depth()}"
        if bad:
            text += f", check sources: {', '.join(bad)}"
        return text

    # -- reload ----------------------------------------------------------------------
    # Reloading happens in two steps. Loading bundles can take long (onnxruntime's
    # TensorRT back end builds engines), so it runs on a worker thread while the
    # main loop keeps serving signals and the watchdog; the switch-over then
    # happens on the main thread, between clips.

    def begin_reload(self) -> None:
        """Start preparing a reload (SIGHUP); a second request while one is prepared runs after it."""
        if self._reload_thread is not None:
            self._reload_again = True
            return
        self.notifier.reloading()
        log.info("reloading %s", self.cfg.path)
        old = self.cfg

        def work() -> None:
            try:
                self._reload_result = self._prepare_reload(old)
            except UserError as exc:
                self._reload_result = exc
            except Exception as exc:  # a bug while preparing must not kill a running daemon
                log.exception("reload: unexpected error while preparing")
                self._reload_result = exc
            self.wake()

        self._reload_thread = threading.Thread(target=work, name="reload", daemon=True)
        self._reload_thread.start()

    def _finish_reload(self) -> None:
        """Apply (or refuse) a prepared reload; main thread only."""
        if self._reload_thread is None or self._reload_result is None:
            return
        self._reload_thread.join()
        result, self._reload_result, self._reload_thread = self._reload_result, None, None
        if isinstance(result, BaseException):
            log.error("reload failed, keeping the running configuration: %s", result)
        else:
            self._apply_reload(result)
        self.notifier.ready(self._status_line())
        if self._reload_again:
            self._reload_again = False
            self.begin_reload()

    def _prepare_reload(self, old: DaemonConfig) -> "_Reload":
        """Everything that can fail (parsing, bundles, the evidence folder, MQTT TLS files),
        prepared before anything running is touched, so a failed reload changes nothing."""
        new = load_config(old.path)
        if new.storage.outbox != old.storage.outbox or new.storage.outbox_max_mb != old.storage.outbox_max_mb:
            log.warning("storage.outbox settings take effect at the next restart "
                        "(the running outbox may hold undelivered messages)")
            new = replace(new, storage=replace(new.storage, outbox=old.storage.outbox,
                                               outbox_max_mb=old.storage.outbox_max_mb))
        if new.web != old.web:
            log.warning("web settings take effect at the next restart (the page keeps running as it was)")
        scorings = load_scorers(new)
        evidence = self._make_evidence(new) if new.storage != old.storage or self.evidence is None else self.evidence
        publisher = None
        if (new.mqtt != old.mqtt or new.device_id != old.device_id
                or [m.id for m in new.machines] != [m.id for m in old.machines]):
            publisher = self._make_publisher(new)  # checks settings and TLS files; connects only at start()
        return _Reload(new, scorings, evidence, publisher)

    def _apply_reload(self, r: "_Reload") -> None:
        old, new, scorings, evidence, publisher = self.cfg, r.cfg, r.scorings, r.evidence, r.publisher
        if new.logging != old.logging:
            setup_logging(new.logging)
        self.cfg = new
        self.evidence = evidence
        if publisher is not None:
            # Stop the old one before starting the new: two publishers draining one
            # outbox would interleave messages. Unacknowledged messages stay in the
            # outbox and the new publisher sends them. A device that changed its id
            # is gone under the old one ("stopped"); otherwise it is "offline" until
            # the new connection says "online" again.
            self.publisher.stop(clean=new.device_id != old.device_id)
            self.publisher = publisher
            self.publisher.start()
        kept, restarted, added = [], [], []
        old_machines = {m.id: m for m in old.machines}
        for m in new.machines:
            scoring = scorings[m.id]
            p = self.pipelines.get(m.id)
            if p is not None and self._can_keep_source(old_machines[m.id], m, p.scoring, scoring):
                p.machine = m
                p.scoring = scoring
                p.drift.quantiles = p._reference_quantiles(scoring)  # an enrolled bundle brings a new reference
                p.debouncer.reconfigure(new.alerts.raise_after, new.alerts.clear_after)
                kept.append(m.id)
                continue
            debouncer = None
            if p is not None:
                dropped = p.stop(report_lost=False)
                if dropped:
                    log.info("machine %s: %d captured clip(s) not scored: the source restarts with its new settings",
                             m.id, dropped)
                debouncer = p.debouncer
                debouncer.reconfigure(new.alerts.raise_after, new.alerts.clear_after)
                restarted.append(m.id)
            else:
                added.append(m.id)
            np_ = self._make_pipeline(m, scoring, debouncer)
            if p is not None:
                np_.take_over(p)
            self.pipelines[m.id] = np_
            np_.start()
        removed = [mid for mid in list(self.pipelines) if mid not in {m.id for m in new.machines}]
        for mid in removed:
            self.pipelines.pop(mid).stop()
        # Machines kept their dict order of the old config; follow the new one.
        self.pipelines = {m.id: self.pipelines[m.id] for m in new.machines}
        self._scorings = scorings
        log.info("reloaded: sources kept running for %s; restarted %s; added %s; removed %s",
                 kept or "none", restarted or "none", added or "none", removed or "none")

    @staticmethod
    def _can_keep_source(old: MachineConfig, new: MachineConfig, old_sc: _Scoring, new_sc: _Scoring) -> bool:
        return (old.source_key() == new.source_key() and old_sc.clip_seconds == new_sc.clip_seconds
                and old_sc.hop_seconds == new_sc.hop_seconds)


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)


# --- entry point ---------------------------------------------------------------------


def main(config_path: Path, validate_only: bool = False) -> int:
    """``edge-asd run``: returns the exit status; a :class:`UserError` propagates to the CLI (status 2)."""
    cfg = load_config(config_path, require_credentials=not validate_only)
    setup_logging(cfg.logging)
    scorings = load_scorers(cfg)
    if validate_only:
        names = ", ".join(f"{m.id} ({scorings[m.id].bundle_id}, section {scorings[m.id].section})" for m in cfg.machines)
        print(f"{config_path}: configuration OK: device {cfg.device_id}, machines {names}")
        if cfg.mqtt.password == "" and not os.environ.get("CREDENTIALS_DIRECTORY"):
            print("note: mqtt.password_credential is handed over by systemd at start and was not checked here")
        return 0
    notifier = Notifier()
    daemon = Daemon(cfg, scorings, notifier)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    except UserError:
        # e.g. an outbox file that cannot be opened: the user's to fix, reported by the CLI.
        notifier.stopping("configuration error")
        raise
    finally:
        daemon.release_signal_handlers()


__all__ = ["Daemon", "Debouncer", "Pipeline", "load_scorers", "main", "setup_logging"]
