"""Ingest: read files in DataLoader workers, embed in batches, store atomically, skip duplicates."""

from __future__ import annotations

import copy
import multiprocessing
import os
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from priorcase.encoders.base import Encoder
from priorcase.encoders.preprocess import PreprocessConfig, preprocess_pixels
from priorcase.errors import ImageReadError, LabelsError, PriorcaseError, StorageError
from priorcase.index.manifest import Manifest
from priorcase.index.previews import source_png_preview, store_previews
from priorcase.index.store import CaseStore, StoredRow, sql_quote
from priorcase.index.vocabulary import record_vocabulary
from priorcase.ingest.breast import MAMMOGRAPHY, BreastConfig, BreastView, prepare
from priorcase.ingest.columns import MAX_COLUMNS, check_names
from priorcase.ingest.labels import PATIENT_COLUMN, LabelTable, read_findings, read_labels
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.readers import (
    SourceFile,
    check_regular_file,
    file_id,
    file_sha256,
    iter_image_files,
    read_image,
)
from priorcase.ingest.roi import crop_box, sample_normal_rois
from priorcase.ingest.sources import ObjectFile, as_source
from priorcase.ingest.thumbnails import make_thumbnail
from priorcase.ingest.tiles import TILE_KIND, TileConfig, film_tiles, sizes_from_radii
from priorcase.records import CaseRecord, Finding, IngestReport, LoadedImage

ROI_TYPE = "roi_type"  # label set on every ROI row: "lesion" or "normal"
DEFAULT_NORMAL_RADIUS = 48  # when the findings give no radii to match
MIN_NORMAL_RADIUS = 16
COMPACT_EVERY_COMMITS = 20  # how often a long ingest checks its fragment count


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
    # extra column names never stored (besides IDENTIFIER_WORDS, see ingest.columns)
    identifier_columns: tuple[str, ...] = ()
    # "MG": a mammography collection: breast crop/flip and tiles for every image (default:
    # only DICOM files whose Modality is MG are cropped, and no tiles). Fixed at first ingest.
    modality: str | None = None
    tile_sizes: tuple[int, ...] | None = None  # None: from the findings' radii (MG); (): none
    tile_overlap: float = 0.5
    clahe: bool = False
    # "ray": decode on Ray CPU tasks and embed on an actor pool (priorcase.ingest.ray_engine);
    # or an engine object (LocalEngine, RayEngine) configured by the caller
    engine: Any = "local"
    ray_address: str | None = None  # None: the running cluster, else a local one
    num_gpus_per_worker: float = 0.0


@dataclass
class _Task:
    path: SourceFile
    image_id: str
    content_hash: str
    labels: dict[str, str | None]
    patient_key: str | None
    findings: list[Finding] = field(default_factory=list)
    normal_rois: int = 0
    normal_roi_radii: tuple[int, ...] = (DEFAULT_NORMAL_RADIUS,)
    update: bool = False  # stored with the same bytes, findings changed: replace its rows


@dataclass(frozen=True)
class _Views:
    """The index's breast preprocessing and tiling, and whether findings label the films."""

    breast: BreastConfig
    tiles: TileConfig | None
    findings_known: bool


class _FileDataset(Dataset):
    """Decodes and preprocesses one file per item; errors come back as values, not raises."""

    def __init__(
        self,
        tasks: list[_Task],
        cfg: PreprocessConfig,
        pseudonymize: Pseudonymizer,
        views: _Views,
    ):
        self.tasks = tasks
        self.preprocess = partial(preprocess_pixels, cfg=cfg)
        self.pseudonymize = pseudonymize
        self.views = views

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> dict:
        return load_item(self.tasks[index], self.preprocess, self.pseudonymize, self.views)


def load_item(task: _Task, preprocess, pseudonymize: Pseudonymizer, views: _Views) -> dict:
    """One file decoded and preprocessed (film, ROIs, tiles); a failure comes back as an
    ``error`` line, never raised."""
    try:
        return _load(task, preprocess, pseudonymize, views)
    except ImageReadError as err:
        return {"task": task, "error": str(err)}
    except Exception as err:  # one bad file must never stop the batch
        return {"task": task, "error": f"{task.path}: {type(err).__name__}: {err}"}


