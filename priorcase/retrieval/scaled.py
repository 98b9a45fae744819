"""Search that scales: ``auto`` picks exact NumPy, an in-memory FAISS index chosen by budget,
or LanceDB's own indexes, from thresholds measured by ``priorcase bench``, and says which.

Every path takes a batch of queries in one kNN call and builds its filters without a Python
loop over rows: ``--where`` and ``kind`` become row masks (NumPy) or LanceDB prefilters, and
same-patient exclusion uses integer group codes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from priorcase.errors import QueryError
from priorcase.index.faiss_budget import DEFAULT_TARGET_RECALL, BudgetIndex, default_budget_mb
from priorcase.index.lance_ann import LanceAnn, filter_sql
from priorcase.index.store import CaseStore, field_name
from priorcase.index.vector_index import Neighbours, VectorIndex
from priorcase.records import SearchHit

SCALE_BACKENDS = ("faiss-ann", "lance")
THRESHOLDS_PATH = Path(__file__).resolve().parents[1] / "index" / "thresholds.json"
CACHE_DIR = "ann"
MASK_CACHE = 32


def load_thresholds(path: Path = THRESHOLDS_PATH) -> dict:
    """Row counts where ``auto`` switches path (written from ``priorcase bench --json``)."""
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Choice:
    """The path a search takes, and why."""

    backend: str  # "exact" | "faiss-ann" | "lance"
    reason: str


def choose(
    n: int,
    dim: int,
    remote: bool = False,
    memory_budget_mb: float | None = None,
    thresholds: dict | None = None,
) -> Choice:
    """``auto``'s rule: exact while a flat scan meets the latency target, in-memory FAISS while
    the vectors fit the budget and open fast enough, LanceDB's index beyond (or on object
    storage, where loading the table whole is what must be avoided)."""
    t = thresholds or load_thresholds()
    if n <= t["exact_max_rows"]:
        if remote:  # read once per table version, then no request per query for vectors
            return Choice("exact", f"{n} rows on object storage, read once and kept in memory")
        return Choice("exact", f"{n} rows <= {t['exact_max_rows']}: a flat scan is fast enough")
    if remote:
        return Choice("lance", "library on object storage")
    budget = default_budget_mb() if memory_budget_mb is None else memory_budget_mb
    need_mb = n * dim * 4 * 1.3 / 2**20
    if need_mb > budget:
        return Choice("lance", f"{need_mb:.0f} MB of vectors exceed the {budget:.0f} MB budget")
    if n > t["faiss_max_rows"]:
        return Choice("lance", f"{n} rows > {t['faiss_max_rows']}: in-memory opens too slowly")
    return Choice("faiss-ann", f"{n} rows fit in memory ({need_mb:.0f} MB)")


@dataclass
class Columns:
    """What the in-memory paths need from one table version; position i is row i."""

    key: str
    rowids: np.ndarray  # uint64, ascending (scan order)
    groups: np.ndarray  # int32 code per row, -1 where null
    group_codes: dict[str, int]
    group_sizes: np.ndarray
    kinds: np.ndarray  # int32 code per row
    kind_codes: dict[str, int]
    hit_rows: pa.Table  # what a SearchHit shows but its thumbnail, row i at position i
    exact: VectorIndex | None = None  # the vectors, normalised once (not per query)


@dataclass(frozen=True)
class TableState:
    """What one table version says about itself. Read once per version: each read is a round
    trip through LanceDB's event-loop thread, and a query made five of them."""

    memo: tuple[int, int]  # (handle identity, version)
    names: tuple[str, ...]
    dim: int
    rows: int


@dataclass(frozen=True)
class Query:
    """One query of a batch."""

    vector: np.ndarray
    exclude_group: str | None = None
    exclude_ids: frozenset[str] = frozenset()


