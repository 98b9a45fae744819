"""``priorcase`` command line: a thin layer over :mod:`priorcase.api`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from priorcase.errors import PriorcaseError
from priorcase.index.vector_index import BACKENDS
from priorcase.records import SearchHit
from priorcase.retrieval.scaled import SCALE_BACKENDS


def _open(args: argparse.Namespace):
    import priorcase

    # notices (encoder fallback, aligner training) go to stderr: stdout may be --json
    return priorcase.open(
        args.db,
        encoder=getattr(args, "encoder", None),
        device=args.device,
        backend=args.backend,
        notify=lambda message: print(message, file=sys.stderr),
        target_recall=args.target_recall,
        memory_budget_mb=args.memory_budget_mb,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    pc = _open(args)
    report = pc.ingest(
        args.sources,
        labels=args.labels,
        findings=args.findings,
        group=args.group,
        batch_size=args.batch_size,
        workers=args.workers,
        normal_rois=args.normal_rois,
        normal_roi_radius=args.normal_roi_radius,
        progress=not args.quiet,
    )
    print(report.summary())
    if report.stored == 0 and (report.failures or report.duplicates == 0):
        return 1
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    pc = _open(args)
    if args.images is not None:
        return search_folder(pc, args)
    hits = pc.search(
        image=args.image,
        text=args.text,
        id=args.id,
        k=args.k,
        where=args.where,
        exclude_same_patient=args.exclude_same_patient,
        kind=args.kind,
    )
    if args.json:
        print(json.dumps({"encoder": pc.encoder.spec, "results": [h.to_json() for h in hits]}))
    else:
        print(format_hits(hits))
    return 0


def search_folder(pc, args: argparse.Namespace) -> int:
    """JSON lines, one per image file of a folder, searched as one batch; an unreadable file
    gets a line with its error and the rest go on."""
    from priorcase.ingest.readers import iter_image_files

    loaded, failed = [], 0
    for path in iter_image_files([args.images]):
        try:
            loaded.append(pc.read(path))
        except PriorcaseError as err:
            failed += 1
            print(json.dumps({"query": str(path), "error": str(err)}))
    results = pc.search_batch(
        loaded,
        k=args.k,
        where=args.where,
        exclude_same_patient=args.exclude_same_patient,
        kind=args.kind,
    )
    for image, hits in zip(loaded, results, strict=True):
        print(json.dumps({"query": str(image.path), "results": [h.to_json() for h in hits]}))
    return 1 if failed and not loaded else 0


def cmd_index(args: argparse.Namespace) -> int:
    print(_open(args).build_indexes())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from priorcase.bench.run import run_bench

    return run_bench(args.quick, args.json, args.sizes, args.write_thresholds)


def format_hits(hits: Sequence[SearchHit]) -> str:
    """A fixed-width table of search results for the terminal."""
    if not hits:
        return "no matching cases"
    rows = [("#", "id", "score", "kind", "labels")]
    for rank, hit in enumerate(hits, start=1):
        labels = ", ".join(f"{k}={v}" for k, v in hit.labels.items() if v is not None)
        rows.append((str(rank), hit.id, f"{hit.score:.4f}", hit.kind, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def cmd_info(args: argparse.Namespace) -> int:
    pc = _open(args)
    manifest = pc.store.manifest
    if manifest is None:
        raise PriorcaseError(f"{args.db} is not a priorcase index (no manifest)")
    print(f"index     {pc.store.db_dir}")
    print(f"encoder   {manifest.encoder_spec} (weights {manifest.encoder['weights_sha256'][:12]})")
    print(f"created   {manifest.created}, updated {manifest.updated}")
    print(f"rows      {pc.store.count('image')} images, {pc.store.count('roi')} ROIs")
    for kind in ("image", "roi"):
        if not pc.store.count(kind):
            continue
        print(f"\nlabels of {kind} rows:")
        for column in manifest.label_columns:
            counts = Counter(str(v) for v in pc.store.column_values(column, kind).values())
            if set(counts) != {"None"}:
                print(f"  {column:<12}" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from priorcase.demo import run_demo

    return run_demo(
        db=args.db, serve=not args.no_serve, host=args.host, port=args.port, device=args.device
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from priorcase.ui.app import serve

    serve(args.db, host=args.host, port=args.port, auth=args.auth, device=args.device)
    return 0


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

    def with_db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", required=True, help="index directory (LanceDB)")

    p = sub.add_parser("ingest", help="embed and store images")
    p.add_argument("sources", nargs="+", help="image files or folders (recursive)")
    with_db(p)
    p.add_argument("--labels", type=Path, help="labels CSV (file or id/image_id column)")
    p.add_argument("--findings", type=Path, help="findings CSV: image_id, x, y, radius, labels")
    p.add_argument("--group", default="patient_id", help="grouping column (default patient_id)")
    p.add_argument("--encoder", help="encoder spec, e.g. bundled or openclip:ViT-B-32/openai")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="DataLoader workers (default: CPUs - 2, at most 4)")
    p.add_argument(
        "--normal-rois",
        type=int,
        default=0,
        help="normal-tissue ROIs sampled per image with no findings",
    )
    p.add_argument(
        "--normal-roi-radius",
        type=int,
        help="fixed radius of normal ROIs (default: drawn from the findings' lesion radii)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="nearest stored cases to an image, a text or an id")
    with_db(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path)
    query.add_argument("--text")
    query.add_argument("--id")
    query.add_argument(
        "--images", type=Path, help="folder of query images: JSON lines, one per file, batched"
    )
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--where", help="LanceDB SQL filter, e.g. \"tissue = 'D'\"")
    p.add_argument("--exclude-same-patient", action="store_true")
    p.add_argument("--kind", choices=["image", "roi"])
    p.add_argument("--encoder", help="must match the index's encoder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="build or update the search indexes (LanceDB, FAISS)")
    with_db(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("bench", help="measure kNN backends and ingest (priorcase/bench)")
    p.add_argument("--quick", action="store_true", help="up to 100k vectors (< 3 minutes)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--sizes", type=int, nargs="+", help="library sizes (default 10k 100k 1M)")
    p.add_argument(
        "--write-thresholds",
        action="store_true",
        help="save the thresholds auto uses, derived from this run (priorcase/index)",
    )
    p.set_defaults(func=cmd_bench, db=None)

    p = sub.add_parser("info", help="what an index holds")
    with_db(p)
    p.set_defaults(func=cmd_info)

    from priorcase.cli_classify import add_classify_commands

    add_classify_commands(sub, with_db)

    p = sub.add_parser("serve", help="web UI (binds to 127.0.0.1 unless told otherwise)")
    with_db(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="user:password for basic auth")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="index the MIAS mammograms and serve the UI")
    p.add_argument("--db", default=os.path.join("priorcase-data", "mias-bundled"))
    p.add_argument("--no-serve", action="store_true", help="print example searches and exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PriorcaseError as err:
        print(f"priorcase: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
