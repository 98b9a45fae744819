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
from priorcase.retrieval.hits_table import format_hits
from priorcase.retrieval.regions import parse_box


def _open(args: argparse.Namespace):
    import priorcase

    # notices (encoder fallback, aligner training) go to stderr: stdout may be --json
    return priorcase.open(
        args.db,
        encoder=getattr(args, "encoder", None),
        device=args.device,
        backend=args.backend,
        notify=lambda message: print(message, file=sys.stderr),
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
        identifier_columns=tuple(
            c.strip() for c in (args.identifier_columns or "").split(",") if c.strip()
        ),
        modality=args.modality,
        tile_sizes=args.tile_sizes,
        tile_overlap=args.tile_overlap,
        clahe=args.clahe,
    )
    print(report.summary())
    if report.stopped:
        print(f"priorcase: error: {report.stopped}", file=sys.stderr)
        return 1
    if report.stored + report.updated == 0 and (report.failures or report.duplicates == 0):
        return 1
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    import priorcase

    pc = priorcase.open(args.db, notify=lambda message: print(message, file=sys.stderr))
    if pc.store.manifest is None:
        raise PriorcaseError(f"{args.db} is not a priorcase index (no manifest)")
    patient = args.patient
    if args.patient_id is not None:
        patient = pc.pseudonym(args.patient_id)
    images, rois = pc.delete(ids=args.id or (), where=args.where, patient=patient)
    print(f"deleted {images} images and {rois} ROIs; derived files removed, table compacted")
    return 0 if images + rois else 1


def cmd_search(args: argparse.Namespace) -> int:
    from priorcase.cli_classify import library_json
    from priorcase.retrieval.reference import search_reference

    pc = _open(args)
    if args.as_of is not None:
        pc.as_of(args.as_of)
    hits = pc.search(
        image=args.image,
        text=args.text,
        id=args.id,
        k=args.k,
        where=args.where,
        exclude_same_patient=args.exclude_same_patient,
        kind=args.kind,
        box=parse_box(args.box) if args.box else None,
    )
    reference, percentiles = search_reference(pc, hits, args.text, args.kind)
    if args.json:
        results = [{**h.to_json(), "percentile": p} for h, p in zip(hits, percentiles, strict=True)]
        out = {
            "library": library_json(pc),
            "reference": reference.to_json(),
            "warning": reference.reason,
            "encoder": pc.encoder.spec,
            "results": results,
        }
        print(json.dumps(out))
    else:
        if reference.reason:  # stderr: stdout stays the table
            print(f"warning: {reference.reason}", file=sys.stderr)
        print(format_hits(hits, percentiles))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    pc = _open(args)
    manifest = pc.store.manifest
    if manifest is None:
        raise PriorcaseError(f"{args.db} is not a priorcase index (no manifest)")
    print(f"index     {pc.store.db_dir}")
    print(f"encoder   {manifest.encoder_spec} (weights {manifest.encoder['weights_sha256'][:12]})")
    print(f"created   {manifest.created}, updated {manifest.updated}")
    print(f"rows      {pc.store.count('image')} images, {pc.store.count('roi')} ROIs")
    if pc.store.count("tile"):
        print(f"tiles     {pc.store.count('tile')} (sizes {manifest.tiles['sizes']} px)")
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

    serve(
        args.db,
        host=args.host,
        port=args.port,
        auth=args.auth,
        device=args.device,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0


def add_region_arguments(p: argparse.ArgumentParser) -> None:
    """Ingest options for mammography: breast crop/flip and tiles (fixed at first ingest)."""
    from priorcase.ingest.tiles import parse_sizes

    p.add_argument(
        "--modality",
        help="MG: a mammography collection (breast crop, flip and tiles for every image); "
        "default: crop only DICOM files whose Modality is MG",
    )
    p.add_argument(
        "--tile-sizes",
        type=parse_sizes,
        help="tile sides in pixels, e.g. 128,256, or 0 for none "
        "(default with --modality MG: the 50th/90th percentile lesion crop of --findings)",
    )
    p.add_argument("--tile-overlap", type=float, default=0.5, help="overlap of adjacent tiles")
    p.add_argument("--clahe", action="store_true", help="CLAHE on the breast before embedding")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="priorcase", description="Find similar prior cases and classify images by retrieval."
    )
    parser.add_argument("--device", help="torch device (default: cuda, mps or cpu)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="kNN: exact NumPy, FAISS flat (exact), FAISS HNSW (approximate), or auto",
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
    p.add_argument(
        "--identifier-columns",
        help="comma-separated CSV columns never to store, besides the built-in list "
        "(patient_name, birth_date, mrn, accession, ...)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_region_arguments(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("delete", help="erase cases, their ROIs and derived files")
    with_db(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", nargs="+", help="case ids")
    which.add_argument("--where", help="LanceDB SQL filter, e.g. \"tissue = 'D'\"")
    which.add_argument("--patient", help="a patient pseudonym (anon-...)")
    which.add_argument(
        "--patient-id", help="a patient's ID (pseudonymised with the library's salt, not kept)"
    )
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("search", help="nearest stored cases to an image, a text or an id")
    with_db(p)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path)
    query.add_argument("--text")
    query.add_argument("--id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--where", help="LanceDB SQL filter, e.g. \"tissue = 'D'\"")
    p.add_argument("--exclude-same-patient", action="store_true")
    p.add_argument("--kind", choices=["image", "roi", "tile"])
    p.add_argument("--box", help="x0,y0,x1,y1: search with this region of --image (pixels)")
    p.add_argument("--encoder", help="must match the index's encoder")
    p.add_argument(
        "--as-of", type=int, metavar="VERSION", help="answer from this earlier table version"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="what an index holds")
    with_db(p)
    p.set_defaults(func=cmd_info)

    from priorcase.cli_classify import add_classify_commands

    add_classify_commands(sub, with_db)

    p = sub.add_parser("serve", help="web UI (binds to 127.0.0.1 unless told otherwise)")
    with_db(p)
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
