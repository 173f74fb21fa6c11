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
    from edge_asd.daemon.scorers import load_scorers
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
