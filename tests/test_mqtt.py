"""MQTT: payload contract, topics, discovery, and the publisher against a real Mosquitto."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge_asd.errors import ConfigError
from edge_asd.mqtt.discovery import discovery_messages
from edge_asd.mqtt.payloads import MachineStats, alert_payload, encode, format_ts, score_payload, stats_payload
from edge_asd.mqtt.publisher import Publisher
from edge_asd.mqtt.settings import MqttSettings
from edge_asd.mqtt.topics import build_topic
from edge_asd.mqtt.outbox import Outbox, OutboxFullError
from mqtt_broker import Broker

DEVICE = "line1-edge"
PREFIX = "edge_asd"
SCORE_TOPIC = f"{PREFIX}/{DEVICE}/pump1/score"
STATUS_TOPIC = f"{PREFIX}/{DEVICE}/status"
# Only a bound on how long a failing test hangs; nothing here is timed.
WAIT = 30.0


# --- payload contract (CONTRACT.md, "MQTT") ----------------------------------------


def test_score_payload_contract_is_frozen():
    p = score_payload(1795000000.25, 12, 1.23, 0.98, True, 0.1, -21.3, "pump-2026-11-20")
    expected_types = {
        "v": int, "ts": str, "seq": int, "score": float, "threshold": float,
        "anomalous": bool, "p_target": float, "dbfs": float, "model": str,
    }
    assert set(p) == set(expected_types)
    for key, typ in expected_types.items():
        assert type(p[key]) is typ, key
    assert p["v"] == 1 and p["seq"] == 12 and p["anomalous"] is True and p["model"] == "pump-2026-11-20"
    assert p["ts"] == "2026-11-18T11:06:40.250Z"
    assert datetime.fromisoformat(p["ts"].replace("Z", "+00:00")) == datetime.fromtimestamp(
        1795000000.25, tz=timezone.utc
    )
    # numpy scalars and the like come out as plain JSON numbers and booleans.
    import numpy as np

    q = score_payload(1795000000, np.int64(3), np.float32(2.5), np.float64(1.0), np.bool_(False), np.float32(0.5), -200.0, "m")
    assert json.loads(encode(q)) == {**q}
    assert type(q["anomalous"]) is bool and type(q["score"]) is float and type(q["seq"]) is int


def test_score_and_alert_payloads_grow_ratio_and_bands_from_a_bundle_with_band_statistics():
    """Issue "Why is it anomalous": new keys, nothing renamed, ``v`` still 1; an older bundle's messages lack them."""
    import numpy as np

    bands = [{"lo_hz": np.float64(2833.7), "hi_hz": 3107.8, "z": np.float32(15.25)}, {"lo_hz": 330.2, "hi_hz": 369.4, "z": -5.1}]
    base = score_payload(1795000000, 3, 2.5, 1.0, True, 0.1, -20.0, "m")
    p = score_payload(1795000000, 3, 2.5, 1.0, True, 0.1, -20.0, "m", np.float32(1.75), bands)
    assert p == {**base, "ratio": 1.75, "bands": [{"lo_hz": 2833.7, "hi_hz": 3107.8, "z": 15.25},
                                                  {"lo_hz": 330.2, "hi_hz": 369.4, "z": -5.1}]}
    assert p["v"] == 1 and type(p["ratio"]) is float and all(type(b[k]) is float for b in p["bands"] for k in b)
    assert json.loads(encode(p)) == p
    # a bundle with band statistics whose clip deviates nowhere: an empty list, not a missing key
    assert score_payload(1795000000, 3, 0.5, 1.0, False, 0.1, -20.0, "m", 0.2, [])["bands"] == []
    a = alert_payload(1795000000, "anomalous", "pump1", 2.5, 1.0, 41, "m", 1.75, bands[:1])
    assert a == {**alert_payload(1795000000, "anomalous", "pump1", 2.5, 1.0, 41, "m"), "ratio": 1.75,
                 "bands": [{"lo_hz": 2833.7, "hi_hz": 3107.8, "z": 15.25}]}
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="ratio"):
            score_payload(0, 1, 1.0, 1.0, False, 0.0, -20.0, "m", bad, [])
        with pytest.raises(ValueError, match="z"):
            score_payload(0, 1, 1.0, 1.0, False, 0.0, -20.0, "m", 0.5, [{"lo_hz": 1.0, "hi_hz": 2.0, "z": bad}])


