"""``edge-asd-export RUN --out BUNDLE``: one self-contained deployment bundle from a run.

The manifest states every number scoring needs (audio and segment geometry,
front-end parameters, embedding size, approach, aggregator, kappa,
standardization statistics, thresholds), so the device never needs the run.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_asd.io.audio import SAMPLE_RATE, SegmentSpec, amplitude_manifest, clip_segments
from edge_asd.io.features import LogMelStatsConfig
from edge_asd.runtime.bundle import npz_bytes, write_bundle
from edge_asd.runtime.manifest import (Amplitude, Audio, BandEvidenceSpec, Candidate, Detector, Engine, LogMelFrontEnd,
                                       Manifest, Member, ReferenceClipEntry, SectionNumbers, Selection, Split)
from edge_asd.errors import UserError
from edge_asd.runtime.onnx import OnnxBackend
from edge_asd.scoring.metrics import roc_auc
from edge_asd.scoring.clip_scores import score_clips, score_parts
from edge_asd.scoring.section import section_state
from edge_asd.scoring.stage2 import APPROACHES, Stage2Config
from edge_asd.scoring.drift import reference_quantiles
from edge_asd.scoring.bands import K_NEIGHBOURS, BandReference, fit_reference
from edge_asd.scoring.thresholds import fit_threshold

from train.data import run_spec

from .onnx_export import export_onnx, export_split, relative_error, torch_embed
from .precision import PRECISIONS, convert
from train.rundir import RunDir

log = logging.getLogger(__name__)
FORMATS = ("onnx", "tensorrt")
PARITY_TOLERANCE = 1e-4
FRONTEND_TOLERANCE = 1e-5  # the rFFT front end against frontend.onnx: max |difference| / max |log-mel|
REFERENCE_DIR = "references/"
DEFAULT_REFERENCE_CLIPS = 3
MAX_REFERENCE_CLIPS = 20
# Long enough to hear a machine's cycle and its tones, short enough that a clip is ~0.1 MB
# of FLAC (BENCHMARKS.md): 3 per section add well under 1 MB to a bundle of three sections.
REFERENCE_SECONDS = 5.0


def _run_config(run_dir: Path) -> dict:
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise UserError(f"{run_dir}: not a training run (no {run.config.name})")
    for needed in (run.split, run.stage2_root):
        if not needed.exists():
            raise UserError(f"{run_dir}: run is incomplete ({needed.name} missing; did edge-asd-train finish?)")
    return run.read_config()


def _sample_segments(paths: list[Path], spec: SegmentSpec, limit_clips: int) -> np.ndarray:
    chosen = paths[:limit_clips]
    return np.concatenate([clip_segments(p, spec) for p in chosen]) if chosen else np.zeros((0, spec.segment_samples), np.float32)


def _embed_clips_ort(backend: OnnxBackend, paths: list[Path], spec: SegmentSpec) -> tuple[np.ndarray, np.ndarray]:
    embs, logits = [], []
    for p in paths:
        e, l = backend.run(clip_segments(p, spec))
        embs.append(e)
        logits.append(l)
    return np.stack(embs), np.stack(logits)


def _proxy_auc(approach: str, held: dict, oof: dict, pseudo: dict, sections: dict, cfg: Stage2Config) -> float:
    """Held-out normals against pseudo-anomalous clips: a label-free quality check.

    Real anomalies are not available at export time; the other machines' clips
    are the same outliers the extractor was exposed to, which is enough to see
    what a precision change costs and to rank ensemble members. The normals'
    scores are out of fold, as for the threshold: in-sample scores of a KNN's
    own bank would flatter every member alike.
    """
    keys = ["all"] if approach == "generalization" else ["source", "target"]
    hnames = held["names"].tolist()
    normal_scores, other_scores = [], []
    for section, model in sections.items():
        idx = [hnames.index(n) for n in oof[f"{section}/names"].tolist()]
        parts = {k: oof[f"{section}/{k}"] for k in keys}
        normal_scores.append(score_parts([parts], [held["domain_logits"][idx]], cfg.kappa, approach)[0])
        other_scores.append(score_clips([model], [pseudo["embeddings"]], [pseudo["domain_logits"]], aggregator=cfg.aggregator,
                                        kappa=cfg.kappa, approach=approach)[0])
    y = np.r_[np.zeros(sum(map(len, normal_scores))), np.ones(sum(map(len, other_scores)))]
    return float(roc_auc(y, np.r_[np.concatenate(normal_scores), np.concatenate(other_scores)]))


@dataclass
class _PackedMember:
    """One exported extractor with its fitted stage 2, ready to pack."""

    member: Member  # its manifest entry
    files: dict[str, bytes]
    s2cfg: Stage2Config
    held: dict[str, np.ndarray]  # held-out normals as the deployed model embeds them
    oof: dict[str, np.ndarray]  # out-of-fold standardized parts per "<section>/<domain key>"
    config: dict
    clip_seconds: float
    precision_report: dict
    spec: SegmentSpec | None = None  # None: the plain system, which takes the clip as recorded


def _stage2_files(prefix: str, sections: dict, held: dict) -> tuple[dict[str, bytes], dict[str, SectionNumbers]]:
    """A member's detector state and the normals it was fitted on, and the manifest's numbers per section.

    The normals travel with the bundle so that on-device enrollment can refit a
    domain's model (GMM, LOF) and its standardization exactly as the desktop
    did; a few hundred KB at most.
    """
    arrays: dict[str, np.ndarray] = {}
    member_sections: dict[str, SectionNumbers] = {}
    for section, model in sections.items():
        a, numbers = section_state(model)
        arrays.update(a)
        member_sections[section] = SectionNumbers.from_dict(numbers)
    normals = {k: held[k] for k in ("names", "sections", "domains", "embeddings", "domain_logits")}
    return {prefix + "detectors.npz": npz_bytes(arrays), prefix + "heldout.npz": npz_bytes(normals)}, member_sections


def _build_plain_member(run_dir: Path, index: int, data_root: Path | None) -> _PackedMember:
    """The plain system: numpy features from the raw clip, no model file, its own stage 2."""
    from train.plain import plain_embeddings
    from train.stage2 import bank_clips, embed_normals, load_stage2

    config = _run_config(run_dir)
    data_root = Path(data_root or config["data"])
    prefix = f"members/m{index}/"
    s2cfg, sections = load_stage2(run_dir, "generalization")
    held = embed_normals(run_dir, data_root, s2cfg.bank, progress=False)
    with np.load(RunDir(run_dir).oof("generalization"), allow_pickle=False) as z:
        oof = {k: z[k] for k in z.files}
    report: dict = {}
    pseudo_paths = _pseudo_anomalous_paths(data_root, config["machine"], 24)
    if pseudo_paths:
        pe, pl = plain_embeddings(run_dir, pseudo_paths)
        report["proxy_auc_fp32"] = _proxy_auc("generalization", held, oof, {"embeddings": pe, "domain_logits": pl}, sections, s2cfg)
    files, member_sections = _stage2_files(prefix, sections, held)
    member = Member(
        name=f"m{index}",
        run=str(run_dir),
        system="plain",
        machine_type=config["machine"],
        features=LogMelStatsConfig.from_dict(config["features"]),
        amplitude=Amplitude("raw"),  # it hears the clip as recorded
        domain_head=False,
        embedding_dim=int(held["embeddings"].shape[-1]),
        state=prefix + "detectors.npz",
        heldout=prefix + "heldout.npz",
        detector=Detector(s2cfg.detector, dict(s2cfg.detector_params)),
        stage2=s2cfg,
        sections=member_sections,
    )
    paths = [data_root / c["path"] for c in bank_clips(run_dir, s2cfg.bank)]
    return _PackedMember(member, files, s2cfg, held, oof, config, _clip_seconds(paths), {"fp32_parity_relative_error": 0.0, **report})


def _build_member(run_dir: Path, index: int, fmt: str, precision: str, approach: str | None, data_root: Path | None) -> _PackedMember:
    from train.embed import load_extractor
    from train.plain import is_plain_run
    from train.stage2 import bank_clips, embed_normals, fit_stage2, load_stage2

    run_dir = Path(run_dir)
    if is_plain_run(run_dir):
        return _build_plain_member(run_dir, index, data_root)
    config = _run_config(run_dir)
    approach = approach or RunDir(run_dir).default_approach()
    if approach not in APPROACHES:
        raise UserError(f"approach must be one of {', '.join(APPROACHES)}")
    data_root = Path(data_root or config["data"])
    machine = config["machine"]
    spec = run_spec(run_dir)
    prefix = f"members/m{index}/"

    if not RunDir(run_dir).stage2_json(approach).is_file():
        raise UserError(f"{run_dir}: stage 2 was not fitted for {approach} (see the training log for why)")
    s2cfg, sections = load_stage2(run_dir, approach)
    extractor = load_extractor(run_dir, device="cpu")
    onnx_fp32 = export_onnx(extractor, spec.segment_samples)
    held_clips = bank_clips(run_dir, s2cfg.bank)
    held_paths = [data_root / c["path"] for c in held_clips]
    probe = _sample_segments(held_paths, spec, 2)
    ref_emb, _ = torch_embed(extractor, probe)
    got_emb, _ = OnnxBackend(onnx_fp32).run(probe)
    parity = relative_error(ref_emb, got_emb)
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export disagrees with torch: relative error {parity:.2e} > {PARITY_TOLERANCE:.0e}")
    log.info("%s: ONNX parity with torch: max relative error %.2e", run_dir, parity)

    held = embed_normals(run_dir, data_root, s2cfg.bank, progress=False)  # cached by edge-asd-train
    with np.load(RunDir(run_dir).oof(approach), allow_pickle=False) as z:
        oof = {k: z[k] for k in z.files}
    model_bytes = onnx_fp32
    precision_report: dict = {"fp32_parity_relative_error": parity}
    calibration = None
    if precision == "int8":
        calib_paths = [data_root / c["path"] for c in RunDir(run_dir).read_split()["clips"] if c["split"] == "train"]
        rng = np.random.default_rng(0)
        calib_paths = [calib_paths[i] for i in rng.permutation(len(calib_paths))[:16]]
        calibration = _sample_segments(calib_paths, spec, 16)
    if precision != "fp32":
        model_bytes = convert(onnx_fp32, precision, calibration, extractor=extractor)
        # The detectors must model the embeddings the deployed model produces, so
        # stage 2 is refitted on the reduced-precision model's embeddings.
        lowp = OnnxBackend(model_bytes)
        full = OnnxBackend(onnx_fp32)
        emb_l, log_l = _embed_clips_ort(lowp, held_paths, spec)
        held_l = {
            "names": np.array([c["name"] for c in held_clips]),
            "sections": np.array([c["section"] for c in held_clips]),
            "domains": np.array([c["domain"] for c in held_clips]),
            "embeddings": emb_l,
            "domain_logits": log_l,
        }
        emb_f, log_f = _embed_clips_ort(full, held_paths, spec)
        held_f = {**held_l, "embeddings": emb_f, "domain_logits": log_f}
        pseudo_paths = _pseudo_anomalous_paths(data_root, machine, 24)
        oof_f = oof
        with tempfile.TemporaryDirectory() as tmp:
            tmp_run = Path(tmp)
            fit_stage2(tmp_run, held_l, s2cfg)
            _, sections_l = load_stage2(tmp_run, approach)
            with np.load(RunDir(tmp_run).oof(approach), allow_pickle=False) as z:
                oof = {k: z[k] for k in z.files}
        auc_report = {}
        if pseudo_paths:
            pe_l, pl_l = _embed_clips_ort(lowp, pseudo_paths, spec)
            pe_f, pl_f = _embed_clips_ort(full, pseudo_paths, spec)
            auc_f = _proxy_auc(approach, held_f, oof_f, {"embeddings": pe_f, "domain_logits": pl_f}, sections, s2cfg)
            auc_l = _proxy_auc(approach, held_l, oof, {"embeddings": pe_l, "domain_logits": pl_l}, sections_l, s2cfg)
            auc_report = {"proxy_auc_fp32": auc_f, f"proxy_auc_{precision}": auc_l, "proxy_auc_change": auc_l - auc_f}
        precision_report.update(
            {
                "embedding_relative_error": relative_error(emb_f.reshape(-1, emb_f.shape[-1]), emb_l.reshape(-1, emb_l.shape[-1])),
                **auc_report,
            }
        )
        sections = sections_l
        held = held_l
        log.info("precision %s: %s", precision, precision_report)
    else:
        pseudo_paths = _pseudo_anomalous_paths(data_root, machine, 24)
        if pseudo_paths:
            pe, pl = _embed_clips_ort(OnnxBackend(onnx_fp32), pseudo_paths, spec)
            # A label-free quality figure of the member, for choosing ensemble members.
            precision_report["proxy_auc_fp32"] = _proxy_auc(
                approach, held, oof, {"embeddings": pe, "domain_logits": pl}, sections, s2cfg
            )

    files, member_sections = _stage2_files(prefix, sections, held)
    files[prefix + "extractor.onnx"] = model_bytes
    split = None
    if precision == "fp32" and extractor.frame_sliceable:
        fe, enc, frames = export_split(extractor, spec.segment_samples)
        files[prefix + "frontend.onnx"] = fe
        files[prefix + "encoder.onnx"] = enc
        logmel, input_norm = _rfft_frontend(extractor, fe, held_paths[:1], spec, prefix, files, precision_report)
        split = Split(prefix + "frontend.onnx", prefix + "encoder.onnx", frames, spec.align, logmel, input_norm)
    engine = engine_source = calibration_cache = None
    if fmt == "tensorrt":
        from edge_asd.runtime.trt import build_engine

        source = model_bytes
        cache_path = None
        with tempfile.TemporaryDirectory() as tmp:
            if precision == "int8":
                # TensorRT quantizes the fp32 model itself (see edge_asd.runtime.trt.engine_source);
                # the cache lets `edge-asd build-engine` redo it on the device without the data.
                source = onnx_fp32
                files[prefix + "extractor.fp32.onnx"] = onnx_fp32
                engine_source = prefix + "extractor.fp32.onnx"
                cache_path = Path(tmp) / "calibration.cache"
            engine_bytes, meta = build_engine(source, precision=precision, max_batch=spec.n_segments,
                                              segment_samples=spec.segment_samples, calibration_segments=calibration,
                                              calibration_cache=cache_path)
            if cache_path is not None and cache_path.exists():
                files[prefix + "calibration.cache"] = cache_path.read_bytes()
                calibration_cache = prefix + "calibration.cache"
        files[prefix + "extractor.engine"] = engine_bytes
        engine = Engine(prefix + "extractor.engine", meta)
    member = Member(
        name=f"m{index}",
        run=str(run_dir),
        machine_type=machine,
        backbone=config.get("backbone"),
        seed=config.get("seed"),
        embedding_dim=int(ref_emb.shape[1]),
        model=prefix + "extractor.onnx",
        precision=precision,
        state=prefix + "detectors.npz",
        heldout=prefix + "heldout.npz",
        detector=Detector(s2cfg.detector, dict(s2cfg.detector_params)),
        stage2=s2cfg,
        amplitude=Amplitude.parse(amplitude_manifest(spec)),
        domain_head=bool(config.get("domain_head", True)),
        sections=member_sections,
        split=split,
        engine=engine,
        engine_source=engine_source,
        calibration_cache=calibration_cache,
    )
    return _PackedMember(member, files, s2cfg, held, oof, config, _clip_seconds(held_paths), precision_report, spec)


def _rfft_frontend(extractor, frontend_onnx: bytes, paths: list[Path], spec: SegmentSpec, prefix: str,
                   files: dict[str, bytes], report: dict) -> tuple[LogMelFrontEnd | None, str | None]:
    """The numbers of the CPU's rFFT front end, once it agrees with ``frontend.onnx`` on a real clip.

    Adds its file to ``files`` and its parity to ``report``; where it disagrees
    (it never has) the bundle keeps the graph on the CPU, slower but right.
    """
    from edge_asd.io.audio import normalize, read_audio
    from edge_asd.runtime.frontend import FFTFrontEnd
    from edge_asd.runtime.manifest import LogMelFrontEnd
    from edge_asd.runtime.onnx import OnnxFrontEnd

    from .onnx_export import input_norm_affine

    logmel = extractor.frontend.config()
    scale, shift = input_norm_affine(extractor)
    if paths:
        wave = normalize(read_audio(paths[0], spec.sample_rate, min_seconds=spec.segment_seconds), spec)
    else:
        wave = np.random.default_rng(0).standard_normal(spec.segment_samples * 2).astype(np.float32)
    graph = OnnxFrontEnd(frontend_onnx, int(logmel["n_fft"]), int(logmel["hop_length"]))(wave)
    fft = FFTFrontEnd(LogMelFrontEnd.from_dict(logmel), scale, shift)(wave)
    parity = relative_error(graph, fft)
    report["frontend_rfft_relative_error"] = parity
    if parity > FRONTEND_TOLERANCE:
        log.warning("rFFT front end disagrees with frontend.onnx (relative error %.1e > %.0e): the bundle keeps the "
                    "graph on the CPU", parity, FRONTEND_TOLERANCE)
        return None, None
    files[prefix + "input_norm.npz"] = npz_bytes({"scale": scale, "shift": shift})
    return LogMelFrontEnd.from_dict(logmel), prefix + "input_norm.npz"


def _part_keys(member: _PackedMember) -> list[str]:
    return ["all"] if member.s2cfg.approach == "generalization" else ["source", "target"]


def _reference_scores(members: list[_PackedMember], approach: str) -> dict[str, np.ndarray]:
    """Per section, the (ensemble's) final out-of-fold scores of held-out normals.

    They fit the threshold, as for a single system, and their quantiles are the
    daemon's reference for drift monitoring. An ensemble combines its members
    (2.5) on the held-out clips all of them share; members trained on different
    splits share few, and a section with fewer than 4 such clips is left out
    (its threshold is then the mean of the members').
    """
    cfg = members[0].s2cfg
    out = {}
    for section in sorted(members[0].member.sections):
        common = sorted(set.intersection(*[set(m.oof[f"{section}/names"].tolist()) for m in members]))
        if len(common) < 4:
            continue
        parts, logits = [], []
        for m in members:
            names = m.oof[f"{section}/names"].tolist()
            idx = [names.index(n) for n in common]
            parts.append({k: m.oof[f"{section}/{k}"][idx] for k in _part_keys(m)})
            hnames = m.held["names"].tolist()
            logits.append(m.held["domain_logits"][[hnames.index(n) for n in common]] if m.member.has_domain_head else None)
        out[section] = score_parts(parts, logits, cfg.kappa, approach)[0]
    return out


SELECT_BY = ("proxy", "validation")


def build_bundle(
    run_dir: Path | list[Path],
    out: Path,
    fmt: str = "onnx",
    precision: str = "fp32",
    approach: str | None = None,
    data_root: Path | None = None,
    progress: bool = True,
    select: int | None = None,
    select_by: str | None = None,
    validation: list[Path] | None = None,
    with_plain: bool = False,
    reference_clips: int = DEFAULT_REFERENCE_CLIPS,
) -> Path:
    """One bundle from one run, or an ensemble bundle (report 2.5) from several runs of a machine type.

    With ``select`` K, only the K best of the runs go in. The report picked its
    members by their test scores, which a product cannot see; here they are
    ranked by the label-free proxy AUC (``select_by="proxy"``: held-out normals
    against other machines' clips) or, when the user has labelled clips in the
    DCASE naming, by the official score on those (``"validation"``). Every
    candidate's figure is recorded in the manifest's ``selection`` block.
    """

    check_reference_clips(reference_clips)
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
    runs = [Path(r) for r in (run_dir if isinstance(run_dir, (list, tuple)) else [run_dir])]
    if not validation:
        validation = _known_faults(runs[0], data_root) or None
    select_by = select_by or ("validation" if validation else "proxy")
    if select_by not in SELECT_BY:
        raise UserError(f"--select-by must be one of {', '.join(SELECT_BY)}")
    if select is not None and not 1 <= select <= len(runs):
        raise UserError(f"--select {select}: choose between 1 and the {len(runs)} run(s) given")
    if select_by == "validation" and not validation:
        raise UserError("--select-by validation needs --validation PATH (labelled clips in the DCASE naming)")
    for r in runs:
        _run_config(r)
    approach = approach or RunDir(runs[0]).default_approach()
    gate = _gate_of(runs) if with_plain and select is None else None
    if gate is not None and gate["decision"] == "plain":
        plain = _plain_member_of(runs, 0, data_root)
        if plain:
            # a gate.json without figures: no section had the held-out normals to check the learned member with
            finding = ("could not check the learned member (too few normal clips held out from stage 1)"
                       if gate["auc_plain"] is None else
                       f"found the learned member no help (AUC plain {gate['auc_plain']:.3f}, ensemble "
                       f"{gate['auc_ensemble']:.3f})")
            log.info("%s: the training-time no-regret check %s: the bundle is the plain system alone (give --no-plain "
                     "for the learned member alone)", runs[0], finding)
            manifest, files = _assemble(plain, "generalization", data_root, reference_clips=reference_clips)
            path = write_bundle(out, replace(manifest, gate=gate), files)
            if progress:
                print(f"wrote {path} (the plain system alone, by the no-regret check of {RunDir(runs[0]).gate})")
                _print_validation(path, validation)
            return path
    members = [_build_member(r, i, fmt, precision, approach, data_root) for i, r in enumerate(runs)]
    first = members[0]
    for m in members[1:]:
        shared = [
            ("machine type", m.member.machine_type, first.member.machine_type),
            ("sections", sorted(m.member.sections), sorted(first.member.sections)),
        ]
        if not (m.member.is_plain or first.member.is_plain):
            # the plain system has one vector per clip and no domain classifier: nothing to share
            shared += [("aggregator", m.s2cfg.aggregator, first.s2cfg.aggregator), ("kappa", m.s2cfg.kappa, first.s2cfg.kappa),
                       ("amplitude normalization", m.spec.level, first.spec.level),
                       ("segment length (s)", m.spec.segment_seconds, first.spec.segment_seconds),
                       ("segments per clip", m.spec.n_segments, first.spec.n_segments)]
        for what, a, b in shared:
            if a != b:
                raise UserError(f"{m.member.run}: {what} {a} differs from {first.member.run}'s {b}; ensemble members must share it")
    selection = None
    if select is not None:
        members, selection = _select(members, select, select_by, validation or [], approach, precision)
    if with_plain:
        members += _plain_member_of(runs, len(members), data_root)
    manifest, files = _assemble(members, approach, data_root, reference_clips=reference_clips)
    path = write_bundle(out, replace(manifest, selection=selection, gate=gate), files)
    if progress:
        parity = max(m.precision_report["fp32_parity_relative_error"] for m in members)
        chosen = f", chosen by {select_by} from {len(runs)}" if selection else ""
        print(f"wrote {path} ({approach}, {precision}, {fmt}, {len(members)} member(s){chosen}); ONNX parity {parity:.1e}")
        _print_validation(path, validation)
    return path


def _known_faults(run_dir: Path, data_root: Path | None) -> list[Path]:
    """The user's imported labelled test clips (import.csv) of the run's machine type: validation by default."""
    from edge_asd.io.clipset import known_fault_clips

    cfg = _run_config(run_dir)
    data = Path(data_root or cfg["data"])
    clips = known_fault_clips(data, cfg["machine"])
    if clips:
        log.info("validation: the %d imported labelled test clips of %s (import.csv)", len(clips),
                 data / cfg["machine"] / "test")
    return clips


def _print_validation(bundle: Path, validation: list[Path] | None) -> None:
    """The exported bundle's official score on the validation clips, scored as the device scores them."""
    if validation:
        score = _official_score(bundle, validation)
        print(f"{bundle}: official score {score:.3f} on the validation clips ({', '.join(map(str, validation[:3]))}"
              f"{', ...' if len(validation) > 3 else ''})")


def _assemble(members: list[_PackedMember], approach: str, data_root: Path | None = None,
              with_bands: bool = True, reference_clips: int = 0) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and files of a bundle of these members (band evidence and reference clips: not for a
    candidate's trial bundle)."""
    from train.config import TrainConfig

    first = members[0]
    reference = _reference_scores(members, approach)
    thresholds = {
        s: float(fit_threshold(reference[s], first.s2cfg.threshold_rule))
        if s in reference
        else float(np.mean([m.member.sections[s].threshold for m in members]))
        for s in first.member.sections
    }
    learned = [m for m in members if not m.member.is_plain]
    # the extractors' segments (members share them, checked above); a plain-only bundle states the default
    spec = learned[0].spec if learned else SegmentSpec()
    manifest = Manifest(
        bundle_id="",  # write_bundle names the content, dates it and lists its files
        created="",
        files={},
        machine_type=first.member.machine_type,
        sections=tuple(sorted(first.member.sections)),
        # the extractors' amplitude (a plain member states "raw" itself: it hears the clip as recorded)
        audio=Audio.of_spec(spec, first.clip_seconds, learned[0].member.amplitude if learned else Amplitude("raw")),
        frontend=LogMelFrontEnd.from_dict(TrainConfig.from_dict(learned[0].config, ignore_unknown=True).frontend_dict())
        if learned else first.member.features,
        embedding_dim=(learned[0] if learned else first).member.embedding_dim,
        approach=approach,
        aggregator=(learned[0] if learned else first).s2cfg.aggregator,
        kappa=first.s2cfg.kappa,
        threshold_rule=first.s2cfg.threshold_rule,
        thresholds=thresholds,
        reference_quantiles={s: reference_quantiles(v) for s, v in reference.items()},
        # 0 of the runtime's ratio (1 is the threshold): the median of the same held-out normals
        reference_medians={s: float(np.median(v)) for s, v in reference.items()},
        stage2=first.s2cfg,
        precision=first.precision_report if len(members) == 1 else {m.member.name: m.precision_report for m in members},
        members=tuple(m.member for m in members),
    )
    files = {k: v for m in members for k, v in m.files.items()}
    if with_bands or reference_clips:
        cfg, normals = _normals_by_section(members, data_root)
        bands = _band_evidence(cfg, normals) if with_bands else None
        if bands is not None:
            evidence, files[BANDS_FILE] = bands
            manifest = replace(manifest, band_evidence=evidence)
        if reference_clips:
            listing, clips = _reference_clips(normals, reference_clips)
            manifest = replace(manifest, reference_clips=listing)
            files.update(clips)
    return manifest, files


BANDS_FILE = "bands.npz"
# A section's normals beyond this many are thinned evenly: 1000 clips are 0.5 MB in
# the bundle and a 0.1 ms search on the device, and more add little to a neighbour's mean.
MAX_BAND_CLIPS = 1000


@dataclass(frozen=True)
class _SectionNormals:
    """A section's normal training clips and their plain features, read once for band evidence and references."""

    paths: list[Path]
    domains: list[str]
    features: np.ndarray  # [n, cfg.dim]


def _normals_by_section(members: list[_PackedMember], data_root: Path | None):
    """The plain feature settings and, per section, its normal training clips (thinned) with their features.

    The plain member's feature settings where the bundle has one (its features
    are then computed once per clip on the device), the plain defaults otherwise.
    """
    from edge_asd.io.features import LogMelStats, LogMelStatsConfig
    from train.plain import clip_features
    from train.stage2 import split_clips

    plain = [m for m in members if m.member.is_plain]
    cfg = plain[0].member.features if plain else LogMelStatsConfig()
    run = Path(members[0].member.run)
    root = Path(data_root or members[0].config["data"])
    by_section: dict[str, list[dict]] = {}
    for c in split_clips(run):
        by_section.setdefault(c["section"], []).append(c)
    out: dict[str, _SectionNormals] = {}
    for section in sorted(members[0].member.sections):
        clips = by_section.get(section, [])
        if len(clips) > MAX_BAND_CLIPS:
            clips = [clips[i] for i in np.linspace(0, len(clips) - 1, MAX_BAND_CLIPS).astype(int)]
        paths = [root / c["path"] for c in clips]
        features = clip_features(paths, LogMelStats(cfg))[:, 0] if paths else np.zeros((0, cfg.dim), np.float32)
        out[section] = _SectionNormals(paths, [c.get("domain") or "source" for c in clips], features)
    return cfg, out


def _band_evidence(cfg, normals: dict[str, _SectionNormals]) -> tuple[BandEvidenceSpec, bytes] | None:
    """Per section, the normal training clips' plain features the device compares each clip's bands with.

    None where no section has the 3 normal clips it needs.
    """
    arrays: dict[str, np.ndarray] = {}
    sections = []
    for section, n in normals.items():
        if len(n.paths) < 3:
            log.info("section %s: %d normal clip(s), too few for band evidence (3 needed)", section, len(n.paths))
            continue
        ref: BandReference = fit_reference(n.features, cfg, K_NEIGHBOURS)
        arrays.update(ref.arrays(f"{section}/"))
        sections.append(section)
    if not sections:
        return None
    return BandEvidenceSpec(BANDS_FILE, cfg, K_NEIGHBOURS, tuple(sections)), npz_bytes(arrays)


def typical_normals(features: np.ndarray, domains: list[str], n: int) -> list[int]:
    """The indices of ``n`` clips that sound most like the section's normal, domains taken in turn.

    "Typical" is the distance to the component-wise median of the clip's domain,
    in plain features z-scored over the section: the median is not pulled by an
    odd clip (a door slam, a mislabelled recording), and the clips nearest it are
    the ones a technician should compare a fault with. Domains alternate (source
    first) so that a target-domain machine has a reference of its own condition.
    """
    f = np.asarray(features, dtype=np.float64)
    if not len(f) or n <= 0:
        return []
    z = (f - f.mean(axis=0)) / np.maximum(f.std(axis=0), 1e-6)
    order: dict[str, list[int]] = {}
    for dom in sorted(set(domains), key=lambda d: (d != "source", d)):
        idx = np.array([i for i, d in enumerate(domains) if d == dom])
        dist = np.linalg.norm(z[idx] - np.median(z[idx], axis=0), axis=1)
        order[dom] = idx[np.argsort(dist, kind="stable")].tolist()
    chosen: list[int] = []
    while len(chosen) < min(n, len(f)):
        for ranked in order.values():
            if ranked and len(chosen) < n:
                chosen.append(ranked.pop(0))
    return chosen


def _reference_clips(normals: dict[str, _SectionNormals], n: int
                     ) -> tuple[dict[str, tuple[ReferenceClipEntry, ...]], dict[str, bytes]]:
    """Up to ``n`` typical normal clips per section as FLAC (the first :data:`REFERENCE_SECONDS`), and their list."""
    import soundfile as sf

    from edge_asd.io.audio import read_audio

    listing: dict[str, tuple[ReferenceClipEntry, ...]] = {}
    files: dict[str, bytes] = {}
    for section, normals_of in normals.items():
        for rank, i in enumerate(typical_normals(normals_of.features, normals_of.domains, n)):
            x = read_audio(normals_of.paths[i])
            x = x[: int(REFERENCE_SECONDS * SAMPLE_RATE)]
            name = f"{REFERENCE_DIR}section_{section}_{rank:02d}.flac"
            buf = io.BytesIO()
            sf.write(buf, x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            files[name] = buf.getvalue()
            entry = ReferenceClipEntry(name, round(x.size / SAMPLE_RATE, 3), normals_of.domains[i], normals_of.paths[i].name)
            listing[section] = (*listing.get(section, ()), entry)
    return listing, files


def check_reference_clips(n: int) -> int:
    """``--reference-clips``: a whole number from 0 (none) to :data:`MAX_REFERENCE_CLIPS`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REFERENCE_CLIPS:
        raise UserError(f"--reference-clips {n!r}: give a whole number from 0 (none) to {MAX_REFERENCE_CLIPS}")
    return n


def _gate_of(runs: list[Path]) -> dict | None:
    """The no-regret decision edge-asd-train wrote beside a single run (train/gate.py), if any."""
    return RunDir(runs[0]).read_gate() if len(runs) == 1 else None


def _plain_member_of(runs: list[Path], index: int, data_root: Path | None) -> list[_PackedMember]:
    """The plain system fitted beside the first run (RUN/baseline/plain), as one more ensemble member.

    Its standardized score averaged with the learned systems' beat each of them
    alone in the quality benchmark (BENCHMARKS.md), at ~3 ms of numpy per clip.
    """
    from train.plain import is_plain_run

    if any(is_plain_run(r) for r in runs):
        return []
    plain = RunDir(runs[0]).plain
    if not is_plain_run(plain):
        log.info("%s: no plain system beside the run (trained with --no-plain-baseline); exporting without it", runs[0])
        return []
    return [_build_plain_member(plain, index, data_root)]


def _select(
    members: list[_PackedMember], k: int, by: str, validation: list[Path], approach: str, precision: str
) -> tuple[list[_PackedMember], Selection]:
    """The ``k`` best members by the chosen criterion, in their original order, and the record of the choice."""
    if by == "proxy":
        key = f"proxy_auc_{precision}"
        figures = [m.precision_report.get(key) for m in members]
        if any(f is None for f in figures):
            raise UserError(
                "label-free selection needs other machine types' clips in DATA to score against; "
                "give labelled clips with --validation PATH instead"
            )
        criterion = f"proxy AUC ({precision}): held-out normals against other machine types' clips"
    else:
        figures = [_validation_score(m, approach, validation) for m in members]
        criterion = "official score (harmonic mean of AUC(source), AUC(target), pAUC) on " + ", ".join(map(str, validation))
    order = sorted(range(len(members)), key=lambda i: -figures[i])
    keep = sorted(order[:k])
    record = Selection(criterion, k, tuple(Candidate(m.member.run, m.member.name, float(f), i in keep)
                                           for i, (m, f) in enumerate(zip(members, figures))))
    log.info("ensemble selection by %s: %s", by, record.candidates)
    return [members[i] for i in keep], record


def _validation_score(member: _PackedMember, approach: str, validation: list[Path]) -> float:
    """The official score of one member alone on the user's labelled clips, scored as the device would."""
    manifest, files = _assemble([member], approach, with_bands=False)
    with tempfile.TemporaryDirectory() as tmp:
        return _official_score(write_bundle(Path(tmp) / "member.asd", manifest, files), validation)


def _official_score(bundle: Path, validation: list[Path]) -> float:
    """The official score of a bundle on labelled clips, scored by ``edge-asd score`` as on the device."""
    from edge_asd.scoring.metrics import evaluate_dir
    from edge_asd.offline.score import score_paths

    with tempfile.TemporaryDirectory() as tmp:
        score_paths(bundle, validation, Path(tmp) / "sub", backend="onnx-cpu", progress=False)
        try:
            return float(evaluate_dir(Path(tmp) / "sub")["official_score"])
        except UserError as exc:
            raise UserError(f"--validation: {exc}") from None


def _clip_seconds(paths: list[Path]) -> float:
    """The clip length the detectors were fitted on: what the daemon should cut."""
    import soundfile as sf

    return round(float(sf.info(str(paths[0])).duration), 3) if paths else 10.0


def _pseudo_anomalous_paths(data_root: Path, machine: str, limit: int) -> list[Path]:
    from edge_asd.io.dcase import list_clips, list_machines

    others = [m for m in list_machines(data_root) if m != machine]
    paths: list[Path] = []
    for m in others:
        try:
            paths.extend(c.path for c in list_clips(data_root, m, "train")[: max(1, limit // max(1, len(others)))])
        except UserError:
            continue
    return paths[:limit]
