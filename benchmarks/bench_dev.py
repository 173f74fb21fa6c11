"""The development benchmark of issue "Detection quality III": the product's own default command against
the strong plain reference (``shared/reference/plain_baseline.py``), over generators and seeds.

    .venv/bin/python benchmarks/bench_dev.py run DATA_DIR... --out DIR [--train-seeds 0,1] [--machines a,b]
        [--variant NAME --train-args "--steps 150"] [--export-args "..."]
    .venv/bin/python benchmarks/bench_dev.py regate DIR/<variant> [--refit-plain] [--match GLOB]
    .venv/bin/python benchmarks/bench_dev.py margins DIR/<variant> [--margins 0.02,0,-0.02] [--match GLOB]
    .venv/bin/python benchmarks/bench_dev.py table DIR [--variants a,b] [--match GLOB]

``run``: for every data folder (one generator at one data seed, DCASE layout), every training seed and
every machine type, exactly what a user types: ``edge-asd-train --data D --machine M --out R --seed T``
(defaults, plus ``--train-args`` for a candidate), ``edge-asd-export R`` (defaults: what is deployed) and
``edge-asd-export R --no-plain`` (the learned member alone), ``edge-asd score`` and ``edge-asd evaluate``;
and the yardstick script on the same folder. One JSON per (variant, data folder, training seed) under
``DIR/<variant>/``; finished ones are reused, so a killed run resumes.

``regate``: the no-regret check of the current code re-run on every trained run of DIR/<variant> (stage 1 and
stage 2 are not retrained: the check only decides which members are exported), then the default bundle
re-exported and re-scored; the records go to DIR/<variant>-regated/. What a fresh ``run`` would give when only
the check changed, at a fraction of its cost. ``--refit-plain`` first refits each run's plain member
(RUN/baseline/plain, seconds of numpy) with the current default features, for when the plain system changed
(records to DIR/<variant>-replain/); a machine whose run is the plain system alone is refitted too.

``plain``: for every record of DIR/<variant> (``--work`` where its trained runs lie, by default the
variant's own), the product's plain system alone (``edge-asd-export RUN/baseline/plain``: what
``edge-asd-train --system plain`` deploys) scored and evaluated beside it (``"plain_product"``), and each
machine's no-regret check figures from ``RUN/gate.json``: to see whether the check picks the better of the two.

``margins``: for every record of DIR/<variant> and every machine the check left a choice on, both bundles the
check chooses between are exported and scored (the ungated ensemble, ``edge-asd-export RUN --select 1``, and the
plain system alone); then, for each margin of ``--margins``, the submission the check's rule ("ensemble when its
AUC >= plain's - margin", ``train/gate.py``) would have deployed is put together from them and evaluated, beside
always-plain, always-ensemble and the better of the two per machine (labels used: a ceiling). Which margin the
label-free check should use, measured on what each choice scores.

``table``: mean and spread (standard deviation over data and training seeds) of the official score
(harmonic mean of AUC source, AUC target, pAUC over all sections, the CONTRACT's metric) per generator,
the ratio to the plain reference computed per run and then averaged, the lowest section's target AUC
(mean over runs), wall time and steps. The generator is the data folder's name up to ``_s<seed>``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "plain_baseline.py"
BIN = Path(sys.executable).parent


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.monotonic()
    with open(log, "a") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {shlex.join(cmd)} (see {log})")
    return time.monotonic() - t0


def _evaluate(folder: Path) -> dict:
    out = subprocess.run([str(BIN / "edge-asd"), "evaluate", str(folder), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _summary(result: dict) -> dict:
    target = [s.get("auc_target") for m in result["machines"].values() for s in m["sections"].values()]
    target = [t for t in target if t is not None]
    return {"official": result["official_score"], "machines": {m: e["hmean"] for m, e in result["machines"].items()},
            "min_target_auc": min(target) if target else None, "result": result}


def _steps(run: Path) -> int | None:
    losses = run / "losses.csv"
    if not losses.is_file():
        return None
    lines = losses.read_text().strip().splitlines()
    return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0


def _decision(run: Path) -> str | None:
    gate = run / "gate.json"
    return json.loads(gate.read_text()).get("decision") if gate.is_file() else None


def run_one(data: Path, out: Path, variant: str, train_seed: int, machines: list[str], train_args: list[str],
            export_args: list[str]) -> dict:
    work = out / variant / "work" / f"{data.name}_t{train_seed}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    sub_default, sub_learned = work / "sub_default", work / "sub_learned"
    record = {"variant": variant, "data": str(data), "train_seed": train_seed, "train_args": train_args,
              "export_args": export_args, "machines": {}}
    for m in machines:
        run = work / "runs" / m
        wall = _run([str(BIN / "edge-asd-train"), "--data", str(data), "--machine", m, "--out", str(run), "--seed",
                     str(train_seed), "--device", "cpu", "--quiet", *train_args], log)
        for tag, extra, sub in (("default", [], sub_default), ("learned", ["--no-plain"], sub_learned)):
            bundle = work / f"{m}-{tag}.asd"
            try:
                _run([str(BIN / "edge-asd-export"), str(run), "--out", str(bundle), *export_args, *extra], log)
            except SystemExit:
                if tag == "learned":  # a run the gate left plain has no learned member to export alone
                    continue
                raise
            _run([str(BIN / "edge-asd"), "score", str(bundle), str(data / m / "test"), "--out", str(sub), "--quiet"], log)
        record["machines"][m] = {"train_wall_s": wall, "steps": _steps(run), "gate": _decision(run)}
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / "data"
        view.mkdir()
        for m in machines:  # the reference scores every machine folder it finds: show it only those benchmarked
            (view / m).symlink_to((data / m).resolve(), target_is_directory=True)
        _run([sys.executable, str(REFERENCE), str(view), str(work / "sub_plain")], log)
    record["default"] = _summary(_evaluate(sub_default))
    record["plain"] = _summary(_evaluate(work / "sub_plain"))
    if sub_learned.is_dir() and any(sub_learned.iterdir()):
        record["learned"] = _summary(_evaluate(sub_learned))
    return record


def _export_and_score(src: Path, bundle: Path, data: Path, m: str, sub: Path, log: Path,
                      export_args: list[str] = ()) -> None:
    """``edge-asd-export SRC`` to ``bundle``, then machine m's test clips scored into ``sub`` (its old files removed)."""
    for old in sub.glob(f"*_{m}_*"):  # the machine's previous submission files
        old.unlink()
    _run([str(BIN / "edge-asd-export"), str(src), "--out", str(bundle), *export_args], log)
    _run([str(BIN / "edge-asd"), "score", str(bundle), str(data / m / "test"), "--out", str(sub), "--quiet"], log)


