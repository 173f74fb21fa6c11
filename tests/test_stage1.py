"""Stage 1 on CPU with tiny models on a synthetic DCASE-layout data set written here.

The target machine ("fan") has three sections whose sounds differ in pitch (and a
target domain shifted up 8% with more noise); another machine type ("pump")
provides the pseudo-anomalous data. Trained for a few dozen steps, the extractor
must tell the held-out clips' sections apart; an untrained one must not.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from edge_asd.io.audio import SegmentSpec, clip_segments, read_audio, standardize
from edge_asd.errors import ConfigError, DataError, UserError
from train.config import TrainConfig
from train.data import (
    BatchPlan,
    ClipStatsCache,
    CropDataset,
    OEBatchSampler,
    clip_statistics,
    prepare_data,
    read_crop,
)
from train.embed import embed_clips, embed_segments, load_extractor
from train.losses import LossWeights, domain_loss, oe_loss, section_loss, target_probability
from train.models import BACKBONES, ModelConfig, build_extractor
from train.stage1 import CHANNEL_COMPONENTS, Trainer, TrainForward, channel_curves, evaluate_sections, heldout_clips, train_extractor

from tonal_data import SR, tiny_config

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def trained_run(data_root, cache_dir, tmp_path_factory) -> tuple[TrainConfig, Path]:
    cfg = tiny_config(data_root, tmp_path_factory.mktemp("runs") / "fan", cache_dir)
    return cfg, train_extractor(cfg, progress=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "extractor.pt", weights_only=True)["state_dict"]


# --- training works --------------------------------------------------------------------------


def test_losses_fall(trained_run):
    _, run = trained_run
    rows = _rows(run / "losses.csv")
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "l_machine", "l_section", "l_domain"]
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    by_epoch = {}
    for r in rows:
        by_epoch.setdefault(int(r["epoch"]), []).append(r)
    first, last = by_epoch[1], by_epoch[max(by_epoch)]
    mean = lambda rs, k: float(np.mean([float(r[k]) for r in rs]))  # noqa: E731
    assert mean(last, "loss") < 0.75 * mean(first, "loss")
    assert mean(last, "l_section") < 0.6 * mean(first, "l_section")
    assert all(float(r["l_domain"]) > 0 for r in rows)  # the domain head is trained (default on)
    # OneCycleLR: warm up to lr, then anneal to ~0
    lrs = [float(r["lr"]) for r in rows]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[0] < 3e-4 and lrs[-1] < 1e-5


def test_heldout_sections_are_learned_and_untrained_net_fails(trained_run, data_root):
    cfg, run = trained_run
    clips = heldout_clips(run, data_root)
    assert len(clips) == 3 * (8 + 1)  # r_train 0.5 of 16 source, 3 - 2 target per section
    spec = SegmentSpec(n_segments=3)
    trained = evaluate_sections(load_extractor(run), clips, spec)
    torch.manual_seed(cfg.seed)
    untrained = evaluate_sections(build_extractor(cfg.model_config(["00", "01", "02"])), clips, spec)
    chance = 1 / 3
    assert trained["section_acc"] >= 0.75, trained
    assert untrained["section_acc"] < 0.6, untrained
    assert trained["section_loss"] < untrained["section_loss"]
    val = _rows(run / "validation.csv")
    assert [int(r["epoch"]) for r in val] == [0, 3, 6]
    assert float(val[0]["section_acc"]) < 0.6 and float(val[-1]["section_acc"]) > chance + 0.3


def test_run_folder_and_embeddings(trained_run, data_root):
    cfg, run = trained_run
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg
    split = json.loads((run / "split.json").read_text())
    assert split["sections"] == ["00", "01", "02"]
    assert {c["split"] for c in split["clips"]} == {"train", "heldout"}
    for sec in split["sections"]:
        mine = [c for c in split["clips"] if c["section"] == sec]
        assert sum(c["split"] == "train" and c["domain"] == "source" for c in mine) == 8
        assert sum(c["split"] == "train" and c["domain"] == "target" for c in mine) == 2
        assert all((data_root / c["path"]).is_file() and Path(c["path"]).name == c["name"] for c in mine)
    ckpt = torch.load(run / "checkpoints" / "extractor.pt", weights_only=True)
    assert ckpt["model_config"]["sections"] == ["00", "01", "02"] and "dft_kernel" not in str(ckpt["state_dict"].keys())
    assert (run / "checkpoints" / "last.pt").is_file()

    model = load_extractor(run)
    assert not model.training and model.frontend.use_fft is False
    paths = [data_root / c["path"] for c in split["clips"][:3]]
    emb, logit = embed_clips(model, paths, SegmentSpec(n_segments=4), batch_clips=2)
    assert emb.shape == (3, 4, 16) and logit.shape == (3, 4) and np.all(np.isfinite(emb))
    seg = clip_segments(paths[1], SegmentSpec(n_segments=4))
    e1, l1 = embed_segments(model, seg, batch_size=3)
    np.testing.assert_allclose(e1, emb[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l1, logit[1], rtol=1e-5, atol=1e-5)


# --- every encoder trains ----------------------------------------------------------------------


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_encoder_takes_a_training_step(backbone, data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir, backbone=backbone, batch_size=4, embedding_dim=24)
    data = prepare_data(cfg)
    sampler = OEBatchSampler(data.pools, data.table.lengths, cfg.segment_samples, BatchPlan.from_config(cfg), cfg.seed)
    batch = torch.utils.data.default_collate(
        [CropDataset(data.table, 3, cfg.segment_samples)[s] for s in next(iter(sampler))]
    )
    torch.manual_seed(0)
    model = build_extractor(cfg.model_config(data.sections))
    model.frontend.use_fft = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, cfg, torch.device("cpu"), total_steps=10)
    losses = trainer.step(batch)
    assert torch.all(torch.isfinite(losses)) and losses[0] > 0
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("heads.") for k in changed)
    model.eval()
    with torch.no_grad():
        out = model(batch["wave"])
        emb, dom = model.embed(batch["wave"])
    assert out["embedding"].shape == emb.shape == (4, 24)
    assert out["section_logits"].shape == (4, 3) and out["machine_logit"].shape == dom.shape == (4,)
    assert model.segment_frames == 118


def test_local_pretrained_weights_are_loaded(tmp_path):
    import timm

    torch.manual_seed(1)
    rgb = timm.create_model("efficientnet_b0", pretrained=False)  # an ImageNet-shaped checkpoint
    path = tmp_path / "effnet_b0.pth"
    torch.save(rgb.state_dict(), path)
    model = build_extractor(ModelConfig(backbone="efficientnet_b0", sections=["00"]), pretrained_weights=path)
    stem = model.encoder.body.conv_stem.weight
    assert stem.shape[1] == 1
    # timm folds the RGB filters into the one input channel
    torch.testing.assert_close(stem[:, 0], rgb.conv_stem.weight.sum(dim=1))
    torch.testing.assert_close(model.encoder.body.blocks[3][0].conv_pw.weight, rgb.blocks[3][0].conv_pw.weight)
    with pytest.raises(UserError, match="not found"):
        build_extractor(ModelConfig(sections=["00"]), pretrained_weights=tmp_path / "missing.pth")


# --- repeatability ---------------------------------------------------------------------------------


def test_resume_and_seed_reproduce_the_run(data_root, cache_dir, tmp_path):
    kw = dict(backbone="conformer", epochs=2, checkpoint_every=1, keep_checkpoints=0, mixup=True, validate_every=100)
    cfg_a = tiny_config(data_root, tmp_path / "a", cache_dir, **kw)
    run_a = train_extractor(cfg_a, progress=False)
    assert sorted(p.name for p in (run_a / "checkpoints").glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt"]

    # Resume a copy from the epoch-1 snapshot; no loss log is carried over, so rows
    # for epoch 1 reappearing would mean it trained from scratch.
    run_b = tmp_path / "b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copy(run_a / "config.json", run_b)
    shutil.copy(run_a / "split.json", run_b)
    shutil.copy(run_a / "checkpoints" / "epoch_0001.pt", run_b / "checkpoints" / "last.pt")
    train_extractor(replace(cfg_a, out=run_b, resume=True), progress=False)
    rows_a, rows_b = _rows(run_a / "losses.csv"), _rows(run_b / "losses.csv")
    assert {r["epoch"] for r in rows_b} == {"2"}
    assert rows_b == [r for r in rows_a if r["epoch"] == "2"]
    wa, wb = _weights(run_a), _weights(run_b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # Same seed from scratch: identical, even with DataLoader workers reading crops
    # from the files instead of memory (every random draw is the sampler's);
    # another seed: different.
    run_c = train_extractor(replace(cfg_a, out=tmp_path / "c", num_workers=2, memory_cache_mb=0), progress=False)
    assert _rows(run_c / "losses.csv") == rows_a
    run_d = train_extractor(replace(cfg_a, out=tmp_path / "d", seed=1, epochs=1), progress=False)
    assert _rows(run_d / "losses.csv")[0]["loss"] != rows_a[0]["loss"]

    # A finished run is not silently overwritten; resuming it needs the same settings.
    with pytest.raises(UserError, match="already holds"):
        train_extractor(cfg_a, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train_extractor(replace(cfg_a, resume=True, lr=1e-2), progress=False)


# --- batches ----------------------------------------------------------------------------------------


def _labels(data, cfg, slots):
    ds = CropDataset(data.table, len(data.sections), cfg.segment_samples)
    return [ds[s] for s in slots]


def test_domain_batches_follow_section_2_4(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path, cache_dir, batch_size=16)
    data = prepare_data(cfg)
    table = data.table
    sampler = OEBatchSampler(data.pools, table.lengths, cfg.segment_samples, BatchPlan.from_config(cfg), seed=0)
    assert len(sampler) == int(np.ceil(data.pools.source.size / 3))  # an epoch passes every source clip once
    seen_sources = []
    for slots in sampler:
        items = _labels(data, cfg, slots)
        normal = [s for s in slots if s[2] < 0 and table.normal[s[0]]]
        source = [s for s in normal if not table.target[s[0]]]
        target = [s for s in normal if table.target[s[0]]]
        pseudo_target = [s for s in slots if s[2] >= 0]
        anomalous = [s for s in slots if s[2] < 0 and not table.normal[s[0]]]
        # the normal quarter keeps Section 2.3's real target-domain clip
        assert len(normal) == 4 and len(target) == 1 and len(pseudo_target) == 4 and len(anomalous) == 8
        assert all(table.target[s[0]] and not table.normal[s[2]] for s in pseudo_target)
        seen_sources += [s[0] for s in source]
        for s, it in zip(slots, items):
            assert it["wave"].shape == (32000,)
            if s in pseudo_target:  # d = t = mixing ratio, section target = ratio * one-hot
                lam = s[4]
                assert it["t"].item() == pytest.approx(lam) and it["d"].item() == pytest.approx(lam)
                assert it["section"].sum().item() == pytest.approx(lam)
            elif s in source:
                assert it["t"] == 1 and it["d"] == 0 and it["section"].max() == 1
            elif s in target:
                assert it["t"] == 1 and it["d"] == 1 and it["section"].max() == 1
            else:
                assert it["t"] == 0 and it["d"] == 0 and it["section"].sum() == 0
    assert sorted(seen_sources) == sorted(data.pools.source.tolist())
    # repeatable per epoch, different across epochs
    assert list(sampler) == list(sampler)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_plain_and_mixup_batches(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path, cache_dir, batch_size=16, domain_head=False)
    data = prepare_data(cfg)
    table = data.table
    plan = BatchPlan.from_config(cfg)
    for slots in OEBatchSampler(data.pools, table.lengths, cfg.segment_samples, plan, seed=3):
        normals = [s for s in slots if table.normal[s[0]]]
        assert len(normals) == 8 and sum(table.target[s[0]] for s in normals) >= 1  # Section 2.3
        assert np.mean([it["t"].item() for it in _labels(data, cfg, slots)]) == 0.5  # t at 1:1
    mix = OEBatchSampler(data.pools, table.lengths, cfg.segment_samples, replace(plan, mixup=True), seed=3)
    slots = next(iter(mix))
    for s, it in zip(slots, _labels(data, cfg, slots)):
        clip, off, partner, poff, lam = s
        assert partner >= 0 and table.normal[clip] != table.normal[partner]
        w = lam if table.normal[clip] else 1 - lam
        assert it["t"].item() == pytest.approx(w) and it["section"].sum().item() == pytest.approx(w)
        a = table.audio[clip][off : off + 32000]
        b = table.audio[partner][poff : poff + 32000]
        np.testing.assert_allclose(it["wave"].numpy(), lam * a + (1 - lam) * b, rtol=1e-6, atol=1e-6)


def test_ddp_shards_cover_the_global_batch(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path, cache_dir, batch_size=16)
    data = prepare_data(cfg)
    args = (data.pools, data.table.lengths, cfg.segment_samples, BatchPlan.from_config(cfg), 5)
    whole = next(iter(OEBatchSampler(*args)))
    shards = [next(iter(OEBatchSampler(*args, rank=r, world_size=4))) for r in range(4)]
    assert all(len(s) == 4 for s in shards)
    assert sorted(x for s in shards for x in s) == sorted(whole)


# --- audio handling -------------------------------------------------------------------------------


def test_crops_are_slices_of_the_standardized_clip(data_root, tmp_path):
    path = sorted((data_root / "fan" / "train").glob("*.wav"))[0]
    cache = ClipStatsCache(tmp_path / "stats.sqlite")
    (stats,) = clip_statistics([path], cache)
    assert cache.get_many([ClipStatsCache.key(path)])[str(path.resolve())] == stats  # cached for next time
    cache.close()
    full = standardize(read_audio(path))
    for offset in (0, 1234, full.size - 32000):
        assert np.array_equal(read_crop(path, stats, offset, 32000), full[offset : offset + 32000])


def test_outliers_folder(data_root, cache_dir, tmp_path):
    rng = np.random.default_rng(0)
    outliers = tmp_path / "audioset" / "nested"
    outliers.mkdir(parents=True)
    sf.write(outliers / "ok.flac", 0.1 * rng.standard_normal(3 * SR), SR)
    sf.write(outliers / "short.wav", 0.1 * rng.standard_normal(SR), SR)
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir, outliers=tmp_path / "audioset")
    with pytest.warns(UserWarning, match="shorter than 2 s"):
        data = prepare_data(cfg)
    assert [data.table.path(i).name for i in data.pools.outliers] == ["ok.flac"]
    # another rate is resampled rather than refused (tests/test_outliers.py has the details)
    sf.write(outliers / "wrong_rate.wav", 0.1 * rng.standard_normal(3 * 8000), 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare_data(cfg)
    assert data.pools.outliers.size == 2 and data.table.n_samples[data.pools.outliers].tolist() == [48000, 48000]


def test_configuration_errors(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(DataError, match="no machine type 'valve'"):
        replace(cfg, machine="valve").validate()
    (data_root.parent / "empty" / "slider" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no .wav"):
        replace(cfg, data=data_root.parent / "empty", machine="slider").validate()
    with pytest.raises(ConfigError, match="backbone"):
        replace(cfg, backbone="resnet").validate()
    with pytest.raises(ConfigError, match="batch_size"):
        replace(cfg, batch_size=6).validate()
    with pytest.raises(DataError, match="no pseudo-anomalous"):
        prepare_data(replace(cfg, data=_only_fan(data_root, tmp_path), pseudo_synth=False))


def _only_fan(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "only_fan"
    shutil.copytree(data_root / "fan", root / "fan")
    return root


# --- channel augmentation ------------------------------------------------------------------------


def test_channel_curves_are_smooth_tilts_of_the_asked_spread():
    curves = channel_curves(4000, 224, 6.0, torch.Generator().manual_seed(3))
    assert curves.shape == (4000, 224)
    db = curves * 10.0 / np.log(10.0)  # natural-log power -> dB
    assert abs(float(db.std(dim=1).pow(2).mean().sqrt()) - 6.0) < 0.3
    assert float(db.mean(dim=1).abs().max()) < 0.2  # no level change: the clip's level is standardized away
    # smooth: no component above CHANNEL_COMPONENTS cosines over the bands
    spectrum = torch.fft.rfft(torch.cat([db, db.flip(1)], dim=1), dim=1).abs().mean(0)
    assert float(spectrum[CHANNEL_COMPONENTS + 2:].max()) < 0.02 * float(spectrum[1:CHANNEL_COMPONENTS + 1].max())
    again = channel_curves(4000, 224, 6.0, torch.Generator().manual_seed(3))
    assert torch.equal(curves, again)
    assert not torch.equal(curves, channel_curves(4000, 224, 6.0, torch.Generator().manual_seed(4)))


def test_channel_augmentation_changes_training_only(data_root, cache_dir, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", cache_dir)
    model = build_extractor(cfg.model_config(["00", "01", "02"])).eval()
    wave = torch.randn(2, SR)
    plain = TrainForward(model, amp=False)(wave)
    tilted = TrainForward(model, amp=False, channel_db=6.0, seed=1)(wave)
    assert not torch.allclose(plain["embedding"], tilted["embedding"])
    with pytest.raises(ConfigError, match="channel_db"):
        replace(cfg, channel_db=-1.0).validate()
    with pytest.raises(ConfigError, match="channel_db"):
        replace(cfg, channel_db=float("nan")).validate()


# --- losses ----------------------------------------------------------------------------------------


def test_losses_follow_the_equations():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    t = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.5])
    target = y * t[:, None]
    # Eq. 1 by hand: only t > 0 rows count, weighted by t, averaged over K and sum(t)
    bce = -(target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits)))
    expected = (t[:, None] * bce).sum() / (3 * t.sum())
    assert section_loss(logits, target, t).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[3:5] += 5.0  # pseudo-anomalous rows do not affect L_section
    assert section_loss(changed, target, t).item() == pytest.approx(expected.item(), rel=1e-6)
    # Eq. 5 weighted by t: pseudo-anomalous rows drop out of L_domain
    dlog, d = torch.randn(6), torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.5])
    moved = dlog.clone()
    moved[3:5] = 9.0
    assert domain_loss(dlog, d, t).item() == pytest.approx(domain_loss(moved, d, t).item())
    out = {"section_logits": logits, "machine_logit": torch.randn(6), "domain_logit": dlog}
    terms = oe_loss(out, t, target, d, LossWeights(lambda_section=10.0, lambda_domain=1.0))
    assert terms.total.item() == pytest.approx((terms.machine + 10 * terms.section + terms.domain).item())
    no_domain = oe_loss(out, t, target, None, LossWeights())
    assert no_domain.domain.item() == 0 and no_domain.total.item() == pytest.approx((terms.machine + 10 * terms.section).item())
    # Eq. 7
    assert target_probability(torch.tensor([0.15]), kappa=0.15).item() == pytest.approx(1 / (1 + np.exp(-1)))
