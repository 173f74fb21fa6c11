"""The daemon's configuration: TOML in, typed frozen dataclasses out, strictly checked.

Every mistake is a :class:`ConfigError` with one line that names the file, the
key path (``machines[1].source``) and the problem, so ``edge-asd run
--validate-config`` (and systemd's journal) tell the user exactly what to fix.
Unknown keys are rejected at every level with a did-you-mean suggestion, the
way Frigate rejects them: a misspelt ``raise_afer`` silently ignored would make
alerts behave differently from what the user believes they configured.

Relative paths are resolved against the directory of the configuration file,
so a config and the files it names can be moved together.

A leaf of the daemon: it knows no audio devices (``mic:`` devices are looked up
by :func:`edge_asd.daemon.loading.load_config`), and each section's defaults are
the ones its dataclass declares.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_asd.io.files import list_source_files
from edge_asd.errors import ConfigError
from edge_asd.ids import ID_RE
from edge_asd.scoring.alerts import CLEAR_AFTER, RAISE_AFTER
from edge_asd.mqtt.settings import MqttSettings, MqttSettingsError  # a leaf: no paho, no publisher
from edge_asd.mqtt.outbox import MIN_MAX_BYTES as MIN_OUTBOX_BYTES  # sqlite3 only
from edge_asd.runtime.backend_table import BACKENDS  # names only: onnxruntime is imported when a back end is made

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's Ubuntu 22.04): the same parser, from PyPI
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_MISSING = object()


@dataclass(frozen=True)
class StorageConfig:
    outbox: Path
    outbox_max_mb: float | None = None
    evidence: Path | None = None
    evidence_max_mb: float = 200.0
    engine_cache: Path | None = None


@dataclass(frozen=True)
class AlertConfig:
    raise_after: int = RAISE_AFTER
    clear_after: int = CLEAR_AFTER
    silence_dbfs: float = -80.0
    silence_clips: int = 3
    # A running source that delivers no clip for this many clip hops (at least 10 s) is "failing".
    stall_clips: int = 3
    # A source thread that makes no progress at all for this long is stuck (a hung driver call):
    # the daemon exits 1 so that systemd restarts it.
    source_hang_s: float = 120.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True)
class WebConfig:
    """The read-only page and JSON API (edge_asd/web); off unless ``enabled``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = field(default=None, repr=False)
    history: Path | None = None  # None: history.sqlite beside the outbox
    history_hours: float = 24.0
    threads: int = 8
    client_timeout_s: float = 10.0
    url: str | None = None  # the page's address as others reach it (a proxy, a DNS name); None: from listen

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def page_url(self) -> str:
        """Where a link to the page points (Home Assistant's "Visit device"): ``url``, else from ``listen``.

        On every interface (0.0.0.0, ::) the box's own name is how others reach it; on
        loopback the address is the one an ``ssh -L`` tunnel gives the user's browser.
        """
        if self.url:
            return self.url
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"


@dataclass(frozen=True)
class SourceSpec:
    """Where a machine's audio comes from: ``mic`` (device name/index) or ``file`` (path, folder or glob)."""

    kind: str
    target: str

    @property
    def device(self) -> int | str:
        """A mic's device: an int index when the target is all digits, else a name (substring)."""
        return int(self.target) if self.target.isdigit() else self.target

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class MachineConfig:
    id: str
    bundle: Path
    source: SourceSpec
    realtime: bool = True
    loop: bool = False
    section: str | None = None
    clip_seconds: float | None = None
    hop_seconds: float | None = None
    channel: int = 0
    samplerate: int | None = None
    save_evidence: bool = False
    backend: str = "auto"
    threads: int = 0
    threshold: float | None = None
    queue_clips: int = 4

    def source_key(self) -> tuple:
        """What the running source depends on: equal keys let a reload keep the source running."""
        return (
            self.source,
            self.realtime,
            self.loop,
            self.clip_seconds,
            self.hop_seconds,
            self.channel,
            self.samplerate,
            self.queue_clips,
        )


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    device_id: str
    storage: StorageConfig
    machines: tuple[MachineConfig, ...]
    mqtt: MqttSettings = MqttSettings()
    alerts: AlertConfig = AlertConfig()
    logging: LoggingConfig = LoggingConfig()
    stats_interval_s: float = 60.0
    shutdown_timeout_s: float = 10.0
    web: WebConfig = WebConfig()


