"""``priorcase search`` and ``priorcase info``: reading a library."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from priorcase.cli.common import library_json, open_library, with_db
from priorcase.errors import PriorcaseError
from priorcase.retrieval.hits_table import format_hits
from priorcase.retrieval.regions import parse_box


def cmd_search(args: argparse.Namespace) -> int:
    from priorcase.retrieval.reference import search_reference

    pc = open_library(args)
    if args.images is not None:
        return search_folder(pc, args)
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
    print(open_library(args).build_indexes())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    pc = open_library(args)
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register search and info."""
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
    p.add_argument("--kind", choices=["image", "roi", "tile"])
    p.add_argument("--box", help="x0,y0,x1,y1: search with this region of --image (pixels)")
    p.add_argument("--encoder", help="must match the index's encoder")
    p.add_argument(
        "--as-of", type=int, metavar="VERSION", help="answer from this earlier table version"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="build or update the search indexes (LanceDB, FAISS)")
    with_db(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("info", help="what an index holds")
    with_db(p)
    p.set_defaults(func=cmd_info)
