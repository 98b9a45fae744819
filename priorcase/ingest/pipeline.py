"""Ingest: read files in DataLoader workers, embed in batches, store atomically, skip duplicates."""

from __future__ import annotations

import multiprocessing
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from priorcase.encoders.base import Encoder
from priorcase.encoders.preprocess import PreprocessConfig, preprocess_pixels
from priorcase.errors import ImageReadError, PriorcaseError
from priorcase.index.manifest import Manifest
from priorcase.index.store import CaseStore
from priorcase.ingest.labels import PATIENT_COLUMN, LabelTable, read_findings, read_labels
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.readers import file_sha256, iter_image_files, read_image
from priorcase.ingest.roi import crop_roi, sample_normal_rois
from priorcase.ingest.thumbnails import make_thumbnail
from priorcase.ingest.writer import BackgroundWriter
from priorcase.records import CaseRecord, Finding, IngestReport

ROI_TYPE = "roi_type"  # label set on every ROI row: "lesion" or "normal"
DEFAULT_NORMAL_RADIUS = 48  # when the findings give no radii to match
MIN_NORMAL_RADIUS = 16


@dataclass
class IngestOptions:
    """How to read and label a batch of files."""

    labels: Path | None = None
    findings: Path | None = None
    group: str = PATIENT_COLUMN
    batch_size: int = 32
    workers: int | None = None  # default: default_workers()
    normal_rois: int = 0  # normal-tissue ROIs sampled per image with no findings
    # None: draw each normal ROI's radius from the findings' lesion radii, so normal and
    # lesion crops cover the same range of scales (a fixed size would let a classifier
    # tell them apart by scale alone)
    normal_roi_radius: int | None = None
    progress: bool = True


@dataclass
class _Task:
    path: Path
    image_id: str
    content_hash: str
    labels: dict[str, str | None]
    patient_key: str | None
    findings: list[Finding] = field(default_factory=list)
    normal_rois: int = 0
    normal_roi_radii: tuple[int, ...] = (DEFAULT_NORMAL_RADIUS,)


class _FileDataset(Dataset):
    """Decodes and preprocesses one file per item; errors come back as values, not raises."""

    def __init__(self, tasks: list[_Task], cfg: PreprocessConfig, pseudonymize: Pseudonymizer):
        self.tasks = tasks
        self.preprocess = partial(preprocess_pixels, cfg=cfg)
        self.pseudonymize = pseudonymize

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict:
        task = self.tasks[index]
        try:
            return _load(task, self.preprocess, self.pseudonymize)
        except ImageReadError as err:
            return {"task": task, "error": str(err)}
        except Exception as err:  # one bad file must never stop the batch
            return {"task": task, "error": f"{task.path}: {type(err).__name__}: {err}"}


def _load(task: _Task, preprocess, pseudonymize: Pseudonymizer) -> dict:
    image = read_image(task.path, pseudonymize)
    pixels = image.pixels
    height, width = pixels.shape[:2]
    metadata = {**image.metadata, "width": str(width), "height": str(height)}
    rois = []
    for finding in task.findings:
        if None in (finding.x, finding.y, finding.radius):
            continue
        geometry = (int(finding.x), int(finding.y), int(finding.radius))
        if any(g == geometry for g, _ in rois):
            continue  # a repeated findings row: same dedup key, so one ROI row
        rois.append((geometry, {**finding.labels, ROI_TYPE: "lesion"}))
    if not task.findings and task.normal_rois:
        for geometry in _normal_rois(pixels, task):
            rois.append((geometry, {ROI_TYPE: "normal"}))
    roi_items = []
    for geometry, labels in rois:
        crop = crop_roi(pixels, *geometry)
        roi_items.append(
            {
                "roi": geometry,
                "labels": labels,
                "tensor": preprocess(crop),
                "thumbnail": make_thumbnail(crop, 128),
            }
        )
    return {
        "task": task,
        "tensor": preprocess(pixels),
        "thumbnail": make_thumbnail(pixels),
        "metadata": metadata,
        "patient": image.patient,
        "rois": roi_items,
    }