def _load(task: _Task, preprocess, pseudonymize: Pseudonymizer, views: _Views) -> dict:
    image = read_image(task.path, pseudonymize)
    pixels = image.pixels
    height, width = pixels.shape[:2]
    metadata = {**image.metadata, "width": str(width), "height": str(height)}
    view = prepare(pixels, views.breast, image.metadata, need_mask=views.tiles is not None)
    if views.breast.applies(image.metadata):
        metadata |= view.describe()
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
        crop, box = _view_crop(view, crop_box(width, height, *geometry))
        roi_items.append(
            {
                "roi": geometry,
                "box": box,
                "labels": labels,
                "tensor": preprocess(crop),
                "thumbnail": make_thumbnail(crop, 128),
            }
        )
    tiles = (
        film_tiles(view, views.tiles, task.findings, views.findings_known) if views.tiles else []
    )
    return {
        "task": task,
        "tensor": preprocess(view.pixels),
        "thumbnail": make_thumbnail(pixels),
        # full resolution for the viewer: a PNG source as it is (its picture chunks), else
        # the pixels, PNG-encoded by the writer thread (37 ms a 1024² film, on the cores
        # the forward pass needs)
        "preview": _source_preview(image) or pixels,
        "metadata": metadata,
        "patient": image.patient,
        "rois": roi_items,
        # no thumbnails: the UI draws a tile's box on its parent film
        "tiles": [{"tile": t, "tensor": preprocess(view.crop(t.view_box))} for t in tiles],
    }


def _source_preview(image: LoadedImage) -> bytes | None:
    if image.path.suffix.lower() != ".png":
        return None
    data = image.encoded if image.encoded is not None else Path(image.path).read_bytes()
    return source_png_preview(data)


def _view_crop(view: BreastView, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple]:
    """The view's pixels of a source box, and that box as embedded (source pixels)."""
    vbox = view.from_source(box)
    if vbox[2] - vbox[0] < 1 or vbox[3] - vbox[1] < 1:  # outside the breast crop
        return view.pixels[:1, :1], box
    return view.crop(vbox), view.to_source(vbox)


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
    """Embed and store every image under ``sources``; see :class:`IngestReport` for the outcome.

    Everything that can be refused (encoder, salt, group column, CSV columns) is checked
    before the first write, so a refused ingest changes neither rows nor the manifest.
    A file whose id is stored with the same bytes is skipped, or updated when its labels or
    findings changed; a write failure (full disk) stops the ingest with ``report.stopped``.
    """
    options = options or IngestOptions()
    started = time.perf_counter()
    engine = _engine(options)  # a missing Ray is refused before anything is written
    try:
        return _ingest(store, encoder, sources, options, engine, started)
    finally:
        engine.close()


def _ingest(
    store: CaseStore,
    encoder: Encoder,
    sources: Iterable[str | Path],
    options: IngestOptions,
    engine: IngestEngine,
    started: float,
) -> IngestReport:
    report = IngestReport(encoder=encoder.spec)
    pseudonymize = Pseudonymizer.for_index(store.db_dir)
    manifest = _working_manifest(store, encoder.describe(), options, pseudonymize.fingerprint())
    identifiers = tuple(options.identifier_columns)
    labels = None
    if options.labels:
        labels = read_labels(options.labels, options.group, identifiers, pseudonymize)
        report.notes += labels.notes
    findings = (
        read_findings(options.findings, identifiers, report.notes) if options.findings else {}
    )
    if options.normal_rois and options.findings is None:
        # without findings every film would count as normal, abnormal ones included
        raise PriorcaseError(
            "--normal-rois needs --findings: normal ROIs are sampled on films "
            "that have no findings row"
        )
    if store.manifest is None:
        _choose_views(manifest, options, findings)
    else:
        _check_views(manifest, options, store.db_dir)
    _register_columns(manifest, labels, findings, options)
    views = _Views(
        BreastConfig.from_dict(manifest.breast),
        TileConfig.from_dict(manifest.tiles),
        options.findings is not None,
    )
    sources = [as_source(s) for s in sources]  # object URIs stay URIs
    skipped: list[str] = []
    files = iter_image_files(sources, skipped, report.notes)
    report.failures += skipped
    if not files:
        report.notes.append("no image files found in " + ", ".join(str(s) for s in sources))
    if labels is not None:
        report.failures += labels.problems + labels.unmatched(files)
    hashes = engine.hash_files(files, options)
    tasks, label_updates = _plan(store, manifest, files, hashes, labels, findings, options, report)
    commits = 0
    try:
        if tasks or label_updates:
            manifest.commit(store.db_dir)  # columns first: a crash leaves only unused names
            store.manifest = manifest
            record_vocabulary(store.db_dir, options.labels)  # code -> words beside the CSV
        for image_id, values, previous in label_updates:
            store.update_labels(image_id, values, previous)
            report.updated += 1
            commits += 1
        if tasks:
            commits += engine.embed_and_store(
                store, encoder, tasks, pseudonymize, options, report, views
            )
        if store.maybe_optimize():
            report.notes.append(f"compacted the table ({commits} commits in this ingest)")
    except StorageError as err:
        report.stopped = str(err)
    unlabelled = sum(1 for t in tasks if labels is not None and not any(t.labels.values()))
    if unlabelled:
        report.notes.append(f"{unlabelled} images have no row in {options.labels}")
    report.seconds = time.perf_counter() - started
    return report


