"""Daemon reliability II (issue 17): signals, acknowledged rows, hot-plug, stalls, a dead network thread, time.

Real parts throughout: ``edge-asd run`` as a process, real Mosquitto, real SQLite files on a real (small) file
system, real signals. Only the microphone hot-plug and a hung PortAudio call use a fake ``sounddevice`` module
(tests/fake_sounddevice), as a USB plug cannot be pulled by a test.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_asd.mqtt.payloads import encode, score_payload
from edge_asd.mqtt.publisher import Publisher
from edge_asd.mqtt.outbox import Outbox, OutboxFullError

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker  # noqa: E402
from vmic import VirtualMic, unavailable_reason  # noqa: E402
from fake_usb import UsbBus, latest_source_state, mic_config, seqs_of  # noqa: E402
from daemon_proc import (  # noqa: E402
    Daemon,
    fill_file_system,
    NotifySocket,
    bundle_manifest,
    noise_wavs,
    scores,
    write_config,
)


needs_vmic = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=f"virtual microphone unavailable: {unavailable_reason()}")


def _clip_seconds(bundle: Path) -> float:
    return float(bundle_manifest(bundle)["audio"].get("clip_seconds", 10.0))


# --- 1. signals ------------------------------------------------------------------------------


def _watchdog_pings(notify: NotifySocket) -> int:
    return notify.fields().count("WATCHDOG=1")


def _wait_more_pings(notify: NotifySocket, after: int, d: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _watchdog_pings(notify) < after + 3:
        assert d.proc.poll() is None, d.log()
        assert time.monotonic() < deadline, "the main loop stopped pinging the watchdog: it is frozen"
        time.sleep(0.05)


def test_signal_storms_never_freeze_the_main_loop(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """Thousands of SIGHUPs and SIGTERMs at random moments: the loop keeps serving, every stop is clean."""
    rng = random.Random(17)
    noise_wavs(tmp_path / "rec", 2, _clip_seconds(tiny_bundle))
    with Broker(tmp_path) as broker:
        cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                           machine="loop = true\n")
        sent = 0
        for round_ in range(3):
            notify = NotifySocket(str(tmp_path / f"notify{round_}"))
            d = Daemon(edge_asd_exe, cfg, env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"})
            daemons.append(d)
            try:
                notify.wait_for("READY=1", 60)  # the handlers are installed before READY
                for _ in range(1500):
                    d.send(signal.SIGHUP)
                    sent += 1
                    time.sleep(rng.uniform(0.0, 0.003))
                _wait_more_pings(notify, _watchdog_pings(notify), d)
                # A stop, then more signals of both kinds while it stops.
                d.send(signal.SIGTERM)
                for _ in range(300):
                    if d.proc.poll() is not None:
                        break
                    d.send(rng.choice([signal.SIGHUP, signal.SIGTERM]))
                    sent += 1
                    time.sleep(rng.uniform(0.0, 0.003))
                assert d.wait(90) == 0, d.log()
                assert broker.retained("edge_asd/box1/status") == b"stopped"
                assert "stop requested" in d.log()
            finally:
                notify.close()
        print(f"\nsignal storm: {sent} signals over 3 daemon runs; every run kept pinging and stopped cleanly")


# --- 2. acknowledged rows on a full disk -------------------------------------------------------


def _score(seq: int) -> dict:
    return score_payload(1795000000 + 10 * seq, seq, 0.5, 1.0, False, 0.2, -30.0, "bundle-1")


def test_acknowledged_rows_a_full_disk_could_not_delete_are_deleted_later(small_fs, tmp_path, caplog):
    """Broker down, 60 scores journaled, disk filled, broker up: everything delivered once, the outbox empties."""
    caplog.set_level(logging.WARNING, logger="edge_asd.mqtt")
    path = small_fs / "outbox.sqlite"
    broker = Broker(tmp_path)
    pubs: list[Publisher] = []
    try:
        with Outbox(path) as box:
            for _ in range(60):
                box.append_with_seq("pump1", "edge_asd/box1/pump1/score", lambda s: encode(_score(s)))
            filler = fill_file_system(small_fs)
            broker.start()
            sub = broker.subscriber("edge_asd/box1/#")
            pub = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
            pubs.append(pub)
            pub.start()
            sub.wait_for(lambda _: {m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")} >= set(range(1, 61)),
                         timeout=60, what="all 60 scores")
            deadline = time.monotonic() + 60
            while str(path) not in str(pub.counters["last_error"]):  # the failed delete was reported
                assert time.monotonic() < deadline, pub.counters
                time.sleep(0.05)
            assert box.depth() == 60, "a full disk cannot delete them yet"
            assert pub.flush(0.5) is False, "flush does not pretend the outbox is empty"
            filler.unlink()
            assert pub.flush(60), f"the outbox never emptied once space returned (depth {box.depth()})"
            assert box.depth() == 0 and pub.counters["acked"] == 60 and pub.acked_not_removed == 0
            pub.stop()
            texts = [r.getMessage() for r in caplog.records]
            assert not any("not stored" in t for t in texts), "a failed delete is not a message that was not stored"
            assert any("could not be removed" in t for t in texts), texts
            # A restart sends nothing twice: the next score arrives after anything that could be re-sent.
            box.append_with_seq("pump1", "edge_asd/box1/pump1/score", lambda s: encode(_score(s)))
            again = Publisher(broker.mqtt_settings(), "box1", box, ["pump1"])
            pubs.append(again)
            again.start()
            sub.wait_for(lambda _: 61 in {m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")},
                         timeout=60, what="seq 61 after the restart")
            seqs = [m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")]
            assert sorted(seqs) == list(range(1, 62)), "every seq once: no duplicate after the restart"
            again.stop()
            sub.close()
    finally:
        for p in pubs:
            p.stop()
        broker.stop()


# --- 3 and 4. microphones plugged, pulled and hung (a fake sounddevice) ----------------------------

def test_a_microphone_plugged_in_again_is_found_while_another_streams(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    bus = UsbBus(tmp_path / "usb.json", "usb-a", "usb-b")
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        cfg = mic_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, {"fan1": "usb-a", "fan2": "usb-b"})
        d = Daemon(edge_asd_exe, cfg, env=bus.env)
        daemons.append(d)
        sub.wait_for(lambda _: seqs_of(sub, "fan1") and seqs_of(sub, "fan2"), timeout=90, what="scores from both")
        bus.pull("usb-b")
        sub.wait_for(lambda _: latest_source_state(sub, "fan2") == "failing", timeout=60, what="fan2 failing")
        before_a, before_b = max(seqs_of(sub, "fan1")), max(seqs_of(sub, "fan2"))
        bus.plug("usb-b")
        sub.wait_for(lambda _: max(seqs_of(sub, "fan2")) > before_b + 1, timeout=120,
                     what="fan2 scoring again after the re-plug, while fan1 streams")
        assert latest_source_state(sub, "fan2") == "ok"
        assert max(seqs_of(sub, "fan1")) > before_a, "the other microphone kept streaming"
        assert d.proc.poll() is None
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        assert "device list refreshed" in d.log()
        sub.close()


def test_a_hung_driver_call_is_reported_and_restarts_the_daemon(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """A stream whose abort never returns (PortAudio issue 1037): failing at once, then exit 1 for systemd."""
    bus = UsbBus(tmp_path / "usb.json", "usb-a", "usb-b", "usb-mute")
    bus.hang_abort("usb-b")
    bus.hang_abort("usb-mute")
    bus.mute_device("usb-mute")  # opens, never delivers a sample
    with Broker(tmp_path) as broker:
        sub = broker.subscriber("edge_asd/box1/#")
        cfg = mic_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle,
                         {"fan1": "usb-a", "fan2": "usb-b", "fan3": "usb-mute"}, alerts="source_hang_s = 20\n")
        d = Daemon(edge_asd_exe, cfg, env=bus.env)
        daemons.append(d)
        sub.wait_for(lambda _: seqs_of(sub, "fan1") and seqs_of(sub, "fan2"), timeout=90, what="scores from both")
        bus.pull("usb-b")
        sub.wait_for(lambda _: latest_source_state(sub, "fan2") == "failing", timeout=60,
                     what="fan2 failing although closing its stream hangs")
        sub.wait_for(lambda _: latest_source_state(sub, "fan3") == "failing", timeout=60,
                     what="fan3, which never delivered, failing")
        going = max(seqs_of(sub, "fan1"))
        sub.wait_for(lambda _: max(seqs_of(sub, "fan1")) > going, timeout=60,
                     what="fan1 scoring on while the others hang")
        assert d.wait(180) == 1, d.log()
        assert "has made no progress" in d.log()
        stats = [m.json()["machines"] for m in sub.on("edge_asd/box1/stats")]
        assert stats and all(m["fan3"]["source"] != "ok" for m in stats), "a source that never delivered is never ok"
        assert all(m["fan3"]["clips"] == 0 for m in stats)
        assert any(m["fan3"]["source"] == "starting" for m in stats) or stats[0]["fan3"]["source"] == "failing"
        assert broker.retained("edge_asd/box1/status") == b"offline"
        sub.close()


# --- 5. the MQTT network thread ---------------------------------------------------------------------


def test_an_error_in_a_paho_callback_does_not_end_delivery(tmp_path):
    """A bug in a callback (here: Home Assistant's birth message) must not end paho's network loop."""
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#")
    with Outbox(tmp_path / "o.sqlite") as box:
        pub = Publisher(broker.mqtt_settings(ha_discovery=True), "box1", box, ["pump1"])
        try:
            pub.start()
            assert pub.flush(30)
            sub.wait_for(lambda _: any(m.topic == "edge_asd/box1/status" for m in sub.messages), what="online")

            def broken(client):
                raise RuntimeError("a bug in a callback")

            pub._publish_discovery = broken  # the injected fault: raised on paho's network thread
            broker.publish("homeassistant/status", b"online")
            for _ in range(5):
                pub.enqueue_score("pump1", _score)
            assert pub.flush(30), f"delivery stopped after the callback error ({box.depth()} left)"
            sub.wait_for(lambda _: {m["seq"] for m in scores(sub, "edge_asd/box1/pump1/score")} == set(range(1, 6)),
                         what="seqs 1..5")
            assert pub.dead_thread() is None
            # And a network thread that does end is seen (the daemon then exits 1 for systemd to restart it).
            pub._client.loop_stop()
            assert pub.dead_thread() == "the MQTT network thread"
        finally:
            pub.stop()
            sub.close()
            broker.stop()


# --- 6. messages whose journaling failed, non-finite results -----------------------------------------


class _NonFiniteOnce:
    """The real scorer, with a NaN score injected for one clip (the real model standardizes every input,
    so no audio makes it give one; a damaged accelerator or a future model might)."""

    def __init__(self, real, bad_call: int):
        self._real = real
        self._calls = 0
        self._bad_call = bad_call

    def __getattr__(self, name):
        return getattr(self._real, name)

    def score(self, samples, section):
        from dataclasses import replace

        self._calls += 1
        result = self._real.score(samples, section)
        return replace(result, score=float("nan")) if self._calls == self._bad_call else result


def test_a_non_finite_score_is_a_counted_bad_clip_not_a_scoring_error(tiny_bundle, tmp_path):
    from edge_asd.daemon.loading import load_config
    from edge_asd.daemon.app import Daemon as DaemonCore
    from edge_asd.daemon.machine_scoring import load_scorers

    noise_wavs(tmp_path / "rec", 3, _clip_seconds(tiny_bundle))
    cfg = load_config(write_config(tmp_path / "edge-asd.toml", 1, tiny_bundle, f"file:{tmp_path / 'rec'}",
                                   machine="realtime = false\n"))
    scorings = load_scorers(cfg)
    shared = scorings["fan1"].shared
    shared.scorer = _NonFiniteOnce(shared.scorer, bad_call=2)
    core = DaemonCore(cfg, scorings)
    core.outbox = Outbox(cfg.storage.outbox)
    try:
        core.publisher = core._make_publisher(cfg)  # not started: scores are only journaled
        p = core.pipelines["fan1"] = core._make_pipeline(cfg.machines[0], scorings["fan1"])
        p.start()
        deadline = time.monotonic() + 120
        while not p.done:
            assert time.monotonic() < deadline and p.crashed is None, p.crashed
            time.sleep(0.05)
        assert p.score_errors == 0, "a non-finite result is the clip's problem, not a scorer failure"
        assert p.bad_clips == 1 and p.scored == 2
        rows = [json.loads(m.payload) for m in core.outbox.pending(limit=10) if m.topic.endswith("/score")]
        assert [r["seq"] for r in rows] == [1, 2], "the bad clip spent no seq"
        assert core.stats_payload()["machines"]["fan1"]["bad_clips"] == 1
    finally:
        core.outbox.close()
        core._waker.close()


def test_an_alert_the_full_outbox_refused_is_sent_once_there_is_room(tiny_bundle, edge_asd_exe, tmp_path, daemons):
    """The alert of a state change that could not be journaled is retried, not forgotten."""
    noise_wavs(tmp_path / "rec", 2, _clip_seconds(tiny_bundle))
    # The subscription exists before the daemon can connect (a persistent session, saved by the stop):
    # the alert may be delivered the moment the broker is up.
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/fan1/alert", "edge_asd/box1/stats", persistent=True)
    broker.stop()
    cfg = write_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, f"file:{tmp_path / 'rec'}",
                       machine="realtime = false\nloop = true\nthreshold = -1000.0\n",  # every clip anomalous
                       storage="outbox_max_mb = 0.25\n", alerts="raise_after = 2\nclear_after = 2\n")
    # An outbox already full of older messages: the first alert cannot be stored.
    with Outbox(tmp_path / "state" / "outbox.sqlite", max_bytes=int(0.25 * 1024 * 1024)) as box:
        for size in (1000, 100, 10, 1):  # to the last byte of the last page
            with pytest.raises(OutboxFullError):
                for _ in range(10_000):
                    box.append("edge_asd/box1/backlog", b"x" * size)
    d = Daemon(edge_asd_exe, cfg)
    daemons.append(d)
    d.wait_log(r"machine fan1: alert not stored: .*full")
    with broker.start():
        sub.wait_for(lambda _: sub.on("edge_asd/box1/fan1/alert"), timeout=120, what="the retried alert")
        alerts = [m.json() for m in sub.on("edge_asd/box1/fan1/alert")]
        assert [a["state"] for a in alerts] == ["anomalous"]
        stats = sub.wait_for_topic("edge_asd/box1/stats")[-1].json()
        assert isinstance(stats["clock_synced"], (bool, type(None))) and stats["clock_steps"] >= 0
        d.send(signal.SIGTERM)
        assert d.wait(60) == 0, d.log()
        sub.close()


# --- 7. time ------------------------------------------------------------------------------------------


def test_clock_steps_are_noticed_with_an_injected_time_source(caplog):
    """A box without RTC: unsynchronised at boot, then NTP steps its clock; each step is seen and counted."""
    from edge_asd.daemon.clock import ClockWatch

    now = {"wall": 86_400.0 * 365, "mono": 50.0}  # early 1971, as a box without RTC may boot
    synced = {"v": False}
    watch = ClockWatch(wall=lambda: now["wall"], mono=lambda: now["mono"], synced=lambda: synced["v"])

    def tick(wall_step: float = 0.0) -> float | None:
        now["mono"] += 1.0
        now["wall"] += 1.0 + wall_step
        return watch.check()

    assert [tick() for _ in range(5)] == [None] * 5 and watch.steps == 0 and watch.synced is False
    synced["v"] = True
    step = tick(1_795_000_000.0)  # NTP syncs: the clock leaps to the present
    assert step == pytest.approx(1_795_000_000.0) and watch.steps == 1 and watch.synced is True
    assert tick(-3600.0) == pytest.approx(-3600.0) and watch.steps == 2 and watch.last_step_s == pytest.approx(-3600)
    assert tick(0.5) is None, "a small correction is not a step"
    assert any("stepped by" in r.getMessage() for r in caplog.records)


class PulseUsbMic:
    """A second PulseAudio source behind an ALSA PCM of its own, as a USB microphone appears to PortAudio.

    ``plug(card)`` loads a pipe source, feeds it and defines ``pcm.usbmic_c<card>`` in ``$HOME/.asoundrc``
    (PortAudio lists ALSA's configured PCMs, re-read when it is re-initialized); ``pull()`` removes both, and
    the stream reading it stops delivering, as a pulled USB device does.
    """

    def __init__(self, mic: VirtualMic, home: Path, wav: Path):
        self.mic, self.home, self.wav = mic, home, wav
        self._module: str | None = None
        self._feeder: subprocess.Popen | None = None

    def _pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], capture_output=True, text=True, env={**os.environ, **self.mic.env},
                              timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def unplugged_streams_go_nowhere(self) -> None:
        """PulseAudio moves the streams of a source that vanishes to the default source; a default that never
        delivers makes a pulled microphone go quiet as a USB one does (the test's mic names its source itself)."""
        self._pactl("load-module", "module-pipe-source", "source_name=nowhere",
                    f"file={self.mic.runtime_dir / 'nowhere.fifo'}", "format=s16le", "rate=16000", "channels=1")
        self._pactl("set-default-source", "nowhere")

    def plug(self, card: int) -> None:
        fifo = self.mic.runtime_dir / f"usb{card}.fifo"
        self._module = self._pactl("load-module", "module-pipe-source", f"source_name=usb{card}", f"file={fifo}",
                                   "format=s16le", "rate=16000", "channels=1")
        self._feeder = subprocess.Popen([sys.executable, str(Path(__file__).with_name("vmic.py")), "feed", str(fifo),
                                         str(self.wav), "--loop"], stdin=subprocess.DEVNULL)
        (self.home / ".asoundrc").write_text(f'pcm.usbmic_c{card} {{\n type pulse\n device "usb{card}"\n}}\n')

    def pull(self) -> None:
        (self.home / ".asoundrc").write_text("")
        if self._feeder is not None:
            self._feeder.kill()
            self._feeder.wait(10)
            self._feeder = None
        if self._module is not None:
            self._pactl("unload-module", self._module)
            self._module = None


@needs_vmic
def test_a_pulseaudio_microphone_plugged_in_again_is_found_while_another_streams(tiny_bundle, edge_asd_exe, tmp_path,
                                                                                  daemons):
    home = tmp_path / "home"
    home.mkdir()
    wav = tmp_path / "tone.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32), 16000,
             subtype="PCM_16")
    with VirtualMic(rate=16000, channels=1) as mic, Broker(tmp_path) as broker:
        mic.feed(wav, loop=True)
        usb = PulseUsbMic(mic, home, wav)
        try:
            usb.unplugged_streams_go_nowhere()
            usb.plug(2)
            sub = broker.subscriber("edge_asd/box1/#")
            cfg = mic_config(tmp_path / "edge-asd.toml", broker.port, tiny_bundle, {"fan1": "pulse", "fan2": "usbmic"})
            d = Daemon(edge_asd_exe, cfg, env={**mic.env, "HOME": str(home)})
            daemons.append(d)
            sub.wait_for(lambda _: seqs_of(sub, "fan1") and seqs_of(sub, "fan2"), timeout=90,
                         what="scores from both")
            usb.pull()
            sub.wait_for(lambda _: latest_source_state(sub, "fan2") == "failing", timeout=60, what="fan2 failing")
            before_a, before_b = max(seqs_of(sub, "fan1")), max(seqs_of(sub, "fan2"))
            usb.plug(3)  # back, under another card number
            sub.wait_for(lambda _: max(seqs_of(sub, "fan2")) > before_b + 1, timeout=120,
                         what="fan2 scoring again after the re-plug, while fan1 streams")
            assert max(seqs_of(sub, "fan1")) > before_a, "the other microphone kept streaming"
            d.send(signal.SIGTERM)
            assert d.wait(60) == 0, d.log()
            assert "device list refreshed" in d.log() and "usbmic_c3" in d.log()
            sub.close()
        finally:
            usb.pull()