# --- parsing helpers --------------------------------------------------------------


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


class _Table:
    """One TOML table being read: typed getters that remember which keys exist.

    ``finish()`` then rejects every key no getter asked for, suggesting the
    closest known one.
    """

    def __init__(self, file: Path, path: str, data: Any):
        self.file = file
        self.path = path
        if not isinstance(data, dict):
            raise self.error(None, f"must be a table, not {_type_name(data)}")
        self.data = data
        self.known: list[str] = []

    def key(self, key: str | None) -> str:
        if key is None:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.key(key)}: {problem}")

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.known.append(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "required key is missing")
        return default

    def get_str(self, key: str, default: Any = _MISSING) -> Any:
        v = self.raw(key, default)
        if v is default and key not in self.data:
            return v
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, not {_type_name(v)}")
        return v

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        v = self.raw(key, default)
        if key in self.data and not isinstance(v, bool):
            raise self.error(key, f"must be true or false, not {_type_name(v)}")
        return v

    def get_int(self, key: str, default: Any = _MISSING, lo: int | None = None, hi: int | None = None) -> Any:
        v = self.raw(key, default)
        if key not in self.data:
            return v
        # bool is an int subclass in Python; `port = true` is a mistake, not 1.
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be an integer, not {_type_name(v)}")
        self._range(key, v, lo, hi)
        return v

    def get_float(self, key: str, default: Any = _MISSING, lo: float | None = None, hi: float | None = None,
              positive: bool = False) -> Any:
        v = self.raw(key, default)
        if key not in self.data:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"must be a number, not {_type_name(v)}")
        v = float(v)
        if not math.isfinite(v):
            raise self.error(key, "must be a finite number")
        if positive and v <= 0:
            raise self.error(key, f"must be greater than 0, not {v:g}")
        self._range(key, v, lo, hi)
        return v

    def _range(self, key: str, v: float, lo: float | None, hi: float | None) -> None:
        if lo is not None and v < lo:
            raise self.error(key, f"must be at least {lo:g}, not {v:g}")
        if hi is not None and v > hi:
            raise self.error(key, f"must be at most {hi:g}, not {v:g}")

    def get_path(self, key: str, default: Any = _MISSING) -> Any:
        v = self.get_str(key, default)
        if key not in self.data:
            return v
        if not v.strip():
            raise self.error(key, "must not be empty")
        return resolve_path(self.file, v)

    def table(self, key: str) -> "_Table":
        self.known.append(key)
        return _Table(self.file, self.key(key), self.data.get(key, {}))

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(set(self.known)))})"
                raise self.error(key, f"unknown key{hint}")