@dataclass(frozen=True)
class Unreadable:
    """A file that could not be hashed, and the one-line reason."""

    line: str


def hash_file(path: SourceFile) -> str | Unreadable:
    """SHA-256 of a file's bytes (the content dedup key), or why it cannot be read."""
    try:
        if not isinstance(path, ObjectFile):
            check_regular_file(path)  # never open a FIFO: it would block
        return file_sha256(path)
    except ImageReadError as err:
        return Unreadable(str(err))
    except OSError as err:
        return Unreadable(f"{path}: cannot read: {err.strerror or err}")


class IngestEngine(Protocol):
    """Where files are hashed, decoded and embedded; the plan and the writes stay in
    :func:`ingest` (:class:`LocalEngine`, or ``priorcase.ingest.ray_engine.RayEngine``)."""

    def hash_files(
        self, files: list[SourceFile], options: IngestOptions
    ) -> dict[SourceFile, str | Unreadable]: ...

    def embed_and_store(
        self,
        store: CaseStore,
        encoder: Encoder,
        tasks: list[_Task],
        pseudonymize: Pseudonymizer,
        options: IngestOptions,
        report: IngestReport,
        views: _Views,
    ) -> int: ...

    def close(self) -> None: ...


def _engine(options: IngestOptions) -> IngestEngine:
    """Where files are decoded and embedded: this process, or a Ray cluster (imported only
    when asked for)."""
    if not isinstance(options.engine, str):
        return options.engine
    if options.engine == "local":
        return LocalEngine()
    if options.engine == "ray":
        from priorcase.ingest.ray_engine import RayEngine

        return RayEngine(options.ray_address, options.num_gpus_per_worker)
    raise PriorcaseError(f"unknown ingest engine {options.engine!r}: use 'local' or 'ray'")


def _working_manifest(
    store: CaseStore, described: dict, options: IngestOptions, fingerprint: str
) -> Manifest:
    """A copy of the library's manifest (or a new one) after the checks that refuse a run."""
    current = store.manifest
    if current is None:
        return Manifest(encoder=described, group_column=options.group, salt_fingerprint=fingerprint)
    current.check_encoder(described, store.db_dir)
    current.check_salt(fingerprint, store.db_dir)
    if current.group_column != options.group:
        raise PriorcaseError(
            f"index {store.db_dir} groups by {current.group_column!r}; "
            f"cannot ingest with --group {options.group!r}"
        )
    manifest = copy.deepcopy(current)
    manifest.salt_fingerprint = manifest.salt_fingerprint or fingerprint
    return manifest


