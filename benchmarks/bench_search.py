"""kNN latency: FAISS (flat and HNSW) against the exact NumPy baseline, same run, same data.

    python benchmarks/bench_search.py [--sizes 10000 100000] [--dim 512] [--queries 100]

Prints latency per query in a batch of ``--queries`` and for one query at a time (what the UI
does), the speed ratios against NumPy, and recall@k against the exact answers.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from _common import machine

from priorcase.index.vector_index import VectorIndex, l2_normalise


def clock(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}; faiss {faiss.__version__}; dim {args.dim}; k {args.k}")
    rng = np.random.default_rng(0)
    print(
        f"{'rows':>9} {'method':<12}{'build s':>9}{'batch ms/q':>11}{'vs numpy':>9}"
        f"{'single ms':>10}{'vs numpy':>9}{'recall@k':>9}"
    )
    for n in args.sizes:
        # clustered data, like embeddings: 100 centres plus noise
        centres = rng.standard_normal((100, args.dim)).astype(np.float32)
        data = l2_normalise(
            centres[rng.integers(0, 100, n)]
            + 0.5 * rng.standard_normal((n, args.dim)).astype(np.float32)
        )
        queries = l2_normalise(
            data[rng.integers(0, n, args.queries)]
            + 0.1 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        )
        exact = VectorIndex(data, "exact")
        truth = exact.search(queries, args.k).positions
        base = clock(lambda: exact.search(queries, args.k)) / args.queries
        base_one = clock(lambda: [exact.search(q[None], args.k) for q in queries[:20]]) / 20
        print(
            f"{n:>9} {'numpy exact':<12}{0.0:>9.2f}{base * 1e3:>11.3f}{1.0:>9.2f}{base_one * 1e3:>10.3f}{1.0:>9.2f}{1.0:>9.3f}"
        )
        for name, build in (
            ("faiss flat", lambda: VectorIndex(data, "faiss")),
            ("faiss hnsw", lambda: VectorIndex(data, "hnsw")),
        ):
            start = time.perf_counter()
            index = build()
            built = time.perf_counter() - start
            per_query = clock(lambda: index.search(queries, args.k)) / args.queries
            one = clock(lambda: [index.search(q[None], args.k) for q in queries[:20]]) / 20
            found = index.search(queries, args.k).positions
            recall = np.mean(
                [len(set(a) & set(b)) / args.k for a, b in zip(found, truth, strict=True)]
            )
            print(
                f"{n:>9} {name:<12}{built:>9.2f}{per_query * 1e3:>11.3f}{base / per_query:>9.2f}"
                f"{one * 1e3:>10.3f}{base_one / one:>9.2f}{recall:>9.3f}"
            )


if __name__ == "__main__":
    main()
