"""What every ``priorcase`` sub-command shares: opening the library, the --db option, and
the description of the library that answered."""

from __future__ import annotations

import argparse
import shlex
import sys


def open_library(args: argparse.Namespace):
    """The library named by ``--db``, with the global options (notices go to stderr: stdout
    may be --json)."""
    import priorcase

    return priorcase.open(
        args.db,
        encoder=getattr(args, "encoder", None),
        device=args.device,
        backend=args.backend,
        notify=lambda message: print(message, file=sys.stderr),
        target_recall=getattr(args, "target_recall", None),
        memory_budget_mb=getattr(args, "memory_budget_mb", None),
    )


def with_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        required=True,
        help="index directory (LanceDB), or object storage: s3://bucket/prefix, gs://, az://",
    )


def command_line() -> str:
    """The command line as typed, to record how a result was obtained."""
    return shlex.join(["priorcase", *sys.argv[1:]])


def library_json(pc) -> dict:
    """Which library answered: table version, encoder and its weights, priorcase version."""
    from priorcase import __version__

    manifest = pc.store.manifest
    return {
        "version": pc.store.version,
        "encoder": None if manifest is None else manifest.encoder_spec,
        "weights_sha256": None if manifest is None else manifest.encoder["weights_sha256"],
        "priorcase": __version__,
    }