def _plan(
    store: CaseStore,
    manifest: Manifest,
    files: list[SourceFile],
    hashes: dict[SourceFile, str | Unreadable],
    labels: LabelTable | None,
    findings: dict[str, list[Finding]],
    options: IngestOptions,
    report: IngestReport,
) -> tuple[list[_Task], list[tuple[str, dict[str, str | None], dict[str, str | None]]]]:
    """Sort hashed files into new, corrected (re-embedded, or labels updated in place) and
    unchanged ones; refuse an id stored with other bytes."""
    if options.normal_roi_radius is not None:
        radii: tuple[int, ...] = (options.normal_roi_radius,)
    else:
        lesion_radii = [f.radius for rows in findings.values() for f in rows if f.radius]
        radii = tuple(sorted(lesion_radii)) or (DEFAULT_NORMAL_RADIUS,)
    stored = store.stored_rows(manifest.label_columns)
    rois_of: dict[str, list[StoredRow]] = {}
    for row in stored.values():
        if row.parent_id is not None and row.kind == "roi":  # tiles follow their film
            rois_of.setdefault(row.parent_id, []).append(row)
    tasks: list[_Task] = []
    label_updates: list[tuple[str, dict[str, str | None], dict[str, str | None]]] = []
    first_with: dict[str, str] = {}
    same_content: list[str] = []
    for path in files:
        digest = hashes[path]
        if isinstance(digest, Unreadable):
            report.failures.append(digest.line)
            continue
        row = labels.lookup(path) if labels else None
        image_id = (row.image_id if row and row.image_id else None) or file_id(path)
        if first_with.setdefault(digest, image_id) != image_id:
            same_content.append(f"{image_id} = {first_with[digest]}")
        task = _Task(
            path=path.resolve(),
            image_id=image_id,
            content_hash=digest,
            labels=dict(row.labels) if row else {},
            patient_key=row.patient_key if row else None,
            findings=findings.get(image_id, []),
            normal_rois=options.normal_rois,
            normal_roi_radii=radii,
        )
        known = stored.get(image_id)
        if known is None or known.kind != "image":
            tasks.append(task)
            continue
        if known.content_hash != digest:
            report.failures.append(_clash(path, image_id))
            continue
        if options.findings is not None and _findings_changed(task, rois_of.get(image_id, [])):
            task.labels = {**known.labels, **task.labels}  # keep other runs' columns
            task.update = True
            tasks.append(task)
            continue
        changed = {c: v for c, v in task.labels.items() if known.labels.get(c) != v}
        if changed:
            label_updates.append((image_id, changed, known.labels))
        else:
            report.duplicates += 1
    if same_content:
        report.notes.append(
            f"{len(same_content)} files have the same bytes as another file, each stored "
            "under its own id: " + ", ".join(same_content[:10])
        )
    return tasks, label_updates


def _clash(path: SourceFile, image_id: str) -> str:
    return (
        f"{path}: duplicate id {image_id!r}: a file with other content is stored under it; "
        "rename the file or give it an image_id in the labels CSV"
    )


def _findings_changed(task: _Task, stored_rois: list[StoredRow]) -> bool:
    """Whether the lesion ROIs the findings ask for differ from the stored ones."""
    wanted: dict[tuple[int, int, int], tuple] = {}
    for f in task.findings:
        if None not in (f.x, f.y, f.radius):
            geometry = (int(f.x), int(f.y), int(f.radius))  # type: ignore[arg-type]
            # as _load: a repeated geometry gives one ROI, the first row's
            wanted.setdefault(geometry, tuple(sorted(f.labels.items())))
    have = set()
    columns = {k for f in task.findings for k in f.labels}
    for row in stored_rois:
        if row.labels.get(ROI_TYPE) == "normal":
            continue
        labels = tuple(sorted((k, v) for k, v in row.labels.items() if k in columns))
        have.add((row.roi, labels))
    if not task.findings:
        # no findings row now: stored lesion ROIs are stale unless there were none
        return bool(have)
    return set(wanted.items()) != have


def _register_columns(
    manifest: Manifest,
    labels: LabelTable | None,
    findings: dict[str, list[Finding]],
    options: IngestOptions,
) -> None:
    """Add this run's label columns to the manifest, refusing one that would share a table
    field with a stored column of another name (``kind`` vs ``label_kind``)."""
    columns = list(labels.columns) if labels else []
    for rows in findings.values():
        for finding in rows:
            columns += [c for c in finding.labels if c not in columns]
    if findings or options.normal_rois:
        columns.append(ROI_TYPE)
    new = [c for c in columns if c not in manifest.label_columns + manifest.metadata_columns]
    check_names(
        new,
        options.labels or options.findings,
        reserved=manifest.label_columns + manifest.metadata_columns,
    )
    if len(manifest.label_columns) + len(new) > MAX_COLUMNS:
        raise LabelsError(
            f"index would have {len(manifest.label_columns) + len(new)} label columns; "
            f"at most {MAX_COLUMNS} are supported"
        )
    for column in columns:
        if column not in manifest.label_columns:
            manifest.label_columns.append(column)
            if column in manifest.metadata_columns:
                manifest.metadata_columns.remove(column)


