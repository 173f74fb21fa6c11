"""A pipeline works through the links it is given (alerts settings, publisher, evidence, page), and a
reload that keeps its source hands it new ones: it never reaches into the daemon for them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_proc import bundle_manifest, noise_wavs, write_config  # noqa: E402


def test_a_reload_that_keeps_the_source_hands_the_pipeline_new_links(tiny_bundle, tmp_path):
    from edge_asd.daemon.app import Daemon as DaemonCore, _Reload
    from edge_asd.daemon.loading import load_config
    from edge_asd.daemon.machine_scoring import load_scorers
    from edge_asd.mqtt.outbox import Outbox

    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 1, clip_s)
    path = tmp_path / "edge-asd.toml"
    source = f"file:{tmp_path / 'rec'}"
    cfg = load_config(write_config(path, 1883, tiny_bundle, source, machine="realtime = false\n"))
    scorings = load_scorers(cfg)
    core = DaemonCore(cfg, scorings)
    core.outbox = Outbox(cfg.storage.outbox)
    try:
        core.publisher = core._make_publisher(cfg)  # never started: nothing here connects
        p = core.pipelines["fan1"] = core._make_pipeline(cfg.machines[0], scorings["fan1"])
        assert p.links.alerts == cfg.alerts and p.links.publisher is core.publisher and p.links.evidence is None
        assert not hasattr(p, "daemon"), "the pipeline is given what it uses, not the daemon"

        new = load_config(write_config(path, 1883, tiny_bundle, source, machine="realtime = false\nthreshold = 7.5\n",
                                       alerts="silence_dbfs = -60.0\nraise_after = 5\n",
                                       storage=f'evidence = "{tmp_path / "evidence"}"\n'))
        new_scorings = load_scorers(new)
        core._apply_reload(_Reload(new, new_scorings, core._make_evidence(new), None))
        assert core.pipelines["fan1"] is p, "the source was kept"
        assert p.links.alerts.silence_dbfs == -60.0 and p.links.evidence is core.evidence is not None
        assert p.decider.threshold == 7.5 and p.debouncer.raise_after == 5
        assert p.scoring is new_scorings["fan1"]
    finally:
        core.outbox.close()
        core._waker.close()


def test_every_output_gets_one_record_per_clip_and_a_failing_one_costs_no_other(tiny_bundle, tmp_path, caplog):
    """Outputs are one interface (edge_asd.daemon.outputs): a new one is a class handed to the links. Each gets
    the clip's record with the outbox's seq, the decision and the saved evidence file; one that raises is
    logged, and the outputs after it, the outbox and the counters carry on."""
    import dataclasses
    import logging
    import time
    from datetime import datetime, timezone

    import numpy as np

    from edge_asd.daemon.app import Daemon as DaemonCore
    from edge_asd.daemon.loading import load_config
    from edge_asd.daemon.sources import Clip
    from edge_asd.mqtt.outbox import Outbox

    class Recorder:
        def __init__(self):
            self.records = []

        def clip(self, record):
            self.records.append(record)

    class Broken:
        def clip(self, record):
            raise RuntimeError("webhook unreachable")

    clip_s = float(bundle_manifest(tiny_bundle)["audio"].get("clip_seconds", 10.0))
    noise_wavs(tmp_path / "rec", 1, clip_s)  # the source must exist; its clips are handed in below
    path = tmp_path / "edge-asd.toml"
    cfg = load_config(write_config(path, 1883, tiny_bundle, f"file:{tmp_path / 'rec'}",
                                   machine="realtime = false\nthreshold = -1e9\n",
                                   storage=f'evidence = "{tmp_path / "evidence"}"\n'))
    from edge_asd.daemon.machine_scoring import load_scorers

    scorings = load_scorers(cfg)
    core = DaemonCore(cfg, scorings)
    core.outbox = Outbox(cfg.storage.outbox)
    core.evidence = core._make_evidence(cfg)
    first, second = Recorder(), Recorder()
    try:
        core.publisher = core._make_publisher(cfg)
        p = core._make_pipeline(cfg.machines[0], scorings["fan1"])
        p.links = dataclasses.replace(p.links, outputs=(first, Broken(), second))
        rng = np.random.default_rng(0)
        with caplog.at_level(logging.ERROR, logger="edge_asd.daemon"):
            for i in range(3):
                samples = (0.1 * rng.standard_normal(int(clip_s * 16000))).astype(np.float32)
                p._process(Clip(samples, datetime(2026, 1, 1, 0, 0, i, tzinfo=timezone.utc), -20.0, time.monotonic(),
                                "test"))
        assert p.scored == 3 and len(first.records) == len(second.records) == 3
        assert [r.seq for r in first.records] == [1, 2, 3] and first.records == second.records
        r = first.records[0]
        assert r.machine == "fan1" and r.decision.anomalous and r.decision.threshold == -1e9 and r.dbfs == -20.0
        assert r.evidence is not None and r.evidence.is_file() and p.evidence_saved >= 1
        assert sum("output Broken failed" in m for m in caplog.messages) == 1  # throttled: once a minute
    finally:
        core.outbox.close()
        core._waker.close()
