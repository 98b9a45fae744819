"""``priorcase bench``: kNN backends and ingest, measured in one run (not part of the tests)."""

from __future__ import annotations

import argparse


def cmd_bench(args: argparse.Namespace) -> int:
    from priorcase.bench.run import run_bench

    return run_bench(args.quick, args.json, args.sizes, args.write_thresholds, args.only)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register bench."""
    p = sub.add_parser("bench", help="measure kNN backends and ingest (priorcase/bench)")
    p.add_argument("--quick", action="store_true", help="up to 100k vectors (< 3 minutes)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--sizes", type=int, nargs="+", help="library sizes (default 10k 100k 1M)")
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="save the thresholds auto uses, derived from this run (priorcase/index)",
    )
    p.add_argument(
        "--only",
        choices=["storage"],
        help="one figure alone: storage (query latency from an S3-compatible server vs disk)",
    )
    p.set_defaults(func=cmd_bench, db=None)
