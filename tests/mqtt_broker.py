"""A real Mosquitto broker for tests, a subscriber that records what it receives, and their fixtures.

    from mqtt_broker import Broker, Subscriber, require_mosquitto

    require_mosquitto()                      # pytest.skip with a clear reason when the binary is absent
    with Broker(tmp_path, auth=("user", "pw"), tls=True) as broker:
        sub = broker.subscriber("edge_asd/#")
        settings = broker.mqtt_settings(prefix="edge_asd")   # edge_asd.mqtt.settings.MqttSettings for this broker
        ...
        broker.stop(); broker.start()        # same port, same certificates, same password file
        sub.wait_for(lambda msgs: ..., timeout=20)

As fixtures (registered for every test module by conftest.py): ``broker`` is a
started anonymous broker, ``brokers(start=True, **options)`` makes more or other ones
(auth, TLS, not yet started); each is stopped when the test ends.

The broker listens on 127.0.0.1 on a free port, with a generated configuration:
anonymous, or with a password file made by ``mosquitto_passwd -b``, or TLS with a
CA and server (and optionally client) certificates generated with ``openssl``.
Persistence is on by default (in the broker's folder), so a stop/start keeps
retained messages and persistent subscriber sessions as a real deployment does;
``kill()`` is a crash (SIGKILL) and loses what was not saved.

Waiting helpers take a timeout only as a bound on failure: they return as soon as
the condition holds, so no test depends on speed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")

HOST = "127.0.0.1"


def require_mosquitto(tls: bool = False, auth: bool = False) -> None:
    """Skip the calling test, with the reason, when a needed binary is missing."""
    if MOSQUITTO is None:
        pytest.skip("the mosquitto broker is not installed (Debian package 'mosquitto')")
    if auth and MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed (Debian package 'mosquitto')")
    if tls and OPENSSL is None:
        pytest.skip("openssl is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA (P-256); returns (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=edge-asd test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    return cert, key


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` for 127.0.0.1/localhost (server) or a client."""
    cert, key, csr, ext = (folder / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    usage = "serverAuth" if server else "clientAuth"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={'127.0.0.1' if server else name}",
        cwd=folder,
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
        cwd=folder,
    )
    return cert, key