def _normal_rois(pixels, task: _Task) -> list[tuple[int, int, int]]:
    """Normal patches with a radius drawn (seeded by the file) from ``normal_roi_radii``;
    a radius too large for the breast is halved until the patch fits."""
    seed = zlib.crc32(task.content_hash.encode())
    radius = int(np.random.default_rng(seed).choice(task.normal_roi_radii))
    while True:
        found = sample_normal_rois(pixels, task.normal_rois, radius, seed)
        if found or radius <= MIN_NORMAL_RADIUS:
            return found
        radius = max(MIN_NORMAL_RADIUS, radius // 2)


def ingest(
    store: CaseStore,
    encoder: Encoder,
    sources: Iterable[str | Path],
    options: IngestOptions | None = None,
) -> IngestReport:
    """Embed and store every image under ``sources``; see :class:`IngestReport` for the outcome."""
    options = options or IngestOptions()
    started = time.perf_counter()
    report = IngestReport(encoder=encoder.spec)
    described = encoder.describe()
    if store.manifest is None:
        store.manifest = Manifest(encoder=described, group_column=options.group)
    else:
        store.manifest.check_encoder(described, store.db_dir)
        if store.manifest.group_column != options.group:
            raise PriorcaseError(
                f"index {store.db_dir} groups by {store.manifest.group_column!r}; "
                f"cannot ingest with --group {options.group!r}"
            )
    labels = read_labels(options.labels) if options.labels else None
    findings = read_findings(options.findings) if options.findings else {}
    if options.normal_rois and options.findings is None:
        # without findings every film would count as normal, abnormal ones included
        raise PriorcaseError(
            "--normal-rois needs --findings: normal ROIs are sampled on films "
            "that have no findings row"
        )
    sources = [Path(s) for s in sources]
    files = iter_image_files(sources)
    if not files:
        report.notes.append("no image files found in " + ", ".join(str(s) for s in sources))
    if labels is not None:
        report.failures += labels.problems + labels.unmatched(files)
    tasks = _plan(store, files, labels, findings, options, report)
    pseudonymize = Pseudonymizer.for_index(store.db_dir)
    _register_columns(store.manifest, labels, findings, options)
    if tasks:
        _embed_and_store(store, encoder, tasks, pseudonymize, options, report)
    store.manifest.save(store.db_dir)
    unlabelled = sum(1 for t in tasks if labels is not None and not any(t.labels.values()))
    if unlabelled:
        report.notes.append(f"{unlabelled} images have no row in {options.labels}")
    report.seconds = time.perf_counter() - started
    return report


def _plan(
    store: CaseStore,
    files: list[Path],
    labels: LabelTable | None,
    findings: dict[str, list[Finding]],
    options: IngestOptions,
    report: IngestReport,
) -> list[_Task]:
    """Hash files, drop stored duplicates and id clashes, attach labels and findings."""
    if options.normal_roi_radius is not None:
        radii: tuple[int, ...] = (options.normal_roi_radius,)
    else:
        lesion_radii = [f.radius for rows in findings.values() for f in rows if f.radius]
        radii = tuple(sorted(lesion_radii)) or (DEFAULT_NORMAL_RADIUS,)
    known_keys = store.existing_keys()
    id_paths = store.id_paths()
    tasks: list[_Task] = []
    for path in tqdm(files, desc="hashing", unit="file", disable=not options.progress):
        try:
            digest = file_sha256(path)
        except OSError as err:
            report.failures.append(f"{path}: cannot read: {err.strerror or err}")
            continue
        if digest in known_keys:
            report.duplicates += 1
            continue
        row = labels.lookup(path) if labels else None
        image_id = (row.image_id if row and row.image_id else None) or path.stem
        if image_id in id_paths:
            report.failures.append(
                f"{path}: duplicate id {image_id!r} (already used by {id_paths[image_id]})"
            )
            continue
        known_keys.add(digest)
        id_paths[image_id] = str(path)
        tasks.append(
            _Task(
                path=path.resolve(),
                image_id=image_id,
                content_hash=digest,
                labels=dict(row.labels) if row else {},
                patient_key=row.patient_key if row else None,
                findings=findings.get(image_id, []),
                normal_rois=options.normal_rois,
                normal_roi_radii=radii,
            )
        )
    return tasks


def _register_columns(
    manifest: Manifest,
    labels: LabelTable | None,
    findings: dict[str, list[Finding]],
    options: IngestOptions,
) -> None:
    columns = list(labels.columns) if labels else []
    for rows in findings.values():
        for finding in rows:
            columns += [c for c in finding.labels if c not in columns]
    if findings or options.normal_rois:
        columns.append(ROI_TYPE)
    for column in columns:
        if column not in manifest.label_columns:
            manifest.label_columns.append(column)
            if column in manifest.metadata_columns:
                manifest.metadata_columns.remove(column)


def _embed_and_store(
    store: CaseStore,
    encoder: Encoder,
    tasks: list[_Task],
    pseudonymize: Pseudonymizer,
    options: IngestOptions,
    report: IngestReport,
) -> None:
    workers = options.workers if options.workers is not None else default_workers()
    loader = DataLoader(
        _FileDataset(tasks, encoder.preprocess_cfg, pseudonymize),
        batch_size=options.batch_size,
        num_workers=workers,
        collate_fn=list,
        pin_memory=encoder.device.type == "cuda",
        # Workers must not fork a process that runs LanceDB's threads (it can deadlock).
        multiprocessing_context=_worker_context() if workers > 0 else None,
    )
    manifest = store.manifest
    assert manifest is not None
    no_room: list[str] = []
    bar = tqdm(total=len(tasks), desc="embedding", unit="img", disable=not options.progress)
    # commits run on a thread beside decoding and the forward pass; the rest is committed on exit
    with bar, BackgroundWriter(store) as writer:
        for items in loader:
            good = [item for item in items if "error" not in item]
            report.failures += [item["error"] for item in items if "error" in item]
            records = _records(good, encoder, pseudonymize, manifest, options)
            new_meta = {k for r in records for k in r.metadata} - set(manifest.metadata_columns)
            new_meta -= set(manifest.label_columns)
            if new_meta:
                manifest.metadata_columns += sorted(new_meta)
                manifest.save(store.db_dir)  # columns first: a crash leaves only unused names
            writer.put(records)
            report.stored_images += sum(1 for r in records if r.kind == "image")
            report.stored_rois += sum(1 for r in records if r.kind == "roi")
            no_room += [
                item["task"].path.name
                for item in good
                if item["task"].normal_rois and not item["task"].findings and not item["rois"]
            ]
            bar.update(len(items))
    if no_room:
        report.notes.append(
            f"{len(no_room)} films had no patch of breast large enough for a normal ROI: "
            + ", ".join(no_room[:10])
            + (" ..." if len(no_room) > 10 else "")
        )


def default_workers() -> int:
    """Decoding workers beside the model: none on 2 cores, where the model needs both
    (measured with benchmarks/bench_ingest.py: 2 workers ran at 0.54x of none), up to 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def _worker_context() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _records(
    items: list[dict],
    encoder: Encoder,
    pseudonymize: Pseudonymizer,
    manifest: Manifest,
    options: IngestOptions,
) -> list[CaseRecord]:
    tensors = [item["tensor"] for item in items]
    tensors += [roi["tensor"] for item in items for roi in item["rois"]]
    if not tensors:
        return []
    vectors = np.concatenate(
        [
            encoder.embed_batch(torch.stack(tensors[i : i + options.batch_size]))
            for i in range(0, len(tensors), options.batch_size)
        ]
    )
    records: list[CaseRecord] = []
    roi_vectors = iter(vectors[len(items) :])
    for item, vector in zip(items, vectors[: len(items)], strict=True):
        task: _Task = item["task"]
        patient = pseudonymize(task.patient_key) if task.patient_key else item["patient"]
        metadata = {k: v for k, v in item["metadata"].items() if k not in manifest.label_columns}
        if options.group == PATIENT_COLUMN:
            group = patient or task.image_id
        else:
            group = task.labels.get(options.group) or task.image_id
        common = {
            "content_hash": task.content_hash,
            "path": str(task.path),
            "metadata": metadata,
            "patient": patient,
            "group": group,
        }
        records.append(
            CaseRecord(
                id=task.image_id,
                kind="image",
                vector=vector,
                key=task.content_hash,
                labels=task.labels,
                thumbnail=item["thumbnail"],
                **common,
            )
        )
        for n, roi in enumerate(item["rois"], start=1):
            x, y, r = roi["roi"]
            records.append(
                CaseRecord(
                    id=f"{task.image_id}-roi{n}",
                    kind="roi",
                    vector=next(roi_vectors),
                    key=f"{task.content_hash}:roi:{x},{y},{r}",
                    labels={**task.labels, **roi["labels"]},
                    thumbnail=roi["thumbnail"],
                    parent_id=task.image_id,
                    roi=roi["roi"],
                    **common,
                )
            )
    return records
