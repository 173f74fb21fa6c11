"""Named stage-1 configurations: ``edge-asd-train --preset NAME``.

Each preset is a set of :class:`train.config.TrainConfig` overrides, applied above
the defaults and below a ``--config`` file and the command-line flags. Without
``--preset`` and without ``--config`` the device chooses: ``report`` where CUDA is
available, ``cpu`` elsewhere (the B0 of the report at 150 epochs is days on a CPU).
With ``--config`` and no ``--preset`` nothing is applied, so a config file means
what it says on any machine.

Values are spelled out even where they equal today's defaults, so that changing a
default does not silently change a preset. Torch-free, so ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The demo's small Transformer, whose steps cost a fraction of a second on 2 CPU
    # cores where an EfficientNet's cost seconds. Sized in optimizer steps, not epochs:
    # 35 clips and 3,000 clips both get the same training (about 3 minutes of stage 1
    # on 2 cores, BENCHMARKS.md); `--epochs N` on the command line trains epochs instead.
    "cpu": {
        "backbone": "transformer",
        "embedding_dim": 64,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "batch_size": 32,
        "steps": 300,
        "lr": 1e-3,
        "num_workers": 0,  # in-memory clips; worker processes would only compete for the two cores
        "validate_every": 5,
        "amp": False,
        # sub-cluster AdaCos without the domain head: the best objective of the quality benchmark on a CPU budget
        "objective": "subcluster_adacos",
        "domain_head": False,
        # each clip standardized: the recording level changes with gain controls, microphones and
        # recorders, and on data where it did, keeping it cost the learned member 0.03 of AUC
        # (issue "Detection quality III"; BENCHMARKS.md)
        "amplitude": "clip",
    },
    # The report's Section 3.1: EfficientNet-B0, batch 128, 150 epochs, on a GPU.
    "report": {
        "backbone": "efficientnet_b0",
        "embedding_dim": 128,
        "batch_size": 128,
        "epochs": 150,
        "lr": 1e-3,
        "num_workers": 4,
        "validate_every": 1,
        "amp": True,
        "amplitude": "clip",  # the report standardizes each clip
    },
}


# Stage-2 defaults that go with a preset: used where the command line does not state
# them (the flags --approach, --detector, --metric, --source-centres). The cpu preset's extractor
# has no domain head (sub-cluster AdaCos), so it is scored by generalization with the
# k-means source bank on cosine distance: the best CPU configuration in the quality
# benchmark (BENCHMARKS.md, detection quality).
STAGE2_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"approach": "generalization", "metric": "cosine", "source_centres": 16, "pseudo_normals": 0},
    "report": {},
}
# Where no preset applies: the report's choices, and approach "auto" (see train.preflight).
STAGE2_DEFAULTS: dict[str, Any] = {"approach": "auto", "detector": "knn", "metric": "l2", "source_centres": 0,
                                   "pseudo_normals": 50}


def choose_preset(name: str | None, cuda: bool, has_config: bool) -> tuple[str | None, str]:
    """(preset to apply or None, why), following the rules of the module docstring."""
    if name is not None:
        return name, "--preset"
    if has_config:
        return None, "--config given without --preset"
    return ("report", "a CUDA device is available") if cuda else ("cpu", "no CUDA device")
