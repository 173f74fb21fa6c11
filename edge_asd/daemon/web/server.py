"""The web server: one read-only page, a JSON API and server-sent events, in the daemon's process.

Never in the way of capture or scoring:

* the daemon's hooks only update a few fields in memory and put one line into
  bounded queues (the history writer's, each live client's); nothing they do
  waits on a socket or a disk;
* at most ``threads`` connections are served at once; one more is answered
  503 at once and closed, so a flood costs a few accepts, not threads;
* every socket has a timeout (``client_timeout_s``): a client that stops
  reading or never finishes its request is dropped; a live client that falls
  behind by a whole queue is dropped too (its browser reconnects and reloads).

Security: nothing here writes (GET and HEAD only; other methods get 405).
With a token configured (required when not bound to loopback), every request
needs it: ``Authorization: Bearer``, HTTP Basic with the token as the password
(what a phone's browser prompts for), or once as ``?token=`` which sets a
cookie for the page's own requests. File names from URLs are matched against
the evidence naming pattern and configured machine ids before any path is
built, and the resolved path must lie inside the evidence folder.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import logging
import math
import queue
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edge_asd.daemon.config import WebConfig
from edge_asd.errors import ConfigError
from edge_asd.daemon.web.alerts import alert_events
from edge_asd.daemon.web.history import MAX_ROWS, History
from edge_asd.daemon.web.spectrogram import favicon_ico, mel_axis_hz, spectrogram_png
from edge_asd.errors import BundleError
from edge_asd.io.audio import SAMPLE_RATE

log = logging.getLogger("edge_asd.web.server")  # the name journals show, kept from before the subpackages

STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
# <UTC time>_seq<seq>, as edge_asd/evidence.py names clips.
CLIP_NAME = re.compile(r"(\d{8}T\d{6}\.\d{3}Z_seq\d+)\.(wav|png)")
CLIP_STEM = re.compile(r"\d{8}T\d{6}\.\d{3}Z_seq\d+")
# A bundle's reference clip as a URL names it; only names the bundle's manifest lists are ever served.
REFERENCE_NAME = re.compile(r"([A-Za-z0-9_-]{1,64})\.(flac|png)")
NEAREST_CACHE = 64
COOKIE = "edge_asd_token"
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
EVENT_QUEUE = 256
KEEPALIVE_S = 15.0
MAX_CLIPS_LISTED = 50
PNG_CACHE = 16
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The token may be in the page's URL: never hand it to another site.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; media-src 'self'; object-src 'none'; "
                               "frame-ancestors 'none'",
}


class _Client:
    """One live (server-sent events) client: its queue, and whether it fell behind."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=EVENT_QUEUE)
        self.lagging = False


class _Hub:
    """Fans events out to live clients without ever waiting for one."""

    def __init__(self, max_clients: int):
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._clients: set[_Client] = set()

    def join(self) -> _Client | None:
        with self._lock:
            if len(self._clients) >= self.max_clients:
                return None
            c = _Client()
            self._clients.add(c)
            return c

    def leave(self, c: _Client) -> None:
        with self._lock:
            self._clients.discard(c)

    def publish(self, event: str, data: dict) -> None:
        line = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.queue.put_nowait(line)
            except queue.Full:
                c.lagging = True

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._clients)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_threads``; beyond that a 503 at once."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, max_threads: int, ui: "WebServer"):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.ui = ui
        self._slots = threading.BoundedSemaphore(max_threads)
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        # A client that goes away mid-answer is routine, not a traceback in the journal.
        log.debug("web: error serving %s", client_address[0], exc_info=True)


@dataclass(frozen=True)
class MachineScoring:
    """A machine's current scorer and the section it scores, as the page needs them."""

    scorer: object  # edge_asd.runtime.scorer.ClipScorer
    section: str


@dataclass(frozen=True)
class WebLinks:
    """All the page reads from the running daemon, stated here instead of reached for.

    Functions, not values, where the part is made or replaced after the page starts (the page binds its port first,
    so that a port already taken is a configuration error before anything else runs; a bundle can be reloaded).
    """

    machines: Sequence[tuple[str, str]]  # (id, source) of each configured machine, in the config's order
    config_path: Path | str  # named in the one-line error of a port already taken
    started_mono: float  # the daemon's start, time.monotonic()
    connected: Callable[[], bool]  # whether the broker connection is up
    scoring: Callable[[str], MachineScoring | None]  # a machine's scorer and section (None: none yet)
    evidence_root: Callable[[], Path | None]  # the evidence clips' folder (None: evidence off)


