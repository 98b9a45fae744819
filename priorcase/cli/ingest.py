"""``priorcase ingest`` and ``priorcase delete``: writing to a library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from priorcase.cli.common import open_library, with_db
from priorcase.errors import PriorcaseError


def cmd_ingest(args: argparse.Namespace) -> int:
    if args.engine == "ray":  # refuse a missing Ray before loading the encoder
        from priorcase.ingest.ray_engine import import_ray

        import_ray()
    pc = open_library(args)
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
        engine=args.engine,
        ray_address=args.ray_address,
        num_gpus_per_worker=args.num_gpus_per_worker,
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


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Where ingest runs: this process, or a Ray cluster (``priorcase[ray]``)."""
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="ray: decode on Ray CPU tasks, embed on an actor pool, one model per worker "
        "(--workers: embedding workers, default one per GPU share or half the CPUs)",
    )
    p.add_argument(
        "--ray-address", help="Ray cluster to join, e.g. ray://head:10001 (default: start one)"
    )
    p.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each embedding worker takes with --engine ray (default 0: CPU)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ingest and delete."""
    p = sub.add_parser("ingest", help="embed and store images")
    p.add_argument(
        "sources",
        nargs="+",
        help="image files or folders (recursive), or s3:// objects or prefixes",
    )
    with_db(p)
    p.add_argument("--labels", type=Path, help="labels CSV (file or id/image_id column)")
    p.add_argument("--findings", type=Path, help="findings CSV: image_id, x, y, radius, labels")
    p.add_argument("--group", default="patient_id", help="grouping column (default patient_id)")
    p.add_argument("--encoder", help="encoder spec, e.g. bundled or openclip:ViT-B-32/openai")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        type=int,
        help="DataLoader workers (default: CPUs - 2, at most 4); "
        "with --engine ray: embedding workers",
    )
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
    add_engine_arguments(p)
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