def _export_default(work: Path, data: Path, m: str, export_args: list[str]) -> None:
    _export_and_score(work / "runs" / m, work / f"{m}-default.asd", data, m, work / "sub_default", work / "log.txt",
                      export_args)


def cmd_regate(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from train.gate import check_learned_member, write_gate
    from train.plain import fit_plain, plain_stage2
    from train.rundir import RunDir

    src = Path(args.dir)
    dest_dir = src.parent / f"{src.name}-{'replain' if args.refit_plain else 'regated'}"
    dest_dir.mkdir(exist_ok=True)
    for p in sorted(src.glob("*.json")):
        dest = dest_dir / p.name
        if dest.is_file() or (args.match and not fnmatch.fnmatch(p.stem, args.match)):
            continue
        record = json.loads(p.read_text())
        work, data = src / "work" / p.stem, Path(record["data"])
        for m, info in record["machines"].items():
            run = work / "runs" / m
            if info.get("steps") is None:  # the plain system alone was trained: nothing to check
                if args.refit_plain:
                    fit_plain(data, m, run, plain_stage2(record["train_seed"]))
                    _export_default(work, data, m, record["export_args"])
                continue
            if args.refit_plain:
                fit_plain(data, m, run / "baseline" / "plain", plain_stage2(record["train_seed"]))
            result = check_learned_member(run, run / "baseline" / "plain", data, RunDir(run).default_approach(), seed=record["train_seed"])
            write_gate(run, result)
            info["gate_before"], info["gate"] = info.get("gate"), result.decision
            _export_default(work, data, m, record["export_args"])
        record["default"] = _summary(_evaluate(work / "sub_default"))
        dest.write_text(json.dumps(record, indent=1))
        print(f"{dest_dir.name} {p.stem}: default {100 * record['default']['official']:.2f}, plain "
              f"{100 * record['plain']['official']:.2f}, gates {[i.get('gate') for i in record['machines'].values()]}", flush=True)


def cmd_plain(args: argparse.Namespace) -> None:
    src = Path(args.dir)
    for p in sorted(src.glob("*.json")):
        record = json.loads(p.read_text())
        if "plain_product" in record or (args.match and not fnmatch.fnmatch(p.stem, args.match)):
            continue
        work, data = Path(args.work or src / "work") / p.stem, Path(record["data"])
        sub, log = work / "sub_plain_product", work / "log.txt"
        for m, info in record["machines"].items():
            run = work / "runs" / m
            plain = run if info.get("steps") is None else run / "baseline" / "plain"
            _export_and_score(plain, work / f"{m}-plain.asd", data, m, sub, log)
            gate = run / "gate.json"
            info["check"] = json.loads(gate.read_text()) if gate.is_file() else None
        record["plain_product"] = _summary(_evaluate(sub))
        p.write_text(json.dumps(record, indent=1))
        print(f"{src.name} {p.stem}: default {100 * record['default']['official']:.2f}, product plain "
              f"{100 * record['plain_product']['official']:.2f}, script {100 * record['plain']['official']:.2f}", flush=True)


def _choice_scores(folders: dict[str, Path], choice: dict[str, str]) -> dict:
    """Official score of the submission that takes machine m's files from ``folders[choice[m]]``."""
    with tempfile.TemporaryDirectory() as tmp:
        for m, which in choice.items():
            for f in folders[which].glob(f"*_{m}_section_*"):
                (Path(tmp) / f.name).symlink_to(f.resolve())
        return _evaluate(Path(tmp))


def cmd_margins(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from train.gate import decide

    margins = [float(m) for m in args.margins.split(",")]
    rules = ["plain", "ensemble", *[f"margin {m:+.2f}" for m in margins], "better of the two (labels)"]
    per_rule: dict[str, dict[str, list[float]]] = {r: {} for r in rules}
    for p in sorted(Path(args.dir).glob("*.json")):
        if args.match and not fnmatch.fnmatch(p.stem, args.match):
            continue
        record = json.loads(p.read_text())
        work, data = Path(args.work or Path(args.dir) / "work") / p.stem, Path(record["data"])
        folders = {"plain": work / "sub_margin_plain", "ensemble": work / "sub_margin_ensemble"}
        checks, log = {}, work / "log.txt"
        for m, info in record["machines"].items():
            run = work / "runs" / m
            if info.get("steps") is None:
                continue  # the plain system alone was trained: no choice
            check = json.loads((run / "gate.json").read_text())
            for which, extra, src in (("plain", [], run / "baseline" / "plain"), ("ensemble", ["--select", "1"], run)):
                _export_and_score(src, work / f"{m}-margin-{which}.asd", data, m, folders[which], log, extra)
            checks[m] = check
        if not checks:
            continue
        solo = {w: _evaluate(folders[w]) for w in folders}
        best = {m: max(folders, key=lambda w: solo[w]["machines"][m]["hmean"]) for m in checks}
        choices = {"plain": {m: "plain" for m in checks}, "ensemble": {m: "ensemble" for m in checks},
                   "better of the two (labels)": best}
        for mg in margins:
            choices[f"margin {mg:+.2f}"] = {
                m: decide(c["auc_plain"], c["auc_ensemble"], mg) if c["auc_plain"] is not None else "plain"
                for m, c in checks.items()}
        gen = _generator(p.stem)
        for r in rules:
            per_rule[r].setdefault(gen, []).append(100 * _choice_scores(folders, choices[r])["official_score"])
        print(f"{p.stem}: " + ", ".join(f"{r} {per_rule[r][gen][-1]:.2f}" for r in rules), flush=True)
        print(f"{p.stem}: " + ", ".join(f"{m} plain {100 * solo['plain']['machines'][m]['hmean']:.1f} / ensemble "
                                        f"{100 * solo['ensemble']['machines'][m]['hmean']:.1f} (check {c['auc_plain']} / "
                                        f"{c['auc_ensemble']})" for m, c in checks.items()), flush=True)
    gens = sorted({g for r in per_rule.values() for g in r})
    print("| rule | " + " | ".join(gens) + " |\n|---|" + "---|" * len(gens))
    for r in rules:
        print(f"| {r} | " + " | ".join(f"{np.mean(per_rule[r][g]):.2f} ({len(per_rule[r][g])})" for g in gens) + " |")


def cmd_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    (out / args.variant).mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.train_seeds.split(",")]
    train_args, export_args = shlex.split(args.train_args or ""), shlex.split(args.export_args or "")
    for data in map(Path, args.data):
        machines = args.machines.split(",") if args.machines else sorted(
            p.name for p in data.iterdir() if (p / "test").is_dir() and (p / "train").is_dir())
        for seed in seeds:
            dest = out / args.variant / f"{data.name}_t{seed}.json"
            if dest.is_file():
                continue
            t0 = time.monotonic()
            record = run_one(data, out, args.variant, seed, machines, train_args, export_args)
            record["wall_s"] = time.monotonic() - t0
            dest.write_text(json.dumps(record, indent=1))
            print(f"{args.variant} {data.name} t{seed}: default {100 * record['default']['official']:.2f}, "
                  f"plain {100 * record['plain']['official']:.2f} ({record['wall_s']:.0f} s)", flush=True)


def _generator(name: str) -> str:
    return re.sub(r"_s\d+_t\d+$", "", name)


def cmd_table(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    variants = args.variants.split(",") if args.variants else sorted(p.name for p in out.iterdir() if p.is_dir())
    lines = ["| variant | generator | runs | default (mean ± sd) | vs plain | learned alone | plain reference | "
             "min target AUC | stage 1 + 2 wall / machine | steps | gate: plain only |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        recs: dict[str, list[dict]] = {}
        for p in sorted((out / v).glob("*.json")):
            if args.match and not fnmatch.fnmatch(p.stem, args.match):
                continue
            recs.setdefault(_generator(p.stem), []).append(json.loads(p.read_text()))
        for gen, rs in sorted(recs.items()):
            d = np.array([r["default"]["official"] for r in rs]) * 100
            pl = np.array([r["plain"]["official"] for r in rs]) * 100
            le = [r["learned"]["official"] * 100 for r in rs if "learned" in r]
            mt = [r["default"]["min_target_auc"] * 100 for r in rs if r["default"]["min_target_auc"] is not None]
            walls = [mm["train_wall_s"] for r in rs for mm in r["machines"].values() if mm["train_wall_s"] is not None]
            steps = [mm["steps"] for r in rs for mm in r["machines"].values() if mm["steps"] is not None]
            gates = [mm.get("gate") for r in rs for mm in r["machines"].values()]
            lines.append(
                f"| {v} | {gen} | {len(rs)} | {d.mean():.2f} ± {d.std():.2f} | {np.mean(d / pl):.3f}x | "
                + (f"{np.mean(le):.2f} ± {np.std(le):.2f}" if le else "n/a")
                + f" | {pl.mean():.2f} ± {pl.std():.2f} | {np.mean(mt):.1f} | "
                + (f"{np.median(walls):.0f} s | " if walls else "n/a | ")
                + (f"{int(np.median(steps))}" if steps else "n/a")
                + f" | {sum(g == 'plain' for g in gates)}/{len(gates)} |"
            )
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("data", nargs="+")
    r.add_argument("--out", required=True)
    r.add_argument("--variant", default="default")
    r.add_argument("--train-seeds", default="0,1")
    r.add_argument("--machines")
    r.add_argument("--train-args", help="extra edge-asd-train flags of a candidate (quoted)")
    r.add_argument("--export-args", help="extra edge-asd-export flags of a candidate (quoted)")
    r.set_defaults(func=cmd_run)
    g = sub.add_parser("regate")
    g.add_argument("dir", help="a variant folder of an earlier run: DIR/<variant>")
    g.add_argument("--match", help="only runs whose name matches this glob")
    g.add_argument("--refit-plain", action="store_true", help="refit each run's plain member with the current defaults first")
    g.set_defaults(func=cmd_regate)
    q = sub.add_parser("plain")
    q.add_argument("dir", help="a variant folder: DIR/<variant>")
    q.add_argument("--work", help="where its trained runs lie (default DIR/<variant>/work)")
    q.add_argument("--match", help="only runs whose name matches this glob")
    q.set_defaults(func=cmd_plain)
    mg = sub.add_parser("margins")
    mg.add_argument("dir", help="a variant folder: DIR/<variant>")
    mg.add_argument("--margins", default="0.02,0.01,0,-0.01,-0.02", help="the check's margins to compare")
    mg.add_argument("--work", help="where its trained runs lie (default DIR/<variant>/work; a -replain or -regated "
                    "variant's are its source's)")
    mg.add_argument("--match", help="only runs whose name matches this glob")
    mg.set_defaults(func=cmd_margins)
    t = sub.add_parser("table")
    t.add_argument("dir")
    t.add_argument("--variants")
    t.add_argument("--match", help="only runs whose name matches this glob, e.g. '*_s1_*' for the validation seed")
    t.set_defaults(func=cmd_table)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    args.func(args)


if __name__ == "__main__":
    main()