def daemon_links(daemon) -> WebLinks:
    """The links of a running :class:`edge_asd.daemon.app.Daemon`."""

    def scoring(mid: str) -> MachineScoring | None:
        pipeline = daemon.pipelines.get(mid)
        s = getattr(pipeline, "scoring", None)
        return None if s is None else MachineScoring(s.shared.scorer, s.section)

    return WebLinks(
        machines=[(m.id, str(m.source)) for m in daemon.cfg.machines],
        config_path=daemon.cfg.path,
        started_mono=daemon.started_mono,
        connected=lambda: bool(daemon.publisher is not None and daemon.publisher.connected),
        scoring=scoring,
        evidence_root=lambda: None if daemon.evidence is None else Path(daemon.evidence.root),
    )


class WebServer:
    """State for the page, the hooks the daemon calls, and the HTTP server."""

    def __init__(self, cfg: WebConfig, device_id: str, links: WebLinks, history: History | None = None):
        self.cfg = cfg
        self.device_id = device_id
        self.links = links
        self.history = history or History(cfg.history, cfg.history_hours * 3600.0)
        self.hub = _Hub(max(1, cfg.threads - 2))  # leaves room for page and API requests
        self._lock = threading.Lock()
        self._live: dict[str, dict] = {}
        self._stats: dict | None = None
        self._stats_mono = 0.0
        self._png_lock = threading.Lock()
        self._png_cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._refs: dict[tuple, object] = {}  # (bundle path, bundle id) -> ReferenceClips
        self._nearest: OrderedDict[tuple, str | None] = OrderedDict()
        self._features = None  # the LogMelStats nearest() compares spectra with, made on first use
        self.favicon = favicon_ico()
        self.stopping = threading.Event()
        self.static = {name: resources.files(__package__).joinpath("static", name).read_bytes()
                       for name in STATIC_FILES}
        try:
            self.httpd = _BoundedServer((cfg.host, cfg.port), _Handler, cfg.threads, self)
        except OSError as exc:
            raise ConfigError(f"{links.config_path}: web.listen: cannot listen on {cfg.host}:{cfg.port}: "
                              f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="web", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.history.start()
        self._thread.start()
        log.info("web page on http://%s:%d/%s", self.cfg.host if ":" not in self.cfg.host else f"[{self.cfg.host}]",
                 self.port, " (token required)" if self.cfg.token else "")

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
        self.history.stop()

    # -- hooks: called from the daemon's threads; cheap, never raise, never block -----
    def _machine(self, mid: str) -> dict:
        return self._live.setdefault(mid, {"alert_state": "normal", "source_state": None, "detail": None,
                                           "last": None, "drift": None, "clips": 0})

    def score(self, mid: str, seq: int | None, end_time: datetime, score: float, threshold: float, anomalous: bool,
              p_target: float, dbfs: float, ratio: float | None = None, bands: list[dict] | None = None,
              pending: int | None = None) -> None:
        """One scored clip; ``pending``: the clips like it still needed before the alert state turns."""
        try:
            row = {"t": end_time.timestamp(), "seq": seq or 0, "score": score, "threshold": threshold,
                   "anomalous": anomalous, "p_target": p_target, "dbfs": dbfs, "ratio": ratio, "bands": bands,
                   "pending": pending}
            with self._lock:
                self._machine(mid)["last"] = row
            self.history.add_score(mid, row["t"], row["seq"], score, threshold, anomalous, p_target, dbfs, ratio,
                                   bands)
            self.hub.publish("score", {"machine": mid, **row})
        except Exception:  # noqa: BLE001 - the page must never cost a score
            log.exception("web: score hook failed")

    def alert(self, mid: str, end_time: datetime, state: str) -> None:
        try:
            with self._lock:
                self._machine(mid)["alert_state"] = state
            self.history.add_alert(mid, end_time.timestamp(), state)
            self.hub.publish("alert", {"machine": mid, "t": end_time.timestamp(), "state": state})
        except Exception:  # noqa: BLE001
            log.exception("web: alert hook failed")

    def source(self, mid: str, state: str, detail: str | None) -> None:
        try:
            with self._lock:
                m = self._machine(mid)
                m["source_state"], m["detail"] = state, detail
            self.hub.publish("state", {"machine": mid, **self.machine_summary(mid)})
        except Exception:  # noqa: BLE001
            log.exception("web: source hook failed")

    def evidence(self, mid: str, path: Path) -> None:
        try:
            self.hub.publish("clip", {"machine": mid, **self._clip_entry(mid, path)})
        except Exception:  # noqa: BLE001
            log.exception("web: evidence hook failed")

    def stats(self, payload: dict) -> None:
        try:
            with self._lock:
                self._stats, self._stats_mono = payload, time.monotonic()
                for mid, m in payload.get("machines", {}).items():
                    self._machine(mid)["drift"] = m.get("drift")
            self.hub.publish("health", self.health())
        except Exception:  # noqa: BLE001
            log.exception("web: stats hook failed")

    # -- what the API answers ---------------------------------------------------------
    def machine_ids(self) -> list[str]:
        return [mid for mid, _ in self.links.machines]

    def machine_summary(self, mid: str) -> dict:
        with self._lock:
            m = dict(self._machine(mid))
        src = m["source_state"]
        # What a technician needs first: a dead microphone outranks a score.
        state = src if src in ("failing", "silent") else m["alert_state"]
        last = m["last"] or {}
        scorer = self._scorer(mid)
        return {"id": mid, "state": state, "alert_state": m["alert_state"], "source_state": src,
                "detail": m["detail"], "dbfs": last.get("dbfs"), "p_target": last.get("p_target"),
                "score": last.get("score"), "threshold": last.get("threshold"), "seq": last.get("seq"),
                "t": last.get("t"), "drift": m["drift"], "ratio": last.get("ratio"), "bands": last.get("bands"),
                "anomalous": last.get("anomalous"), "pending": last.get("pending"),
                # None where the daemon has no scorer for it (yet): the page then says nothing either way
                "band_evidence": None if scorer is None else scorer.band_evidence is not None,
                "ratio_scale": None if scorer is None else bool(scorer.reference_medians)}

    def machines(self) -> dict:
        out = []
        for mid, source in self.links.machines:
            s = self.machine_summary(mid)
            s["source"] = source
            out.append(s)
        # Evidence clips are cut at the runtime's rate: one mel axis for every spectrogram on the page.
        return {"device_id": self.device_id, "history_hours": self.cfg.history_hours, "now": time.time(),
                "machines": out, "spectrogram": {"mel_hz": mel_axis_hz(SAMPLE_RATE)}}

    def health(self) -> dict:
        with self._lock:
            stats, age = self._stats, time.monotonic() - self._stats_mono
        out = {"device_id": self.device_id, "connected": self.links.connected(),
               "uptime_s": time.monotonic() - self.links.started_mono, "web_clients": self.hub.count,
               "history_dropped": self.history.dropped, "stats_age_s": None, "outbox_depth": None,
               "rss_mb": None, "evidence_mb": None, "machines": {}}
        if stats is not None:
            out["stats_age_s"] = round(age, 1)
            for key in ("outbox_depth", "rss_mb", "evidence_mb", "outbox_errors"):
                out[key] = stats.get(key)
            for mid, m in stats.get("machines", {}).items():
                out["machines"][mid] = {k: m.get(k) for k in ("clips", "latency_ms", "overruns", "audio_overruns",
                                                              "dropped_clips", "score_errors", "source")}
        return out

    def scores(self, mid: str, since: float) -> dict:
        since = max(since, time.time() - self.cfg.history_hours * 3600.0)
        rows = self.history.scores(mid, since)
        return {"machine": mid, "since": since, "scores": rows, "alerts": self.history.alerts(mid, since),
                "truncated": len(rows) >= MAX_ROWS}

    def alerts(self, mid: str, since: float) -> dict:
        now = time.time()
        since = max(since, now - self.cfg.history_hours * 3600.0)
        clips = self.clips(mid)["clips"]
        return {"machine": mid, "since": since, "alerts": alert_events(self.history, mid, since, now, clips)}

    # -- the machine's bundle: reference clips, the nearest one to an evidence clip --------
    def _scorer(self, mid: str):
        """The machine's current ClipScorer, or None (no such pipeline yet)."""
        scoring = self.links.scoring(mid)
        return None if scoring is None else scoring.scorer

    def references(self, mid: str):
        """The machine's bundle's reference clips (read lazily from the bundle file); None without a scorer."""
        from edge_asd.runtime.bundle import Bundle
        from edge_asd.runtime.references import ReferenceClips

        scorer = self._scorer(mid)
        if scorer is None:
            return None
        key = (str(scorer.bundle_path), scorer.bundle_id)
        with self._lock:
            refs = self._refs.get(key)
        if refs is None:
            try:
                refs = ReferenceClips.from_bundle(Bundle(scorer.bundle_path, scorer.manifest))
            except BundleError as exc:
                log.warning("web: %s", exc)
                return None
            with self._lock:
                self._refs = {key: refs, **{k: v for k, v in self._refs.items() if k[0] != key[0]}}
        return refs

    def _section(self, mid: str) -> str | None:
        scoring = self.links.scoring(mid)
        return None if scoring is None else scoring.section

    def nearest_reference(self, mid: str, wav: Path) -> dict | None:
        """The machine's section's reference clip nearest in spectrum to an evidence clip, as the page links it."""
        import soundfile as sf

        from edge_asd.io.features import LogMelStats, LogMelStatsConfig

        refs, section = self.references(mid), self._section(mid)
        if refs is None or section is None or not refs.of_section(section):
            return None
        st = wav.stat()
        key = (mid, str(wav), st.st_mtime_ns, refs.bundle.bundle_id)
        with self._lock:
            hit = key in self._nearest
            name = self._nearest.get(key)
            if self._features is None:
                self._features = LogMelStats(LogMelStatsConfig())
        if not hit:
            x, _ = sf.read(wav, dtype="float32", always_2d=True)
            ref = refs.nearest(x[:, 0], section, self._features)
            name = None if ref is None else ref.name
            with self._lock:
                self._nearest[key] = name
                while len(self._nearest) > NEAREST_CACHE:
                    self._nearest.popitem(last=False)
        ref = None if name is None else refs.get(name)
        if ref is None:
            return None
        stem = name.rsplit(".", 1)[0]
        base = f"/api/machines/{mid}/references/"
        return {**ref.to_dict(), "audio": base + name, "png": f"{base}{stem}.png"}

    def reference_media(self, mid: str, name: str) -> tuple[bytes, str] | None:
        """A reference clip's FLAC or its spectrogram PNG, by a name the bundle lists; None for any other."""
        m = REFERENCE_NAME.fullmatch(name)
        refs = self.references(mid) if m is not None and mid in self.machine_ids() else None
        ref = None if refs is None else refs.get(f"{m.group(1)}.flac")
        if ref is None:
            return None
        if m.group(2) == "flac":
            return refs.read(ref.name), "audio/flac"
        key = ("reference", refs.bundle.bundle_id, ref.name)
        return self._cached_png(key, lambda: spectrogram_png(io.BytesIO(refs.read(ref.name)))), "image/png"

    def clip_detail(self, mid: str, stem: str) -> dict | None:
        """An evidence clip's entry with its score's ratio and bands and the nearest normal reference."""
        path = self.clip_path(mid, f"{stem}.wav") if CLIP_STEM.fullmatch(stem) else None
        if path is None:
            return None
        import soundfile as sf

        entry = self._clip_entry(mid, path)
        row = None if entry["seq"] is None else self.history.score_of(mid, entry["seq"])
        entry.update({"seconds": round(float(sf.info(str(path)).duration), 3),
                      "ratio": None if row is None else row["ratio"], "score": None if row is None else row["score"],
                      "bands": None if row is None else row["bands"],
                      "reference": self.nearest_reference(mid, path)})
        return entry

    def _evidence_root(self) -> Path | None:
        return self.links.evidence_root()

    @staticmethod
    def _clip_entry(mid: str, path: Path) -> dict:
        stem = path.stem
        stamp, _, seq = stem.partition("_seq")
        try:
            t = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            t = None
        return {"name": stem, "t": t, "seq": int(seq) if seq.isdigit() else None,
                "wav": f"/clips/{mid}/{stem}.wav", "png": f"/clips/{mid}/{stem}.png"}

    def clips(self, mid: str) -> dict:
        root = self._evidence_root()
        found: list[Path] = []
        if root is not None and (root / mid).is_dir():
            found = sorted((p for p in (root / mid).iterdir() if CLIP_NAME.fullmatch(p.name)), reverse=True)
        return {"machine": mid, "clips": [self._clip_entry(mid, p) for p in found[:MAX_CLIPS_LISTED]]}

    def clip_path(self, mid: str, name: str) -> Path | None:
        """The evidence file a URL names, or None; nothing from the URL is used unchecked."""
        root = self._evidence_root()
        m = CLIP_NAME.fullmatch(name)
        if root is None or m is None or mid not in self.machine_ids():
            return None
        root = root.resolve()
        path = (root / mid / f"{m.group(1)}.wav").resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def png(self, path: Path) -> bytes:
        st = path.stat()
        return self._cached_png((str(path), st.st_mtime_ns, st.st_size), lambda: spectrogram_png(path))

    def _cached_png(self, key: tuple, make) -> bytes:
        with self._png_lock:
            if key in self._png_cache:
                self._png_cache.move_to_end(key)
                return self._png_cache[key]
        data = make()
        with self._png_lock:
            self._png_cache[key] = data
            while len(self._png_cache) > PNG_CACHE:
                self._png_cache.popitem(last=False)
        return data

    def authorized(self, headers, query: dict) -> tuple[bool, bool]:
        """(allowed, set the cookie): compares in constant time against the configured token."""
        token = self.cfg.token
        if token is None:
            return True, False
        offered: list[str] = []
        auth = headers.get("Authorization", "")
        kind, _, value = auth.partition(" ")
        if kind.lower() == "bearer":
            offered.append(value.strip())
        elif kind.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2])
            except (ValueError, UnicodeDecodeError):
                pass
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                offered.append(unquote(value))
        from_query = query.get("token", [])
        for t in offered + from_query:
            if hmac.compare_digest(t.encode(), token.encode()):
                return True, t in from_query
        return False, False


