"""``edge-asd watch``: print what monitoring daemons publish, one line per message.

    2026-11-25T10:00:00.000Z pump1 seq=12 score=1.23 thr=0.98 ANOMALOUS p_target=0.10 -21.3 dBFS

For wiring alerts into other tools, ``python -m edge_asd.cli.watch --json`` prints one
JSON object per message instead: ``{"topic": ..., "retained": bool, "payload": ...}``
with the payload parsed when it is JSON (the status payloads are plain strings).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edge_asd.cli.parser import CliParser, run_cli
from edge_asd.errors import UserError
from edge_asd.mqtt.payloads import format_ts
from edge_asd.mqtt.topics import check_level

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def _who(device: str, machine: str | None, show_device: bool) -> str:
    if machine is None:
        return device
    return f"{device}/{machine}" if show_device else machine


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def format_line(topic: str, payload: bytes, retained: bool, prefix: str, show_device: bool = True) -> str:
    """The human line for one message; unknown or malformed messages are shown raw."""
    levels = topic.split("/")
    rest = levels[len(prefix.split("/")):] if topic.startswith(prefix + "/") else []
    text = payload.decode("utf-8", errors="replace")
    now = format_ts(time.time())
    suffix = " (retained)" if retained else ""

    if len(rest) == 2 and rest[1] == "status":
        return f"{now} {rest[0]} status {text}{suffix}"
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return f"{now} {topic} {text}{suffix}"
    ts = data.get("ts", now)

    if len(rest) == 3 and rest[2] == "score":
        state = "ANOMALOUS" if data.get("anomalous") else "normal"
        return (
            f"{ts} {_who(rest[0], rest[1], show_device)} seq={data.get('seq', '?')} "
            f"score={_num(data.get('score'), '.2f')} thr={_num(data.get('threshold'), '.2f')} {state} "
            f"p_target={_num(data.get('p_target'), '.2f')} {_num(data.get('dbfs'), '.1f')} dBFS{suffix}"
        )
    if len(rest) == 3 and rest[2] == "alert":
        state = data.get("state")
        what = "ANOMALOUS" if state == "anomalous" else "cleared (normal)" if state == "normal" else str(state)
        return (
            f"{ts} {_who(rest[0], rest[1], show_device)} ALERT {what} score={_num(data.get('score'), '.2f')} "
            f"thr={_num(data.get('threshold'), '.2f')} seq={data.get('seq', '?')}{suffix}"
        )
    if len(rest) == 2 and rest[1] == "stats" and isinstance(data.get("machines"), dict):
        parts = [f"{ts} {rest[0]} stats uptime={_num(data.get('uptime_s'), '.0f')}s outbox={data.get('outbox_depth', '?')}"]
        for machine, m in data["machines"].items():
            if not isinstance(m, dict):
                continue
            latency = m.get("latency_ms") if isinstance(m.get("latency_ms"), dict) else {}
            parts.append(
                f"| {machine} clips={m.get('clips', '?')} overruns={m.get('overruns', '?')} "
                f"latency={_num(latency.get('mean'), '.0f')}ms source={m.get('source', '?')}"
            )
        return " ".join(parts) + suffix
    return f"{ts} {topic} {json.dumps(data, separators=(',', ':'))}{suffix}"


def json_line(topic: str, payload: bytes, retained: bool) -> str:
    text = payload.decode("utf-8", errors="replace")
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return json.dumps({"topic": topic, "retained": retained, "payload": value}, separators=(",", ":"))


def watch(
    host: str,
    port: int,
    prefix: str,
    device: str = "+",
    count: int = 0,
    *,
    json_lines: bool = False,
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Subscribe to ``<prefix>/<device>/#`` and print each message; stop after ``count`` (>0) or on Ctrl-C.

    A broker that cannot be reached at start, or refuses the login, is a
    :class:`UserError` (the watcher is interactive: say so at once). Once
    watching, a lost connection is retried until Ctrl-C.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        levels = [check_level(p) for p in prefix.split("/")]
        if device != "+":
            check_level(device)
    except ValueError as exc:
        raise UserError(f"watch: {exc}") from None
    topic_filter = "/".join([*levels, device, "#"])
    show_device = device == "+"

    # paho when watching only: every edge-asd command builds this parser, and `edge-asd score` should not carry
    # paho's 7 MB of resident memory and 33 ms of import
    import paho.mqtt.client as mqtt

    state: dict[str, Any] = {"seen": 0, "refused": None, "announced": False}
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        if not Path(tls_ca).is_file():
            raise UserError(f"{tls_ca}: no such CA file")
        client.tls_set(ca_certs=str(tls_ca))
    client.reconnect_delay_set(1, 10)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            state["refused"] = str(reason)
            c.disconnect()
            return
        c.subscribe(topic_filter, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _reasons: Any, _p: Any) -> None:
        if not state["announced"]:
            state["announced"] = True
            print(f"edge-asd watch: watching {topic_filter} on {host}:{port} (Ctrl-C to stop)", file=err, flush=True)

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if state["announced"] and not (count > 0 and state["seen"] >= count):
            print(f"edge-asd watch: connection lost ({reason}); reconnecting", file=err, flush=True)

    def on_message(c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if count > 0 and state["seen"] >= count:
            return
        payload = bytes(message.payload)
        if json_lines:
            line = json_line(message.topic, payload, bool(message.retain))
        else:
            line = format_line(message.topic, payload, bool(message.retain), prefix, show_device)
        print(line, file=out, flush=True)
        state["seen"] += 1
        if count > 0 and state["seen"] >= count:
            c.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    try:
        client.connect(host, int(port), keepalive=30)
    except OSError as exc:
        raise UserError(f"cannot connect to the MQTT broker at {host}:{port}: {exc.strerror or exc}") from None
    try:
        client.loop_forever(retry_first_connection=False)
    except KeyboardInterrupt:
        client.disconnect()
        return 0
    if state["refused"] is not None:
        raise UserError(f"the MQTT broker at {host}:{port} refused the connection: {state['refused']}")
    return 0


def read_password_file(path: Path) -> str:
    """The first line of a password file; a missing, unreadable or empty file is a :class:`UserError`."""
    try:
        return path.read_text().splitlines()[0]
    except OSError as exc:
        raise UserError(f"{path}: cannot read the password ({exc.strerror or exc})") from None
    except IndexError:
        raise UserError(f"{path}: password file is empty") from None


def add_watch_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``edge-asd watch`` (and of ``python -m edge_asd.cli.watch``)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--prefix", default="edge_asd")
    p.add_argument("--device", default="+", help="device_id to watch (default: all)")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    p.add_argument("--json", action="store_true", help="one JSON object per message: topic, retained, payload")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password")
    p.add_argument("--tls-ca", type=Path, help="CA certificate of the broker (enables TLS)")


def run_watch(args: argparse.Namespace) -> int:
    password = read_password_file(args.password_file) if args.password_file is not None else None
    return watch(
        args.host, args.port, args.prefix, device=args.device, count=args.count, json_lines=args.json,
        username=args.username, password=password, tls_ca=args.tls_ca,
    )


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m edge_asd.cli.watch", description="Print what edge-asd daemons publish.")
    add_watch_arguments(p)
    p.set_defaults(func=run_watch)
    return run_cli(p, argv)


if __name__ == "__main__":
    sys.exit(main())