def test_payloads_refuse_values_json_cannot_carry():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="score"):
            score_payload(0, 1, bad, 1.0, False, 0.0, -20.0, "m")
    with pytest.raises(ValueError):
        encode({"x": math.nan})
    with pytest.raises(ValueError, match="naive"):
        format_ts(datetime(2026, 11, 25, 10, 0, 0))
    assert format_ts(datetime(2026, 11, 25, 11, 0, 0, tzinfo=timezone.utc).astimezone()) == "2026-11-25T11:00:00.000Z"


def test_alert_and_stats_payloads():
    a = alert_payload(1795000000, "anomalous", "pump1", 2.5, 1.0, 41, "bundle-1")
    assert a == {
        "v": 1, "ts": "2026-11-18T11:06:40.000Z", "state": "anomalous", "machine": "pump1",
        "score": 2.5, "threshold": 1.0, "seq": 41, "model": "bundle-1",
    }
    with pytest.raises(ValueError):
        alert_payload(0, "broken", "pump1", 1.0, 1.0, 1, "m")

    s = stats_payload(
        1795000000,
        uptime_s=3600.0,
        outbox_depth=3,
        machines={
            "pump1": MachineStats(clips=360, overruns=1, latency_ms_mean=130.5, latency_ms_max=210.0, source="ok", dbfs=-30.1),
            "fan": MachineStats(clips=0, overruns=0, latency_ms_mean=None, latency_ms_max=None, source="silent",
                                last_error="no signal for 60 s"),
        },
        mqtt_counters={"published": 5, "acked": 5},
    )
    assert s["v"] == 1 and s["outbox_depth"] == 3 and s["mqtt"] == {"published": 5, "acked": 5}
    assert s["machines"]["pump1"] == {
        "clips": 360, "overruns": 1, "latency_ms": {"mean": 130.5, "max": 210.0},
        "source": "ok", "dbfs": -30.1, "last_error": None,
    }
    assert s["machines"]["fan"]["source"] == "silent" and s["machines"]["fan"]["latency_ms"]["mean"] is None
    json.loads(encode(s))
    with pytest.raises(ValueError):
        stats_payload(0, uptime_s=1, outbox_depth=0, machines={"m": MachineStats(0, 0, None, None, "weird")})


# --- topics and settings ---------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a/b", "+", "pump#", "x+y", "nul\x00", "#"])
def test_topic_levels_are_checked(tmp_path, bad):
    with Outbox(tmp_path / "o.sqlite") as box:
        pub = Publisher(MqttSettings(), DEVICE, box, ["pump1"])
        assert pub.topic("pump1", "score") == SCORE_TOPIC
        with pytest.raises(ValueError):
            pub.topic(bad, "score")
        with pytest.raises(ValueError):
            pub.enqueue(bad, "alert", {"state": "normal"})
        with pytest.raises(ValueError):
            pub.enqueue_score(bad, lambda seq: {"seq": seq})
        assert box.depth() == 0 and box.last_seq(bad) == 0
        with pytest.raises(ValueError):
            Publisher(MqttSettings(), bad, box)
        with pytest.raises(ValueError):
            Publisher(MqttSettings(), DEVICE, box, ["pump1", bad])
    with pytest.raises(ValueError):
        build_topic("edge_asd", bad)


def test_settings_are_validated():
    assert build_topic("plant/edge_asd", "d", "status") == "plant/edge_asd/d/status"
    for bad in (
        dict(prefix="edge/#"), dict(prefix=""), dict(port=0), dict(password="x"),
        dict(tls_cert=Path("c.pem")), dict(reconnect_min_s=5, reconnect_max_s=1), dict(max_inflight=0),
    ):
        with pytest.raises(ConfigError):
            MqttSettings(**bad)


# --- the publisher against a real broker ----------------------------------------------


@pytest.fixture
def publishers():
    """Makes publishers and stops whatever a test left running."""
    made: list[Publisher] = []

    def make(broker_or_settings, outbox: Outbox, machines=("pump1",), device=DEVICE, **overrides) -> Publisher:
        settings = (
            broker_or_settings.mqtt_settings(**overrides)
            if isinstance(broker_or_settings, Broker)
            else broker_or_settings
        )
        pub = Publisher(settings, device, outbox, list(machines))
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.stop()


def _score_maker(i: int):
    return lambda seq: score_payload(1795000000 + 10 * seq, seq, 0.1 * i, 1.0, i % 7 == 0, 0.2, -30.0, "bundle-1")


