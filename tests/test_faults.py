"""Fault injection: the broker and the daemon SIGKILLed and restarted, again and again, during one fast replay.

What "every scored clip" means: each daemon run is given the recordings under a path of its own, so each replays
them from the beginning (a restart of the same source would continue after its last journaled clip) and those clips
are scored again under new seqs. Every clip a
daemon journaled, that is every ``seq N score`` log line of every run (killed or not), must reach the subscriber
exactly once after dedupe by seq, and the seqs delivered must run from 1 with no gap. A daemon killed between
journaling a clip and logging it leaves a seq that is delivered without a log line; that is allowed and counted.

Broker crashes: a SIGKILLed Mosquitto loses what only it held, i.e. messages it acknowledged to the daemon but had
not yet passed on to the subscriber (its persistence is written only on a graceful stop or SIGUSR1; a subscriber
slow to acknowledge, as under load, leaves messages queued in the broker). That is the broker's durability, beyond
any publisher. So each broker kill freezes the daemon (SIGSTOP) at a random instant of its work, waits until the
subscriber holds every seq the broker has acknowledged by then (every seq the outbox has numbered and no longer
holds), kills the broker, and lets the daemon go on: what its outbox still held is the daemon's to deliver, and the
final check holds it to that. (Waiting only for the seqs logged before the kill left a race: clips journaled and
acknowledged in the meantime could still sit in the broker's queue.) The subscriber's session (clean_session=False,
QoS 1) is saved to the broker's database before the first fault, so each restarted broker queues for it even before
it is back.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mqtt_broker import Broker  # noqa: E402
from daemon_proc import Daemon, check_score_schema, bundle_manifest, noise_wavs, scores, write_config  # noqa: E402

CLIP_S = 2.0          # the tiny bundle's segment length: the shortest clip it takes
FILES, CLIPS_PER_FILE = 10, 6
CLIPS = FILES * CLIPS_PER_FILE


def outbox_scores(outbox: Path, machine: str = "fan1") -> tuple[int, set[int]]:
    """``(last seq numbered, seqs still held)`` of ``machine``'s scores in a daemon's outbox, read without writing
    (SQLite's WAL lets a reader in while the writer holds its lock); raises sqlite3.OperationalError while busy."""
    with closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=0)) as conn:  # closed, not kept
        row = conn.execute("SELECT seq FROM streams WHERE stream = ?", (machine,)).fetchone()
        held = {json.loads(p)["seq"] for (p,) in
                conn.execute("SELECT payload FROM messages WHERE topic LIKE ?", (f"%/{machine}/score",))}
    return (row[0] if row else 0), held


