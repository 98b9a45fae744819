"""LanceDB's own indexes: a vector index chosen by size and memory budget, scalar indexes on the
filter columns, and queries with every filter pushed down as a prefilter.

Nothing is loaded whole: a query reads the index partitions it probes and the rows it returns.
Rows added after the index was built are searched flat and merged with the indexed answer, so
new cases are found at once; :meth:`LanceAnn.update` (``priorcase index --db DB``) folds them in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import Bitmap, BTree, HnswSq, IvfPq, IvfSq

from priorcase.index.faiss_budget import (
    DEFAULT_TARGET_RECALL,
    TUNE_K,
    TUNE_QUERIES,
    default_budget_mb,
)
from priorcase.index.location import LibraryFile, LibraryLocation

VECTOR = "vector"
# Below this many rows a flat scan is exact and fast enough; no vector index is built.
INDEX_MIN_ROWS = 50_000
# (nprobes, refine_factor) tried in order of cost; the first meeting the target recall is kept.
# Refine re-ranks PQ candidates with the full vectors: without it IVF_PQ recall plateaus.
IVF_PQ_GRID = ((16, 10), (24, 20), (32, 30), (48, 40), (64, 60), (96, 80), (128, 100))
IVF_SQ_GRID = ((8, 2), (16, 2), (24, 3), (32, 4), (48, 5), (64, 8), (96, 10), (128, 10))
HNSW_EF_GRID = (16, 32, 64, 96, 128, 192, 256, 384, 512)
SETTINGS_FILE = "lance-ann.json"
# A prefilter keeping at most this many rows is answered by a flat scan of those rows (exact);
# a wider one probes more partitions, nprobes / sqrt(selectivity), so few allowed rows per
# partition do not starve the answer.
FLAT_FILTER_MAX_ROWS = 2_000
COUNT_CACHE = 64


@dataclass
class LancePlan:
    """The vector index, and the query-time setting tuned for it."""

    index_type: str  # "none" | "IVF_SQ" | "IVF_PQ" | "IVF_HNSW_SQ"
    n: int
    num_partitions: int = 0
    num_sub_vectors: int = 0
    nprobes: int = 0
    refine_factor: int = 0
    ef: int = 0
    recall: float = 1.0
    index_uuid: str = ""
    tried: dict[str, float] = field(default_factory=dict)


def plan_lance_index(
    n: int, dim: int, memory_budget_mb: float | None = None, force: str | None = None
) -> LancePlan:
    """IVF_SQ while its 8-bit codes fit the memory budget, else IVF_PQ; both refined.

    Build cost decides here: on this 2-core machine PQ training took 77 s for 20k x 512 rows
    (64 sub-vectors) against 6.6 s for IVF_SQ, and IVF_HNSW_SQ 140 s for 60k x 128, so
    IVF_HNSW_SQ is built only when asked for (``force``). IVF_PQ keeps dim/8 bytes a row,
    for libraries whose SQ codes (dim bytes a row) exceed the budget. Refine re-ranks the
    candidates with the full vectors, read from disk, which holds recall.
    """
    if force is None and n < INDEX_MIN_ROWS:
        return LancePlan("none", n)
    budget = default_budget_mb() if memory_budget_mb is None else memory_budget_mb
    partitions = int(max(1, min(np.sqrt(n), n // 256)))
    if force == "IVF_HNSW_SQ":
        return LancePlan("IVF_HNSW_SQ", n, num_partitions=max(1, n // 1_000_000))
    if force == "IVF_SQ" or (force is None and n * dim / 2**20 <= budget):
        return LancePlan("IVF_SQ", n, num_partitions=partitions)
    return LancePlan(
        "IVF_PQ",
        n,
        num_partitions=partitions,
        num_sub_vectors=dim // 8 if dim % 8 == 0 else 1,  # 8 dims a code: SIMD-friendly
    )


def filter_sql(
    where: str | None = None,
    kind: str | None = None,
    exclude_group: str | None = None,
    exclude_ids: set[str] | frozenset[str] | None = None,
) -> str | None:
    """One SQL predicate for every filter, for LanceDB to apply before the vector search."""
    parts = []
    if where:
        parts.append(f"({where})")
    if kind:
        parts.append(f"kind = {_quote(kind)}")
    if exclude_group is not None:
        parts.append(f'("group" IS NULL OR "group" != {_quote(exclude_group)})')
    if exclude_ids:
        parts.append(f"id NOT IN ({', '.join(_quote(i) for i in sorted(exclude_ids))})")
    return " AND ".join(parts) if parts else None


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class LanceAnn:
    """Vector search through one table's LanceDB indexes."""

    def __init__(
        self, table: lancedb.table.Table, settings_dir: Path | LibraryLocation | None = None
    ) -> None:
        self.table = table
        self.settings_dir = settings_dir
        self.plan = self._load_plan()
        self._counts: dict[tuple[int, str], int] = {}

    # ------------------------------------------------------------------ indexes
    def vector_index_uuid(self) -> str:
        for config in self.table.list_indices():
            if config.columns == [VECTOR]:
                return str(config.index_uuid)
        return ""

    def _load_plan(self) -> LancePlan:
        uuid = self.vector_index_uuid()
        if not uuid:
            return LancePlan("none", self.table.count_rows())
        settings = self._settings_file()
        data = None if settings is None else settings.read_bytes()
        if data is not None:
            saved = LancePlan(**json.loads(data))
            if saved.index_uuid == uuid:
                return saved
        stats = self.table.index_stats(f"{VECTOR}_idx")
        index_type = stats.index_type if stats else "IVF_PQ"
        # an index built elsewhere: safe untuned defaults
        return LancePlan(index_type, self.table.count_rows(), nprobes=32, refine_factor=10, ef=256)

    def _settings_file(self) -> LibraryFile | None:
        """The tuned plan, beside the table (a folder or object storage)."""
        if self.settings_dir is None:
            return None
        return LibraryLocation.parse(self.settings_dir).file(SETTINGS_FILE)

    def ensure_scalar_indexes(self, columns: dict[str, str]) -> None:
        """BTREE / BITMAP indexes (``column -> kind``) on the filter columns the table has;
        existing ones are kept (optimize() folds new rows into them)."""
        have = {tuple(c.columns) for c in self.table.list_indices()}
        names = set(self.table.schema.names)
        for column, kind in columns.items():
            if column in names and (column,) not in have:
                config = Bitmap() if kind == "BITMAP" else BTree()
                self.table.create_index(column, config=config, replace=True)

    def build_vector_index(
        self,
        memory_budget_mb: float | None = None,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
        force: str | None = None,
    ) -> LancePlan:
        """Create the vector index chosen by :func:`plan_lance_index` and tune its setting."""
        n = self.table.count_rows()
        dim = self.table.schema.field(VECTOR).type.list_size
        plan = plan_lance_index(n, dim, memory_budget_mb, force)
        if plan.index_type == "IVF_SQ":
            config = IvfSq(distance_type="dot", num_partitions=plan.num_partitions)
            self.table.create_index(VECTOR, config=config, replace=True)
        elif plan.index_type == "IVF_HNSW_SQ":
            config = HnswSq(
                distance_type="dot", num_partitions=plan.num_partitions, ef_construction=150
            )
            self.table.create_index(VECTOR, config=config, replace=True)
        elif plan.index_type == "IVF_PQ":
            config = IvfPq(
                distance_type="dot",
                num_partitions=plan.num_partitions,
                num_sub_vectors=plan.num_sub_vectors,
                max_iterations=20,  # k-means converges long before 50 on embeddings
                sample_rate=64,
            )
            self.table.create_index(VECTOR, config=config, replace=True)
        self.plan = plan
        return self.retune(target_recall, seed)

    def retune(self, target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0) -> LancePlan:
        """Tune the query setting of the current vector index and save it with its uuid."""
        self.plan.n = self.table.count_rows()
        if self.plan.index_type != "none":
            self.plan.index_uuid = self.vector_index_uuid()
            self._tune(target_recall, seed)
        self._save_plan()
        return self.plan

    def update(self) -> None:
        """Fold new rows into every index, compact small fragments, prune old versions."""
        self.table.optimize()

    def _save_plan(self) -> None:
        settings = self._settings_file()
        if settings is not None:
            settings.write_bytes(json.dumps(asdict(self.plan)).encode(), mode=0o644)

    def _tune(self, target_recall: float, seed: int) -> None:
        """Cheapest query setting whose recall@10 on held-out rows of the table meets target."""
        n = self.table.count_rows()
        rng = np.random.default_rng(seed + 1)
        # fewer held-out queries than FAISS: their exact answers are flat scans of the table
        offsets = np.sort(rng.choice(n, min(TUNE_QUERIES // 2, n), replace=False)).tolist()
        sample = self.table.take_offsets(offsets).select(["id", VECTOR]).to_arrow()
        queries = _vectors(sample)
        own = np.asarray(sample.column("id").to_pylist(), dtype=object)
        truth = self._ids(queries, TUNE_K + 1, flat=True)
        truth = _drop_own(truth, own, TUNE_K)
        grid: list[tuple[int, int, int]]
        if self.plan.index_type in ("IVF_PQ", "IVF_SQ"):
            pairs = IVF_PQ_GRID if self.plan.index_type == "IVF_PQ" else IVF_SQ_GRID
            grid = [(p, r, 0) for p, r in pairs]
        else:
            grid = [(1, 0, ef) for ef in HNSW_EF_GRID]
        chosen = grid[-1]
        tried = {}
        for setting in grid:
            self.plan.nprobes, self.plan.refine_factor, self.plan.ef = setting
            found = _drop_own(self._ids(queries, TUNE_K + 1), own, TUNE_K)
            recall = _recall_ids(found, truth)
            tried[str(setting)] = round(recall, 4)
            if recall >= target_recall:
                chosen = setting
                break
        self.plan.nprobes, self.plan.refine_factor, self.plan.ef = chosen
        self.plan.recall = tried[str(chosen)]
        self.plan.tried = tried

    # ------------------------------------------------------------------ search
    def query(self, vectors: np.ndarray, k: int, predicate: str | None = None, flat: bool = False):
        """A LanceDB query for one or many vectors (many: one batched call, ``query_index``)."""
        q = np.asarray(vectors, dtype=np.float32)
        builder = self.table.search(q if q.ndim == 1 else list(q), vector_column_name=VECTOR)
        builder = builder.distance_type("dot").limit(k)
        nprobes = self.plan.nprobes
        if predicate and not flat and self.plan.index_type != "none":
            allowed = self.count(predicate)
            flat = allowed <= FLAT_FILTER_MAX_ROWS
            selectivity = max(allowed, 1) / max(self.plan.n, 1)
            nprobes = int(min(10 * nprobes, np.ceil(nprobes / np.sqrt(min(selectivity, 1.0)))))
        if flat or self.plan.index_type == "none":
            builder = builder.bypass_vector_index()
        elif self.plan.index_type in ("IVF_PQ", "IVF_SQ"):
            builder = builder.nprobes(nprobes).refine_factor(self.plan.refine_factor)
        else:
            builder = builder.ef(max(self.plan.ef, k)).refine_factor(1)
        if predicate:
            builder = builder.where(predicate, prefilter=True)
        # "_distance" named: lance warns on every query that selects columns without it
        return builder.select(["id", "_distance"])

    def count(self, predicate: str) -> int:
        """Rows a predicate keeps (cached per table version; scalar indexes answer it)."""
        key = (int(self.table.version), predicate)
        if key not in self._counts:
            if len(self._counts) >= COUNT_CACHE:
                self._counts.pop(next(iter(self._counts)))
            self._counts[key] = self.table.count_rows(predicate)
        return self._counts[key]

    def search(
        self, vectors: np.ndarray, k: int, predicate: str | None = None, flat: bool = False
    ) -> list[tuple[list[str], list[float]]]:
        """Per query: (ids, cosine scores), best first."""
        q = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        arrow = self.query(q, k, predicate, flat).to_arrow()
        return _split(arrow, len(q))

    def _ids(self, queries: np.ndarray, k: int, flat: bool = False) -> list[list[str]]:
        return [ids for ids, _ in self.search(queries, k, flat=flat)]


def _split(arrow: pa.Table, n_queries: int) -> list[tuple[list[str], list[float]]]:
    """Rows of a (multi-)vector result grouped per query, ordered by score."""
    ids = arrow.column("id").to_pylist()
    # LanceDB's "dot" distance is 1 - dot product; inner product of unit vectors is cosine
    scores = (1.0 - np.asarray(arrow.column("_distance").to_numpy(zero_copy_only=False))).tolist()
    if "query_index" in arrow.schema.names:
        which = arrow.column("query_index").to_numpy()
    else:
        which = np.zeros(len(ids), np.int64)
    out: list[tuple[list[str], list[float]]] = [([], []) for _ in range(n_queries)]
    for i, s, q in zip(ids, scores, which.tolist(), strict=True):
        out[q][0].append(i)
        out[q][1].append(min(float(s), 1.0))
    for q in range(n_queries):
        order = np.argsort(-np.asarray(out[q][1]), kind="stable")
        out[q] = ([out[q][0][j] for j in order], [out[q][1][j] for j in order])
    return out


def _vectors(arrow: pa.Table) -> np.ndarray:
    column = arrow.column(VECTOR).combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(arrow.num_rows, -1)


def _drop_own(found: list[list[str]], own: np.ndarray, k: int) -> list[list[str]]:
    return [[i for i in ids if i != o][:k] for ids, o in zip(found, own, strict=True)]


def _recall_ids(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)])
    )
