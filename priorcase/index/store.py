"""The case store: one LanceDB table of embeddings, labels and metadata, plus its manifest."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from priorcase.errors import QueryError
from priorcase.index.manifest import Manifest
from priorcase.records import CaseRecord, SearchHit

TABLE_NAME = "cases"
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
    "thumbnail",
)


@dataclass
class Snapshot:
    """Vectors and keys of one table version, for kNN. Position i is row i of every array."""

    version: int
    ids: np.ndarray  # object array of str
    kinds: np.ndarray
    groups: np.ndarray
    patients: np.ndarray
    vectors: np.ndarray  # float32 (n, dim)


def field_name(column: str) -> str:
    """The table column for a label/metadata name: fixed names get a ``label_`` prefix."""
    return f"label_{column}" if column in FIXED_COLUMNS else column


class CaseStore:
    """A LanceDB database directory holding the ``cases`` table and the manifest."""

    def __init__(self, db_dir: str | Path) -> None:
        self.db_dir = Path(db_dir)
        self.db_dir.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(self.db_dir))
        self.manifest = Manifest.load(self.db_dir)
        self._snapshots: dict[tuple[int, str | None], Snapshot] = {}
        self._lock = threading.Lock()
        self._table: lancedb.table.Table | None = None
        self._pinned: int | None = None  # answer from this earlier version (search --as-of)

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
            self._table = self._db.open_table(TABLE_NAME)
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
        table = self.table
        if table is None:
            return set()
        return set(table.to_arrow().column("key").to_pylist())

    def id_paths(self) -> dict[str, str]:
        """Stored id -> source path, to refuse a second file claiming a stored id."""
        table = self.table
        if table is None:
            return {}
        cols = table.search().select(["id", "path"]).limit(None).to_arrow()
        return dict(
            zip(cols.column("id").to_pylist(), cols.column("path").to_pylist(), strict=True)
        )

    def add(self, records: list[CaseRecord]) -> int:
        """Insert records whose key is not stored yet, in one atomic commit; returns rows added."""
        if not records or self.manifest is None:
            return 0
        columns = self.manifest.label_columns + self.manifest.metadata_columns
        data = _to_arrow(records, columns, len(records[0].vector))
        with self._lock:
            table = self.table
            if table is None:
                self._table = self._db.create_table(TABLE_NAME, data)
                return len(records)
            missing = [f for f in data.schema.names if f not in table.schema.names]
            if missing:
                table.add_columns({name: "cast(NULL as string)" for name in missing})
            before = table.count_rows()
            # merge_insert on the dedup key: a re-run after a crash never duplicates a row.
            table.merge_insert("key").when_not_matched_insert_all().execute(_conform(data, table))
            return table.count_rows() - before

    # ------------------------------------------------------------------ reading
    def snapshot(self, kind: str | None = None) -> Snapshot:
        """Vectors of the current version (cached until the table changes)."""
        table = self.table
        if table is None:
            raise QueryError(f"index {self.db_dir} is empty: run 'priorcase ingest' first")
        key = (int(table.version), kind)
        with self._lock:
            if key not in self._snapshots:
                query = table.search().select(["id", "kind", "group", "patient", "vector"])
                if kind:
                    query = query.where(f"kind = '{kind}'")
                arrow = query.limit(None).to_arrow()
                vectors = np.asarray(
                    arrow.column("vector")
                    .combine_chunks()
                    .flatten()
                    .to_numpy(zero_copy_only=False),
                    dtype=np.float32,
                ).reshape(arrow.num_rows, -1)
                self._snapshots = {
                    key: Snapshot(
                        version=key[0],
                        ids=np.array(arrow.column("id").to_pylist(), dtype=object),
                        kinds=np.array(arrow.column("kind").to_pylist(), dtype=object),
                        groups=np.array(arrow.column("group").to_pylist(), dtype=object),
                        patients=np.array(arrow.column("patient").to_pylist(), dtype=object),
                        vectors=vectors,
                    ),
                    **{k: v for k, v in self._snapshots.items() if k[0] == key[0]},
                }
            return self._snapshots[key]

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

    def ids_matching(self, where: str) -> set[str]:
        """Ids of rows satisfying a LanceDB SQL predicate; a bad predicate is a QueryError."""
        table = self.table
        if table is None:
            return set()
        try:
            arrow = table.search().where(where).select(["id"]).limit(None).to_arrow()
        except Exception as err:  # lance raises ValueError / RuntimeError with parser text
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QueryError(f"invalid --where {where!r}: {first}") from err
        return set(arrow.column("id").to_pylist())

    def fetch(self, ids: list[str], with_vectors: bool = False) -> dict[str, dict]:
        """Full rows by id (as Python dicts)."""
        table = self.table
        if table is None or not ids:
            return {}
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
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
        return SearchHit(
            id=row["id"],
            score=float(score),
            kind=row["kind"],
            labels={c: row.get(field_name(c)) for c in manifest.label_columns},
            metadata={c: row.get(field_name(c)) for c in manifest.metadata_columns},
            path=row["path"],
            patient=row.get("patient"),
            group=row.get("group"),
            parent_id=row.get("parent_id"),
            roi=roi,
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


def _to_arrow(records: list[CaseRecord], columns: list[str], dim: int) -> pa.Table:
    vectors = np.stack([r.vector for r in records]).astype(np.float32)
    data: dict[str, pa.Array] = {
        "id": pa.array([r.id for r in records], pa.string()),
        "key": pa.array([r.key for r in records], pa.string()),
        "kind": pa.array([r.kind for r in records], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
        "content_hash": pa.array([r.content_hash for r in records], pa.string()),
        "path": pa.array([r.path for r in records], pa.string()),
        "patient": pa.array([r.patient for r in records], pa.string()),
        "group": pa.array([r.group for r in records], pa.string()),
        "parent_id": pa.array([r.parent_id for r in records], pa.string()),
        "roi_x": pa.array([r.roi[0] if r.roi else None for r in records], pa.int32()),
        "roi_y": pa.array([r.roi[1] if r.roi else None for r in records], pa.int32()),
        "roi_radius": pa.array([r.roi[2] if r.roi else None for r in records], pa.int32()),
        "thumbnail": pa.array([r.thumbnail for r in records], pa.binary()),
    }
    for column in columns:
        values = [{**r.metadata, **r.labels}.get(column) for r in records]
        data[field_name(column)] = pa.array(values, pa.string())
    return pa.table(data)


def _conform(data: pa.Table, table: lancedb.table.Table) -> pa.Table:
    """Order (and fill) columns as the stored schema has them."""
    names = table.schema.names
    cols = [
        data.column(n) if n in data.schema.names else pa.nulls(data.num_rows, pa.string())
        for n in names
    ]
    return pa.table(cols, names=names)