def test_broker_and_daemon_killed_during_a_replay_lose_and_duplicate_nothing(tiny_bundle, edge_asd_exe, tmp_path,
                                                                             daemons):
    rng = random.Random(20260521)
    model = bundle_manifest(tiny_bundle)["bundle_id"]
    noise_wavs(tmp_path / "rec", FILES, CLIP_S * CLIPS_PER_FILE)
    faults: Counter[str] = Counter()
    runs: list[Daemon] = []
    broker = Broker(tmp_path).start()
    sub = broker.subscriber("edge_asd/box1/#", persistent=True)
    try:
        broker.save()

        def delivered() -> set[int]:
            return {m["seq"] for m in scores(sub)}

        def logged() -> list[int]:
            return [s for d in runs for s in d.seqs()]

        def start_daemon() -> Daemon:
            # Every run replays the whole folder, so that each one has clips to be killed in: a restarted
            # file source would otherwise continue after the last clip journaled (tests/test_delivery.py and
            # tests/test_replay.py test that). Positions are kept per source target, so each run is given the
            # folder under a path of its own (a symlink); the journal and its delivery across kills are what
            # this test is about.
            view = tmp_path / f"rec-run{len(runs) + 1}"
            view.symlink_to(tmp_path / "rec", target_is_directory=True)
            run_cfg = write_config(tmp_path / f"edge-asd-{len(runs) + 1}.toml", broker.port, tiny_bundle,
                                   f"file:{view}", machine=f"realtime = false\nclip_seconds = {CLIP_S}\n")
            d = Daemon(edge_asd_exe, run_cfg)
            daemons.append(d)
            runs.append(d)
            return d

        def jitter() -> None:
            # Lands the kill anywhere within a clip's scoring and journaling, not just after a log line.
            time.sleep(rng.uniform(0.0, 0.05))

        def kill_daemon(d: Daemon) -> None:
            jitter()
            assert d.proc.poll() is None, "the replay ended before the fault; it needs more clips"
            d.proc.send_signal(signal.SIGKILL)
            assert d.wait(30) == -signal.SIGKILL
            faults["daemon killed"] += 1

        def kill_broker() -> None:
            d = runs[-1]
            jitter()
            assert d.proc.poll() is None, "the replay ended before the fault; it needs more clips"
            d.proc.send_signal(signal.SIGSTOP)  # the daemon frozen mid-work; see the module docstring
            try:
                for _ in range(200):
                    try:
                        numbered, held = outbox_scores(tmp_path / "state" / "outbox.sqlite")
                        break
                    except sqlite3.OperationalError:  # frozen inside a step a reader must wait for: let it finish
                        d.proc.send_signal(signal.SIGCONT)
                        time.sleep(0.01)
                        d.proc.send_signal(signal.SIGSTOP)
                else:
                    raise AssertionError("the outbox stayed busy")
                acked = set(range(1, numbered + 1)) - held
                sub.wait_for(lambda _: acked <= delivered(), timeout=90,
                             what=f"every seq the broker acknowledged ({len(acked)} of {numbered})")
                broker.kill()
            finally:
                d.proc.send_signal(signal.SIGCONT)
            faults["broker killed"] += 1

        def start_broker() -> None:
            connects = sub.connects
            broker.start()
            sub.wait_reconnected(connects)

        # Run 1: a broker crash and restart, then the daemon killed.
        d = start_daemon()
        at = rng.randint(2, 5)
        d.wait_scored(at)
        kill_broker()
        d.wait_scored(at + 2)  # scored and journaled while the broker is away
        start_broker()
        d.wait_scored(rng.randint(at + 5, 14))
        kill_daemon(d)

        # Run 2: the broker crashes, and the daemon is killed while it is still down.
        d = start_daemon()
        at = rng.randint(2, 6)
        d.wait_scored(at)
        kill_broker()
        d.wait_scored(rng.randint(at + 2, 14))
        kill_daemon(d)

        # Run 3: starts with no broker; it comes back, crashes again and comes back; then the daemon is killed.
        d = start_daemon()
        d.wait_scored(2)
        start_broker()
        at = rng.randint(4, 8)
        d.wait_scored(at)
        kill_broker()
        d.wait_scored(at + 2)
        start_broker()
        d.wait_scored(rng.randint(at + 4, 16))
        kill_daemon(d)

        # Run 4: one more broker crash; the replay ends while the broker is away, the daemon waits for it,
        # delivers everything and exits by itself.
        d = start_daemon()
        at = rng.randint(3, CLIPS // 2)
        d.wait_scored(at)
        kill_broker()
        d.wait_log("every source has ended")
        d.wait_log("mqtt 127.0.0.1:%d: cannot connect" % broker.port)
        start_broker()
        assert d.wait(180) == 0, d.log()
        assert len(d.seqs()) == CLIPS, "the last run replayed every file"

        journaled = d.last_seq()
        sub.wait_for(lambda _: set(range(1, journaled + 1)) <= delivered(), timeout=90,
                     what=f"every seq up to {journaled}")
        msgs = scores(sub)
        received = [m["seq"] for m in msgs]
        all_logged = logged()
        assert len(all_logged) == len(set(all_logged)), "no seq was ever given to two clips"
        assert set(all_logged) <= set(received), "every journaled clip was delivered"
        assert set(received) == set(range(1, journaled + 1)), "seqs from 1 with no gap and nothing unknown"
        for m in {m["seq"]: m for m in msgs}.values():
            check_score_schema(m, model)
        duplicates = len(received) - len(set(received))
        lost = journaled - len(set(received))

        # Every outage is in the log of the run that saw it.
        assert "mqtt 127.0.0.1:%d: connection lost" % broker.port in runs[0].log()
        assert "mqtt 127.0.0.1:%d: cannot connect" % broker.port in runs[2].log()
        # The last run's final heartbeat (sent once the broker was back) reports its outage.
        sub.wait_for(lambda _: any(m.json()["machines"]["fan1"]["clips"] == CLIPS and m.json()["mqtt"]["reconnects"]
                                   for m in sub.on("edge_asd/box1/stats")), what="the last run's final heartbeat")
        final = [m.json() for m in sub.on("edge_asd/box1/stats") if m.json()["machines"]["fan1"]["clips"] == CLIPS][-1]
        assert final["mqtt"]["reconnects"] >= 1 and final["mqtt"]["connect_failures"] >= 1, final["mqtt"]
        assert final["mqtt"]["last_error"].startswith("cannot connect"), final["mqtt"]
        assert faults["broker killed"] >= 3 and faults["daemon killed"] >= 3, faults

        print(
            f"\nfault injection: {faults['broker killed']} broker kills, {faults['daemon killed']} daemon kills, "
            f"{len(runs)} daemon runs; clips scored (seq log lines) {len(all_logged)}, seqs journaled {journaled}, "
            f"score messages delivered {len(received)}, duplicates delivered {duplicates}, lost {lost}"
        )
    finally:
        sub.close()
        broker.stop()