class LocalEngine:
    """One process: files hashed in turn, decoded in DataLoader workers, embedded here."""

    def hash_files(
        self, files: list[SourceFile], options: IngestOptions
    ) -> dict[SourceFile, str | Unreadable]:
        bar = tqdm(files, desc="hashing", unit="file", disable=not options.progress)
        return {path: hash_file(path) for path in bar}

    def close(self) -> None:
        """Nothing to release."""

    def embed_and_store(
        self,
        store: CaseStore,
        encoder: Encoder,
        tasks: list[_Task],
        pseudonymize: Pseudonymizer,
        options: IngestOptions,
        report: IngestReport,
        views: _Views,
    ) -> int:
        """Decode, embed and write the tasks batch by batch; returns the number of commits."""
        workers = options.workers if options.workers is not None else default_workers()
        dataset = _FileDataset(tasks, encoder.preprocess_cfg, pseudonymize, views)
        loader: Iterable[list[dict]] = (
            DataLoader(
                dataset,
                batch_size=options.batch_size,
                num_workers=workers,
                collate_fn=list,
                pin_memory=encoder.device.type == "cuda",
                # Workers must not fork a process that runs LanceDB's threads (deadlocks).
                multiprocessing_context=_worker_context(),
            )
            if workers > 0
            else _decoded_ahead(dataset, options.batch_size)
        )
        writer = BatchWriter(store, pseudonymize, options, report)
        bar = tqdm(total=len(tasks), desc="embedding", unit="img", disable=not options.progress)
        with writer, bar:
            for items in loader:
                embed_items(items, encoder, options.batch_size)
                writer.write(items)
                bar.update(len(items))
            return writer.finish()


def _decoded_ahead(dataset: _FileDataset, batch_size: int) -> Iterator[list[dict]]:
    """Batches of decoded items, the next one decoded on a thread while the caller embeds
    this one: decoding (Pillow, NumPy) and the forward pass (torch) release the GIL, so
    without worker processes they still overlap."""
    starts = range(0, len(dataset), batch_size)

    def load(start: int) -> list[dict]:
        return [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]

    pool = ThreadPoolExecutor(1, thread_name_prefix="priorcase-decode")
    try:
        ahead = [pool.submit(load, start) for start in starts[:1]]
        for start in starts[1:]:
            ahead.append(pool.submit(load, start))
            yield ahead.pop(0).result()
        for future in ahead:
            yield future.result()
    finally:  # a failed write stops the ingest: decode nothing more
        pool.shutdown(cancel_futures=True)


def embed_items(items: list[dict], encoder: Encoder, batch_size: int) -> None:
    """Embed the decoded items' films, ROIs and tiles in batches of ``batch_size``: each item
    gets ``vectors`` (its film, then its ROIs, then its tiles) and loses its tensors."""
    good = [item for item in items if "error" not in item]
    tensors = []
    for item in good:
        tensors.append(item.pop("tensor"))
        tensors += [part.pop("tensor") for part in item["rois"] + item["tiles"]]
    if not tensors:
        return
    vectors = np.concatenate(
        [
            encoder.embed_batch(torch.stack(tensors[i : i + batch_size]))
            for i in range(0, len(tensors), batch_size)
        ]
    )
    start = 0
    for item in good:
        end = start + 1 + len(item["rois"]) + len(item["tiles"])
        item["vectors"] = vectors[start:end]
        start = end


