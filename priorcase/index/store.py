"""The case store: one LanceDB table of embeddings, labels and metadata, plus its manifest."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import lancedb
import numpy as np
import pyarrow as pa
from filelock import FileLock

from priorcase.errors import QueryError, StorageError
from priorcase.index.location import LibraryLocation
from priorcase.index.manifest import Manifest
from priorcase.index.previews import Previews
from priorcase.records import CaseRecord, SearchHit

TABLE_NAME = "cases"
# Files derived from the table (rebuilt on demand); removed when cases are deleted, so no
# erased case survives in a saved head, aligner or FAISS index.
DERIVED_DIRS = ("classifiers", "faiss")
DERIVED_GLOBS = ("text-aligner-*.pt", "text-aligner-*.pt.lock")
# Compact after an ingest that made at least this many commits.
OPTIMIZE_AT_FRAGMENTS = 20  # small fragments from many commits slow every scan
_RETRIES = 8
WRITE_LOCK = ".priorcase-write.lock"
_T = TypeVar("_T")
# "path" stays reserved: old libraries stored source paths there; new rows never do.
FIXED_COLUMNS = (
    "id",
    "key",
    "kind",
    "vector",
    "content_hash",
    "path",
    "patient",
    "group",
    "parent_id",
    "roi_x",
    "roi_y",
    "roi_radius",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "thumbnail",
)
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")


@dataclass
class Snapshot:
    """Vectors and keys of one table version, for kNN. Position i is row i of every array."""

    version: int
    ids: np.ndarray  # object array of str
    kinds: np.ndarray
    groups: np.ndarray
    patients: np.ndarray
    vectors: np.ndarray  # float32 (n, dim)

    @cached_property
    def digest(self) -> str:
        """Content digest (ids and vectors): names derived files, unlike ``version``, which
        LanceDB restarts when a table is recreated at the same path."""
        from priorcase.index.artifacts import content_digest

        return content_digest(self.ids, self.vectors)


@dataclass
class StoredRow:
    """What ingest needs to know about a stored row (no vectors, no thumbnails)."""

    id: str
    kind: str
    content_hash: str
    parent_id: str | None
    roi: tuple[int, int, int] | None
    labels: dict[str, str | None] = field(default_factory=dict)


def field_name(column: str) -> str:
    """The table column for a label/metadata name: fixed names get a ``label_`` prefix."""
    return f"label_{column}" if column in FIXED_COLUMNS else column


class CaseStore:
    """A LanceDB database directory holding the ``cases`` table and the manifest."""

    def __init__(self, db_dir: str | Path | LibraryLocation) -> None:
        # a folder, or an object-storage prefix (s3://bucket/prefix): see index/location.py
        self.location = LibraryLocation.parse(db_dir)
        self.location.prepare()
        self._db = self.location.connect()
        self.manifest = Manifest.load(self.location)
        self._snapshots: dict[tuple[int, str | None], Snapshot] = {}
        self._lock = threading.Lock()
        self._table: lancedb.table.Table | None = None
        self._pinned: int | None = None  # answer from this earlier version (search --as-of)

    @property
    def db_dir(self) -> Path | LibraryLocation:
        """The library's folder; on object storage its location (``str()`` is the URI)."""
        return self.location if self.location.is_remote else self.location.path

    def pin_version(self, version: int) -> None:
        """Read table version ``version`` (read-only) instead of the latest."""
        table = self.table
        if table is None:
            raise QueryError(f"index {self.db_dir} is empty")
        known = [int(v["version"]) for v in table.list_versions()]
        if int(version) not in known:
            raise QueryError(
                f"index {self.db_dir} has no table version {version}; it has {min(known)}-"
                f"{max(known)}"
            )
        table.checkout(int(version))
        self._pinned = int(version)

    # ------------------------------------------------------------------ table
    @property
    def table(self) -> lancedb.table.Table | None:
        if self._table is None:
            if TABLE_NAME not in self._db.list_tables().tables:
                return None
            try:
                self._table = self._db.open_table(TABLE_NAME)
            except ValueError as err:
                if "was not found" not in str(err):
                    raise
                return None  # another process made its folder but has not committed it yet
        elif self._pinned is None:
            self._table.checkout_latest()  # see commits of other processes / handles
        return self._table

    @property
    def version(self) -> int:
        table = self.table
        return 0 if table is None else int(table.version)

    def count(self, kind: str | None = None) -> int:
        table = self.table
        if table is None:
            return 0
        return table.count_rows(f"kind = '{kind}'" if kind else None)

    def existing_keys(self) -> set[str]:
        """Every stored dedup key (only that column is read)."""
        table = self.table
        if table is None:
            return set()
        arrow = table.search().select(["key"]).limit(None).to_arrow()
        return set(arrow.column("key").to_pylist())

    def stored_rows(self, columns: list[str], ids: list[str] | None = None) -> dict[str, StoredRow]:
        """Id, kind, content hash, ROI geometry and the given label columns of stored rows
        (all of them, or those with these ids and their ROIs)."""
        table = self.table
        if table is None:
            return {}
        names = set(table.schema.names)
        fields = {c: field_name(c) for c in columns if field_name(c) in names}
        select = ["id", "kind", "content_hash", "parent_id", "roi_x", "roi_y", "roi_radius"]
        query = table.search().select(select + sorted(set(fields.values()) - set(select)))
        if ids is not None:
            if not ids:
                return {}
            quoted = ", ".join(sql_quote(i) for i in ids)
            query = query.where(f"id IN ({quoted}) OR parent_id IN ({quoted})")
        out = {}
        for row in query.limit(None).to_arrow().to_pylist():
            roi = None
            if row["roi_x"] is not None:
                roi = (int(row["roi_x"]), int(row["roi_y"]), int(row["roi_radius"]))
            out[row["id"]] = StoredRow(
                id=row["id"],
                kind=row["kind"],
                content_hash=row["content_hash"],
                parent_id=row["parent_id"],
                roi=roi,
                labels={c: row[f] for c, f in fields.items()},
            )
        return out

    def add(self, records: list[CaseRecord], update: bool = False) -> tuple[int, int]:
        """Write records in one atomic commit, keyed on ``id``; returns (inserted, updated).

        LanceDB's merge_insert decides which ids are new, so two processes never store one id
        twice. With ``update``, a stored row with the same id *and the same content hash* is
        replaced (a corrected findings row); a row of other content is never overwritten.
        Commit conflicts with other writers are retried.
        """
        if not records or self.manifest is None:
            return 0, 0
        columns = self.manifest.label_columns + self.manifest.metadata_columns
        data = _to_arrow(records, columns, len(records[0].vector))

        def write() -> tuple[int, int]:
            table = self.table
            if table is None:
                try:
                    self._table = self._db.create_table(TABLE_NAME, data)
                    return len(records), 0
                except ValueError as err:
                    if "already exists" not in str(err):
                        raise
                    table = self._reopen()  # another process created it first: merge into it
            missing = [f for f in data.schema.names if f not in table.schema.names]
            if missing:
                table.add_columns({name: _null_of(name) for name in missing})
            merge = table.merge_insert("id")
            if update:
                same_bytes = "target.content_hash = source.content_hash"
                merge = merge.when_matched_update_all(where=same_bytes)
            result = merge.when_not_matched_insert_all().execute(_conform(data, table))
            return int(result.num_inserted_rows), int(result.num_updated_rows)

        with self._lock, self._writer_lock():
            return self._retry(write)

    @contextlib.contextmanager
    def _writer_lock(self):
        """Serialise row writers of a local library across processes. merge_insert decides
        what is new from the version it read, and two processes inserting one id at the same
        moment were seen to both commit (CI, two first ingests racing). Object storage has no
        lock: there Lance's conditional-PUT commit is all there is (docs/DEPLOY.md)."""
        if self.location.is_remote:
            yield
            return
        try:
            lock = FileLock(self.location.path / WRITE_LOCK, timeout=300)
            lock.acquire()
        except OSError as err:  # read-only folder, full disk, or held too long (Timeout)
            raise StorageError(f"{self.db_dir}: cannot lock for writing: {err}") from err
        try:
            yield
        finally:
            lock.release()

    def update_labels(
        self,
        image_id: str,
        values: dict[str, str | None],
        previous: dict[str, str | None] | None = None,
    ) -> int:
        """Set label columns of an image in place (a corrected labels row), and of its ROIs
        where they inherited the ``previous`` value (a finding's own label is kept)."""
        fields = {field_name(c): v for c, v in values.items()}
        old = {field_name(c): v for c, v in (previous or {}).items()}

        def write() -> int:
            table = self.table
            assert table is not None
            missing = [f for f in fields if f not in table.schema.names]
            if missing:
                table.add_columns({name: "cast(NULL as string)" for name in missing})
            rows = int(
                table.update(where=f"id = {sql_quote(image_id)}", values=fields).rows_updated
            )
            for name, value in fields.items():
                before = old.get(name)
                same = f"`{name}` IS NULL" if before is None else f"`{name}` = {sql_quote(before)}"
                where = f"parent_id = {sql_quote(image_id)} AND {same}"
                rows += int(table.update(where=where, values={name: value}).rows_updated)
            return rows

        with self._lock:
            return self._retry(write)

    def delete_rows(self, where: str) -> int:
        """Delete rows matching a predicate built by this package; returns rows deleted."""
        table = self.table
        if table is None:
            return 0
        with self._lock:
            return self._retry(lambda: int(table.delete(where).num_deleted_rows))

    def delete_cases(self, ids: list[str]) -> tuple[int, int]:
        """Erase cases: the rows with these ids, their ROIs, every file derived from the
        table, and (by compaction) every old version that still holds their pixels.

        Returns (images, ROIs) deleted.
        """
        table = self.table
        if table is None or not ids:
            return 0, 0
        quoted = ", ".join(sql_quote(i) for i in ids)
        where = f"id IN ({quoted}) OR parent_id IN ({quoted})"
        images = table.count_rows(f"kind = 'image' AND ({where})")
        total = self.delete_rows(where)
        Previews(self).delete(list(ids))  # the full-resolution film goes with the case
        self.remove_derived()
        self.compact()
        return images, total - images

    def remove_derived(self) -> None:
        """Delete saved heads, aligners and FAISS caches: they are rebuilt from the table."""
        self.location.remove(DERIVED_DIRS, DERIVED_GLOBS)

    def compact(self) -> None:
        """Merge small fragments and drop every old version, so deleted rows leave the disk."""
        table = self.table
        if table is None:
            return
        with self._lock, warnings.catch_warnings():
            # LanceDB warns that readers of old versions fail: erasure means exactly that
            warnings.simplefilter("ignore", UserWarning)
            self._retry(
                lambda: table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
            )

    def maybe_optimize(self) -> bool:
        """Compact once commits have left many fragments (old versions are kept: readers may
        still use them)."""
        table = self.table
        if (
            table is None
            or table.stats()["fragment_stats"]["num_fragments"] < OPTIMIZE_AT_FRAGMENTS
        ):
            return False
        with self._lock:
            self._retry(table.optimize)
        return True

    def _reopen(self) -> lancedb.table.Table:
        self._table = None
        table = self.table
        if table is None:  # still being created by another process: _retry tries again
            raise ValueError(f"table {TABLE_NAME!r} was not found yet (concurrent creation)")
        return table

    def _retry(self, write: Callable[[], _T]) -> _T:
        """Run a write, retrying LanceDB commit conflicts with concurrent writers; an I/O
        failure (full disk, read-only folder) becomes one :class:`StorageError` line."""
        for attempt in range(_RETRIES):
            try:
                return write()
            except Exception as err:
                text = str(err)
                io_problem = _io_problem(err)
                if io_problem:
                    raise StorageError(f"{self.db_dir}: cannot write: {io_problem}") from err
                # "was not found": another process has made the table's folder but not yet
                # committed its first version
                retryable = any(
                    s in text.lower()
                    for s in ("conflict", "retryable", "already exists", "concurrent", "not found")
                )
                if not retryable or attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
                self._table = None  # the next attempt opens the table afresh
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reading
    def snapshot(self, kind: str | None = None) -> Snapshot:
        """Vectors of the current version (cached until the table changes).

        The version is read under the lock before and after the rows: a commit in between
        (another process) is retried, so rows of version v+1 are never cached as version v.
        """
        with self._lock:
            for _ in range(5):
                table = self.table
                if table is None:
                    raise QueryError(f"index {self.db_dir} is empty: run 'priorcase ingest' first")
                key = (int(table.version), kind)
                if key in self._snapshots:
                    return self._snapshots[key]
                snapshot = _read_snapshot(table, key[0], kind)
                if self._pinned is None:  # a pinned (--as-of) table stays on its version
                    table.checkout_latest()
                if int(table.version) == key[0]:
                    self._snapshots = {
                        key: snapshot,
                        **{k: v for k, v in self._snapshots.items() if k[0] == key[0]},
                    }
                    return snapshot
            return snapshot  # the table keeps changing: answer from this read, uncached

    def stored_copy(self, content_hash: str) -> tuple[str, str | None] | None:
        """(id, group) of the stored whole image with these bytes, or None."""
        table = self.table
        if table is None:
            return None
        rows = (
            table.search()
            .where(f"content_hash = '{content_hash}' AND kind = 'image'")
            .select(["id", "group"])
            .limit(1)
            .to_list()
        )
        return (rows[0]["id"], rows[0]["group"]) if rows else None

    def filterable_columns(self) -> dict[str, str]:
        """Names a ``--where`` may use -> table fields: labels, metadata, ``id`` and ``kind``.

        Hidden columns (path, patient, group and the group column, key, hashes, vectors,
        thumbnails) are left out, so a filter cannot probe them. A stored field name
        (``label_path``) is accepted too.
        """
        manifest = self.manifest
        names = (manifest.label_columns + manifest.metadata_columns) if manifest else []
        columns = {"id": "id", "kind": "kind"}
        # the group column (patient_id) holds the same pseudonym as the hidden `group`
        for name in (n for n in names if manifest and n != manifest.group_column):
            columns[name] = field_name(name)
            columns.setdefault(field_name(name), field_name(name))
        return columns

    def ids_matching(self, where: str) -> set[str]:
        """Ids of rows satisfying a filter (see :mod:`priorcase.retrieval.where`); a bad or
        hidden-column filter is a one-line QueryError."""
        from priorcase.retrieval.where import parse_where

        table = self.table
        if table is None:
            return set()
        sql = parse_where(where, self.filterable_columns())
        try:
            arrow = table.search().where(sql).select(["id"]).limit(None).to_arrow()
        except Exception as err:  # lance raises ValueError / RuntimeError with parser text
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QueryError(f"invalid --where {where!r}: {first}") from err
        return set(arrow.column("id").to_pylist())

    def ids_of_patient(self, pseudonym: str) -> set[str]:
        """Ids of every row of one patient pseudonym (``patient`` is no user-filterable column,
        so this internal query bypasses :meth:`ids_matching`)."""
        table = self.table
        if table is None:
            return set()
        query = table.search().where(f"patient = {sql_quote(pseudonym)}").select(["id"])
        return set(query.limit(None).to_arrow().column("id").to_pylist())

    def fetch(self, ids: list[str], with_vectors: bool = False) -> dict[str, dict]:
        """Full rows by id (as Python dicts)."""
        table = self.table
        if table is None or not ids:
            return {}
        quoted = ", ".join(sql_quote(i) for i in ids)
        cols = [c for c in table.schema.names if with_vectors or c != "vector"]
        rows = table.search().where(f"id IN ({quoted})").select(cols).limit(None).to_arrow()
        return {row["id"]: row for row in rows.to_pylist()}

    def hits(self, ids: list[str], scores: list[float]) -> list[SearchHit]:
        """SearchHits for ids in the given order."""
        rows = self.fetch(ids)
        return [self.row_to_hit(rows[i], s) for i, s in zip(ids, scores, strict=True) if i in rows]

    def row_to_hit(self, row: dict, score: float) -> SearchHit:
        manifest = self.manifest
        assert manifest is not None
        roi = None
        if row.get("roi_x") is not None:
            roi = (int(row["roi_x"]), int(row["roi_y"]), int(row["roi_radius"]))
        box = None
        if row.get("box_x0") is not None:
            box = tuple(int(row[c]) for c in BOX_COLUMNS)
        return SearchHit(
            id=row["id"],
            score=float(score),
            kind=row["kind"],
            labels={c: row.get(field_name(c)) for c in manifest.label_columns},
            metadata={c: row.get(field_name(c)) for c in manifest.metadata_columns},
            patient=row.get("patient"),
            group=row.get("group"),
            parent_id=row.get("parent_id"),
            roi=roi,
            box=box,  # type: ignore[arg-type]
            thumbnail=row.get("thumbnail") or b"",
        )

    def column_values(self, column: str, kind: str | None = None) -> dict[str, str | None]:
        """id -> value of a label/metadata column."""
        table = self.table
        if table is None:
            return {}
        name = field_name(column)
        if name not in table.schema.names:
            raise QueryError(f"no column {column!r} in index {self.db_dir}")
        query = table.search().select(["id", name])
        if kind:
            query = query.where(f"kind = '{kind}'")
        arrow = query.limit(None).to_arrow()
        return dict(
            zip(arrow.column("id").to_pylist(), arrow.column(name).to_pylist(), strict=True)
        )


