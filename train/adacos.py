"""Sub-cluster AdaCos objective (Wilkinghoff, IJCNN 2021; the DCASE 2023/2024 systems and ASDKit), an
alternative to the report's outlier-exposure losses for training the same extractor.

Each class has M sub-cluster centres (trained, or fixed at their random start);
the logits are the cosines between the embedding and every centre times an
adaptive scale s, and the probability of a class is the sum of its sub-clusters'
softmax probabilities.
The scale follows AdaCos (Zhang et al., CVPR 2019) with every sub-cluster of a
sample's own classes counted as "its class":

* ``B_avg = mean_i sum_{j not of y_i} exp(s * cos_ij)`` over the labelled samples,
* ``theta_i`` the label-weighted angle to the nearest sub-cluster of each of its
  classes, ``theta_med`` their median,
* ``s <- max(1, log(B_avg) / cos(min(pi / 4, theta_med)))``, computed from the
  batch (no gradient) before its logits are scaled, starting at ``sqrt(2) log(C M - 1)``.

Classes (see :func:`adacos_classes`): the machine type's section x domain x
attribute string as its file names give them, and the other machine types' clips
as classes of their own (their sections and attributes), which is what
Wilkinghoff's systems (and ASDKit's re-runs) get by training one model on every
machine type; clips of an outliers folder form one more class. Mixup labels are
the clips' one-hot classes mixed with the batch's ratios. Stage 2 sees only the
embedding; the class head is training-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_asd.io.dcase import parse_name
from edge_asd.errors import DataError

from .data import CropDataset, PreparedData, Slot

# A sample's probability of its section is turned into a logit for the section
# accuracy checks of stage 1; clamped so a certain answer stays finite.
_P_EPS = 1e-7
# Below ~1 the softmax over cosines in [-1, 1] is nearly uniform and the loss
# stops separating classes; AdaCos's formula can go there (even negative) when
# few sub-clusters lie outside a sample's classes.
MIN_SCALE = 1.0


def initial_scale(n_centres: int) -> float:
    """AdaCos's fixed-point scale for ``n_centres`` logits: ``sqrt(2) log(n_centres - 1)``."""
    if n_centres < 2:
        raise ValueError("sub-cluster AdaCos needs at least two centres (classes x sub-clusters)")
    return math.sqrt(2.0) * math.log(n_centres - 1)