def resolve_path(config_file: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (config_file.parent / p)


def _check_id(t: _Table, key: str, value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise t.error(key, f"{value!r} must contain only letters, digits, '-' and '_' (it becomes an MQTT topic level)")
    return value


def _existing_file(t: _Table, key: str, p: Path | None, what: str) -> Path | None:
    if p is None:
        return None
    if not p.is_file():
        raise t.error(key, f"{what} {p} does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise t.error(key, f"{what} {p} is not readable by this user")
    return p


def _read_secret(t: _Table, key: str, p: Path) -> str:
    _existing_file(t, key, p, "password file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise t.error(key, f"cannot read password file {p} ({exc})") from None
    # Files made with `echo secret > file` end in a newline that is not part of the password.
    secret = text.rstrip("\r\n")
    if not secret:
        raise t.error(key, f"password file {p} is empty")
    return secret


# --- sections ---------------------------------------------------------------------


def _mqtt(t: _Table, env: dict[str, str], require_credentials: bool = True) -> MqttSettings:
    # Types, files and secrets are read here; every check of the values is MqttSettings' own.
    d = MqttSettings()
    values = dict(
        host=t.get_str("host", d.host),
        port=t.get_int("port", d.port),
        prefix=t.get_str("prefix", d.prefix),
        client_id=t.get_str("client_id", d.client_id),
        username=t.get_str("username", d.username),
    )
    values["password"], password_key = _secret(
        t, env, require_credentials, "password", "password_file", "password_credential"
    )
    values.update(
        tls_ca=_existing_file(t, "tls_ca", t.get_path("tls_ca", d.tls_ca), "CA certificate"),
        tls_cert=_existing_file(t, "tls_cert", t.get_path("tls_cert", d.tls_cert), "client certificate"),
        tls_key=_existing_file(t, "tls_key", t.get_path("tls_key", d.tls_key), "client key"),
        tls_insecure=t.get_bool("tls_insecure", d.tls_insecure),
        tls=t.get_bool("tls", d.tls),
        keepalive=t.get_int("keepalive", d.keepalive),
        reconnect_min_s=t.get_float("reconnect_min_s", d.reconnect_min_s),
        reconnect_max_s=t.get_float("reconnect_max_s", d.reconnect_max_s),
        ack_timeout_s=t.get_float("ack_timeout_s", d.ack_timeout_s),
        delivery_stall_s=t.get_float("delivery_stall_s", d.delivery_stall_s),
        ha_discovery=t.get_bool("ha_discovery", d.ha_discovery),
        ha_prefix=t.get_str("ha_prefix", d.ha_prefix),
    )
    t.finish()
    try:
        return MqttSettings(**values)
    except MqttSettingsError as exc:
        # The password may have come from password_file or password_credential: name the key the file has.
        key = password_key if exc.key == "password" and password_key else exc.key
        raise t.error(key, exc.problem) from None


def _storage(t: _Table) -> StorageConfig:
    outbox = t.get_path("outbox")
    outbox_max_mb = t.get_float("outbox_max_mb", None, positive=True)
    if outbox_max_mb is not None and outbox_max_mb * 1048576 < MIN_OUTBOX_BYTES:
        raise t.error("outbox_max_mb", f"must be at least {MIN_OUTBOX_BYTES / 1048576:g} (the database, its "
                                       f"write-ahead log and index all count), not {outbox_max_mb:g}")
    evidence = t.get_path("evidence", None)
    max_mb = t.get_float("evidence_max_mb", StorageConfig.evidence_max_mb, positive=True)
    engine_cache = t.get_path("engine_cache", None)
    t.finish()
    if outbox.is_dir():
        raise t.error("outbox", f"{outbox} is a directory; name the database file (e.g. {outbox / 'outbox.sqlite'})")
    return StorageConfig(outbox=outbox, outbox_max_mb=outbox_max_mb, evidence=evidence, evidence_max_mb=max_mb,
                         engine_cache=engine_cache)


def _alerts(t: _Table) -> AlertConfig:
    d = AlertConfig()
    a = AlertConfig(
        raise_after=t.get_int("raise_after", d.raise_after, lo=1),
        clear_after=t.get_int("clear_after", d.clear_after, lo=1),
        silence_dbfs=t.get_float("silence_dbfs", d.silence_dbfs, hi=0.0),
        silence_clips=t.get_int("silence_clips", d.silence_clips, lo=1),
        stall_clips=t.get_int("stall_clips", d.stall_clips, lo=1),
        source_hang_s=t.get_float("source_hang_s", d.source_hang_s, lo=1.0),
    )
    t.finish()
    return a


def _logging(t: _Table) -> LoggingConfig:
    d = LoggingConfig()
    level = t.get_str("level", d.level).upper()
    if level not in LOG_LEVELS:
        raise t.error("level", f"must be one of {', '.join(LOG_LEVELS)}")
    j = t.get_bool("json", d.json)
    t.finish()
    return LoggingConfig(level=level, json=j)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(t: _Table, env: dict[str, str], require_credentials: bool, inline: str, file: str,
            credential: str) -> tuple[str | None, str | None]:
    """A secret given inline, in a file or as a systemd credential (at most one); returns (secret, key used)."""
    value = t.get_str(inline, None)
    path = t.get_path(file, None)
    cred = t.get_str(credential, None)
    given = [k for k, v in ((inline, value), (file, path), (credential, cred)) if v is not None]
    if len(given) > 1:
        raise t.error(given[1], f"give only one of {inline}, {file} and {credential} (also set: {given[0]})")
    if path is not None:
        return _read_secret(t, file, path), file
    if cred is None:
        return value, given[0] if given else None
    # systemd's LoadCredential= puts the secret in $CREDENTIALS_DIRECTORY,
    # readable by the service only and never on the command line or in the unit.
    if "/" in cred or not cred.strip():
        raise t.error(credential, f"{cred!r} must be a credential name, not a path")
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        return _read_secret(t, credential, Path(cred_dir) / cred), credential
    if require_credentials:
        raise t.error(credential, f"$CREDENTIALS_DIRECTORY is not set (run under systemd with "
                                  f"LoadCredential={cred}:FILE, or use {file})")
    # --validate-config by hand: only systemd can hand the credential over.
    return "", credential


def _web(t: _Table, env: dict[str, str], storage: StorageConfig, require_credentials: bool) -> WebConfig:
    d = WebConfig()
    enabled = t.get_bool("enabled", d.enabled)
    listen = t.get_str("listen", f"{d.host}:{d.port}")
    token, token_key = _secret(t, env, require_credentials, "token", "token_file", "token_credential")
    history = t.get_path("history", None)
    hours = t.get_float("history_hours", d.history_hours, positive=True, hi=24.0 * 366)
    threads = t.get_int("threads", d.threads, lo=2, hi=64)
    timeout = t.get_float("client_timeout_s", d.client_timeout_s, positive=True, hi=600.0)
    url = t.get_str("url", d.url)
    t.finish()
    if url is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise t.error("url", f"{url!r} must be an http:// or https:// address, e.g. \"http://line1-edge.plant.lan:8080/\"")
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:8080
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise t.error("listen", f"{listen!r} must be HOST:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:8080\"")
    if token is not None and token_key != "token_credential" and len(token) < 8:
        raise t.error(token_key, "must be at least 8 characters")
    if enabled and not is_loopback(host) and token is None:
        # Anyone on the plant network could otherwise listen to the factory floor.
        raise t.error("listen", f"{host} is reachable from other machines: set token_credential "
                                "(or token_file) so that the page asks for it, or listen on 127.0.0.1")
    if history is None:
        history = storage.outbox.parent / "history.sqlite"
    elif history == storage.outbox:
        raise t.error("history", "must not be the outbox file")
    return WebConfig(enabled=enabled, host=host, port=int(port_text), token=token, history=history,
                     history_hours=hours, threads=threads, client_timeout_s=timeout, url=url)


def _source(t: _Table, value: str) -> SourceSpec:
    kind, sep, target = value.partition(":")
    if not sep or kind not in ("mic", "file") or not target.strip():
        raise t.error("source", f"{value!r} must be 'mic:default', 'mic:<device name or index>' or 'file:<path, folder or glob>'")
    if kind == "file":
        target = str(resolve_path(t.file, target))
        if not list_source_files(target):
            what = "folder holds no .wav or .flac files" if Path(target).is_dir() else "matches no audio file"
            raise t.error("source", f"{target}: {what}")
    return SourceSpec(kind, target)


def _machine(t: _Table, storage: StorageConfig) -> MachineConfig:
    mid = _check_id(t, "id", t.get_str("id"))
    bundle = t.get_path("bundle")
    source = _source(t, t.get_str("source"))
    d = MachineConfig  # the class: its fields' defaults (it has required fields, so no default instance)
    realtime = t.get_bool("realtime", d.realtime)
    loop = t.get_bool("loop", d.loop)
    section = t.get_str("section", d.section)
    clip_seconds = t.get_float("clip_seconds", d.clip_seconds, positive=True)
    hop_seconds = t.get_float("hop_seconds", d.hop_seconds, positive=True)
    channel = t.get_int("channel", d.channel, lo=0)
    samplerate = t.get_int("samplerate", d.samplerate, lo=1000, hi=768000)
    # None, not the field's default: unset follows storage.evidence (below).
    save_evidence = t.get_bool("save_evidence", None)
    backend = t.get_str("backend", d.backend)
    threads = t.get_int("threads", d.threads, lo=0)
    threshold = t.get_float("threshold", d.threshold)
    queue_clips = t.get_int("queue_clips", d.queue_clips, lo=1, hi=1000)
    t.finish()
    if not bundle.is_file():
        raise t.error("bundle", f"bundle file {bundle} does not exist")
    if backend not in BACKENDS:
        raise t.error("backend", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    if source.kind == "mic":
        # These keys are documented for file replay; the CONTRACT's example sets
        # their defaults on a mic source, so only a value that means something
        # else is refused.
        if not realtime:
            raise t.error("realtime", "a microphone is always real time; realtime = false applies to file sources only")
        if loop:
            raise t.error("loop", "loop applies to file sources only")
    elif samplerate is not None:
        raise t.error("samplerate", "applies to mic sources only (files are resampled from their own rate)")
    if save_evidence and storage.evidence is None:
        raise t.error("save_evidence", "needs an evidence folder: set storage.evidence")
    if save_evidence is None:
        save_evidence = storage.evidence is not None
    return MachineConfig(
        id=mid, bundle=bundle, source=source, realtime=realtime, loop=loop, section=section,
        clip_seconds=clip_seconds, hop_seconds=hop_seconds, channel=channel, samplerate=samplerate,
        save_evidence=save_evidence, backend=backend, threads=threads, threshold=threshold, queue_clips=queue_clips,
    )


def read_config(
    path: str | Path,
    env: dict[str, str] | None = None,
    require_credentials: bool = True,
) -> DaemonConfig:
    """Read and validate a daemon configuration; any problem is one :class:`ConfigError`.

    ``mic:`` devices are not looked up here (this module knows no audio devices):
    :func:`edge_asd.daemon.loading.load_config` also checks them.
    ``require_credentials``: a ``password_credential`` needs ``$CREDENTIALS_DIRECTORY``
    (systemd's LoadCredential=); without it, as when ``--validate-config`` is run
    from a shell, the credential is left unchecked.
    """
    path = Path(path)
    env = dict(os.environ if env is None else env)
    if tomllib is None:
        raise ConfigError(f"{path}: reading TOML on Python 3.10 needs the 'tomli' package (pip install tomli)")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None

    top = _Table(path, "", data)
    device_id = _check_id(top, "device_id", top.get_str("device_id"))
    stats_interval = top.get_float("stats_interval_s", DaemonConfig.stats_interval_s, positive=True)
    shutdown_timeout = top.get_float("shutdown_timeout_s", DaemonConfig.shutdown_timeout_s, lo=0.0)
    mqtt = _mqtt(top.table("mqtt"), env, require_credentials)
    if "storage" not in data:
        raise top.error("storage", "required table is missing (it names the outbox file)")
    storage = _storage(top.table("storage"))
    alerts = _alerts(top.table("alerts"))
    logging_ = _logging(top.table("logging"))
    web = _web(top.table("web"), env, storage, require_credentials)
    top.known.append("machines")
    raw_machines = data.get("machines")
    if raw_machines is None:
        raise top.error("machines", "at least one [[machines]] table is required")
    if not isinstance(raw_machines, list) or not all(isinstance(m, dict) for m in raw_machines) or not raw_machines:
        raise top.error("machines", "must be one or more [[machines]] tables")
    top.finish()
    machines = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_machines):
        m = _machine(_Table(path, f"machines[{i}]", raw), storage)
        if m.id in seen:
            raise ConfigError(f"{path}: machines[{i}].id: duplicate machine id {m.id!r} (also machines[{seen[m.id]}])")
        seen[m.id] = i
        machines.append(m)
    return DaemonConfig(path=path, device_id=device_id, storage=storage, machines=tuple(machines), mqtt=mqtt,
                        alerts=alerts, logging=logging_, stats_interval_s=stats_interval,
                        shutdown_timeout_s=shutdown_timeout, web=web)