def _read_snapshot(table: lancedb.table.Table, version: int, kind: str | None) -> Snapshot:
    query = table.search().select(["id", "kind", "group", "patient", "vector"])
    if kind:
        query = query.where(f"kind = '{kind}'")
    arrow = query.limit(None).to_arrow()
    vectors = np.asarray(
        arrow.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
        dtype=np.float32,
    ).reshape(arrow.num_rows, -1)
    return Snapshot(
        version=version,
        ids=np.array(arrow.column("id").to_pylist(), dtype=object),
        kinds=np.array(arrow.column("kind").to_pylist(), dtype=object),
        groups=np.array(arrow.column("group").to_pylist(), dtype=object),
        patients=np.array(arrow.column("patient").to_pylist(), dtype=object),
        vectors=vectors,
    )


def _to_arrow(records: list[CaseRecord], columns: list[str], dim: int) -> pa.Table:
    vectors = np.stack([r.vector for r in records]).astype(np.float32)
    data: dict[str, pa.Array] = {
        "id": pa.array([r.id for r in records], pa.string()),
        "key": pa.array([r.key for r in records], pa.string()),
        "kind": pa.array([r.kind for r in records], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
        "content_hash": pa.array([r.content_hash for r in records], pa.string()),
        "patient": pa.array([r.patient for r in records], pa.string()),
        "group": pa.array([r.group for r in records], pa.string()),
        "parent_id": pa.array([r.parent_id for r in records], pa.string()),
        "roi_x": pa.array([r.roi[0] if r.roi else None for r in records], pa.int32()),
        "roi_y": pa.array([r.roi[1] if r.roi else None for r in records], pa.int32()),
        "roi_radius": pa.array([r.roi[2] if r.roi else None for r in records], pa.int32()),
        **{
            name: pa.array([r.box[n] if r.box else None for r in records], pa.int32())
            for n, name in enumerate(BOX_COLUMNS)
        },
        "thumbnail": pa.array([r.thumbnail for r in records], pa.binary()),
    }
    for column in columns:
        values = [{**r.metadata, **r.labels}.get(column) for r in records]
        data[field_name(column)] = pa.array(values, pa.string())
    return pa.table(data)


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_IO_PROBLEMS = (
    "No space left on device",
    "File too large",
    "Read-only file system",
    "Disk quota exceeded",
    "Permission denied",
)


def _io_problem(err: BaseException) -> str | None:
    """The short reason when ``err`` (Python or LanceDB's Rust I/O) is a failed write."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err)
    return next((p for p in _IO_PROBLEMS if p.lower() in text.lower()), None)


def _null_of(name: str) -> str:
    """The SQL of an empty new column: box corners are integers, every other column text."""
    return "cast(NULL as int)" if name in BOX_COLUMNS else "cast(NULL as string)"


def _conform(data: pa.Table, table: lancedb.table.Table) -> pa.Table:
    """Order (and fill) columns as the stored schema has them."""
    names = table.schema.names
    cols = [
        data.column(n) if n in data.schema.names else pa.nulls(data.num_rows, pa.string())
        for n in names
    ]
    return pa.table(cols, names=names)
