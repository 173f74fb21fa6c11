"""No regret: a label-free check, at training time, of whether the learned member joins the plain system.

A user cannot see real anomalies before deploying, and on data where nothing
learned helps, an ensemble with a weak learned member is worse than the plain
system alone (issue "Detection quality III", item 6). So before the bundle is
made, both are compared on what can be measured without labels:

* **normals**: up to ``MAX_PER_SECTION`` normal clips of each section that
  stage 1 held out (``split.json``), scored out of fold: each fold by section
  models fitted (with the run's own stage-2 configuration) on every other
  normal of the section. Only clips the extractor never trained on are
  checked: its own training clips sit close to each other in its embedding, so
  they look more normal to the learned member than any clip it will meet on
  the device, and a check on them flatters it (on 12 real fan clips it ranked
  the learned member 0.83 and the plain system 0.59; on the real test clips
  it was the other way round). A section with fewer than ``MIN_CHECKED``
  held-out normals is not checked;
* **pseudo-anomalies**: every alteration of each of those clips, a generic
  change a failing machine makes (an added tone, periodic clicks, a raised
  band, a speed change, amplitude modulation), scored by the same fold's
  models. They come from clips the fold's models never saw, and they are not
  the other machine types the extractor was trained to push away, which would
  flatter it.

* **disturbed normals**: every one of those clips once more as another
  recording of the same healthy machine would sound (another microphone, a
  reverberant hall, one impact, more background noise: ``NUISANCES``), scored
  as normals. Without them the check saw only the domain the clips came from;
  a learned member that scores a new microphone or hall as a fault (on the
  independent generator it put the target domain's normals up to 8 standard
  deviations above the source's) looked as good as the plain system there.

The AUC of each system (the plain one, the learned one, their standardized
ensemble as exported) is the mean over sections. The learned member joins when
the ensemble's AUC is at least the plain system's minus ``MARGIN`` (:func:`decide`);
otherwise the bundle is the plain system alone, as it is when no section has
the clips to be checked. ``MARGIN`` is negative: the ensemble must lead. Since
the plain system carries the envelope spectra's lines, the check cannot tell
the two apart within a few hundredths: on the validation seeds, ensembles the
check put 0.015-0.018 ahead scored 5 points below the plain system alone, and
with the sound's dynamics in the plain system one it put 0.028 ahead scored 4.5
below. With the plain system scored by its feature groups' Gaussians, on the validation seeds no learned member
helped any machine (the best, +0.3) and the check put the gearbox's and the fan's 0.085 and 0.054 ahead: both
scored ~5 below the plain system alone (BENCHMARKS.md, "The no-regret check's margin", "The sound's dynamics" and
"One Gaussian per group of features"). ``RUN/gate.json`` records the
decision and its figures; ``edge-asd-export`` follows it and copies it into the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_asd.io.audio import normalize, read_audio, segment
from edge_asd.io.features import LogMelStats, LogMelStatsConfig
from edge_asd.scoring.combine import combine_parts, p_target
from edge_asd.scoring.metrics import roc_auc
from edge_asd.scoring.section import section_parts
from edge_asd.scoring.stage2 import Stage2Config, fit_section

from .data import run_spec
from .rundir import RunDir

log = logging.getLogger(__name__)

ALTERATIONS = ("tone", "clicks", "band", "speed", "modulation")
NUISANCES = ("microphone", "hall", "transient", "noise")
MARGIN = -0.10  # the ensemble joins only when the check puts it at least 0.10 above the plain system
MAX_PER_SECTION = 40  # normals checked per section (all of a section's normals stay in its models' banks otherwise)
MIN_CHECKED = 3  # held-out normals a section needs to be checked: fewer give an AUC of a handful of pairs
N_FOLDS = 5
SR = 16000


@dataclass
class GateResult:
    decision: str  # "ensemble" (learned + plain) or "plain"
    auc_plain: float | None  # None: nothing could be checked
    auc_learned: float | None
    auc_ensemble: float | None
    margin: float
    n_normals: int
    n_pseudo: int
    alterations: tuple[str, ...] = ALTERATIONS
    n_disturbed: int = 0  # normals' copies recorded another way (NUISANCES), checked as normals
    nuisances: tuple[str, ...] = NUISANCES

    def to_dict(self) -> dict:
        return {**asdict(self), "alterations": list(self.alterations), "nuisances": list(self.nuisances),
                "rule": "ensemble when its AUC >= plain's - margin: normals held out from stage 1 (out of fold) and "
                        "their disturbed copies against altered copies"}


def alter(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One altered copy of a clip: a change of the kind a fault makes, at a level a fault would have."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    t = np.arange(n) / SR
    rms = float(x.std()) + 1e-12
    if kind == "tone":  # a new line in the spectrum: a whine, a rub at a fixed frequency
        level = rms * 10 ** (rng.uniform(-24.0, -12.0) / 20) * np.sqrt(2)
        y = x + level * np.sin(2 * np.pi * rng.uniform(150.0, 6000.0) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "clicks":  # periodic impacts ringing a resonance: a bearing defect, a loose part
        period = int(SR / rng.uniform(4.0, 40.0))
        ring = np.exp(-np.arange(int(0.01 * SR)) / (0.002 * SR)) * np.sin(2 * np.pi * rng.uniform(800.0, 5000.0) * np.arange(int(0.01 * SR)) / SR)
        pulses = np.zeros(n)
        pulses[int(rng.integers(0, period))::period] = 1.0
        clicks = np.convolve(pulses, ring)[:n]
        y = x + clicks * (rms * 10 ** (rng.uniform(-12.0, 0.0) / 20) / (clicks.std() + 1e-12))
    elif kind == "band":  # one band louder: a resonance excited, a clogged filter
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(n, 1 / SR)
        lo = rng.uniform(200.0, 5000.0)
        spec[(f >= lo) & (f <= lo * rng.uniform(1.2, 1.6))] *= 10 ** (rng.uniform(6.0, 12.0) / 20)
        y = np.fft.irfft(spec, n)
    elif kind == "speed":  # the machine runs off its speed: load, slip, a failing drive
        factor = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.03, 0.08)
        pos = np.arange(n) * factor
        y = np.interp(pos % (n - 1), np.arange(n), x)
    elif kind == "modulation":  # a periodic surge: imbalance, a damaged blade
        y = x * (1.0 + rng.uniform(0.3, 0.6) * np.sin(2 * np.pi * rng.uniform(2.0, 20.0) * t))
    else:
        raise ValueError(f"unknown alteration {kind!r}")
    return y.astype(np.float32)


def disturb(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One copy of a normal clip as another recording of the same healthy machine would sound.

    The changes a deployment meets between operating conditions and halls (issue "Detection quality III"): another
    microphone or position (a smooth response change), another room (reverberation), a door or a dropped tool (one
    impact), more background noise. A member that scores these as anomalies would raise false alerts there.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    rms = float(x.std()) + 1e-12
    if kind == "microphone":  # a smooth response curve over log frequency, a few dB either way
        f = np.fft.rfftfreq(n, 1 / SR)
        u = np.log2(np.clip(f, 50.0, SR / 2) / 50.0) / np.log2(SR / 2 / 50.0)
        db = sum(rng.uniform(-1, 1) * np.cos(np.pi * c * u + rng.uniform(0, 2 * np.pi)) for c in (1, 2, 3))
        y = np.fft.irfft(np.fft.rfft(x) * 10 ** (db * rng.uniform(2.0, 6.0) / np.abs(db).max() / 20), n)
    elif kind == "hall":  # a room's reverberation: exponentially decaying noise behind the direct sound
        rt60 = rng.uniform(0.2, 0.8)
        t = np.arange(int(rt60 * SR)) / SR
        tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
        tail *= 10 ** (-rng.uniform(0.0, 10.0) / 20) / np.sqrt((tail**2).sum())  # direct-to-reverberant ratio 0-10 dB
        tail[0] += 1.0
        y = np.fft.irfft(np.fft.rfft(x, n + t.size) * np.fft.rfft(tail, n + t.size), n + t.size)[:n]
    elif kind == "transient":  # one impact somewhere in the clip: a door, a dropped tool, a forklift
        length = int(rng.uniform(0.05, 0.2) * SR)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.3 * length))
        start = int(rng.integers(0, max(1, n - length)))
        y = x.copy()
        y[start:start + length] += burst * rms * 10 ** (rng.uniform(0.0, 10.0) / 20) / (burst.std() + 1e-12)
    elif kind == "noise":  # more background: pink noise 10-20 dB below the machine
        spec = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0))
        pink = np.fft.irfft(spec, n)
        y = x + pink * rms * 10 ** (-rng.uniform(10.0, 20.0) / 20) / (pink.std() + 1e-12)
    else:
        raise ValueError(f"unknown disturbance {kind!r}")
    return y.astype(np.float32)


def _section_scores(parts_fn, section: str, emb: np.ndarray, domains: np.ndarray, logits: np.ndarray, cfg: Stage2Config,
                    checked: np.ndarray, folds: np.ndarray, emb_alt: np.ndarray, logits_alt: np.ndarray, alt_folds: np.ndarray):
    """Per fold: fit on the section's normals but the fold's, return the fold's normal and altered parts."""
    normal_parts, altered_parts, p_normal, p_altered = [], [], [], []
    for f in np.unique(folds):
        held = checked[folds == f]
        keep = np.ones(len(emb), bool)
        keep[held] = False
        model = fit_section(section, emb[keep], domains[keep], logits[keep], cfg).model
        normal_parts.append(parts_fn(model, emb[held]))
        altered_parts.append(parts_fn(model, emb_alt[alt_folds == f]))
        p_normal.append(p_target(logits[held], cfg.kappa))
        p_altered.append(p_target(logits_alt[alt_folds == f], cfg.kappa))
    cat = lambda ps: {k: np.concatenate([p[k] for p in ps]) for k in ps[0]}  # noqa: E731
    return cat(normal_parts), cat(altered_parts), np.concatenate(p_normal), np.concatenate(p_altered)


