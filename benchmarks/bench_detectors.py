"""Scoring latency of the stage-2 inlier models versus bank size and embedding size.

What the daemon pays per clip: scoring one batch of S = 10 segment embeddings.
For each bank size and embedding dimension the script fits a KNN detector
(exact flat search) and a GMM on random embeddings, then times
``score_samples`` on a fresh batch, reporting the median (and 90th percentile)
over repeats after a warm-up. It prints a table and writes a PNG plot.

GMM scoring cost depends on the number of components and the dimension, not on
how many vectors it was fitted on; it is fitted on at most ``--gmm-fit-max``
vectors with few EM iterations so that the benchmark stays short.

    .venv/bin/python benchmarks/bench_detectors.py --out bench_detectors.png
    .venv/bin/python benchmarks/bench_detectors.py --sizes 1000,10000 --dims 64 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from edge_asd.scoring.base import InlierDetector
from edge_asd.scoring.gmm import GMMDetector
from edge_asd.scoring.knn import KNNDetector


@dataclass(frozen=True)
class Timing:
    detector: str
    bank_size: int
    dim: int
    median_ms: float
    p90_ms: float
    note: str = ""


def time_scoring(detector: InlierDetector, queries: np.ndarray, repeats: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        detector.score_samples(queries)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        detector.score_samples(queries)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), float(np.percentile(samples, 90))


def time_hnsw(bank: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> Timing:
    """An approximate index (faiss HNSW) for comparison: search time, build time and recall@k against exact search.

    Not what the runtime uses (its KNN is exact, see edge_asd.scoring.search): the
    figures say from which bank size an approximate index would pay for its
    build time, its second copy of the vectors and its missed neighbours.
    """
    index = faiss.IndexHNSWFlat(bank.shape[1], args.hnsw_m)
    t0 = time.perf_counter()
    index.add(bank)
    build_s = time.perf_counter() - t0
    index.hnsw.efSearch = args.hnsw_ef
    for _ in range(3):
        index.search(queries, args.k)
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        _, found = index.search(queries, args.k)
        samples.append((time.perf_counter() - start) * 1e3)
    _, exact = faiss.knn(queries, bank, args.k)
    recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact)])
    return Timing(f"hnsw{args.hnsw_m} k={args.k}", bank.shape[0], bank.shape[1], statistics.median(samples),
                  float(np.percentile(samples, 90)), f"recall {recall:.2f}, build {build_s:.1f} s")


def run(args: argparse.Namespace) -> list[Timing]:
    rng = np.random.default_rng(args.seed)
    timings = []
    for dim in args.dims:
        for size in args.sizes:
            bank = rng.normal(size=(size, dim)).astype(np.float32)
            queries = rng.normal(size=(args.batch, dim)).astype(np.float32)
            knn = KNNDetector(k=args.k, use_gpu=args.gpu).fit(bank)
            median, p90 = time_scoring(knn, queries, args.repeats)
            label = f"knn k={args.k}" + (" (gpu)" if knn.on_gpu else "")
            timings.append(Timing(label, size, dim, median, p90))
            if args.hnsw_m:
                timings.append(time_hnsw(bank, queries, args))
            gmm = GMMDetector(n_components=args.components, max_iter=args.gmm_iter, reg_covar=1e-3)
            gmm.fit(bank[: args.gmm_fit_max])
            median, p90 = time_scoring(gmm, queries, args.repeats)
            timings.append(Timing(f"gmm K={args.components} full", size, dim, median, p90))
            print(f"  done: bank {size:>7}, dim {dim:>4}", flush=True)
    return timings


def print_table(timings: list[Timing], batch: int) -> None:
    print(f"\nscoring a batch of {batch} embeddings (ms; median and p90); faiss threads: {faiss.omp_get_max_threads()}")
    print(f"{'detector':<20} {'bank':>8} {'dim':>5} {'median':>9} {'p90':>9}")
    for t in timings:
        print(f"{t.detector:<20} {t.bank_size:>8} {t.dim:>5} {t.median_ms:>9.3f} {t.p90_ms:>9.3f}  {t.note}".rstrip())


def plot(timings: list[Timing], out: Path, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a headless box
    import matplotlib.pyplot as plt

    detectors = list(dict.fromkeys(t.detector for t in timings))
    fig, axes = plt.subplots(1, len(detectors), figsize=(5.5 * len(detectors), 4.2), squeeze=False)
    for ax, name in zip(axes[0], detectors):
        for dim in sorted({t.dim for t in timings}):
            rows = sorted((t for t in timings if t.detector == name and t.dim == dim), key=lambda t: t.bank_size)
            ax.plot([t.bank_size for t in rows], [t.median_ms for t in rows], marker="o", label=f"d = {dim}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bank size (fitted vectors)")
        ax.set_ylabel(f"median time to score {batch} segments (ms)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot written to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda text: [int(float(v)) for v in text.split(",")]  # noqa: E731 - accepts 1e5
    parser.add_argument("--sizes", type=ints, default=[1000, 10000, 100000], help="bank sizes, comma-separated")
    parser.add_argument("--dims", type=ints, default=[64, 128, 256], help="embedding sizes, comma-separated")
    parser.add_argument("--batch", type=int, default=10, help="query segments per call (S)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--k", type=int, default=16, help="KNN neighbours")
    parser.add_argument("--components", type=int, default=16, help="GMM components")
    parser.add_argument("--gmm-iter", type=int, default=5, help="EM iterations when fitting the GMM")
    parser.add_argument("--gmm-fit-max", type=int, default=5000, help="vectors the GMM is fitted on, at most")
    parser.add_argument("--hnsw-m", type=int, default=32, help="also time a faiss HNSW index with this M (0: skip)")
    parser.add_argument("--hnsw-ef", type=int, default=64, help="HNSW efSearch")
    parser.add_argument("--gpu", action="store_true", help="search the KNN bank on the GPU when faiss can")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faiss-threads", type=int, default=1, help="1 is what the runtime uses (edge_asd.runtime.scorer.quiet_faiss_threads)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_detectors.png"))
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.faiss_threads)
    timings = run(args)
    print_table(timings, args.batch)
    plot(timings, args.out, args.batch)


if __name__ == "__main__":
    main()
