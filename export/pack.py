"""``edge-asd-export RUN --out BUNDLE``: one self-contained deployment bundle from a run.

The manifest states every number scoring needs (audio and segment geometry,
front-end parameters, embedding size, approach, aggregator, kappa,
standardization statistics, thresholds), so the device never needs the run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edge_asd.audio import SegmentSpec, clip_segments
from edge_asd.bundle import npz_bytes, write_bundle
from edge_asd.errors import UserError
from edge_asd.inference import OnnxBackend
from edge_asd.metrics import roc_auc
from edge_asd.scoring import APPROACHES, Stage2Config, combine_parts, p_target, section_parts, section_state

from .onnx_export import export_onnx, relative_error, torch_embed
from .precision import PRECISIONS, convert

log = logging.getLogger(__name__)
FORMATS = ("onnx", "tensorrt")
PARITY_TOLERANCE = 1e-4


def _run_config(run_dir: Path) -> dict:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir}: not a training run (no config.json)")
    for needed in ("split.json", "stage2"):
        if not (run_dir / needed).exists():
            raise UserError(f"{run_dir}: run is incomplete ({needed} missing; did edge-asd-train finish?)")
    return json.loads(cfg_path.read_text())


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


def _proxy_auc(run_dir: Path, approach: str, held: dict, pseudo: dict, sections: dict, cfg: Stage2Config) -> float:
    """Held-out normals against pseudo-anomalous clips: a label-free quality check.

    Real anomalies are not available at export time; the other machines' clips
    are the same outliers the extractor was exposed to, which is enough to see
    what a precision change costs.
    """
    normal_scores, other_scores = [], []
    for section, model in sections.items():
        sel = held["sections"] == section
        parts = section_parts(model, held["embeddings"][sel], cfg.aggregator)
        normal_scores.append(combine_parts([parts], p_target(held["domain_logits"][sel], cfg.kappa), approach))
        parts = section_parts(model, pseudo["embeddings"], cfg.aggregator)
        other_scores.append(combine_parts([parts], p_target(pseudo["domain_logits"], cfg.kappa), approach))
    y = np.r_[np.zeros(sum(map(len, normal_scores))), np.ones(sum(map(len, other_scores)))]
    return float(roc_auc(y, np.r_[np.concatenate(normal_scores), np.concatenate(other_scores)]))


def build_bundle(
    run_dir: Path,
    out: Path,
    fmt: str = "onnx",
    precision: str = "fp32",
    approach: str | None = None,
    data_root: Path | None = None,
    progress: bool = True,
) -> Path:
    from train.embed import load_extractor
    from train.config import TrainConfig
    from train.stage2 import default_approach, embed_heldout, fit_stage2, heldout_clips, load_stage2

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    approach = approach or default_approach(run_dir)
    if approach not in APPROACHES:
        raise UserError(f"approach must be one of {', '.join(APPROACHES)}")
    data_root = Path(data_root or config["data"])
    machine = config["machine"]
    spec = SegmentSpec()

    extractor = load_extractor(run_dir, device="cpu")
    onnx_fp32 = export_onnx(extractor, spec.segment_samples)
    held_clips = heldout_clips(run_dir)
    held_paths = [data_root / c["path"] for c in held_clips]
    probe = _sample_segments(held_paths, spec, 2)
    ref_emb, _ = torch_embed(extractor, probe)
    got_emb, _ = OnnxBackend(onnx_fp32).run(probe)
    parity = relative_error(ref_emb, got_emb)
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export disagrees with torch: relative error {parity:.2e} > {PARITY_TOLERANCE:.0e}")
    log.info("ONNX parity with torch: max relative error %.2e", parity)

    s2cfg, sections = load_stage2(run_dir, approach)
    held_deployed = embed_heldout(run_dir, data_root, progress=False)  # cached by edge-asd-train
    model_bytes = onnx_fp32
    precision_report: dict = {"fp32_parity_relative_error": parity}
    if precision != "fp32":
        calib_paths = [data_root / c["path"] for c in json.loads((run_dir / "split.json").read_text())["clips"] if c["split"] == "train"]
        rng = np.random.default_rng(0)
        calib_paths = [calib_paths[i] for i in rng.permutation(len(calib_paths))[:16]]
        model_bytes = convert(onnx_fp32, precision, _sample_segments(calib_paths, spec, 16) if precision == "int8" else None)
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
        with tempfile.TemporaryDirectory() as tmp:
            tmp_run = Path(tmp)
            fit_stage2(tmp_run, held_l, s2cfg)
            _, sections_l = load_stage2(tmp_run, approach)
        auc_report = {}
        if pseudo_paths:
            pe_l, pl_l = _embed_clips_ort(lowp, pseudo_paths, spec)
            pe_f, pl_f = _embed_clips_ort(full, pseudo_paths, spec)
            auc_f = _proxy_auc(run_dir, approach, held_f, {"embeddings": pe_f, "domain_logits": pl_f}, sections, s2cfg)
            auc_l = _proxy_auc(run_dir, approach, held_l, {"embeddings": pe_l, "domain_logits": pl_l}, sections_l, s2cfg)
            auc_report = {"proxy_auc_fp32": auc_f, f"proxy_auc_{precision}": auc_l, "proxy_auc_change": auc_l - auc_f}
        precision_report.update(
            {
                "embedding_relative_error": relative_error(emb_f.reshape(-1, emb_f.shape[-1]), emb_l.reshape(-1, emb_l.shape[-1])),
                **auc_report,
            }
        )
        sections = sections_l
        held_deployed = held_l
        log.info("precision %s: %s", precision, precision_report)

    arrays: dict[str, np.ndarray] = {}
    member_sections: dict[str, dict] = {}
    for section, model in sections.items():
        a, numbers = section_state(model)
        arrays.update(a)
        member_sections[section] = numbers
    # The held-out normals the detectors were fitted on travel with the bundle so
    # that on-device enrollment can refit a domain's model (GMM, LOF) and its
    # standardization exactly as the desktop did; a few hundred KB at most.
    heldout = {k: held_deployed[k] for k in ("names", "sections", "domains", "embeddings", "domain_logits")}
    files = {
        "members/m0/extractor.onnx": model_bytes,
        "members/m0/detectors.npz": npz_bytes(arrays),
        "members/m0/heldout.npz": npz_bytes(heldout),
    }
    member = {
        "name": "m0",
        "run": run_dir.name,
        "backbone": config.get("backbone"),
        "model": "members/m0/extractor.onnx",
        "precision": precision,
        "state": "members/m0/detectors.npz",
        "heldout": "members/m0/heldout.npz",
        "detector": {"kind": s2cfg.detector, "params": s2cfg.detector_params},
        "sections": member_sections,
    }
    if fmt == "tensorrt":
        from edge_asd.engine import build_engine

        engine, meta = build_engine(model_bytes, precision=precision, max_batch=spec.n_segments)
        files["members/m0/extractor.engine"] = engine
        member["engine"] = {"file": "members/m0/extractor.engine", **meta}
    frontend = TrainConfig.from_dict(config, ignore_unknown=True).frontend_dict()
    manifest = {
        "machine_type": machine,
        "sections": sorted(sections),
        "audio": {
            "sample_rate": spec.sample_rate,
            "clip_seconds": _clip_seconds(held_paths),
            "segment_seconds": spec.segment_seconds,
            "n_segments": spec.n_segments,
            "segment_align": spec.align,
            "amplitude": "standardize_per_clip",
        },
        "frontend": frontend,
        "embedding_dim": int(ref_emb.shape[1]),
        "approach": approach,
        "aggregator": s2cfg.aggregator,
        "kappa": s2cfg.kappa,
        "threshold_rule": s2cfg.threshold_rule,
        "thresholds": {s: member_sections[s]["threshold"] for s in sorted(sections)},
        "stage2": asdict(s2cfg),
        "precision": precision_report,
        "members": [member],
    }
    path = write_bundle(out, manifest, files)
    if progress:
        print(f"wrote {path} ({approach}, {precision}, {fmt}); ONNX parity {parity:.1e}")
    return path


def _clip_seconds(paths: list[Path]) -> float:
    """The clip length the detectors were fitted on: what the daemon should cut."""
    import soundfile as sf

    return round(float(sf.info(str(paths[0])).duration), 3) if paths else 10.0


def _pseudo_anomalous_paths(data_root: Path, machine: str, limit: int) -> list[Path]:
    from edge_asd.dcase import list_clips, list_machines

    others = [m for m in list_machines(data_root) if m != machine]
    paths: list[Path] = []
    for m in others:
        try:
            paths.extend(c.path for c in list_clips(data_root, m, "train")[: max(1, limit // max(1, len(others)))])
        except UserError:
            continue
    return paths[:limit]