def _enqueue_scores(pub: Publisher, n: int, machine: str = "pump1") -> list[int]:
    return [pub.enqueue_score(machine, _score_maker(i)) for i in range(n)]


def _wait_for(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _seqs(sub, topic: str = SCORE_TOPIC) -> list[int]:
    return [m.json()["seq"] for m in sub.on(topic)]


def _dedupe(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]


def test_delivers_every_score_in_order(tmp_path, broker, publishers):
    sub = broker.subscriber(f"{PREFIX}/#")
    with Outbox(tmp_path / "o.sqlite") as box:
        pub = publishers(broker, box, machines=("pump1", "fan"), max_inflight=8)
        pub.start()
        assert _enqueue_scores(pub, 120) == list(range(1, 121))
        pub.enqueue("pump1", "alert", alert_payload(1795000000, "anomalous", "pump1", 3.0, 1.0, 120, "bundle-1"))
        assert _enqueue_scores(pub, 5, machine="fan") == [1, 2, 3, 4, 5]
        assert pub.flush(WAIT)
        assert box.depth() == 0

        sub.wait_for_topic(SCORE_TOPIC, 120)
        sub.wait_for_topic(f"{PREFIX}/{DEVICE}/fan/score", 5)
        alert = sub.wait_for_topic(f"{PREFIX}/{DEVICE}/pump1/alert")[0].json()
        assert alert["state"] == "anomalous" and alert["seq"] == 120
        # No disconnect happened, so no duplicates: exactly 1..120 in order.
        assert _seqs(sub) == list(range(1, 121))
        scores = [m.json() for m in sub.on(SCORE_TOPIC)]
        assert [s["score"] for s in scores] == [pytest.approx(0.1 * i) for i in range(120)]
        assert all(m.qos == 1 and not m.retain for m in sub.on(SCORE_TOPIC))
        # The alert was published after the 120th score: outbox order is delivery order.
        topics = [m.topic for m in sub.messages if m.topic.startswith(f"{PREFIX}/{DEVICE}/pump1/")]
        assert topics.index(f"{PREFIX}/{DEVICE}/pump1/alert") == 120

        assert broker.retained(STATUS_TOPIC) == b"online"
        c = pub.counters
        assert c["connected"] and c["acked"] == 126 and c["published"] >= 126 and c["last_error"] is None

        pub.publish_stats(stats_payload(1795000000, uptime_s=1.0, outbox_depth=0, machines={}))
        assert sub.wait_for_topic(f"{PREFIX}/{DEVICE}/stats")[0].json()["outbox_depth"] == 0

        pub.stop(clean=True)
        assert broker.retained(STATUS_TOPIC) == b"stopped"
    sub.close()


def test_broker_down_at_start_then_up(tmp_path, brokers, publishers):
    broker = brokers(start=False)
    # A persistent session, registered while the broker was briefly up, queues what
    # arrives while the test's subscriber is still reconnecting.
    broker.start()
    sub = broker.subscriber(f"{PREFIX}/#", persistent=True)
    broker.stop()
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box)
            pub.start()  # must return at once and keep trying
            assert _enqueue_scores(pub, 30) == list(range(1, 31))
            _wait_for(lambda: pub.counters["connect_failures"] >= 2, "repeated connection attempts")
            c = pub.counters
            assert not c["connected"] and c["acked"] == 0 and "refused" in c["last_error"].lower()
            assert box.depth() == 30

            broker.start()
            assert pub.flush(WAIT)
            sub.wait_for_topic(SCORE_TOPIC, 30)
            assert _dedupe(_seqs(sub)) == list(range(1, 31))
            assert pub.connected
    finally:
        sub.close()


def test_broker_restart_mid_stream_loses_nothing(tmp_path, brokers, publishers):
    broker = brokers()
    sub = broker.subscriber(f"{PREFIX}/#", persistent=True)
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box, max_inflight=10)
            pub.start()
            _wait_for(lambda: pub.connected, "first connection")
            _enqueue_scores(pub, 40)
            broker.stop()  # some of these are typically still in flight here
            _wait_for(lambda: not pub.connected, "the publisher to notice the broker is gone")
            _enqueue_scores(pub, 25)  # queued on disk while the broker is away
            assert box.depth() >= 25
            broker.start()
            _enqueue_scores(pub, 15)
            assert pub.flush(WAIT)
            sub.wait_for(lambda _: _dedupe(_seqs(sub)) == list(range(1, 81)), WAIT, "seqs 1..80")
            # QoS 1: re-sent messages may arrive twice, but never out of order.
            assert _dedupe(_seqs(sub)) == list(range(1, 81))
            assert pub.counters["reconnects"] >= 1
            assert broker.retained(STATUS_TOPIC) == b"online"
    finally:
        sub.close()


