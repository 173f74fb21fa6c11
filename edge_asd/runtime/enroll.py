"""On-device enrollment of a new operating condition (no retraining, no desktop).

Domain specialization models each domain separately (report 2.4), so a machine
that changed speed, load or surroundings can be taught its new normal sound on
the device: embed a handful of normal clips with the bundle's own extractor,
add them to that domain's held-out normals, refit that section's models (a KNN
bank grows; a GMM or LOF is refitted), recompute standardization and the
threshold exactly as the desktop fit did (:func:`edge_asd.scoring.stage2.fit_section`),
and write a new bundle version beside the old one.

A clip that the current model already finds anomalous is not enrolled unless
the user confirms it: enrolling a fault as "normal" would blind the monitor.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_asd.io.audio import read_audio
from edge_asd.runtime.bundle import npz_bytes, open_bundle, write_bundle
from edge_asd.errors import UserError
from edge_asd.runtime.manifest import Enrollment, SectionNumbers
from edge_asd.runtime.scorer import ClipScorer
from edge_asd.scoring.clip_scores import score_parts
from edge_asd.scoring.drift import reference_quantiles
from edge_asd.scoring.section import section_state
from edge_asd.scoring.stage2 import fit_section
from edge_asd.scoring.thresholds import fit_threshold

log = logging.getLogger("edge_asd.enroll")  # the name journals show, kept from before the subpackages


@dataclass
class EnrollReport:
    out: Path
    previous: Path | None
    section: str
    domain: str
    n_clips: int
    flagged: list[tuple[str, float, float]]  # (clip, score, threshold) of clips the old model found anomalous
    threshold_before: float
    threshold_after: float


def record_clips(device: str, n: int, seconds: float, sample_rate: int = 16000) -> list[tuple[str, np.ndarray]]:
    """Record ``n`` clips from a microphone (native rate resampled to the bundle's)."""
    import sounddevice as sd

    from edge_asd.io.audio import resample

    dev: int | str = int(device) if device.isdigit() else device
    try:
        native = int(sd.query_devices(dev, "input")["default_samplerate"])
    except Exception as exc:
        raise UserError(f"microphone {device!r}: {exc}") from None
    clips = []
    for i in range(n):
        log.info("recording clip %d/%d (%.1f s)", i + 1, n, seconds)
        x = sd.rec(int(seconds * native), samplerate=native, channels=1, dtype="float32", device=dev, blocking=True)
        clips.append((f"mic-{i:03d}", resample(x[:, 0], native, sample_rate)))
    return clips


def _domain_name(scorer: ClipScorer, domain: str | None) -> str:
    if scorer.approach == "generalization":
        if domain not in (None, "all", "target", "source"):
            raise UserError(f"a domain-generalization bundle has one model per section; --domain {domain!r} does not apply")
        return "target" if domain in (None, "all") else domain
    domain = domain or "target"
    if domain not in ("source", "target"):
        raise UserError(f"--domain must be 'source' or 'target' for a domain-specialization bundle, not {domain!r}")
    return domain


def enroll(
    bundle_path: Path,
    clips: list[tuple[str, np.ndarray]],
    out: Path,
    section: str | None = None,
    domain: str | None = None,
    accept_anomalous: bool = False,
) -> EnrollReport:
    """Add normal clips of a new condition to a bundle; returns what was done.

    When ``out`` is the bundle itself, the old version is kept as
    ``<bundle>.prev`` for rollback before the new one atomically replaces it.
    """
    bundle = open_bundle(bundle_path)
    scorer = ClipScorer(bundle, backend="onnx-cpu")
    section = scorer.resolve_section(section)
    domain = _domain_name(scorer, domain)
    if not clips:
        raise UserError("no clips to enroll")
    # each member's embeddings of every clip: [(emb [n, S_m, D_m], logit [n, S_m])]
    per_clip = [scorer.embed_clip(x)[0] for _, x in clips]
    embedded = [(np.stack([c[i][0] for c in per_clip]), np.stack([c[i][1] for c in per_clip])) for i in range(len(scorer.members))]

    flagged = []
    scores, _ = scorer.combine(embedded, section)
    threshold_before = scorer.thresholds[section]
    for (name, _), sc in zip(clips, scores):
        if sc > threshold_before:
            flagged.append((name, float(sc), threshold_before))
    if flagged and not accept_anomalous:
        listed = ", ".join(f"{n} (score {s:.2f} > {t:.2f})" for n, s, t in flagged)
        raise UserError(
            f"{len(flagged)} of {len(clips)} clips already sound anomalous to this model: {listed}. "
            "Check the machine; if they are normal, enroll them with --accept-anomalous"
        )

    manifest = bundle.manifest
    files = bundle.members()
    n = len(clips)
    new_final = []
    logits_all = []
    new_members = []
    for spec, member, (emb, logit) in zip(manifest.members, scorer.members, embedded):
        if not spec.heldout:
            raise UserError(f"{bundle_path}: bundle holds no held-out embeddings (exported by an older edge-asd); re-export it to enroll")
        held = bundle.arrays(spec.heldout)
        s = emb.shape[1]
        # members of one ensemble may differ in stage 2 (the plain system's own); older bundles have one
        cfg = manifest.member_stage2(spec)
        if cfg is None:
            raise UserError(f"{bundle_path}: bundle states no stage-2 settings; re-export it to enroll")
        sel = held["sections"] == section
        emb_all = np.concatenate([held["embeddings"][sel], emb.reshape(n, s, -1)])
        dom_all = np.concatenate([held["domains"][sel], np.array([domain] * n)])
        logit_all = np.concatenate([held["domain_logits"][sel], logit.reshape(n, s)])
        res = fit_section(section, emb_all, dom_all, logit_all, cfg)
        new_final.append(res)
        logits_all.append(logit_all if member.has_domain_head else None)
        # the new section's detector state replaces the old one
        arrays = bundle.arrays(spec.state)
        arrays = {k: v for k, v in arrays.items() if not k.startswith(f"{section}/")}
        a, numbers = section_state(res.model)
        arrays.update(a)
        files[spec.state] = npz_bytes(arrays)
        new_members.append(replace(spec, sections={**spec.sections, section: SectionNumbers.from_dict(numbers)}))
        held_new = {
            "names": np.concatenate([held["names"], np.array([f"enrolled:{c[0]}" for c in clips])]),
            "sections": np.concatenate([held["sections"], np.array([section] * n)]),
            "domains": np.concatenate([held["domains"], np.array([domain] * n)]),
            "embeddings": np.concatenate([held["embeddings"], emb.reshape(n, s, -1)]),
            "domain_logits": np.concatenate([held["domain_logits"], logit.reshape(n, s)]),
        }
        files[spec.heldout] = npz_bytes(held_new)
    # Members share the bundle's held-out clips, so the ensemble's out-of-fold
    # score is their combination clip by clip, as at export.
    reference, _ = score_parts([r.oof_parts for r in new_final], logits_all, scorer.kappa, scorer.approach)
    threshold_after = float(fit_threshold(reference, manifest.threshold_rule))
    enrollment = Enrollment(
        time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        section=section,
        domain=domain,
        clips=tuple(c[0] for c in clips),
        accepted_anomalous=tuple(f[0] for f in flagged),
    )
    manifest = replace(
        manifest,
        members=tuple(new_members),
        thresholds={**manifest.thresholds, section: threshold_after},
        reference_quantiles={**(manifest.reference_quantiles or {}), section: reference_quantiles(reference)},
        parent_bundle_id=manifest.bundle_id,
        bundle_id="",  # write_bundle names the new content
        created="",
        enrollments=(*(manifest.enrollments or ()), enrollment),
    )
    out = Path(out)
    previous = None
    if out.resolve() == Path(bundle_path).resolve():
        previous = out.with_name(out.name + ".prev")
        shutil.copy2(bundle_path, previous)
    write_bundle(out, manifest, files)
    return EnrollReport(out, previous, section, domain, n, flagged, threshold_before, threshold_after)


def rollback(bundle_path: Path) -> Path:
    """Put ``<bundle>.prev`` back in place (atomic); the daemon picks it up on SIGHUP."""
    prev = bundle_path.with_name(bundle_path.name + ".prev")
    if not prev.is_file():
        raise UserError(f"{bundle_path}: no previous version ({prev.name}) to roll back to")
    open_bundle(prev)  # refuse to roll back onto a broken file
    os.replace(prev, bundle_path)
    return bundle_path


def read_clips(paths: list[Path], sample_rate: int, min_seconds: float) -> list[tuple[str, np.ndarray]]:
    """Each file as one clip, as `edge-asd score` reads them (a recording of hours is refused from its header)."""
    from edge_asd.io.audio import TooLongError
    from edge_asd.io.audio import DEFAULT_MAX_SECONDS
    from edge_asd.io.files import expand_paths

    out = []
    for p in expand_paths(paths):
        try:
            out.append((p.name, read_audio(p, sample_rate, min_seconds=min_seconds, max_seconds=DEFAULT_MAX_SECONDS)))
        except TooLongError as exc:
            raise UserError(
                f"{p}: {exc.seconds:.0f} s long; enrollment takes each file as one clip of the condition "
                f"(at most {DEFAULT_MAX_SECONDS:g} s): cut the recording into clips first"
            ) from None
    return out
