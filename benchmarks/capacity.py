"""Capacity model for 10M and 100M vectors, extrapolated from `priorcase bench --json` figures.

    python benchmarks/capacity.py bench.json

Scaling rules (stated in docs/CAPACITY.md):
* memory: FAISS HNSW32 keeps raw vectors plus 64 level-0 links a row, n x (4d + 256) bytes;
  IVF-PQ64 keeps n x (64 + 8) bytes; LanceDB IVF_SQ caches its 8-bit codes, n x d bytes, and
  reads refined rows from disk; disk for LanceDB is the raw vectors plus the index.
* build: HNSW grows as n log n; IVF as n^1.5 (partitions = sqrt(n), every row compared to
  every centroid); both from the measured figure at the largest size.
* latency: HNSW as log n at a fixed efSearch; IVF as sqrt(n) (rows scanned per probe grow with
  the partition size at a fixed share of partitions probed).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

DIM = 512
SIZES = (10_000_000, 100_000_000)


def pick(results: list[dict], backend: str, n: int, sel: float = 1.0) -> dict | None:
    for e in results:
        if e["backend"] == backend and e["n"] == n and e["filter_selectivity"] == sel:
            return e
    return None


def main() -> None:
    out = json.loads(Path(sys.argv[1]).read_text())
    n0 = max(e["n"] for e in out["ann"])
    faiss = pick(out["ann"], "faiss-auto", n0)
    lance = pick(out["ann"], "lance-indexed", n0)
    print(f"measured at n = {n0:,}:")
    for e in (faiss, lance):
        if e:
            print(
                f"  {e['backend']} ({e.get('index')}): build {e['build_s']:.0f} s, "
                f"memory {e['memory_mb']:.0f} MB, p50 {e['p50_ms']:.2f} ms, "
                f"recall {e['recall_at_10']:.3f}"
            )
    print()
    print("| n | index | memory GB | disk GB | p50 ms (extrapolated) | build (extrapolated) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in SIZES:
        r = n / n0
        raw_gb = n * DIM * 4 / 2**30
        if faiss:
            build = faiss["build_s"] * r * math.log(n) / math.log(n0)
            p50 = faiss["p50_ms"] * math.log(n) / math.log(n0)
            mem = n * (4 * DIM + 256) / 2**30
            print(
                f"| {n:,} | FAISS HNSW32 (in RAM) | {mem:.0f} | {mem:.0f} | {p50:.2f} "
                f"| {build / 3600:.1f} h |"
            )
            mem_pq = n * (64 + 8) / 2**30
            print(
                f"| {n:,} | FAISS IVF-PQ64 (in RAM, no refine) | {mem_pq:.1f} | {mem_pq:.1f} "
                f"| not measured | not measured |"
            )
        if lance:
            build = lance["build_s"] * r**1.5
            p50 = lance["p50_ms"] * math.sqrt(r)
            mem = n * DIM / 2**30
            print(
                f"| {n:,} | LanceDB IVF_SQ (+refine from disk) | {mem:.0f} (codes cache) "
                f"| {raw_gb + mem:.0f} | {p50:.1f} | {build / 3600:.1f} h |"
            )
            mem_pq = n * (DIM // 8) / 2**30
            print(
                f"| {n:,} | LanceDB IVF_PQ64 (+refine from disk) | {mem_pq:.1f} (codes cache) "
                f"| {raw_gb + mem_pq:.0f} | ~{p50:.1f} (same probes) | PQ training: see text |"
            )


if __name__ == "__main__":
    main()