VICTIM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge_asd.mqtt.outbox import Outbox
    from edge_asd.mqtt.payloads import score_payload
    from edge_asd.mqtt.publisher import Publisher
    from edge_asd.mqtt.settings import MqttSettings
    port, outbox, scores, handshake = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    pub = Publisher(MqttSettings(port=port, reconnect_min_s=0.1, reconnect_max_s=0.5), "line1-edge",
                    Outbox(outbox), ["pump1"])
    pub.start()
    if handshake:
        while not pub.connected:
            time.sleep(0.01)
        print("connected", flush=True)
        sys.stdin.readline()
    for _ in range(scores):
        pub.enqueue_score("pump1", lambda seq: score_payload(time.time(), seq, 1.0, 2.0, False, 0.1, -20.0, "b"))
    if handshake:
        while pub.counters["published"] < scores:   # all handed to the network
            time.sleep(0.01)
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


def _start_victim(port: int, outbox: Path, scores: int, handshake: bool = False) -> subprocess.Popen:
    """A publisher in its own process, to be killed with SIGKILL like a crashed daemon."""
    proc = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(port), str(outbox), str(scores), "1" if handshake else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    expected = "connected" if handshake else "ready"
    line = proc.stdout.readline()
    if line.strip() != expected:
        proc.kill()
        raise AssertionError(f"publisher process failed: {line}{proc.stderr.read()}")
    return proc


def _proceed(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"publisher process failed: {line}{proc.stderr.read()}")


def test_last_will_offline_when_the_process_is_killed(tmp_path, broker):
    sub = broker.subscriber(STATUS_TOPIC)
    proc = _start_victim(broker.port, tmp_path / "o.sqlite", 0)
    try:
        sub.wait_for_payload(STATUS_TOPIC, b"online", WAIT)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
        sub.wait_for_payload(STATUS_TOPIC, b"offline", WAIT)
        assert broker.retained(STATUS_TOPIC) == b"offline"
    finally:
        proc.kill()
        proc.wait()
        sub.close()


def test_scores_of_a_killed_daemon_are_delivered_after_restart(tmp_path, brokers, publishers):
    """CONTRACT: no score is lost while the broker is unreachable *and* the daemon restarts."""
    broker = brokers(start=False)  # the first daemon never reaches it
    outbox = tmp_path / "state" / "outbox.sqlite"
    proc = _start_victim(broker.port, outbox, 12)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT)
    broker.start()
    sub = broker.subscriber(f"{PREFIX}/#")
    try:
        with Outbox(outbox) as box:
            assert box.depth() == 12
            pub = publishers(broker, box)
            pub.start()
            assert _enqueue_scores(pub, 3) == [13, 14, 15]   # seq continues across the restart
            assert pub.flush(WAIT)
            sub.wait_for_topic(SCORE_TOPIC, 15)
            assert _seqs(sub) == list(range(1, 16))
    finally:
        sub.close()


def test_only_a_puback_deletes_a_message(tmp_path, broker, publishers):
    """Messages sent but not acknowledged when the daemon dies are still on disk."""
    outbox = tmp_path / "o.sqlite"
    sub = broker.subscriber(f"{PREFIX}/#")
    proc = _start_victim(broker.port, outbox, 8, handshake=True)
    try:
        broker.pause()          # the connection stays up, but no PUBACK can come
        _proceed(proc)          # 8 scores written to the socket
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
    finally:
        proc.kill()
        broker.resume()
    try:
        with Outbox(outbox) as box:
            assert box.depth() == 8
            pub = publishers(broker, box)
            pub.start()
            assert pub.flush(WAIT)
            sub.wait_for(lambda _: _dedupe(_seqs(sub)) == list(range(1, 9)), WAIT, "seqs 1..8")
    finally:
        sub.close()


def test_unclean_stop_says_offline(tmp_path, broker, publishers):
    with Outbox(tmp_path / "o.sqlite") as box:
        pub = publishers(broker, box)
        pub.start()
        _wait_for(lambda: pub.connected, "connection")
        pub.stop(clean=False)
        assert broker.retained(STATUS_TOPIC) == b"offline"
        assert not pub.connected


