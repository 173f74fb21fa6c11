"""The publisher: the paho client wrapper that drains the outbox to the broker and keeps the status retained.

Delivery model (CONTRACT.md, "MQTT"): every score and alert is first written to the
:class:`~edge_asd.mqtt.outbox.Outbox`; a publisher thread drains the outbox in order at
QoS 1, with a bounded number of messages in flight, and deletes a message only
when the broker's PUBACK for it arrives. Nothing is dropped while the broker is
away: messages wait on disk, and connection attempts go on, with exponential
backoff, from the very first one (a broker that is down when the daemon starts
is the normal case after a power cut, not an error).

Protocol: MQTT v3.1.1 with a clean session. v3.1.1 is what every broker people
run speaks (Mosquitto of any age, the Home Assistant add-on, cloud brokers), and
the outbox, not a broker-side session, is what makes delivery durable, so a
clean session loses nothing. (v5's extra reason codes would not change what the
publisher does: a message the broker accepted is delivered.)
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_asd.errors import ConfigError
from edge_asd.mqtt.discovery import ENTITIES_PER_MACHINE, HaDevice, discovery_messages
from edge_asd.mqtt.outbox import Outbox, OutboxError
from edge_asd.mqtt.payloads import STATUS_OFFLINE, STATUS_ONLINE, STATUS_STOPPED, encode
from edge_asd.mqtt.settings import MqttSettings
from edge_asd.mqtt.topics import build_topic, check_level

log = logging.getLogger("edge_asd.mqtt")  # the name journals show, kept from before the subpackages


def describe_connect_error(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: broker certificate rejected: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot connect: {exc.strerror}"
    return f"cannot connect: {exc}"


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """``callback`` that logs an exception instead of letting it end paho's network thread."""

    def run(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - a bug here must not stop delivery for good
            log.exception("mqtt: error in %s (the connection carries on)", callback.__name__)

    return run


@dataclass
class _InFlight:
    """An outbox message handed to paho and not yet acknowledged."""

    outbox_id: int
    sent: float         # time.monotonic() of the publish
    generation: int     # the connection it was handed over on


class Publisher:
    """Drains an :class:`Outbox` to an MQTT broker and keeps the device's status retained.

    Threads: paho's network thread runs the callbacks; one drain thread moves
    messages from the outbox to paho and deletes them when acknowledged. Callbacks
    never touch the outbox (they only queue acknowledged message ids and wake the
    drain thread), and the drain thread never holds its condition while calling
    paho, so paho's locks and ours cannot deadlock.

    Order: messages are handed to paho in outbox order. After a reconnect paho
    re-sends the unacknowledged ones itself, in order, and the drain thread hands
    over nothing new until those are acknowledged, so nothing overtakes them.

    Progress is judged by acknowledgements, not by the connection state: a message in
    flight without its PUBACK for ``ack_timeout_s`` (counted from its send, or from the
    reconnect paho re-sent it at) is taken as lost, say an acknowledgement whose callback
    failed, and sent again from the outbox (``resent``); after a reconnect that is every message
    paho re-sent and did not get acknowledged. So no entry of the in-flight map can hold the drain back for longer than that bound.
    :meth:`stalled_for` says how long the publisher has been connected with messages
    waiting and none acknowledged; the daemon ends on it (``delivery_stall_s``).
    """

    def __init__(self, settings: MqttSettings, device_id: str, outbox: Outbox, machines: Iterable[str] = (),
                 ha_device: HaDevice | None = None) -> None:
        self.settings = settings
        self.device_id = check_level(device_id)
        self.machines = [check_level(m) for m in machines]
        self.ha_device = ha_device  # what Home Assistant discovery says beyond the ids (the page, freshness)
        self.outbox = outbox
        self.status_topic = self.topic("status")
        self._window = int(settings.max_inflight)

        self._cond = threading.Condition()
        self._wake = False
        self._stopping = False
        self._started = False
        self._stopped = False
        self._connected = False
        # Bumped on every successful connect; the drain thread compares it with the
        # generation of its in-flight messages to know paho is re-sending them.
        self._generation = 0
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Outbox ids the broker acknowledged whose DELETE has not committed yet (a full disk):
        # kept, and deleted again, so they are neither lost from view nor sent twice.
        self._acked_ids: list[int] = []
        # Monotonic time of the last sign that delivery moves: an acknowledged outbox message, a
        # connect, or nothing waiting. Read by stalled_for().
        self._progress_mono = time.monotonic()
        self._connected_mono = time.monotonic()
        self._counters: dict[str, Any] = {
            "published": 0,
            "acked": 0,
            "resent": 0,
            "connects": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "dropped": 0,
            "last_error": None,
        }
        self._thread: threading.Thread | None = None
        self._client = self._make_client()

    # --- setup ------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=s.client_id or f"edge-asd-{self.device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        # paho logs a normal reconnect cycle at ERROR ("Client is not connected");
        # the publisher reports real failures itself (last_error, one warning per
        # change), so paho's own lines go to DEBUG.
        paho_log = logging.getLogger("edge_asd.mqtt.paho")  # the name setup_logging quietens
        client.on_log = lambda _client, _userdata, _level, text: paho_log.debug("%s", text)
        # Room for the status and discovery messages beside the outbox window, so
        # those never wait behind a full window.
        client.max_inflight_messages_set(self._window + 8 + ENTITIES_PER_MACHINE * len(self.machines))
        client.will_set(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.uses_tls:
            for name, path in (("tls_ca", s.tls_ca), ("tls_cert", s.tls_cert), ("tls_key", s.tls_key)):
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"{path}: mqtt.{name}: no such file")
            try:
                client.tls_set(
                    ca_certs=str(s.tls_ca) if s.tls_ca else None,
                    certfile=str(s.tls_cert) if s.tls_cert else None,
                    keyfile=str(s.tls_key) if s.tls_key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"mqtt TLS files ({s.tls_ca}, {s.tls_cert}, {s.tls_key}): {exc}") from exc
            if s.tls_insecure:
                client.tls_insecure_set(True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)  # type: ignore[arg-type]  # floats work
        # An exception escaping a callback ends paho's network loop for good (no more
        # reconnects, PUBACKs or sends) while `connected` still reads True: every
        # callback is guarded, and paho's own guard is on as well.
        client.suppress_exceptions = True
        client.on_connect = _guarded(self._on_connect)
        client.on_connect_fail = _guarded(self._on_connect_fail)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_publish = _guarded(self._on_publish)
        client.on_message = _guarded(self._on_message)
        return client

    def dead_thread(self) -> str | None:
        """The name of a publisher thread that ended while it should run (paho's network loop, the drain), else None."""
        with self._cond:
            if not self._started or self._stopped:
                return None
        paho_thread = getattr(self._client, "_thread", None)
        if paho_thread is None or not paho_thread.is_alive():
            return "the MQTT network thread"
        if self._thread is None or not self._thread.is_alive():
            return "the outbox drain thread"
        return None

    def topic(self, *levels: str) -> str:
        """``<prefix>/<device_id>/<level>/...``; raises ValueError on an unsafe level."""
        return build_topic(self.settings.prefix, self.device_id, *levels)

    # --- lifetime ---------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; never blocks, never fails on a broker that is down."""
        with self._cond:
            if self._started:
                raise RuntimeError("publisher already started")
            self._started = True
        s = self.settings
        self._client.connect_async(s.host, int(s.port), keepalive=int(s.keepalive))
        self._client.loop_start()
        self._thread = threading.Thread(target=self._drain_loop, name="edge-asd-mqtt-drain", daemon=True)
        self._thread.start()

    def stop(self, clean: bool = True) -> None:
        """Announce the end and disconnect; what is not acknowledged stays in the outbox.

        ``clean``: retained ``stopped`` (a deliberate shutdown). Otherwise retained
        ``offline``, as the last will would say (an exit on a fatal error). The
        outbox is not closed: it belongs to the caller.
        """
        with self._cond:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
            connected = self._connected
        if connected:
            info = self._client.publish(
                self.status_topic, STATUS_STOPPED if clean else STATUS_OFFLINE, qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=5.0)
            except (RuntimeError, ValueError):
                pass  # the connection dropped meanwhile: the last will says "offline"
        self._client.disconnect()
        self._client.loop_stop()
        with self._cond:
            self._stopping = True
            self._connected = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def flush(self, timeout: float | None) -> bool:
        """Wait until the outbox is empty (everything acknowledged); True if it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.outbox.depth() == 0:
                return True
            with self._cond:
                if self._stopping:
                    return self.outbox.depth() == 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # The drain thread notifies after every batch it marks delivered;
                # the cap only bounds how stale a missed wake-up can be.
                self._cond.wait(timeout=0.5 if remaining is None else min(0.5, remaining))

    # --- producing --------------------------------------------------------------

    def enqueue_score(self, machine_id: str, make_payload: Callable[[int], dict],
                      position: tuple[str, str] | None = None) -> int:
        """Journal one score message (seq allocated from the machine's stream) and return its seq.

        ``position``: the replay position the clip reaches, journaled in the same transaction.
        """
        topic = self.topic(machine_id, "score")
        seq = self.outbox.append_with_seq(machine_id, topic, lambda seq: encode(make_payload(seq)), qos=1,
                                          position=position)
        self._notify()
        return seq

    def enqueue(self, machine_id: str, kind: str, payload: dict, retain: bool = False) -> None:
        """Journal one QoS 1 message on ``<prefix>/<device_id>/<machine_id>/<kind>`` (e.g. kind="alert")."""
        self.outbox.append(self.topic(machine_id, kind), encode(payload), qos=1, retain=retain)
        self._notify()

    def publish_stats(self, payload: dict, final: bool = False) -> None:
        """Best effort heartbeat: QoS 0, not journaled, skipped while disconnected.

        A stale heartbeat is worthless, and queueing them during an outage would
        only delay the scores that matter. The ``final`` one of a clean stop goes
        at QoS 1: a broker busy passing on a backlog drops QoS 0 messages, and
        no later heartbeat would carry the last counters.
        """
        if self.connected:
            self._client.publish(self.topic("stats"), encode(payload), qos=1 if final else 0, retain=False)

    # --- state ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def acked_not_removed(self) -> int:
        """Messages the broker acknowledged that are still in the outbox because deleting them failed."""
        with self._cond:
            return len(self._acked_ids)

    @property
    def counters(self) -> dict[str, Any]:
        """connected, published, acked, resent, connects, reconnects, connect_failures, dropped, last_error, stalled_s.

        ``last_error`` is the latest failure seen (it stays after a successful
        reconnect; ``connected`` says whether the link is up now). ``stalled_s``: see :meth:`stalled_for`.
        """
        stalled = round(self.stalled_for(), 1)
        with self._cond:
            return {"connected": self._connected, **self._counters, "stalled_s": stalled}

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds connected with outbox messages waiting and none acknowledged (0 while delivery moves).

        Computed from timestamps, not by the drain thread, so a drain thread that hangs counts as stalled too.
        """
        now = time.monotonic() if now is None else now
        waiting = self.outbox.depth()
        with self._cond:
            if not self._connected or self._stopping or waiting - len(self._acked_ids) <= 0:
                self._progress_mono = now
                return 0.0
            return max(0.0, now - self._progress_mono)

    def _notify(self) -> None:
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _report_error(self, text: str) -> None:
        with self._cond:
            changed = self._counters["last_error"] != text
            self._counters["last_error"] = text
        # The same failure repeats at every backoff step; log it once per change so
        # a long outage does not flood the journal.
        (log.warning if changed else log.debug)("mqtt %s:%s: %s", self.settings.host, self.settings.port, text)

    # --- paho callbacks (network thread) -----------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            with self._cond:
                self._counters["connect_failures"] += 1
            self._report_error(f"broker refused the connection: {reason}")
            return
        with self._cond:
            self._connected = True
            self._connected_mono = self._progress_mono = time.monotonic()
            self._generation += 1
            self._counters["connects"] += 1
            if self._counters["connects"] > 1:
                self._counters["reconnects"] += 1
            self._wake = True
            self._cond.notify_all()
        log.info("mqtt connected to %s:%s", self.settings.host, self.settings.port)
        # Published here, before paho re-sends anything in flight: subscribers see
        # the device online first, and retained state survives a broker that lost it.
        client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        if self.settings.ha_discovery:
            self._publish_discovery(client)
            # Home Assistant announces its own restarts; re-announce then, in case
            # the broker does not keep retained messages.
            client.subscribe(build_topic(self.settings.ha_prefix, "status"), qos=1)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        for topic, config in discovery_messages(
            self.device_id, self.machines, self.settings.prefix, self.settings.ha_prefix, self.ha_device
        ):
            client.publish(topic, encode(config), qos=1, retain=True)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == build_topic(self.settings.ha_prefix, "status") and message.payload == b"online":
            self._publish_discovery(client)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block without passing the
        # exception; sys.exc_info() still holds it there (socket or TLS error).
        exc = sys.exc_info()[1]
        with self._cond:
            self._counters["connect_failures"] += 1
        self._report_error(describe_connect_error(exc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            was_connected = self._connected
            self._connected = False
            stopping = self._stopped
            self._wake = True
            self._cond.notify_all()
        if was_connected and not stopping:
            # MQTT 3.1.1 has no reason on an unexpected loss; paho then says
            # "Unspecified error", which reads like more than it knows.
            detail = "" if reason.value in (0, 128) else f" ({reason})"
            self._report_error(f"connection lost{detail}")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # Only the mid is recorded here: the drain thread maps it to the outbox row.
        # This also covers a PUBACK that arrives before publish() has returned the
        # mid to the drain thread, since the drain thread reads the queue afterwards.
        self._acks.put(mid)
        self._notify()

    # --- the drain thread ---------------------------------------------------------

    def _drain_loop(self) -> None:
        inflight: OrderedDict[int, _InFlight] = OrderedDict()   # paho mid -> message, in send order
        cursor = 0                                              # highest outbox id handed to paho
        while True:
            with self._cond:
                if not self._wake and not self._stopping:
                    # The timeout bounds how long a transient error waits for a retry, and how late
                    # a missing acknowledgement is noticed.
                    self._cond.wait(timeout=1.0)
                self._wake = False
                stopping = self._stopping
                connected = self._connected
                generation = self._generation
                connected_mono = self._connected_mono
            self._collect_acks(inflight)
            if not self._remove_acked() and stopping:
                self._warn_acked_left()
            if stopping:
                return
            try:
                overdue = self._overdue(inflight, connected_mono) if connected else []
                if overdue:
                    cursor = self._resend(inflight, overdue)
                # After a reconnect paho re-sends what is in flight; sending more now could overtake
                # those, so wait until they are acknowledged (or overdue, above). Rows acknowledged but
                # not yet deleted do not hold delivery back: they are behind the cursor, and skipped
                # when the cursor is rewound.
                current = all(e.generation == generation for e in inflight.values())
                if connected and current and len(inflight) < self._window:
                    cursor = self._send_more(inflight, cursor, generation)
            except OutboxError as exc:
                self._report_error(str(exc))
                self._pause()
            except Exception as exc:  # a bug must not silently end delivery for good
                log.exception("mqtt drain thread: unexpected error")
                self._report_error(f"internal error: {exc!r}")
                self._pause()

    def _overdue(self, inflight: OrderedDict[int, _InFlight], connected_mono: float) -> list[int]:
        """The mids in flight that have waited longer than ``ack_timeout_s`` for their PUBACK on this connection.

        The clock of a message handed over on an earlier connection restarts at the reconnect, where paho
        re-sends it: so after a reconnect all of those paho did not get acknowledged come due together.
        """
        deadline = time.monotonic() - float(self.settings.ack_timeout_s)
        return [mid for mid, e in inflight.items() if max(e.sent, connected_mono) < deadline]

    def _resend(self, inflight: OrderedDict[int, _InFlight], overdue: list[int]) -> int:
        """Forget the overdue messages and return the cursor that sends them again from the outbox, in order."""
        ids = sorted(inflight.pop(mid).outbox_id for mid in overdue)
        log.warning("mqtt %s:%s: no acknowledgement for %d outbox message(s) (the first: %d) within %g s; sending "
                    "them again (subscribers drop repeats by seq)", self.settings.host, self.settings.port,
                    len(ids), ids[0], self.settings.ack_timeout_s)
        with self._cond:
            self._counters["resent"] += len(ids)
        return ids[0] - 1

    def _collect_acks(self, inflight: OrderedDict[int, _InFlight]) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            entry = inflight.pop(mid, None)
            if entry is not None:       # else: a status, discovery or stats message, or one sent again since
                with self._cond:
                    self._acked_ids.append(entry.outbox_id)
                    self._progress_mono = time.monotonic()

    def _remove_acked(self) -> bool:
        """Delete the acknowledged rows; False when the delete failed (they stay listed and are retried)."""
        with self._cond:
            ids = list(self._acked_ids)
        if not ids:
            return True
        try:
            self.outbox.mark_delivered(ids)
        except OutboxError as exc:
            # Retried at every wake-up of the drain loop (at least once a second).
            self._report_error(str(exc))
            return False
        except Exception as exc:  # a bug must not silently end delivery for good
            log.exception("mqtt drain thread: unexpected error removing delivered messages")
            self._report_error(f"internal error: {exc!r}")
            return False
        with self._cond:
            del self._acked_ids[: len(ids)]
            self._counters["acked"] += len(ids)
            self._cond.notify_all()     # flush() waits on this
        return True

    def _warn_acked_left(self) -> None:
        n = self.acked_not_removed
        if n:
            log.warning("%d delivered message(s) could not be removed from the outbox %s; "
                        "they will be sent again at the next start", n, self.outbox.path)

    def _send_more(self, inflight: OrderedDict[int, _InFlight], cursor: int, generation: int) -> int:
        # Behind a cursor rewound by _resend: rows delivered whose delete is pending (a full disk), and
        # rows still in flight within their bound. Neither is sent again.
        with self._cond:
            skip = set(self._acked_ids)
        skip.update(e.outbox_id for e in inflight.values())
        for msg in self.outbox.pending(limit=self._window + len(skip), after_id=cursor):
            if msg.id in skip:
                cursor = msg.id
                continue
            if len(inflight) >= self._window:
                break
            with self._cond:
                # The connection may have dropped (and come back) since the batch
                # began; the next wake-up sends the rest once re-sends are acknowledged.
                if not self._connected or self._generation != generation or self._stopping:
                    break
            try:
                info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            except ValueError as exc:
                # A row that can never be published (a corrupt topic): dropping it is
                # the only way not to block every later message behind it.
                log.error("mqtt: dropping undeliverable outbox message %d on %r: %s", msg.id, msg.topic, exc)
                self.outbox.mark_delivered([msg.id])
                with self._cond:
                    self._counters["dropped"] += 1
                    self._progress_mono = time.monotonic()
                cursor = msg.id
                continue
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                # Not taken by paho (its queue refused it): retry from here later.
                self._report_error(f"publish refused by the client: {mqtt.error_string(info.rc)}")
                break
            # NO_CONN: paho keeps QoS 1 messages and sends them on reconnect, in order.
            inflight[info.mid] = _InFlight(msg.id, time.monotonic(), generation)
            cursor = msg.id
            with self._cond:
                self._counters["published"] += 1
        return cursor

    def _pause(self) -> None:
        with self._cond:
            if not self._stopping:
                self._cond.wait(timeout=1.0)
