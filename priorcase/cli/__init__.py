"""``priorcase`` command line: a thin layer over :mod:`priorcase.api`, one module per group of
sub-commands (:mod:`.ingest`, :mod:`.search`, :mod:`.classify`, :mod:`.serve`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from priorcase.cli import bench, classify, ingest, search, serve
from priorcase.errors import PriorcaseError
from priorcase.index.location import redact
from priorcase.index.vector_index import BACKENDS
from priorcase.retrieval.scaled import SCALE_BACKENDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="priorcase", description="Find similar prior cases and classify images by retrieval."
    )
    parser.add_argument("--device", help="torch device (default: cuda, mps or cpu)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS + SCALE_BACKENDS,
        default="auto",
        help="kNN: exact NumPy, FAISS flat (exact), FAISS HNSW (approximate), FAISS chosen by "
        "memory budget (faiss-ann), LanceDB's own index (lance), or auto (says which)",
    )
    parser.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="recall@10 the approximate indexes are tuned to (default 0.95)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="memory an in-memory index may use (default: half the available RAM)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (ingest, search, classify, serve, bench):
        commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PriorcaseError as err:
        print(f"priorcase: error: {redact(str(err))}", file=sys.stderr)  # no credential
        return 2
    except KeyboardInterrupt:
        return 130
