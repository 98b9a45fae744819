"""A case library written straight from vectors (benchmarks and tests of the search paths).

Rows go through :meth:`CaseStore.add` like ingested ones; labels are a ``bucket`` column with
100 values, so ``bucket = 'b07'`` keeps 1% of the rows and ten buckets 10%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from priorcase.index.manifest import Manifest
from priorcase.index.store import CaseStore
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
    for start in range(0, n, chunk):
        records = [
            CaseRecord(
                id=f"c{first_id + i:07d}",
                kind=str(kinds[i]),
                vector=vectors[i],
                key=f"k{first_id + i:07d}",
                content_hash=f"h{first_id + i:07d}",
                path=f"synthetic/{first_id + i:07d}.png",
                labels={"bucket": f"b{buckets[i]:02d}"},
                patient=f"p{i // ROWS_PER_PATIENT:07d}",
                group=f"p{i // ROWS_PER_PATIENT:07d}",
            )
            for i in range(start, min(n, start + chunk))
        ]
        store.add(records)
    return store, buckets
