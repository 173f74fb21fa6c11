"""``edge-asd run --config FILE``: the monitoring daemon systemd runs, its lifecycle (start, main
loop, reload, shutdown) and its stats heartbeat.

Per machine, one pipeline (:mod:`edge_asd.daemon.pipeline`)::

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

import json
import logging
import math
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edge_asd import __version__
from edge_asd.daemon.clock import ClockWatch
from edge_asd.daemon.config import DaemonConfig, MachineConfig
from edge_asd.io.evidence import EvidenceStore
from edge_asd.daemon.fileprogress import FileProgress, progress_path
from edge_asd.daemon.loading import load_config
from edge_asd.daemon.logs import setup_logging
from edge_asd.daemon.pipeline import Pipeline, PipelineLinks, stall_limit
from edge_asd.daemon.outputs import PageOutput
from edge_asd.daemon.machine_scoring import Scoring, load_scorers
from edge_asd.daemon.memory import limit_malloc_arenas
from edge_asd.daemon.sdnotify import Notifier
from edge_asd.daemon.sources import PortAudioHost, make_source
from edge_asd.daemon.waker import Waker
from edge_asd.errors import ConfigError, UserError
from edge_asd.scoring.alerts import Debouncer

log = logging.getLogger("edge_asd.daemon")

# One clip normally takes well under a second. A scorer stuck for this long (a
# hung GPU driver, a deadlock) is treated as a crash, so that systemd restarts
# the service; the main loop alone would keep pinging the watchdog.
SCORER_HANG_S = 300.0


@dataclass(frozen=True)
class _Reload:
    """A configuration prepared by a reload, ready to switch to."""

    cfg: DaemonConfig
    scorings: dict[str, Scoring]
    evidence: EvidenceStore | None
    publisher: object | None  # a new Publisher when MQTT settings or machines changed


# --- the daemon ----------------------------------------------------------------------


class Daemon:
    """Owns the configuration, the outbox, the publisher and the pipelines; runs the main loop."""

    def __init__(self, cfg: DaemonConfig, scorings: dict[str, Scoring], notifier: Notifier | None = None):
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
    def _make_publisher(self, cfg: DaemonConfig, scorings: dict[str, Scoring] | None = None):
        from edge_asd.mqtt.discovery import HaDevice
        from edge_asd.mqtt.publisher import Publisher

        # A score is stale once the daemon itself would call its source failing, and a clip later.
        scorings = self._scorings if scorings is None else scorings
        expire = {}
        for m in cfg.machines:
            every, limit = stall_limit(scorings[m.id], cfg.alerts.stall_clips)
            expire[m.id] = math.ceil(limit + every)
        ha_device = HaDevice(configuration_url=cfg.web.page_url if cfg.web.enabled else None, expire_after_s=expire)
        return Publisher(cfg.mqtt, cfg.device_id, self.outbox, machines=[m.id for m in cfg.machines],
                         ha_device=ha_device)

    def _make_evidence(self, cfg: DaemonConfig) -> EvidenceStore | None:
        if cfg.storage.evidence is None or not any(m.save_evidence for m in cfg.machines):
            return None
        try:
            return EvidenceStore(cfg.storage.evidence, int(cfg.storage.evidence_max_mb * 1024 * 1024))
        except OSError as exc:
            raise ConfigError(f"{cfg.path}: storage.evidence: cannot use {cfg.storage.evidence}: {exc.strerror or exc}") from None

    def _make_pipeline(self, m: MachineConfig, scoring: Scoring, debouncer: Debouncer | None = None) -> Pipeline:
        # Positions are read from the outbox, where each clip's is journaled with its message.
        progress = FileProgress(self.outbox, progress_path(self.cfg.storage.outbox))
        source = make_source(m, scoring.clip_seconds, scoring.hop_seconds, host=self.host, progress=progress)
        deb = debouncer or Debouncer(self.cfg.alerts.raise_after, self.cfg.alerts.clear_after)
        return Pipeline(m, scoring, source, self._pipeline_links(), deb)

    def _pipeline_links(self) -> PipelineLinks:
        outputs = (PageOutput(self.web),) if self.web is not None else ()
        return PipelineLinks(self.cfg.alerts, self.publisher, self.evidence, outputs, self.throttled, self.wake)

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
            stalled = self._delivery_stalled()
            if stalled:
                log.critical("%s; exiting so that systemd restarts the service", stalled)
                # Not flushed first: waiting on a publisher that makes no progress only delays the restart.
                self.shutdown(clean=False, deliver=False)
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

    def _delivery_stalled(self) -> str | None:
        """Why delivery counts as stuck (connected, messages waiting, none acknowledged for delivery_stall_s), or None."""
        if self.publisher is None:
            return None
        stalled = self.publisher.stalled_for()
        if stalled <= self.cfg.mqtt.delivery_stall_s:
            return None
        return (f"mqtt {self.cfg.mqtt.host}:{self.cfg.mqtt.port}: connected, {self.outbox.depth()} message(s) waiting "
                f"in {self.cfg.storage.outbox} and none acknowledged for {stalled:.0f} s (delivery_stall_s "
                f"{self.cfg.mqtt.delivery_stall_s:g}): delivery is stuck")

    def shutdown(self, clean: bool, deliver: bool = True) -> None:
        self.notifier.stopping("stopping")
        for p in self.pipelines.values():
            p.source.stop()
        if self._reload_thread is not None:
            # A reload being prepared is loading bundles in native code (onnxruntime, faiss). Exiting
            # under it tears its objects down mid-call and the C++ runtime aborts the process
            # ("terminate called without an active exception", status -6); a signal storm found it.
            self._reload_thread.join(self.cfg.shutdown_timeout_s)
        for p in self.pipelines.values():
            dropped = p.stop()
            if dropped:
                log.info("machine %s: %d captured clip(s) not scored at shutdown", p.id, dropped)
        if self.publisher is not None:
            timeout = self.cfg.shutdown_timeout_s if deliver else 0.0
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
        out["outbox_disk_mb"] = round(self.outbox.disk_bytes() / 1048576, 3)
        # ts is wall-clock time: say whether it can be trusted (seq orders the scores either way).
        out["clock_synced"] = self.clock.synced
        out["clock_steps"] = self.clock.steps
        out["clock_last_step_s"] = None if self.clock.last_step_s is None else round(self.clock.last_step_s, 3)
        out["rss_mb"] = _rss_mb()
        out["silent_sources"] = sorted(mid for mid, m in machines.items() if m.source == "silent")
        out["failing_sources"] = sorted(mid for mid, m in machines.items() if m.source == "failing")
        if self.evidence is not None:
            out["evidence_mb"] = round(self.evidence.total_bytes / 1048576, 3)
            out["evidence_errors"] = self.evidence.errors
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
            publisher = self._make_publisher(new, scorings)  # checks settings and TLS files; connects only at start()
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
        links = self._pipeline_links()  # the new settings, evidence store and publisher
        old_machines = {m.id: m for m in old.machines}
        for m in new.machines:
            scoring = scorings[m.id]
            p = self.pipelines.get(m.id)
            if p is not None and self._can_keep_source(old_machines[m.id], m, p.scoring, scoring):
                p.machine = m
                p.links = links
                p.use(scoring)
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
    def _can_keep_source(old: MachineConfig, new: MachineConfig, old_sc: Scoring, new_sc: Scoring) -> bool:
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
    if not validate_only:
        limit_malloc_arenas()  # before onnxruntime's and the daemon's threads start
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


__all__ = ["Daemon", "main"]
