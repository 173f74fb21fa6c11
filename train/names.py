"""The named choices of stage-1 training, each listed once: backbones and objectives.

Torch-free on purpose: the command line (train/options.py) offers them as choices and
the configuration (train/config.py, train/models.py) checks them without loading torch;
train/models.py and train/stage1.py build and train what each name stands for.
"""

from __future__ import annotations

BACKBONES: tuple[str, ...] = ("efficientnet_b0", "conformer", "transformer", "tf_efficientnet_b0", "efficientnet_lite0")

# The timm CNNs over the log-mel image. tf_efficientnet_b0 is B0 with TensorFlow's
# "same" padding, the variant the Noisy Student weights (tf_efficientnet_b0_ns) were
# trained with; efficientnet_lite0 drops squeeze-excitation and uses ReLU6, which
# int8 and TensorRT on a Jetson handle best. Only these take pretrained weights.
CNN_BACKBONES: tuple[str, ...] = ("efficientnet_b0", "tf_efficientnet_b0", "efficientnet_lite0")

# The stage-1 objectives, name -> the class that implements it (train/objectives.py; a new objective is a
# class there or in a module of its own, and one line here): the report's outlier exposure (Eq. 3/6, section and
# machine heads), or Wilkinghoff's sub-cluster AdaCos (train/adacos.py), which replaces those heads' losses by
# one class loss over sub-cluster centres.
OE = "oe"
SUBCLUSTER_ADACOS = "subcluster_adacos"
OBJECTIVES: dict[str, str] = {
    OE: "train.objectives:OutlierExposure",
    SUBCLUSTER_ADACOS: "train.objectives:SubClusterAdaCosObjective",
}