class Broker:
    """One Mosquitto process on a fixed free loopback port that survives stop/start."""

    def __init__(
        self,
        workdir: Path,
        auth: tuple[str, str] | None = None,
        tls: bool = False,
        require_client_cert: bool = False,
        persistence: bool = True,
        port: int | None = None,
    ) -> None:
        require_mosquitto(tls=tls or require_client_cert, auth=auth is not None)
        self.dir = Path(workdir) / f"mosquitto-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        self.auth = auth
        self.tls = tls or require_client_cert
        self.require_client_cert = require_client_cert
        self.persistence = persistence
        self.host = HOST
        self.port = port or free_port()
        self.log_path = self.dir / "mosquitto.log"
        self.tls_files: TlsFiles | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        if self.tls:
            self.tls_files = self._make_certificates()
        if auth is not None:
            passwd = self.dir / "passwd"
            subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwd), auth[0], auth[1]], check=True, capture_output=True)
            os.chmod(passwd, 0o600)
        self.config_path = self.dir / "mosquitto.conf"
        self.config_path.write_text(self._config())

    # --- files --------------------------------------------------------------------

    def _make_certificates(self) -> TlsFiles:
        folder = self.dir / "tls"
        ca = make_ca(folder, "ca")
        server = make_leaf(folder, "server", ca, server=True)
        client = make_leaf(folder, "client", ca, server=False)
        return TlsFiles(ca=ca[0], server_cert=server[0], server_key=server[1], client_cert=client[0], client_key=client[1])

    def _config(self) -> str:
        lines = [f"listener {self.port} {self.host}"]
        if self.auth is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self.dir / 'passwd'}"]
        if self.tls_files is not None:
            lines += [
                f"cafile {self.tls_files.ca}",
                f"certfile {self.tls_files.server_cert}",
                f"keyfile {self.tls_files.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.persistence:
            # As deploy/mosquitto.example.conf: a persistent subscriber away for a while misses nothing
            # (Mosquitto's default queue of 1000 would drop a daemon's journal delivered at once).
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 0",
                      "max_queued_messages 100000"]
        else:
            lines.append("persistence false")
        lines += ["log_dest stderr", "log_type error", "log_type warning", "log_type notice", "log_type information",
                  "log_timestamp true"]
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot
            # read files in pytest's private (0700) temporary folders.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    @property
    def ca_path(self) -> Path | None:
        return self.tls_files.ca if self.tls_files else None

    @property
    def client_cert_path(self) -> Path | None:
        return self.tls_files.client_cert if self.tls_files else None

    @property
    def client_key_path(self) -> Path | None:
        return self.tls_files.client_key if self.tls_files else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- process ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> Broker:
        if self.running:
            return self
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)], stdout=self._log_file, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): persistent sessions and retained messages are saved."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """A crash (SIGKILL)."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def save(self, timeout: float = 20.0) -> Path:
        """Write the persistence database now (SIGUSR1), e.g. so that a subscriber's session survives a later kill().

        With ``autosave_interval 0`` the file is otherwise written only on a graceful stop; a crashed broker
        restarts from the last save.
        """
        assert self.persistence and self._proc is not None
        db = self.dir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else None
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        # Mosquitto writes a temporary file and renames it, so a new mtime means a complete file.
        while not db.exists() or db.stat().st_mtime_ns == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not write {db}:\n{self.log_text()}")
            time.sleep(0.02)
        return db

    def _end(self, sig: int) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
                self._proc.send_signal(sig)
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients ------------------------------------------------------------------

    def mqtt_settings(self, **overrides: Any):
        """edge_asd.mqtt.settings.MqttSettings for this broker, with test-short reconnect delays."""
        from edge_asd.mqtt.settings import MqttSettings

        values: dict[str, Any] = dict(
            host=self.host, port=self.port, reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive=10
        )
        if self.auth is not None:
            values.update(username=self.auth[0], password=self.auth[1])
        if self.tls_files is not None:
            values.update(tls_ca=self.tls_files.ca)
            if self.require_client_cert:
                values.update(tls_cert=self.tls_files.client_cert, tls_key=self.tls_files.client_key)
        values.update(overrides)
        return MqttSettings(**values)

    def subscriber(self, *topics: str, persistent: bool = False) -> Subscriber:
        """A connected subscriber (waits for its SUBACK) to ``topics`` (default "#")."""
        return Subscriber(self, topics or ("#",), persistent=persistent)

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout: float = 20.0) -> None:
        """Publish one QoS 1 message from a short-lived client (e.g. Home Assistant's birth message)."""
        client = self.subscriber(f"edge-asd-test/unused/{uuid.uuid4().hex}").client
        try:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout)
        finally:
            client.disconnect()
            client.loop_stop()

    def retained(self, topic: str, timeout: float = 20.0) -> bytes:
        """The retained payload on ``topic`` (waits for it to appear)."""
        sub = self.subscriber(topic)
        try:
            return sub.wait_for_topic(topic, timeout=timeout, retained=True)[-1].payload
        finally:
            sub.close()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho client that subscribes (again after every reconnect) and records messages.

    ``persistent=True`` uses a persistent session (clean_session=False, QoS 1), so
    messages published while the subscriber is disconnected, e.g. while the broker
    restarts, are queued by the broker and delivered when it is back.
    """

    broker: Broker
    topics: Iterable[str]
    persistent: bool = False
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topics = tuple(self.topics)
        self._cond = threading.Condition()
        self._subscribed = False
        self.connects = 0  # successful connections so far (a broker restart adds one)
        self.connected = False
        client_id = f"test-sub-{uuid.uuid4().hex[:10]}"
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not self.persistent,
        )
        b = self.broker
        if b.auth is not None:
            self.client.username_pw_set(*b.auth)
        if b.tls_files is not None:
            if b.require_client_cert:
                self.client.tls_set(ca_certs=str(b.tls_files.ca), certfile=str(b.tls_files.client_cert),
                                    keyfile=str(b.tls_files.client_key))
            else:
                self.client.tls_set(ca_certs=str(b.tls_files.ca))
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(b.host, b.port, keepalive=10)
        self.client.loop_start()
        if not self._wait(lambda: self._subscribed, 20.0):
            self.close()
            raise AssertionError(f"subscriber did not get its SUBACK from the broker:\n{b.log_text()}")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])
            with self._cond:
                self.connects += 1
                self.connected = True
                self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            self.connected = False
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append(Received(message.topic, bytes(message.payload), message.qos, bool(message.retain)))
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0, what: str = "") -> list[Received]:
        """Wait until ``predicate(messages)`` holds; raise AssertionError (with what was received) if not."""
        if not self._wait(lambda: predicate(self.messages), timeout):
            with self._cond:
                got = [(m.topic, m.payload[:120], m.retain) for m in self.messages[-20:]]
            raise AssertionError(f"timed out waiting for {what or 'messages'}; last received: {got}")
        with self._cond:
            return list(self.messages)

    def wait_reconnected(self, after: int, timeout: float = 30.0) -> None:
        """Wait until connected again after ``after`` connections (e.g. ``connects`` read before a broker restart)."""
        if not self._wait(lambda: self.connected and self.connects > after, timeout):
            raise AssertionError(f"subscriber did not reconnect within {timeout} s:\n{self.broker.log_text()}")

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for_topic(self, topic: str, n: int = 1, timeout: float = 20.0, retained: bool | None = None) -> list[Received]:
        """Wait for at least ``n`` messages on ``topic`` (only retained ones, or only live ones, if asked)."""

        def matching() -> list[Received]:
            return [m for m in self.messages if m.topic == topic and (retained is None or m.retain == retained)]

        self.wait_for(lambda _: len(matching()) >= n, timeout, what=f"{n} message(s) on {topic}")
        with self._cond:
            return matching()

    def wait_for_payload(self, topic: str, payload: bytes, timeout: float = 20.0) -> Received:
        """Wait until the latest message on ``topic`` is ``payload``."""

        def latest_is() -> bool:
            on = [m for m in self.messages if m.topic == topic]
            return bool(on) and on[-1].payload == payload

        self.wait_for(lambda _: latest_is(), timeout, what=f"{payload!r} on {topic}")
        return self.on(topic)[-1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture
def brokers(tmp_path):
    """``make(start=True, **Broker options)``: brokers in the test's folder, each stopped when the test ends."""
    made: list[Broker] = []

    def make(start: bool = True, **options: Any) -> Broker:
        b = Broker(tmp_path, **options)
        made.append(b)
        return b.start() if start else b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(brokers):
    """A started anonymous broker."""
    return brokers()