class SubClusterAdaCos(nn.Module):
    """Centres ``[C * M, D]`` (class-major: centre ``c * M + m`` is sub-cluster m of class c), the scale,
    and which section each class belongs to (-1: a pseudo-anomalous class)."""

    def __init__(
        self, embedding_dim: int, class_sections: list[int], n_sections: int, n_subclusters: int, trainable: bool = True
    ):
        super().__init__()
        self.n_classes = len(class_sections)
        self.n_subclusters = int(n_subclusters)
        n = self.n_classes * self.n_subclusters
        self.centres = nn.Parameter(torch.empty(n, embedding_dim))
        nn.init.xavier_uniform_(self.centres)
        # Wilkinghoff's DCASE 2023 code keeps the centres at their random start
        # (only the embedding moves); trained centres are the default here.
        self.centres.requires_grad_(trainable)
        # A buffer, not a parameter: AdaCos sets it from each batch, and it is
        # saved with the weights so a resumed run continues from the same scale.
        self.register_buffer("scale", torch.tensor(max(initial_scale(n), MIN_SCALE)))
        member = torch.zeros(self.n_classes, n_sections)
        for c, s in enumerate(class_sections):
            if s >= 0:
                member[c, s] = 1.0
        self.register_buffer("class_to_section", member, persistent=False)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """``[B, C * M]`` cosines between embeddings and centres (fp32)."""
        return F.normalize(embedding.float(), dim=-1) @ F.normalize(self.centres.float(), dim=-1).t()

    def class_log_probs(self, cosine: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(class)`` ``[B, C]``: log of the summed softmax probabilities of each class's sub-clusters."""
        # A copy: autograd keeps the scale of this product for the backward pass, and the loss then
        # sets the buffer in place; under DDP the backward also runs through the forward's section
        # logits, which would find their saved scale modified.
        logits = cosine * (self.scale.clone() if scale is None else scale)
        grouped = logits.reshape(logits.shape[0], self.n_classes, self.n_subclusters)
        return torch.logsumexp(grouped, dim=2) - torch.logsumexp(logits, dim=1, keepdim=True)

    def section_logits(self, cosine: torch.Tensor) -> torch.Tensor:
        """``logit p(section)`` ``[B, K]``, so that sigmoid gives the summed probability of its classes."""
        p = (self.class_log_probs(cosine).exp() @ self.class_to_section).clamp(_P_EPS, 1.0 - _P_EPS)
        return torch.log(p) - torch.log1p(-p)

    def outputs(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        cos = self.cosine(embedding)
        return {"class_cosine": cos, "section_logits": self.section_logits(cos)}

    @torch.no_grad()
    def adapted_scale(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The AdaCos scale for this batch (see the module docstring); None when no sample is labelled
        or every centre belongs to every sample's classes."""
        labels = labels.float()
        used = labels.sum(dim=1) > 0
        if not bool(used.any()):
            return None
        cos, y = cosine[used].float(), labels[used]
        own = (y > 0).repeat_interleave(self.n_subclusters, dim=1)  # [N, C * M]
        if bool(own.all()):
            return None
        scaled = (self.scale * cos).masked_fill(own, float("-inf"))
        log_b_avg = torch.logsumexp(scaled.flatten(), dim=0) - math.log(cos.shape[0])
        nearest = cos.reshape(cos.shape[0], self.n_classes, self.n_subclusters).amax(dim=2)
        angle = torch.acos(nearest.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        theta = (y * angle).sum(dim=1) / y.sum(dim=1)
        theta_med = torch.quantile(theta, 0.5)
        s = log_b_avg / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
        return s.clamp_min(MIN_SCALE)


def subcluster_adacos_loss(
    head: SubClusterAdaCos, cosine: torch.Tensor, labels: torch.Tensor, update_scale: bool = True
) -> torch.Tensor:
    """Cross-entropy of the soft class labels ``[B, C]`` against the sub-cluster class probabilities,
    normalised by the total label weight (unlabelled rows, e.g. left-out clips, do not count).
    With ``update_scale`` the head's scale is first set from this batch, as AdaCos does in training."""
    if update_scale:
        s = head.adapted_scale(cosine, labels)
        if s is not None:
            head.scale.copy_(s)
    labels = labels.float()
    nll = -(labels * head.class_log_probs(cosine.float())).sum()
    return nll / labels.sum().clamp_min(torch.finfo(torch.float32).eps)


# --- classes of the training clips -----------------------------------------------------------

OUTLIER_CLASS = "~other_sounds"


@dataclass(frozen=True)
class AdaCosClasses:
    names: list[str]  # target machine's classes first (sorted), then pseudo-anomalous ones
    sections: list[int]  # section index of each class, -1 for pseudo-anomalous classes
    of_clip: np.ndarray  # int64 [len(table)]: class of each clip of the ClipTable, -1: left out


def _clip_key(path: Path, machine: str) -> str:
    info = parse_name(path, machine)
    key = f"{info.section}_{info.domain or 'source'}"
    return f"{key}_{info.attribute_string}" if info.attribute_string else key


def adacos_classes(data: PreparedData, machine: str, pseudo_classes: bool = True) -> AdaCosClasses:
    """Class of every training clip (see the module docstring); ``pseudo_classes=False`` leaves the
    pseudo-anomalous clips out of the objective (they still fill their share of each batch)."""
    table, pools = data.table, data.pools
    keys: list[str | None] = [None] * len(table)
    for i in np.flatnonzero(table.normal):
        keys[i] = _clip_key(table.path(int(i)), machine)
    if pseudo_classes:
        for i in pools.machines:
            path = table.path(int(i))
            other = path.parent.parent.name  # DATA/<machine>/train/<clip>
            try:
                keys[i] = f"~{other}_{_clip_key(path, other)}"
            except DataError:  # not a DCASE name: the machine type alone
                keys[i] = f"~{other}"
        for i in pools.outliers:
            keys[i] = OUTLIER_CLASS
    own = sorted({k for k, n in zip(keys, table.normal) if n and k is not None})
    others = sorted({k for k, n in zip(keys, table.normal) if not n and k is not None})
    names = own + others
    index = {k: c for c, k in enumerate(names)}
    section_index = {s: i for i, s in enumerate(data.sections)}
    sections = [section_index[k.split("_")[0]] for k in own] + [-1] * len(others)
    of_clip = np.array([index[k] if k is not None else -1 for k in keys], dtype=np.int64)
    return AdaCosClasses(names, sections, of_clip)


class AdaCosCropDataset(CropDataset):
    """:class:`train.data.CropDataset` plus ``label``: the slot's soft class vector ``[C]`` (each clip's
    one-hot class times its Mixup weight; nothing for a left-out clip)."""

    def __init__(self, table, n_sections: int, segment_samples: int, classes: AdaCosClasses):
        super().__init__(table, n_sections, segment_samples)
        self.of_clip = classes.of_clip
        self.n_classes = len(classes.names)

    def __getitem__(self, slot: Slot) -> dict[str, torch.Tensor]:
        item = super().__getitem__(slot)
        clip, _, partner, _, lam = slot
        label = np.zeros(self.n_classes, dtype=np.float32)
        for c, w in ((clip, lam), (partner, 1.0 - lam)):
            if c >= 0 and self.of_clip[c] >= 0:
                label[self.of_clip[c]] += w
        item["label"] = torch.from_numpy(label)
        return item
