"""A case library written straight from vectors (benchmarks and tests of the search paths).

Rows have the schema :meth:`CaseStore.add` writes (taken from the store's own converter) but
are built column-wise and appended, so a million rows take seconds. Labels are a ``bucket``
column with 100 values, so ``bucket = 'b07'`` keeps 1% of the rows and ten buckets 10%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from priorcase.index.manifest import Manifest
from priorcase.index.store import TABLE_NAME, CaseStore, _to_arrow
from priorcase.records import CaseRecord

BUCKETS = 100
ROWS_PER_PATIENT = 4


def bucket_mask(buckets: np.ndarray, selectivity: float) -> np.ndarray | None:
    """The rows :func:`where_for` keeps."""
    if selectivity >= 1.0:
        return None
    return buckets < max(1, round(selectivity * BUCKETS))


def where_for(selectivity: float) -> str | None:
    """A ``--where`` keeping about this share of the rows (None for all)."""
    if selectivity >= 1.0:
        return None
    count = max(1, round(selectivity * BUCKETS))
    values = ", ".join(f"'b{i:02d}'" for i in range(count))
    return f"bucket IN ({values})" if count > 1 else f"bucket = {values}"


def write_library(
    db: str | Path,
    vectors: np.ndarray,
    encoder: dict,
    seed: int = 0,
    chunk: int = 100_000,
    roi_share: float = 0.0,
    first_id: int = 0,
) -> tuple[CaseStore, np.ndarray]:
    """Store ``vectors`` as cases ``c0000000...`` with random buckets and 4 rows per patient."""
    store = CaseStore(db)
    if store.manifest is None:
        store.manifest = Manifest(encoder=encoder, label_columns=["bucket"])
        store.manifest.save(store.db_dir)
    rng = np.random.default_rng(seed)
    n = len(vectors)
    buckets = rng.integers(0, BUCKETS, n)
    kinds = np.where(rng.random(n) < roi_share, "roi", "image")
    template = None
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        if template is None:
            # one row through the store's own converter fixes the schema of every column
            first = _record(first_id + start, vectors[start], kinds[start], buckets[start])
            template = _to_arrow([first], ["bucket"], vectors.shape[1]).schema
        stop = rows.stop
        data = _columns(
            template, vectors[start:stop], kinds[start:stop], buckets[start:stop], first_id + start
        )
        table = store.table
        if table is None:
            store._table = store._db.create_table(TABLE_NAME, data)
        else:
            table.add(data)  # fresh ids: appended (keeps vector indexes valid for old rows)
    return store, buckets


def _record(i: int, vector: np.ndarray, kind: str, bucket: int) -> CaseRecord:
    return CaseRecord(
        id=f"c{i:07d}",
        kind=str(kind),
        vector=vector,
        key=f"c{i:07d}",
        content_hash=f"h{i:07d}",
        labels={"bucket": f"b{bucket:02d}"},
        patient=f"p{i // ROWS_PER_PATIENT:07d}",
        group=f"p{i // ROWS_PER_PATIENT:07d}",
    )


def _columns(
    schema: pa.Schema, vectors: np.ndarray, kinds: np.ndarray, buckets: np.ndarray, first: int
) -> pa.Table:
    """The rows of :func:`_record`, built column-wise (a million rows in seconds)."""
    ids = range(first, first + len(vectors))
    groups = [f"p{i // ROWS_PER_PATIENT:07d}" for i in ids]
    values = {
        "id": [f"c{i:07d}" for i in ids],
        "key": [f"c{i:07d}" for i in ids],
        "kind": kinds.tolist(),
        "content_hash": [f"h{i:07d}" for i in ids],
        "patient": groups,
        "group": groups,
        "bucket": [f"b{b:02d}" for b in buckets],
    }
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), pa.float32())
    columns = []
    for field in schema:
        if field.name == "vector":
            columns.append(pa.FixedSizeListArray.from_arrays(flat, dim))
        elif field.name in values:
            columns.append(pa.array(values[field.name], field.type))
        else:
            columns.append(pa.nulls(len(vectors), field.type))
    return pa.Table.from_arrays(columns, schema=schema)
