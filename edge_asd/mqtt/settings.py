"""The MQTT settings: one frozen dataclass, declared and validated here, used as is everywhere.

``daemon/config.py`` builds it from the TOML ``[mqtt]`` section (reading its
defaults from here), the daemon hands that same object to the publisher, and
tests construct it directly. Every check of a value, or of values that only make
sense together, lives in ``__post_init__``; the TOML reader keeps only what is
about the file itself (types, unknown keys, paths that must exist, where a
password comes from). A leaf module: it imports nothing of the daemon, nor paho.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_asd.errors import ConfigError
from edge_asd.mqtt.topics import build_topic


class MqttSettingsError(ConfigError):
    """One setting is wrong; ``key`` names it, so the TOML reader can point at the file and key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"mqtt.{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge_asd"
    client_id: str | None = None          # default "edge-asd-<device_id>": a restarted daemon takes over its old session
    username: str | None = None
    # repr=False: a settings object printed in a log line or a traceback must never show the secret.
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None            # CA bundle that signed the broker's certificate
    tls_cert: Path | None = None          # client certificate, for brokers that require one
    tls_key: Path | None = None
    tls_insecure: bool = False            # skip the host-name check (the chain is still verified)
    tls: bool = False                     # TLS with the system's CAs when no tls_ca is given
    keepalive: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    # An outbox message in flight this long without its PUBACK counts as lost and is sent again
    # (a duplicate at worst, which subscribers drop by seq); the clock restarts at each reconnect.
    ack_timeout_s: float = 30.0
    # Connected, messages waiting and none acknowledged for this long: delivery is stuck, and the
    # daemon exits 1 so that systemd restarts it.
    delivery_stall_s: float = 300.0
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    # Not a TOML key (CONTRACT.md's keys stay as they are): outbox messages sent and not yet acknowledged.
    max_inflight: int = 20

    def __post_init__(self) -> None:
        if not str(self.host).strip():
            raise MqttSettingsError("host", "must not be empty")
        _in_range("port", self.port, 1, 65535)
        for key in ("prefix", "ha_prefix"):
            value = getattr(self, key)
            try:
                build_topic(value)
            except ValueError:
                raise MqttSettingsError(
                    key, f"{value!r} is not a valid MQTT topic prefix (no '+', '#', empty levels or leading/trailing '/')"
                ) from None
        if self.password is not None and self.username is None:
            raise MqttSettingsError("password", "a password needs a username")
        if self.username is not None and self.password is None:
            raise MqttSettingsError(
                "username", "a username needs a password (password_file, password_credential or password)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise MqttSettingsError("tls_cert" if self.tls_cert is None else "tls_key", "tls_cert and tls_key go together")
        if (self.tls_cert is not None or self.tls_insecure) and self.tls_ca is None and not self.tls:
            raise MqttSettingsError(
                "tls_ca" if self.tls_cert is not None else "tls_insecure",
                "TLS options need TLS: set tls_ca (the CA that signed the broker's certificate) or tls = true (system CAs)",
            )
        _in_range("keepalive", self.keepalive, 5, 65535)
        for key in ("reconnect_min_s", "reconnect_max_s"):
            if not float(getattr(self, key)) > 0:
                raise MqttSettingsError(key, f"must be greater than 0, not {float(getattr(self, key)):g}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise MqttSettingsError("reconnect_max_s", f"must be at least reconnect_min_s ({self.reconnect_min_s:g})")
        _in_range("max_inflight", self.max_inflight, 1, None)
        if not float(self.ack_timeout_s) > 0:
            raise MqttSettingsError("ack_timeout_s", f"must be greater than 0, not {float(self.ack_timeout_s):g}")
        if not float(self.delivery_stall_s) > float(self.ack_timeout_s):
            raise MqttSettingsError("delivery_stall_s", f"must be greater than ack_timeout_s ({self.ack_timeout_s:g}), "
                                                        f"not {float(self.delivery_stall_s):g}")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None


def _in_range(key: str, value: int, lo: int, hi: int | None) -> None:
    # Worded like the TOML reader's own range errors, so a config file reads the same either way.
    v = int(value)
    if v < lo:
        raise MqttSettingsError(key, f"must be at least {lo}, not {v}")
    if hi is not None and v > hi:
        raise MqttSettingsError(key, f"must be at most {hi}, not {v}")
