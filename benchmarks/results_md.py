"""Markdown tables (and the issue's targets, met or missed) from ``priorcase bench --json``.

priorcase bench --json > bench.json && python benchmarks/results_md.py bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def targets(out: dict) -> list[tuple[str, str, str, bool | None]]:
    """(measure, target, figure, met) for the largest size measured."""
    auto = [e for e in out["ann"] if e["backend"] == "auto"]
    n = max(e["n"] for e in auto)
    by_sel = {e["filter_selectivity"]: e for e in auto if e["n"] == n}
    top, one = by_sel[1.0], by_sel[0.01]
    ingest = out["ingest"]
    rows = [
        (
            f"{n:,} x 512, default auto, single query",
            "p50 <= 5 ms at recall@10 >= 0.95, >= 100x brute force",
            f"p50 {top['p50_ms']:.2f} ms, recall {top['recall_at_10']:.3f}, "
            f"{top['speedup_vs_brute']:.0f}x brute ({top['chosen']})",
            top["p50_ms"] <= 5 and top["recall_at_10"] >= 0.95 and top["speedup_vs_brute"] >= 100,
        ),
        (
            "same, 1%-selective filter",
            "p50 <= 10 ms at recall@10 >= 0.95",
            f"p50 {one['p50_ms']:.2f} ms, recall {one['recall_at_10']:.3f}",
            one["p50_ms"] <= 10 and one["recall_at_10"] >= 0.95,
        ),
        (
            "batch of 64 queries",
            ">= 5,000 queries/s",
            f"{top['batch64_qps']:.0f} queries/s",
            top["batch64_qps"] >= 5000,
        ),
        (
            f"open a {n:,} library to its first answer",
            "<= 2 s",
            f"{top['open_s']:.2f} s",
            top["open_s"] <= 2,
        ),
        (
            "ingest",
            ">= 85% of the forward-only limit",
            f"{ingest['images_per_s']:.2f} of {ingest['limit_images_per_s']:.2f} images/s "
            f"({100 * ingest['ratio']:.0f}%)",
            ingest["ratio"] >= 0.85,
        ),
        ("GPU", "FAISS GPU >= 20,000 q/s; ViT-B-32 ingest >= 2,000 images/s", "no GPU here", None),
    ]
    return rows


def main() -> None:
    out = json.loads(Path(sys.argv[1]).read_text())
    m = out["machine"]
    print(
        f"- machine: {m['platform']}, {m['cpus']} CPUs, {m['ram_available_mb']} MB available, GPU {m['gpu']}"
    )
    print(f"- versions: {m['versions']}")
    print(f"- date: {m['date']}; load average before {m['load_before']}, after {m['load_after']}")
    print(f"- total run time: {out['total_s']} s")
    print(f"- thresholds derived for auto: {out['derived_thresholds']}")
    print(f"- ingest: {out['ingest']}")
    print()
    print("| measure | target | figure | met |")
    print("| --- | --- | --- | --- |")
    for measure, target, figure, met in targets(out):
        print(
            f"| {measure} | {target} | {figure} | {'-' if met is None else ('met' if met else 'MISSED')} |"
        )
    print()
    print(
        "| backend | n | filter | build s | memory MB | open s | p50 ms | p99 ms | batch64 q/s "
        "| recall@10 | x brute | index / chosen |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for e in out["ann"]:
        extra = e.get("chosen") or e.get("index") or ""
        if e.get("tuned"):
            extra += f" ({e['tuned']})"
        print(
            f"| {e['backend']} | {e['n']:,} | {e['filter_selectivity']} | {fmt(e['build_s'], '.1f')} "
            f"| {fmt(e['memory_mb'], '.0f')} | {fmt(e['open_s'], '.2f')} | {fmt(e['p50_ms'], '.3f')} "
            f"| {fmt(e['p99_ms'], '.3f')} | {fmt(e['batch64_qps'], '.0f')} "
            f"| {fmt(e['recall_at_10'], '.3f')} | {fmt(e['speedup_vs_brute'], '.1f')} | {extra} |"
        )


if __name__ == "__main__":
    main()
