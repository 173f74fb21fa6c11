"""Stage-2 rules for a target domain of a few clips, side by side on the runs of ``bench_dev.py``.

    .venv/bin/python benchmarks/bench_stage2.py RUN_ROOT... [--variants a,b] [--match GLOB] [--json OUT]

RUN_ROOT: a ``bench_dev.py`` variant folder (``DIR/<variant>``); every ``work/<data>_t<seed>/runs/<machine>`` under
it is one trained run of the product's default command. Each run's extractor embeds its test clips once (cached
in the run as ``stage2/test_embeddings.npz``); every stage-2 variant is then fitted on the same normal embeddings
with :func:`edge_asd.scoring.stage2.fit_section` (the code the device runs and enrolls with) and scored alone and
in the standardized ensemble with the run's plain member, as ``edge-asd-export`` packs it. The official score is
the harmonic mean of AUC source, AUC target and pAUC over every section of one (data, seed) folder's machines.

Variants (overrides of the run's own stage-2 configuration, the cpu preset's: generalization, cosine KNN,
16 k-means source centres):
  default        the run's configuration
  no-centres     every source segment in the bank
  smote32/160    + 32 / 160 SMOTE points between target embeddings (ASDKit's back end)
  genrep32/160   + 32 / 160 GenRep points, target embeddings mixed with their nearest source ones (arXiv 2409.05035)
  pseudo50       + the report's 50 Mixup pseudo-normals
  ds-shrunk      domain specialization, the target model's standardization shrunk towards the source's
                 (Eq. 8 needs a domain head: without one p_target is 0.5, the mean of the two domains' scores)
  ds-min         domain specialization scored by its nearer domain: min of the two standardized scores (each
                 clip's distance relative to the typical distance inside its nearest domain's bank). Measured
                 here only: the device's scorer has no such rule yet, so it is built only if it wins
  gauss          one Gaussian of every normal segment embedding, Ledoit-Wolf shrunk covariance (the plain
                 system's default scorer, ``--plain-scorer gaussian``), instead of the cosine KNN
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_asd.io.dcase import list_clips  # noqa: E402
from train.plain import PLAIN_SCORERS  # noqa: E402
from edge_asd.scoring.combine import combine_parts, p_target  # noqa: E402
from edge_asd.scoring.metrics import harmonic_mean, labelled_metrics, present  # noqa: E402
from edge_asd.scoring.section import section_parts  # noqa: E402
from edge_asd.scoring.stage2 import fit_section  # noqa: E402

VARIANTS = {
    "default": {},
    "no-centres": {"source_centres": 0},
    "smote32": {"target_smote": 32},
    "smote160": {"target_smote": 160},
    "genrep32": {"target_genrep": 32},
    "genrep160": {"target_genrep": 160},
    "pseudo50": {"mixup_pseudo_normals": 50},
    "ds-shrunk": {"approach": "specialization", "target_std": "shrunk"},
    "ds-min": {"approach": "specialization"},
    "gauss": {"detector": PLAIN_SCORERS["gaussian"][0], "source_centres": 0,
              "detector_params": dict(PLAIN_SCORERS["gaussian"][1])},
}
NEAREST_DOMAIN = {"ds-min"}  # variants scored by min over domains instead of Eq. 8


def _test_embeddings(run: Path, data: Path, machine: str) -> dict:
    cache = run / "stage2" / "test_embeddings.npz"
    clips = list_clips(data, machine, "test")
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if z["names"].tolist() == [c.name for c in clips]:
                return {k: z[k] for k in z.files}
    from train.data import run_spec
    from train.embed import embed_clips, load_extractor
    from train.plain import plain_embeddings

    emb, logit = embed_clips(load_extractor(run), [c.path for c in clips], run_spec(run))
    plain, _ = plain_embeddings(run / "baseline" / "plain", [c.path for c in clips])
    out = {"names": np.array([c.name for c in clips]), "sections": np.array([c.section for c in clips]),
           "anomaly": np.array([c.label == "anomaly" for c in clips]), "target": np.array([c.domain == "target" for c in clips]),
           "embeddings": emb.astype(np.float32), "domain_logits": logit.astype(np.float32), "plain": plain}
    np.savez(cache, **out)
    return out


def score_run(run: Path, variants: dict[str, dict]) -> dict[str, dict[str, list]]:
    """Per variant, "alone" and "ensemble": a list of per-section (AUC source, AUC target, pAUC)."""
    from train.rundir import RunDir
    from train.stage2 import embed_normals, load_stage2

    config = json.loads((run / "config.json").read_text())
    data, machine = Path(config["data"]), config["machine"]
    approach = RunDir(run).default_approach()
    s2, _ = load_stage2(run, approach)
    p2, plain_models = load_stage2(run / "baseline" / "plain", "generalization")
    held = embed_normals(run, data, s2.bank, progress=False)
    test = _test_embeddings(run, data, machine)
    out: dict[str, dict[str, list]] = {v: {"alone": [], "ensemble": []} for v in variants}
    for section in sorted(set(test["sections"].tolist())):
        sel, hs = test["sections"] == section, held["sections"] == section
        plain_parts = section_parts(plain_models[section], test["plain"][sel], p2.aggregator)
        p = p_target(test["domain_logits"][sel], s2.kappa)
        for name, over in variants.items():
            cfg = replace(s2, **over)
            try:
                model = fit_section(section, held["embeddings"][hs], held["domains"][hs], held["domain_logits"][hs], cfg).model
            except ValueError:
                continue
            parts = section_parts(model, test["embeddings"][sel], cfg.aggregator)
            approach = cfg.approach
            if name in NEAREST_DOMAIN:
                parts, approach = {"all": np.minimum(parts["source"], parts["target"])}, "generalization"
            for kind, members in (("alone", [parts]), ("ensemble", [parts, plain_parts])):
                m = labelled_metrics(test["anomaly"][sel], test["target"][sel], combine_parts(members, p, approach))
                out[name][kind].append(list(m.official().values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--match", help="only (data, seed) folders matching this glob")
    ap.add_argument("--json", help="write the per-folder figures here")
    args = ap.parse_args()
    variants = {v: VARIANTS[v] for v in args.variants.split(",")}
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for root in map(Path, args.roots):
        for folder in sorted((root / "work").iterdir()):
            if args.match and not fnmatch.fnmatch(folder.name, args.match):
                continue
            runs = sorted(p for p in (folder / "runs").iterdir() if (p / "baseline" / "plain").is_dir())
            if not runs:
                continue
            per: dict[str, dict[str, list]] = {v: {"alone": [], "ensemble": []} for v in variants}
            for run in runs:
                for v, kinds in score_run(run, variants).items():
                    for k, rows in kinds.items():
                        per[v][k] += rows
            figures[f"{root.name}/{folder.name}"] = {
                v: {k: 100 * harmonic_mean(present(x for row in rows for x in row)) for k, rows in kinds.items()}
                for v, kinds in per.items()
            }
            print(folder.name, {v: {k: round(f, 2) for k, f in d.items()} for v, d in figures[f"{root.name}/{folder.name}"].items()},
                  flush=True)
    print("\n| variant | alone (mean ± sd over folders) | with the plain member |\n|---|---|---|")
    for v in variants:
        a = np.array([f[v]["alone"] for f in figures.values()])
        e = np.array([f[v]["ensemble"] for f in figures.values()])
        print(f"| {v} | {a.mean():.2f} ± {a.std():.2f} | {e.mean():.2f} ± {e.std():.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
