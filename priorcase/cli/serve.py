"""``priorcase serve`` and ``priorcase demo``: the web UI."""

from __future__ import annotations

import argparse
import os

from priorcase.cli.common import with_db


def cmd_demo(args: argparse.Namespace) -> int:
    from priorcase.demo import run_demo

    return run_demo(
        db=args.db,
        serve=not args.no_serve,
        host=args.host,
        port=args.port,
        device=args.device,
        auth=args.auth,
        insecure_no_auth=args.insecure_no_auth,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from priorcase.ui.app import serve

    serve(
        args.db,
        host=args.host,
        port=args.port,
        auth=args.auth,
        device=args.device,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register serve and demo."""
    p = sub.add_parser("serve", help="web UI (binds to 127.0.0.1 unless told otherwise)")
    with_db(p)
    add_serving_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="index the MIAS mammograms and serve the UI")
    p.add_argument("--db", default=os.path.join("priorcase-data", "mias-bundled"))
    p.add_argument("--no-serve", action="store_true", help="print example searches and exit")
    add_serving_arguments(p)
    p.set_defaults(func=cmd_demo)


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """Where the UI listens, and its login (required beyond loopback)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--auth",
        help="user:password for the sign-in form (5 wrong passwords a minute lock the name "
        "for 5 minutes); required beyond 127.0.0.1",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve beyond 127.0.0.1 without a login (trusted networks only)",
    )