def test_password_auth(tmp_path, brokers, publishers):
    broker = brokers(auth=("edge", "s3cret pw"))
    sub = broker.subscriber(f"{PREFIX}/#")
    try:
        with Outbox(tmp_path / "good.sqlite") as good, Outbox(tmp_path / "bad.sqlite") as bad:
            ok = publishers(broker, good)
            wrong = publishers(broker, bad, device="other-box", password="wrong")
            ok.start()
            wrong.start()
            _enqueue_scores(ok, 5)
            _enqueue_scores(wrong, 5)
            assert ok.flush(WAIT)
            sub.wait_for_topic(SCORE_TOPIC, 5)
            assert _seqs(sub) == [1, 2, 3, 4, 5]

            # A refused login is reported and retried with backoff, never fatal.
            _wait_for(lambda: wrong.counters["connect_failures"] >= 3, "repeated refused logins")
            c = wrong.counters
            assert not c["connected"] and c["acked"] == 0
            assert "refused" in c["last_error"] and (
                "not authorized" in c["last_error"].lower() or "password" in c["last_error"].lower()
            )
            assert bad.depth() == 5  # still waiting on disk
            assert not sub.on(f"{PREFIX}/other-box/pump1/score")
    finally:
        sub.close()


def test_tls_with_a_generated_ca(tmp_path, brokers, publishers):
    broker = brokers(tls=True)
    sub = broker.subscriber(f"{PREFIX}/#")
    try:
        with Outbox(tmp_path / "o.sqlite") as box, Outbox(tmp_path / "wrong.sqlite") as wrong_box:
            pub = publishers(broker, box)
            pub.start()
            _enqueue_scores(pub, 4)
            assert pub.flush(WAIT)
            sub.wait_for_topic(SCORE_TOPIC, 4)

            from mqtt_broker import make_ca

            other_ca, _ = make_ca(tmp_path / "other-ca", "impostor-ca")
            wrong = publishers(broker, wrong_box, device="other-box", tls_ca=other_ca)
            wrong.start()
            _enqueue_scores(wrong, 2)
            _wait_for(lambda: wrong.counters["connect_failures"] >= 2, "rejected TLS handshakes")
            c = wrong.counters
            assert not c["connected"] and c["acked"] == 0
            assert "TLS" in c["last_error"] and "certificate" in c["last_error"]
            assert wrong_box.depth() == 2
    finally:
        sub.close()


def test_tls_client_certificate(tmp_path, brokers, publishers):
    broker = brokers(require_client_cert=True)
    sub = broker.subscriber(f"{PREFIX}/#")
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box)
            assert pub.settings.tls_cert is not None
            pub.start()
            _enqueue_scores(pub, 3)
            assert pub.flush(WAIT)
            sub.wait_for_topic(SCORE_TOPIC, 3)
            assert _seqs(sub) == [1, 2, 3]
    finally:
        sub.close()


def test_missing_tls_file_is_a_config_error(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        with pytest.raises(ConfigError, match="missing-ca.pem"):
            Publisher(MqttSettings(tls_ca=tmp_path / "missing-ca.pem"), DEVICE, box)


def test_home_assistant_discovery_is_retained(tmp_path, broker, publishers):
    expected = dict(discovery_messages(DEVICE, ["pump1", "fan"], PREFIX))

    def configs(msgs) -> int:
        return sum(m.topic in expected for m in msgs)

    live = broker.subscriber("homeassistant/#")
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box, machines=("pump1", "fan"), ha_discovery=True)
            pub.start()
            live.wait_for(lambda msgs: configs(msgs) >= len(expected), WAIT, "discovery configs")
            # A subscriber arriving later, as Home Assistant would, gets them as retained messages.
            late = broker.subscriber("homeassistant/#")
            try:
                late.wait_for(lambda msgs: configs(msgs) >= len(expected), WAIT, "retained discovery configs")
                assert len(late.messages) == len(expected)
                for m in late.messages:
                    assert m.retain
                    assert m.json() == expected[m.topic]
            finally:
                late.close()
            # Home Assistant restarting (its birth message) makes the publisher announce again.
            assert configs(live.messages) == len(expected)
            broker.publish("homeassistant/status", b"online")
            live.wait_for(lambda msgs: configs(msgs) >= 2 * len(expected), WAIT, "re-announced configs")
    finally:
        live.close()