class BadQuery(ValueError):
    """A query parameter the API cannot take; its text is the one line the client gets back."""


def _since(query: dict) -> float:
    """``since``: seconds since the epoch, or an ISO 8601 time; absent: the whole history."""
    raw = (query.get("since") or [""])[0]
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise BadQuery(f"since: {raw!r} is neither Unix seconds nor an ISO 8601 time") from None
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    # float() takes "nan", "inf" and "1e309" (infinite): no time, and NaN or Infinity would make the answer non-JSON.
    if not math.isfinite(value):
        raise BadQuery(f"since: {raw!r} is not a finite number of Unix seconds")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _BoundedServer
    server_version = "edge-asd"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.ui.cfg.client_timeout_s  # a socket timeout on every read and write
        super().setup()

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("web: %s %s", self.client_address[0], format % args)

    # Nothing is ever written through the page.
    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read only\n", "text/plain", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, head: bool, status: int = HTTPStatus.OK) -> None:
        # allow_nan=False: a NaN that slipped through is an error here, never a body no JSON parser reads.
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
        self._send(status, body, "application/json", head=head)

    def _error(self, status: int, head: bool, extra: dict | None = None) -> None:
        self._send(status, f"{status} {HTTPStatus(status).phrase}\n".encode(), "text/plain; charset=utf-8", extra,
                   head)

    def _route(self, head: bool) -> None:
        ui = self.server.ui
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ok, set_cookie = ui.authorized(self.headers, query)
        if not ok:
            self._error(HTTPStatus.UNAUTHORIZED, head, {"WWW-Authenticate": 'Basic realm="edge-asd", charset="UTF-8"'})
            return
        # Split before decoding: an encoded '/' stays inside its segment, where the checks below refuse it.
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        try:
            self._dispatch(ui, parts, query, head, set_cookie)
        except BadQuery as exc:
            self._json({"error": str(exc)}, head, HTTPStatus.BAD_REQUEST)
        except (ValueError, KeyError):
            self._error(HTTPStatus.BAD_REQUEST, head)
        except FileNotFoundError:  # a clip the size cap deleted a moment ago
            self._error(HTTPStatus.NOT_FOUND, head)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _dispatch(self, ui: WebServer, parts: list[str], query: dict, head: bool, set_cookie: bool) -> None:
        ids = ui.machine_ids()
        if parts in ([""], ["index.html"]):
            extra = {}
            if set_cookie:
                extra["Set-Cookie"] = f"{COOKIE}={quote(ui.cfg.token, safe='')}; Path=/; HttpOnly; SameSite=Strict"
            self._send(HTTPStatus.OK, ui.static["index.html"], STATIC_FILES["index.html"], extra, head)
        elif len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC_FILES and parts[1] != "index.html":
            self._send(HTTPStatus.OK, ui.static[parts[1]], STATIC_FILES[parts[1]], head=head)
        elif parts == ["api", "machines"]:
            self._json(ui.machines(), head)
        elif parts == ["api", "health"]:
            self._json(ui.health(), head)
        elif len(parts) == 4 and parts[:2] == ["api", "machines"] and parts[2] in ids and parts[3] == "scores":
            self._json(ui.scores(parts[2], _since(query)), head)
        elif len(parts) == 4 and parts[:2] == ["api", "machines"] and parts[2] in ids and parts[3] == "clips":
            self._json(ui.clips(parts[2]), head)
        elif len(parts) == 4 and parts[:2] == ["api", "machines"] and parts[2] in ids and parts[3] == "alerts":
            self._json(ui.alerts(parts[2], _since(query)), head)
        elif len(parts) == 5 and parts[:2] == ["api", "machines"] and parts[2] in ids and parts[3] == "clips" \
                and (detail := ui.clip_detail(parts[2], parts[4])) is not None:
            self._json(detail, head)
        elif len(parts) == 5 and parts[:2] == ["api", "machines"] and parts[3] == "references" \
                and (media := ui.reference_media(parts[2], parts[4])) is not None:
            self._media(media[0], media[1], head)
        elif parts == ["favicon.ico"]:
            self._send(HTTPStatus.OK, ui.favicon, "image/x-icon", head=head)
        elif parts == ["api", "events"]:
            self._events(ui, head)
        elif len(parts) == 3 and parts[0] == "clips" and (path := ui.clip_path(parts[1], parts[2])) is not None:
            if parts[2].endswith(".png"):
                self._send(HTTPStatus.OK, ui.png(path), "image/png", head=head)
            else:
                self._media(path.read_bytes(), "audio/wav", head)
        else:
            self._error(HTTPStatus.NOT_FOUND, head)

    def _media(self, data: bytes, ctype: str, head: bool) -> None:
        """A clip, whole or one byte range: Safari on a phone plays media only from servers that take ranges."""
        m = RANGE.fullmatch(self.headers.get("Range", "").strip())
        if m is None or not (m.group(1) or m.group(2)):
            self._send(HTTPStatus.OK, data, ctype, {"Accept-Ranges": "bytes"}, head)
            return
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
        else:  # "bytes=-N": the last N bytes
            start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
        if start > end or start >= len(data):
            self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, head, {"Content-Range": f"bytes */{len(data)}"})
            return
        self._send(HTTPStatus.PARTIAL_CONTENT, data[start:end + 1], ctype,
                   {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}, head)

    def _events(self, ui: WebServer, head: bool) -> None:
        client = ui.hub.join()
        if client is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, head, {"Retry-After": "10"})
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            for k, v in SECURITY_HEADERS.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            self.wfile.write(b"retry: 3000\n\n")
            self.wfile.flush()
            last_write = time.monotonic()
            while not ui.stopping.is_set() and not client.lagging:
                try:
                    line = client.queue.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() - last_write < KEEPALIVE_S:
                        continue
                    # A comment now and then: proxies keep the stream open and a dead peer is noticed.
                    line = b": keepalive\n\n"
                self.wfile.write(line)
                self.wfile.flush()
                last_write = time.monotonic()
        finally:
            ui.hub.leave(client)
            self.close_connection = True


def start_web(daemon) -> WebServer | None:
    """The page, when ``[web] enabled``: bound and serving before the pipelines start."""
    cfg: WebConfig = daemon.cfg.web
    if not cfg.enabled:
        return None
    web = WebServer(cfg, daemon.cfg.device_id, daemon_links(daemon))
    web.start()
    return web