def check_learned_member(run_dir: Path, plain_dir: Path, data_root: Path, approach: str, device: str = "cpu",
                         seed: int = 0, nuisances: tuple[str, ...] = NUISANCES) -> GateResult:
    """Compare the plain system, the learned one and their ensemble on held-out normals against altered copies."""
    from .embed import embed_segments, load_extractor
    from .stage2 import embed_normals, load_stage2

    s2cfg, _ = load_stage2(run_dir, approach)
    p2cfg, _ = load_stage2(plain_dir, "generalization")
    held = embed_normals(run_dir, data_root, s2cfg.bank, device=device, progress=False)
    with np.load(RunDir(plain_dir).normal_embeddings, allow_pickle=False) as z:
        plain_by_name = dict(zip(z["names"].tolist(), z["embeddings"]))
    clips = RunDir(run_dir).read_split()["clips"]
    split = {c["name"]: c["path"] for c in clips}
    heldout = {c["name"] for c in clips if c["split"] == "heldout"}
    features = LogMelStats(LogMelStatsConfig.from_dict(RunDir(plain_dir).read_config()["features"]))
    spec = run_spec(run_dir)
    extractor = load_extractor(run_dir, device=device)
    rng = np.random.default_rng([seed, 0x6A7E])

    aucs = {"plain": [], "learned": [], "ensemble": []}
    n_normals = n_pseudo = n_disturbed = 0
    for section in sorted(set(held["sections"].tolist())):
        idx = np.flatnonzero(held["sections"] == section)
        names = held["names"][idx].tolist()
        if len(idx) < 3 or not all(n in plain_by_name for n in names):
            continue
        emb, doms, logits = held["embeddings"][idx], held["domains"][idx], held["domain_logits"][idx]
        pemb = np.stack([plain_by_name[n] for n in names])
        unseen = np.array([n in heldout for n in names])
        if unseen.sum() < MIN_CHECKED:
            log.info("%s: section %s not checked (%d normals held out from stage 1, %d needed)", run_dir, section,
                     int(unseen.sum()), MIN_CHECKED)
            continue
        # every held-out target clip (the scarce domain the check must see), then held-out source clips up to the cap
        order = np.r_[np.flatnonzero(unseen & (doms == "target")), rng.permutation(np.flatnonzero(unseen & (doms != "target")))]
        checked = np.sort(order[:MAX_PER_SECTION])
        # folds by domain, round robin: a fold takes as few of the scarce target clips as it can
        k = min(N_FOLDS, len(checked))
        folds = np.empty(len(checked), dtype=np.int64)
        for dom in ("source", "target"):
            sel = np.flatnonzero(doms[checked] == dom)
            folds[sel] = rng.permutation(np.arange(len(sel)) % k)
        alt_emb, alt_logit, alt_plain = [], [], []
        for i in checked:
            x = read_audio(data_root / split[names[i]])
            for kind in ALTERATIONS + nuisances:
                xa = alter(x, kind, rng) if kind in ALTERATIONS else disturb(x, kind, rng)
                e, lg = embed_segments(extractor, segment(normalize(xa, spec), spec), device=device)
                alt_emb.append(e)
                alt_logit.append(lg)
                alt_plain.append(features(xa)[None, :])
        alt_emb, alt_logit, alt_plain = np.stack(alt_emb), np.stack(alt_logit), np.stack(alt_plain)
        alt_folds = np.repeat(folds, len(ALTERATIONS) + len(nuisances))
        # disturbed copies are normals: a healthy machine recorded another way
        alt_labels = np.tile(np.r_[np.ones(len(ALTERATIONS)), np.zeros(len(nuisances))], len(checked))
        learned_parts = lambda m, e: section_parts(m, e, s2cfg.aggregator)  # noqa: E731
        plain_parts = lambda m, e: section_parts(m, e, p2cfg.aggregator)  # noqa: E731
        try:
            ln, la, pn, pa = _section_scores(learned_parts, section, emb, doms, logits, s2cfg, checked, folds, alt_emb,
                                             alt_logit, alt_folds)
            zero = np.zeros((len(idx), 1), np.float32)
            qn, qa, _, _ = _section_scores(plain_parts, section, pemb, doms, zero, p2cfg, checked, folds, alt_plain,
                                           np.zeros((len(alt_plain), 1), np.float32), alt_folds)
        except ValueError as exc:  # a fold left too few clips of a domain to fit: the section is not checked
            log.info("%s: section %s not checked (%s)", run_dir, section, exc)
            continue
        # _section_scores returns the altered copies fold by fold
        labels = np.r_[np.zeros(len(checked)), np.concatenate([alt_labels[alt_folds == f] for f in np.unique(folds)])]
        plain = np.r_[combine_parts([qn], pn, "generalization"), combine_parts([qa], pa, "generalization")]
        learned = np.r_[combine_parts([ln], pn, approach), combine_parts([la], pa, approach)]
        ens = np.r_[combine_parts([ln, qn], pn, approach), combine_parts([la, qa], pa, approach)]
        for key, s in (("plain", plain), ("learned", learned), ("ensemble", ens)):
            aucs[key].append(roc_auc(labels, s))
        n_normals += len(checked)
        n_pseudo += int(alt_labels.sum())
        n_disturbed += int((alt_labels == 0).sum())
    if not aucs["plain"]:
        # Nothing could be checked (too few held-out normals in every section): an unchecked learned member
        # is a risk the plain system does not carry.
        return GateResult("plain", None, None, None, MARGIN, 0, 0, nuisances=tuple(nuisances))
    mean = {k: float(np.mean(v)) for k, v in aucs.items()}
    decision = decide(mean["plain"], mean["ensemble"])
    return GateResult(decision, mean["plain"], mean["learned"], mean["ensemble"], MARGIN, n_normals, n_pseudo,
                      n_disturbed=n_disturbed, nuisances=tuple(nuisances))


def decide(auc_plain: float, auc_ensemble: float, margin: float = MARGIN) -> str:
    """The check's rule: "ensemble" when its AUC is at least the plain system's minus ``margin``, else "plain"."""
    return "ensemble" if auc_ensemble >= auc_plain - margin else "plain"


def write_gate(run_dir: Path, result: GateResult) -> None:
    RunDir(run_dir).gate.write_text(json.dumps(result.to_dict(), indent=2))

