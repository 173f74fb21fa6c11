"""Stage-1 data: clip inventory and split, per-clip statistics, the outlier-exposure batch sampler.

The modules: ``stats`` (per-clip statistics and their cache), ``outliers`` (any folder of sounds),
``inventory`` (the clips of a run and their split), ``batches`` (the sampler and the crop dataset),
``clips`` (whole clips for validation and embedding). Their public names are this package's.

What the report (Sections 2.1-2.4, 3.1) asks of a training batch:

* normal clips of the target machine type (t = 1) from ``DATA/<machine>/train``;
  pseudo-anomalous clips (t = 0) from the other machine types' ``train`` folders
  and from an optional folder of any other sounds (AudioSet in the report);
* ``r_train`` of each section's source clips and six target clips per section for
  training, the rest held out (validation here, inlier models in stage 2);
* t at 1:1 within a mini-batch, and at least one target-domain clip in each;
* with the domain head: 1/4 source normals (d = 0), 1/4 pseudo-target data made by
  Mixup of target-domain normals and pseudo-anomalous data (d = t = the mixing
  ratio), the rest pseudo-anomalous (d = t = 0);
* every example a random 2 s crop of a clip standardized over the whole clip.

Scale: the DCASE development set alone is tens of thousands of 10 s clips, and
AudioSet millions, so clips are not preloaded unless they fit a memory budget.
Each clip's mean and standard deviation are computed once (cached in SQLite,
keyed by path, size and modification time) and a training example reads only its
crop by seeking. Every random choice of an epoch (clips, crops, Mixup partners and
ratios) is drawn by the batch sampler from ``(seed, epoch)`` alone, so a run is
repeatable whatever the number of DataLoader workers, and a resumed run draws
exactly the batches the uninterrupted one would have.

The outliers folder may hold any sound soundfile reads, at any rate and channel
count. A file that is not 16 kHz mono is decoded once, mixed to mono, resampled
with the runtime's own resampler (:func:`edge_asd.io.audio.resample`) and written as
a 16 kHz float32 WAV beside the statistics cache, named by the source's cache key;
from then on it is an ordinary clip (seekable crops, cached statistics), and the
same source always decodes to the same samples. Unreadable files are logged once
and skipped: one bad file among millions must not stop a run.
"""

from __future__ import annotations

from train.data.stats import ClipStats, default_cache_dir, ClipStatsCache, measure_clip, clip_statistics, pooled_stats, run_spec, segment_spec, read_crop, standardize_with
from train.data.outliers import soundfile_extensions, decoded_name, decode_to_16k_mono, outlier_statistics, decoded_dir_for
from train.data.inventory import ClipTable, Pools, PreparedData, split_normals, prepare_data
from train.data.batches import Slot, BatchPlan, OEBatchSampler, CropDataset
from train.data.clips import iter_clip_batches

__all__ = [
    "ClipStats",
    "default_cache_dir",
    "ClipStatsCache",
    "measure_clip",
    "clip_statistics",
    "pooled_stats",
    "run_spec",
    "segment_spec",
    "read_crop",
    "standardize_with",
    "soundfile_extensions",
    "decoded_name",
    "decode_to_16k_mono",
    "outlier_statistics",
    "decoded_dir_for",
    "ClipTable",
    "Pools",
    "PreparedData",
    "split_normals",
    "prepare_data",
    "Slot",
    "BatchPlan",
    "OEBatchSampler",
    "CropDataset",
    "iter_clip_batches",
]