class ScaledSearcher:
    """Batched kNN over a :class:`CaseStore` through the path ``backend`` names or ``auto``."""

    def __init__(
        self,
        store: CaseStore,
        backend: str = "auto",
        use_gpu: bool = False,
        memory_budget_mb: float | None = None,
        target_recall: float = DEFAULT_TARGET_RECALL,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.use_gpu = use_gpu
        self.memory_budget_mb = memory_budget_mb
        self.target_recall = target_recall
        self.notify = notify
        self.chosen: Choice | None = None
        self._columns: Columns | None = None
        self._faiss: tuple[str, BudgetIndex] | None = None
        self._lance: LanceAnn | None = None
        self._key: tuple[tuple[int, int], str] | None = None
        self._pinned = None  # the table handle of the query under way (one checkout a query)
        self._state: TableState | None = None
        self._pinned_state: TableState | None = None  # its state, read once
        self._masks: OrderedDict[tuple[str, str | None, str | None], np.ndarray | None] = (
            OrderedDict()
        )

    def configure(
        self,
        memory_budget_mb: float | None = None,
        target_recall: float | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if memory_budget_mb is not None:
            self.memory_budget_mb = memory_budget_mb
        if target_recall is not None:
            self.target_recall = target_recall
        if notify is not None:
            self.notify = notify

    def routes(self) -> bool:
        """Whether image queries go this way: a scaled backend or ``auto`` (whatever it
        picks, exact included: filters as cached row masks, hits from memory) was asked for;
        the snapshot backends (exact, faiss, hnsw) stay with :class:`Searcher`."""
        if self.backend in SCALE_BACKENDS:
            return True
        table = self.store.table if self.backend == "auto" else None
        if table is None:
            return False
        self._pin(table)  # search() right after reuses this checkout
        return True

    def release(self) -> None:
        """Drop the checkout ``routes()`` made, when no search follows it."""
        self._pin(None)

    def _pin(self, table) -> None:
        self._pinned = table
        self._pinned_state = None

    def state(self) -> TableState:
        """The current version's schema, size and identity (read once per version)."""
        if self._pinned is not None and self._pinned_state is not None:
            return self._pinned_state
        table = self._table()
        memo = (id(table), int(table.version))
        if self._state is None or self._state.memo != memo:
            schema = table.schema
            dim = schema.field("vector").type.list_size
            self._state = TableState(memo, tuple(schema.names), dim, table.count_rows())
        if self._pinned is not None:
            self._pinned_state = self._state
        return self._state

    def prepare(self) -> str:
        """Bring the indexes of the chosen path up to date (``priorcase index``): LanceDB's
        scalar indexes always; its vector index built, or new rows folded in by optimize();
        the FAISS index built and saved when FAISS is the path. Returns a one-line summary."""
        table = self._table()
        choice = self.choose()
        ann = self.lance()
        ann.ensure_scalar_indexes(label_index_columns(self.store))
        if ann.vector_index_uuid():
            ann.update()  # new rows into the index, small fragments compacted
            plan = ann.retune(self.target_recall)
        elif choice.backend == "lance":
            plan = ann.build_vector_index(self.memory_budget_mb, self.target_recall)
        else:
            plan = ann.plan
        tuned = "" if plan.index_type == "none" else f", recall@10 {plan.recall:.3f} held out"
        lines = [f"LanceDB: vector index {plan.index_type} over {plan.n} rows{tuned}"]
        self._lance = None
        if choice.backend == "faiss-ann":
            cols = self.columns(with_vectors=False)
            index = self.faiss_index(cols)
            lines.append(
                f"FAISS: {index.plan.kind} over {len(cols.rowids)} rows, "
                f"{index.tuning.param or 'exact'} {index.tuning.value or ''} "
                f"recall@10 {index.tuning.recall:.3f}"
            )
        lines.append(f"search path: {choice.backend} ({choice.reason}); {table.count_rows()} rows")
        return "\n".join(lines)

    # ------------------------------------------------------------------ choice
    def content_key(self) -> str:
        """Identifies the table's content, not its version number (a rebuilt table restarts
        its versions; an index build makes a version without changing the rows)."""
        memo = self.state().memo
        if self._key is not None and self._key[0] == memo:
            return self._key[1]
        table = self._table()
        latest = max(table.list_versions(), key=lambda v: v["version"])
        # data files, rows, deletions and bytes: unchanged by index builds (which make new
        # versions), changed by any write or compaction (which also renumbers row ids)
        raw = json.dumps(latest["metadata"], sort_keys=True)
        key = hashlib.sha256(raw.encode()).hexdigest()[:16]
        self._key = (memo, key)
        return key

    def choose(self) -> Choice:
        if self.backend in SCALE_BACKENDS:
            choice = Choice(self.backend, "asked for")
        elif self.backend == "exact":
            choice = Choice("exact", "asked for")
        else:
            state = self.state()  # read once per table version, so remote costs no request
            remote = self.store.location.is_remote
            choice = choose(state.rows, state.dim, remote, self.memory_budget_mb)
        # small local libraries (exact) stay silent; `priorcase index` always says which
        remote = self.store.location.is_remote
        if (
            choice != self.chosen
            and self.notify is not None
            and (choice.backend != "exact" or remote)
        ):
            self.notify(f"search backend: {choice.backend} ({choice.reason})")
        self.chosen = choice
        return choice

    def _table(self):
        if self._pinned is not None:
            return self._pinned
        table = self.store.table
        if table is None:
            raise QueryError(f"index {self.store.db_dir} is empty: run 'priorcase ingest' first")
        return table

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: Sequence[Query],
        k: int = 10,
        kind: str | None = None,
        where: str | None = None,
    ) -> list[list[SearchHit]]:
        """The k most similar stored cases for each query, best first; queries that share
        their exclusions go through one batched kNN call."""
        try:
            if self._pinned is None:
                self._pin(self._table())
            return self._search(queries, k, kind, where)
        finally:
            self._pin(None)

    def _search(self, queries, k, kind, where) -> list[list[SearchHit]]:
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        dim = self.state().dim
        for q in queries:
            if np.shape(q.vector)[-1] != dim:
                raise QueryError(
                    f"query vector has {np.shape(q.vector)[-1]} dimensions, index has {dim}"
                )
        choice = self.choose()
        groups: dict[tuple[str | None, frozenset[str]], list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault((q.exclude_group, q.exclude_ids), []).append(i)
        out: list[list[SearchHit]] = [[] for _ in queries]
        for (group, ids), members in groups.items():
            vectors = np.stack([np.asarray(queries[i].vector, np.float32) for i in members])
            if choice.backend == "lance":
                found = self._search_lance(vectors, k, kind, where, group, ids)
            else:
                found = self._search_memory(choice.backend, vectors, k, kind, where, group, ids)
            for i, hits in zip(members, found, strict=True):
                out[i] = hits
        return out

    # ------------------------------------------------------------------ LanceDB
    def lance(self) -> LanceAnn:
        table = self._table()
        if self._lance is None or self._lance.table is not table:
            self._lance = LanceAnn(table, self.store.location.child(CACHE_DIR))
        return self._lance

    def _search_lance(self, vectors, k, kind, where, group, ids) -> list[list[SearchHit]]:
        predicate = filter_sql(where, kind, group, ids)
        try:
            found = self.lance().search(vectors, k, predicate)
        except (ValueError, RuntimeError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QueryError(f"search failed for filter {predicate!r}: {first}") from err
        return [self.store.hits(i, s) for i, s in found]

    # ------------------------------------------------------------------ exact / FAISS
    def columns(self, with_vectors: bool) -> Columns:
        """Row ids, group and kind codes, hit columns (and the exact index over the vectors)
        of the current version, cached."""
        key = self.content_key()
        if self._columns is None or self._columns.key != key:
            self._columns = _read_columns(self._table(), key, self.state().names)
            self._masks.clear()
        cols = self._columns
        if with_vectors and cols.exact is None:
            arrow = self._table().search().select(["vector"]).limit(None).to_arrow()
            column = arrow.column("vector").combine_chunks()
            vectors = np.asarray(
                column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32
            ).reshape(arrow.num_rows, -1)
            cols.exact = VectorIndex(vectors, "exact")
        return cols

    def faiss_index(self, cols: Columns) -> BudgetIndex:
        """The budget-chosen FAISS index of this content, from disk or built (and saved)."""
        if self._faiss is not None and self._faiss[0] == cols.key:
            return self._faiss[1]
        file = self.store.location.file(CACHE_DIR, f"faiss-{cols.key}.index")
        meta = self.store.location.file(CACHE_DIR, f"faiss-{cols.key}.json")  # its plan
        cached = file.fetch() and meta.fetch()
        index = BudgetIndex.load(file.local, self.use_gpu) if cached else None
        if index is None or index.index.ntotal != len(cols.rowids):
            exact = self.columns(with_vectors=True).exact
            assert exact is not None
            index = BudgetIndex.build(
                exact.vectors, self.memory_budget_mb, self.target_recall, self.use_gpu
            )
            index.save(file.local)
            file.upload()
            meta.upload()
            for stale in file.siblings():
                if stale.name.startswith("faiss-") and not stale.name.startswith(file.local.stem):
                    stale.delete()
        self._faiss = (cols.key, index)
        return index

    def _search_memory(self, backend, vectors, k, kind, where, group, ids):
        cols = self.columns(with_vectors=backend == "exact")
        mask = self._mask(cols, kind, where)
        if group is not None and group in cols.group_codes:
            mask = (np.ones(len(cols.rowids), bool) if mask is None else mask.copy()) & (
                cols.groups != cols.group_codes[group]
            )
        if ids:
            excluded = self._rowid_positions(cols, ids)
            if len(excluded):
                mask = np.ones(len(cols.rowids), bool) if mask is None else mask.copy()
                mask[excluded] = False
        if backend == "exact":
            assert cols.exact is not None
            found = cols.exact.search(vectors, k, allowed=mask)
        else:
            found = self.faiss_index(cols).search(vectors, k, allowed=mask)
        return self._hits(cols, found)

    def _mask(self, cols: Columns, kind: str | None, where: str | None) -> np.ndarray | None:
        key = (cols.key, kind, where)
        if key in self._masks:
            self._masks.move_to_end(key)
            return self._masks[key]
        mask: np.ndarray | None = None
        if kind is not None:
            code = cols.kind_codes.get(kind, -2)
            mask = cols.kinds == code
        if where:
            try:
                arrow = self._table().search().where(where).select(["_rowid"]).limit(None)
                matched = arrow.to_arrow().column("_rowid").to_numpy()
            except (ValueError, RuntimeError, OSError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else "error"
                raise QueryError(f"invalid --where {where!r}: {first}") from err
            rows = np.zeros(len(cols.rowids), bool)
            rows[_positions(cols.rowids, matched)] = True
            mask = rows if mask is None else mask & rows
        if mask is not None and mask.all():
            mask = None
        self._masks[key] = mask
        if len(self._masks) > MASK_CACHE:
            self._masks.popitem(last=False)
        return mask

    def _rowid_positions(self, cols: Columns, ids: frozenset[str]) -> np.ndarray:
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in sorted(ids))
        arrow = self._table().search().where(f"id IN ({quoted})").select(["_rowid"])
        matched = arrow.limit(None).to_arrow().column("_rowid").to_numpy()
        return _positions(cols.rowids, matched)

    def _hits(self, cols: Columns, found: Neighbours) -> list[list[SearchHit]]:
        wanted = np.unique(found.positions[found.positions >= 0])
        rows: dict[int, dict] = {}
        if len(wanted):
            # labels and geometry come from memory; only the thumbnails are read, in one take:
            # each column a take reads costs a random read, and a hit row has sixteen of them
            rows = dict(zip(wanted.tolist(), cols.hit_rows.take(wanted).to_pylist(), strict=True))
            ids = cols.rowids[wanted]
            taken = self._table().take_row_ids(ids.tolist()).select(["thumbnail"]).with_row_id()
            thumbs = taken.to_arrow()
            thumb_of = dict(
                zip(
                    thumbs.column("_rowid").to_pylist(),
                    thumbs.column("thumbnail").to_pylist(),
                    strict=True,
                )
            )
            for position, rowid in zip(wanted.tolist(), ids.tolist(), strict=True):
                if rowid not in thumb_of:  # deleted since this version was read
                    del rows[position]
                else:
                    rows[position]["thumbnail"] = thumb_of[rowid]
        out = []
        for positions, scores in zip(found.positions, found.scores, strict=True):
            hits = [
                self.store.row_to_hit(rows[p], float(s))
                for p, s in zip(positions.tolist(), scores.tolist(), strict=True)
                if p in rows
            ]
            out.append(hits)
        return out


def _positions(rowids: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """Positions of ``matched`` row ids in the sorted ``rowids`` (unknown ones dropped)."""
    matched = np.asarray(matched, dtype=np.uint64)
    pos = np.searchsorted(rowids, matched)
    ok = pos < len(rowids)
    pos, matched = pos[ok], matched[ok]
    return pos[rowids[pos] == matched]


# read per hit, not held in memory: the vector (in the index), the thumbnail (taken per hit)
NOT_HELD = ("vector", "thumbnail", "content_hash", "key")


def _read_columns(table, key: str, names: Sequence[str]) -> Columns:
    held = [c for c in names if c not in NOT_HELD]
    arrow = table.search().select(held).with_row_id(True).limit(None).to_arrow()
    rowids = arrow.column("_rowid").to_numpy()
    order = np.argsort(rowids, kind="stable")
    if not np.all(order == np.arange(len(order))):
        arrow = arrow.take(pa.array(order))
        rowids = rowids[order]
    groups, group_names = _codes(arrow.column("group"))
    kinds, kind_names = _codes(arrow.column("kind"))
    group_sizes = np.bincount(groups[groups >= 0], minlength=len(group_names))
    return Columns(
        key=key,
        rowids=np.ascontiguousarray(rowids, dtype=np.uint64),
        groups=groups,
        group_codes={g: i for i, g in enumerate(group_names)},
        group_sizes=group_sizes,
        kinds=kinds,
        kind_codes={g: i for i, g in enumerate(kind_names)},
        hit_rows=arrow.drop_columns(["_rowid"]).combine_chunks(),  # one chunk: a fast take
    )


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 for null) and the distinct values of a string column."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    codes = np.where(encoded.is_null().to_numpy(zero_copy_only=False), -1, codes)
    return codes.astype(np.int32), encoded.dictionary.to_pylist()


def label_index_columns(store: CaseStore) -> dict[str, str]:
    """Scalar indexes for filters: BITMAP on low-cardinality label columns and kind, BTREE on
    the patient group and the id (fetching hits by id)."""
    columns = {"kind": "BITMAP", "group": "BTREE", "id": "BTREE"}
    manifest = store.manifest
    if manifest is not None:
        for label in manifest.label_columns:
            columns.setdefault(field_name(label), "BITMAP")
    return columns