def test_full_outbox_reaches_the_caller(tmp_path, publishers):
    with Outbox(tmp_path / "o.sqlite", max_bytes=256 * 1024) as box:
        pub = publishers(MqttSettings(port=1, reconnect_min_s=0.1, reconnect_max_s=0.2), box)
        with pytest.raises(OutboxFullError):
            for i in range(10_000):
                pub.enqueue_score("pump1", lambda seq: {"seq": seq, "pad": "x" * 1000})
        assert box.depth() == box.last_seq("pump1") > 0


# --- edge-asd watch -----------------------------------------------------------------


def _edge_asd() -> str:
    exe = Path(sys.executable).with_name("edge-asd")
    if not exe.exists():
        pytest.skip(f"the edge-asd entry point is not installed next to {sys.executable}")
    return str(exe)


def _default_sigint() -> None:
    # A shell's background job (as some CI runners start tests) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: restore the
    # default so the watcher gets Ctrl-C as in a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_watcher(cmd: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    line = proc.stderr.readline()  # printed once the subscription is acknowledged
    if "watching" not in line:
        proc.kill()
        raise AssertionError(f"watch did not start: {line}{proc.stderr.read()}")
    return proc


def test_watch_prints_one_line_per_message(tmp_path, broker, publishers):
    proc = _start_watcher([_edge_asd(), "watch", "--port", str(broker.port), "--count", "5"])
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box)
            pub.start()  # 1: status online
            pub.enqueue_score("pump1", lambda seq: score_payload(1795000000, seq, 1.234, 0.98, True, 0.1, -21.34, "b"))
            pub.enqueue_score("pump1", lambda seq: score_payload(1795000010, seq, 0.5, 0.98, False, 0.9, -25.0, "b"))
            pub.enqueue("pump1", "alert", alert_payload(1795000010, "normal", "pump1", 0.5, 0.98, 2, "b"))
            assert pub.flush(WAIT)
            pub.publish_stats(stats_payload(
                1795000020, uptime_s=20, outbox_depth=0,
                machines={"pump1": MachineStats(2, 0, 120.0, 130.0, "ok", -25.0)},
            ))
            out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 5
    assert lines[0].endswith(f"{DEVICE} status online")
    assert lines[1] == (
        f"2026-11-18T11:06:40.000Z {DEVICE}/pump1 seq=1 score=1.23 thr=0.98 ANOMALOUS p_target=0.10 -21.3 dBFS"
    )
    assert lines[2] == (
        f"2026-11-18T11:06:50.000Z {DEVICE}/pump1 seq=2 score=0.50 thr=0.98 normal p_target=0.90 -25.0 dBFS"
    )
    assert lines[3] == f"2026-11-18T11:06:50.000Z {DEVICE}/pump1 ALERT cleared (normal) score=0.50 thr=0.98 seq=2"
    assert lines[4].startswith(f"2026-11-18T11:07:00.000Z {DEVICE} stats uptime=20s outbox=0 | pump1 clips=2")


def test_watch_json_lines_for_one_device(tmp_path, broker, publishers):
    proc = _start_watcher([
        sys.executable, "-m", "edge_asd.cli.watch", "--json", "--port", str(broker.port),
        "--device", DEVICE, "--count", "3",
    ])
    try:
        with Outbox(tmp_path / "o.sqlite") as box:
            pub = publishers(broker, box)
            pub.start()
            _enqueue_scores(pub, 2)
            assert pub.flush(WAIT)
            out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0] == {"topic": STATUS_TOPIC, "retained": False, "payload": "online"}
    assert [r["topic"] for r in records[1:]] == [SCORE_TOPIC, SCORE_TOPIC]
    assert [r["payload"]["seq"] for r in records[1:]] == [1, 2]


def test_watch_without_a_broker_is_a_one_line_error():
    from mqtt_broker import free_port

    proc = subprocess.run([_edge_asd(), "watch", "--port", str(free_port()), "--count", "1"],
                          capture_output=True, text=True, timeout=WAIT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot connect" in proc.stderr and "Traceback" not in proc.stderr


def test_watch_stops_cleanly_on_ctrl_c(broker):
    proc = _start_watcher([sys.executable, "-m", "edge_asd.cli.watch", "--port", str(broker.port)])
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


def test_watch_with_a_refused_login_is_a_one_line_error(tmp_path, brokers):
    broker = brokers(auth=("edge", "right"))
    secret = tmp_path / "pw"
    secret.write_text("wrong\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_asd.cli.watch", "--port", str(broker.port), "--username", "edge",
         "--password-file", str(secret), "--count", "1"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused" in proc.stderr and "Traceback" not in proc.stderr