class BatchWriter:
    """Stores embedded items batch by batch in the process that owns the report: records
    keyed on id (see :func:`_write`), new metadata columns in the manifest first.

    The writes run on one background thread, in order, so the next batch is decoded and
    embedded while LanceDB commits this one; batches that queue up while a write runs go out
    as one larger commit. A failed write stops every later one and is raised here (on the
    next :meth:`write` or on leaving the ``with`` block); a long ingest compacts as it goes.
    """

    def __init__(
        self,
        store: CaseStore,
        pseudonymize: Pseudonymizer,
        options: IngestOptions,
        report: IngestReport,
    ) -> None:
        self.store = store
        self.pseudonymize = pseudonymize
        self.options = options
        self.report = report
        self.commits = 0
        self.no_room: list[str] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="priorcase-writer")
        self._lock = threading.Lock()
        self._queued: list[tuple[list[CaseRecord], dict[str, _Task], list[dict]]] = []
        self._futures: list[Future] = []
        self._failed = False
        self._compacted_at = 0

    def write(self, items: list[dict]) -> None:
        """Turn embedded items into records and queue them for the writer thread."""
        self._raise_failure()
        store, manifest, report = self.store, self.store.manifest, self.report
        assert manifest is not None
        good = [item for item in items if "error" not in item]
        report.failures += [item["error"] for item in items if "error" in item]
        records = _records(good, self.pseudonymize, manifest, self.options)
        new_meta = {k for r in records for k in r.metadata} - set(manifest.metadata_columns)
        new_meta -= set(manifest.label_columns)
        if new_meta:
            self._drain()  # queued rows were converted with the columns they had
            manifest.metadata_columns += sorted(new_meta)
            manifest.commit(store.db_dir)  # columns first: a crash leaves only unused names
        tasks = {item["task"].image_id: item["task"] for item in good}
        with self._lock:
            self._queued.append((records, tasks, good))
        self._futures.append(self._pool.submit(self._flush))
        self.no_room += [
            item["task"].path.name
            for item in good
            if item["task"].normal_rois and not item["task"].findings and not item["rois"]
        ]

    def finish(self) -> int:
        """Wait for the queued writes, add the closing note; returns the commits made."""
        self._drain()
        if self.no_room:
            self.report.notes.append(
                f"{len(self.no_room)} films had no patch of breast large enough for a normal "
                "ROI: " + ", ".join(self.no_room[:10]) + (" ..." if len(self.no_room) > 10 else "")
            )
        return self.commits

    def _drain(self) -> None:
        for future in self._futures:
            future.result()
        self._futures.clear()

    def _raise_failure(self) -> None:
        if any(f.done() and f.exception() is not None for f in self._futures):
            self._drain()

    def _flush(self) -> None:
        with self._lock:
            batches, self._queued = self._queued, []
        if not batches or self._failed:
            return
        records = [r for batch, _, _ in batches for r in batch]
        tasks = {i: t for _, batch_tasks, _ in batches for i, t in batch_tasks.items()}
        try:
            self.commits += _write(self.store, records, tasks, self.report)
            store_previews(self.store, [item for _, _, items in batches for item in items])
            if self.commits - self._compacted_at >= COMPACT_EVERY_COMMITS:
                self._compacted_at = self.commits
                self.store.maybe_optimize()
        except BaseException:
            self._failed = True
            raise

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, kind, value, trace) -> None:
        self._pool.shutdown(wait=True)  # queued writes end before the caller goes on


def _write(
    store: CaseStore, records: list[CaseRecord], tasks: dict[str, _Task], report: IngestReport
) -> int:
    """Write one batch: images first, keyed on id by LanceDB (so a concurrent ingest cannot
    store an id twice); then the ROIs of the images that are ours. Returns commits made."""
    images: dict[str, CaseRecord] = {}
    for record in records:
        if record.kind != "image":
            continue
        if record.id in images:  # two files with one id in this batch: the first one wins
            report.failures.append(_clash(tasks[record.id].path, record.id))
            continue
        images[record.id] = record
    commits = 0
    ours: set[str] = set()
    for update in (False, True):
        batch = [r for r in images.values() if tasks[r.id].update == update]
        if not batch:
            continue
        inserted, updated = store.add(batch, update=update)
        commits += 1
        report.stored_images += inserted
        report.updated += updated
        if inserted + updated == len(batch):
            ours |= {r.id for r in batch}
            continue
        # Some ids were stored meanwhile (another process, or an earlier file in this run):
        # ours only when the stored bytes are the same; merge our labels in if they differ.
        stored = store.stored_rows(store.manifest.label_columns, [r.id for r in batch])
        clashes = merged = 0
        for record in batch:
            row = stored.get(record.id)
            if row is None or row.content_hash != record.content_hash:
                report.failures.append(_clash(tasks[record.id].path, record.id))
                clashes += 1
                continue
            ours.add(record.id)
            changed = {c: v for c, v in record.labels.items() if row.labels.get(c) != v}
            if changed and not update:
                store.update_labels(record.id, changed, row.labels)
                commits += 1
                merged += 1
        report.updated += merged
        report.duplicates += max(0, len(batch) - inserted - updated - clashes - merged)
    rois = [r for r in records if r.kind in ("roi", TILE_KIND) and r.parent_id in ours]
    for update in (False, True):
        batch = [r for r in rois if tasks[r.parent_id].update == update]  # type: ignore[index]
        if batch:
            inserted, _ = store.add(batch, update=update)
            commits += 1
            tiles = sum(1 for r in batch if r.kind == TILE_KIND)
            report.stored_tiles += min(tiles, inserted)
            report.stored_rois += max(0, inserted - tiles)
    corrected = [i for i in ours if tasks[i].update]
    if corrected:
        keep = ", ".join(sql_quote(r.id) for r in rois) or "''"
        parents = ", ".join(sql_quote(i) for i in corrected)
        store.delete_rows(f"parent_id IN ({parents}) AND id NOT IN ({keep})")
        commits += 1
    return commits


