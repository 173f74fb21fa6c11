"""Stage-1 objectives are plug-ins: each name of train.names.OBJECTIVES resolves to its class, and a new one is
a class and a table line (the command line, the configuration and the trainer read the table)."""

from __future__ import annotations

import json

import pytest
import torch

from train.losses import LossTerms, oe_loss
from train.names import OBJECTIVES
from train.objectives import Objective, objective


class CompactNormals(Objective):
    """A test objective: the report's loss plus the spread of the batch's normal embeddings (a compactness term,
    as in Deep SVDD). Counts its calls so the test sees the trainer used it."""

    calls = 0

    def loss(self, model, out, batch, d, weights):
        type(self).calls += 1
        terms = oe_loss(out, batch["t"], batch["section"], d, weights)
        normal = out["embedding"][batch["t"] > 0.5]
        spread = ((normal - normal.mean(0)) ** 2).sum(1).mean() if len(normal) > 1 else terms.total * 0
        return LossTerms(total=terms.total + 0.1 * spread, machine=terms.machine, section=terms.section,
                         domain=terms.domain)


def test_every_named_objective_is_an_objective_and_an_unknown_one_is_named():
    for name in OBJECTIVES:
        assert isinstance(objective(name), Objective), name
    with pytest.raises(ValueError, match="'nope' is not one of oe, subcluster_adacos"):
        objective("nope")
    assert objective("subcluster_adacos").head_name == "adacos" and objective("oe").head(None) is None


def test_a_new_objective_is_a_class_and_one_table_line(tiny_data, tmp_path, monkeypatch):
    from conftest import TINY_MODEL
    from train.cli import main as train_main
    from train.embed import load_extractor

    monkeypatch.setitem(OBJECTIVES, "compact_normals", "test_objectives:CompactNormals")
    CompactNormals.calls = 0
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY_MODEL, "epochs": 1, "r_train": 0.8}))
    run = tmp_path / "fan" / "compact"
    assert train_main(["--data", str(tiny_data), "--machine", "fan", "--out", str(run), "--config", str(cfg),
                       "--objective", "compact_normals", "--device", "cpu", "--baseline-epochs", "0",
                       "--no-plain-baseline", "--quiet"]) == 0
    assert CompactNormals.calls > 0
    assert json.loads((run / "config.json").read_text())["objective"] == "compact_normals"
    model = load_extractor(run)
    assert model.objective_head is None
    with torch.no_grad():
        assert model(torch.zeros(2, model.config.segment_samples))["embedding"].shape == (2, 32)