def default_workers() -> int:
    """Decoding workers beside the model: none on 2 cores, where the model needs both
    (measured with benchmarks/bench_ingest.py: 2 workers ran at 0.54x of none), up to 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 2))


def _worker_context() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _records(
    items: list[dict],
    pseudonymize: Pseudonymizer,
    manifest: Manifest,
    options: IngestOptions,
) -> list[CaseRecord]:
    """The rows of embedded items (see :func:`embed_items`)."""
    records: list[CaseRecord] = []
    for item in items:
        task: _Task = item["task"]
        vector, *rest = item["vectors"]
        roi_vectors = iter(rest[: len(item["rois"])])
        tile_vectors = iter(rest[len(item["rois"]) :])
        patient = pseudonymize(task.patient_key) if task.patient_key else item["patient"]
        metadata = {k: v for k, v in item["metadata"].items() if k not in manifest.label_columns}
        if options.group == PATIENT_COLUMN:
            group = patient or task.image_id
        else:
            group = task.labels.get(options.group) or task.image_id
        common = {
            "content_hash": task.content_hash,
            "metadata": metadata,
            "patient": patient,
            "group": group,
        }
        records.append(
            CaseRecord(
                id=task.image_id,
                kind="image",
                vector=vector,
                key=task.image_id,
                labels=task.labels,
                thumbnail=item["thumbnail"],
                **common,
            )
        )
        for n, roi in enumerate(item["rois"], start=1):
            records.append(
                CaseRecord(
                    id=f"{task.image_id}-roi{n}",
                    kind="roi",
                    vector=next(roi_vectors),
                    key=f"{task.image_id}-roi{n}",
                    labels={**task.labels, **roi["labels"]},
                    thumbnail=roi["thumbnail"],
                    parent_id=task.image_id,
                    roi=roi["roi"],
                    box=roi["box"],
                    **common,
                )
            )
        for n, tile in enumerate(item["tiles"], start=1):
            box = tile["tile"].box
            records.append(
                CaseRecord(
                    id=f"{task.image_id}-tile{n}",
                    kind=TILE_KIND,
                    vector=next(tile_vectors),
                    key=f"{task.content_hash}:tile:{','.join(map(str, box))}",
                    labels=tile["tile"].labels,
                    parent_id=task.image_id,
                    box=box,
                    **common,
                )
            )
    return records


def _choose_views(manifest: Manifest, options: IngestOptions, findings: dict) -> None:
    """A new index: breast preprocessing and tiles, from --modality and the findings."""
    mammography = (options.modality or "").upper() == MAMMOGRAPHY
    policy = "on" if mammography else "auto"
    manifest.breast = BreastConfig(policy=policy, clahe=options.clahe).to_dict()
    sizes = options.tile_sizes
    if sizes is None and mammography:
        sizes = sizes_from_radii([f.radius for rows in findings.values() for f in rows if f.radius])
    if sizes:
        manifest.tiles = TileConfig(sizes=tuple(sizes), overlap=options.tile_overlap).to_dict()


def _check_views(manifest: Manifest, options: IngestOptions, db_dir: Path) -> None:
    """An existing index keeps its preprocessing: a different request is refused."""
    breast = BreastConfig.from_dict(manifest.breast)
    if options.modality and (options.modality.upper() == MAMMOGRAPHY) != (breast.policy == "on"):
        raise PriorcaseError(
            f"index {db_dir} was built with breast preprocessing {breast.policy!r}; "
            f"cannot add images with --modality {options.modality}: use another --db"
        )
    tiles = TileConfig.from_dict(manifest.tiles)
    if options.tile_sizes is not None and tuple(options.tile_sizes) != (
        tiles.sizes if tiles else ()
    ):
        raise PriorcaseError(
            f"index {db_dir} has tile sizes {list(tiles.sizes) if tiles else 'none'}; "
            f"cannot add images with --tile-sizes {list(options.tile_sizes)}: use another --db"
        )
