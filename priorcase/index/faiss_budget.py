"""An in-memory FAISS index chosen by size, memory budget and target recall, autofaiss-style.

:func:`plan_index` picks Flat, HNSW, IVF-Flat or IVF-PQ; :class:`BudgetIndex` builds it, tunes
``efSearch`` / ``nprobe`` on held-out vectors of the library itself (the fastest setting that
meets the target recall@10 is kept) and searches with a row mask passed to FAISS as a packed
bitmap (``IDSelectorBitmap``). Vectors are L2-normalised float32, so inner product is cosine.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from priorcase.index.vector_index import Neighbours, gpu_faiss_available, l2_normalise

DEFAULT_TARGET_RECALL = 0.95
# Below this many rows exact flat search is as fast as any graph (measured by `priorcase
# bench`, see priorcase/index/thresholds.json); flat answers are exact.
FLAT_MAX_ROWS = 50_000
# A filtered query with at most this many allowed rows is answered exactly: the flat scan of
# the allowed rows is cheaper than a graph walk that must skip most nodes.
EXACT_SUBSET_MAX = 50_000
HNSW_M = 32
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
TUNE_QUERIES = 200
TUNE_K = 10


@dataclass(frozen=True)
class FaissPlan:
    """Which FAISS index, and the memory it needs."""

    kind: str  # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    n: int
    dim: int
    memory_mb: float
    nlist: int = 0
    pq_m: int = 0
    gpu: bool = False

    def factory(self) -> str:
        """The ``faiss.index_factory`` string."""
        return {
            "flat": "Flat",
            "hnsw": f"HNSW{HNSW_M}",
            "ivf_flat": f"IVF{self.nlist},Flat",
            "ivf_pq": f"IVF{self.nlist},PQ{self.pq_m}x8",
        }[self.kind]


def available_memory_mb() -> float:
    """MemAvailable from /proc/meminfo (Linux), else total RAM via sysconf."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def default_budget_mb() -> float:
    """Half the memory available now: the rest is for the table, the encoder and the UI."""
    return available_memory_mb() / 2


def plan_index(
    n: int,
    dim: int,
    memory_budget_mb: float | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
    use_gpu: bool = False,
    force: str | None = None,
) -> FaissPlan:
    """Choose the index like autofaiss: exact while cheap, else the best one that fits.

    - up to ``FLAT_MAX_ROWS`` rows, or a target recall of 1: Flat (exact);
    - on a GPU: Flat while it fits (brute force on a GPU beats graphs), else IVF;
    - HNSW32 when raw vectors plus the graph fit the budget (fastest at high recall on CPU);
    - IVF-Flat when raw vectors fit but the graph does not;
    - IVF-PQ with the most bytes per vector that fit, when raw vectors do not.
    """
    budget = default_budget_mb() if memory_budget_mb is None else memory_budget_mb
    raw_mb = n * dim * 4 / 2**20
    gpu = use_gpu and gpu_faiss_available()
    nlist = int(min(max(16, 4 * np.sqrt(n)), 65_536, max(1, n // 39)))
    if force is not None:  # tests and benchmarks pin the kind
        pq_m = dim // 8 if force == "ivf_pq" else 0
        return FaissPlan(force, n, dim, raw_mb, nlist=nlist, pq_m=pq_m, gpu=gpu)
    if n <= FLAT_MAX_ROWS or target_recall >= 1.0:
        return FaissPlan("flat", n, dim, raw_mb, gpu=gpu)
    if gpu and raw_mb <= budget:
        return FaissPlan("flat", n, dim, raw_mb, gpu=True)
    hnsw_mb = raw_mb + n * HNSW_M * 2 * 4 * 1.05 / 2**20  # level-0 links dominate the graph
    if not gpu and hnsw_mb <= budget:
        return FaissPlan("hnsw", n, dim, hnsw_mb)
    ivf_mb = raw_mb + n * 8 / 2**20 + nlist * dim * 4 / 2**20
    if ivf_mb <= budget:
        return FaissPlan("ivf_flat", n, dim, ivf_mb, nlist=nlist, gpu=gpu)
    for pq_m in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 32):
        if pq_m >= 1 and dim % pq_m == 0:
            pq_mb = n * (pq_m + 8) / 2**20 + nlist * dim * 4 / 2**20
            if pq_mb <= budget:
                return FaissPlan("ivf_pq", n, dim, pq_mb, nlist=nlist, pq_m=pq_m, gpu=gpu)
    raise MemoryError(
        f"{n} vectors of {dim} dimensions do not fit a {budget:.0f} MB budget even as IVF-PQ; "
        "serve this library through LanceDB (--backend lance)"
    )


@dataclass
class Tuning:
    """The search-time setting kept, and the recall it reached on held-out library vectors."""

    param: str  # "efSearch" | "nprobe" | ""
    value: int = 0
    recall: float = 1.0
    tried: dict[int, float] = field(default_factory=dict)


class BudgetIndex:
    """A FAISS index built from a :class:`FaissPlan`, tuned to a target recall."""

    def __init__(self, index: faiss.Index, plan: FaissPlan, tuning: Tuning) -> None:
        self.index = index
        self.plan = plan
        self.tuning = tuning
        self._flat_view: faiss.Index | None = None

    # ------------------------------------------------------------------ build / persist
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        memory_budget_mb: float | None = None,
        target_recall: float = DEFAULT_TARGET_RECALL,
        use_gpu: bool = False,
        seed: int = 0,
        force: str | None = None,
    ) -> BudgetIndex:
        x = _unit_rows(vectors)
        plan = plan_index(len(x), x.shape[1], memory_budget_mb, target_recall, use_gpu, force)
        index = faiss.index_factory(x.shape[1], plan.factory(), faiss.METRIC_INNER_PRODUCT)
        if plan.kind in ("ivf_flat", "ivf_pq"):
            rng = np.random.default_rng(seed)
            train = x[rng.choice(len(x), min(len(x), plan.nlist * 64), replace=False)]
            index.train(train)
        # The newest rows are held out: tuned as queries the index has not seen (rows already
        # in a graph are easier to find), then added, so positions stay row numbers.
        held = min(TUNE_QUERIES, len(x) // 10) if plan.kind != "flat" else 0
        index.add(x[: len(x) - held])
        built = cls(index, plan, Tuning(""))
        if held:
            built.tuning = built.tune(x[: len(x) - held], x[len(x) - held :], target_recall)
            index.add(x[len(x) - held :])
        if plan.gpu:
            built.index = _to_gpu(index)  # code path only: this machine has no GPU
        return built

    def save(self, path: Path) -> None:
        """Write index and plan atomically (temporary names, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self._cpu_index(), str(tmp))
        meta = path.with_suffix(".json")
        meta_tmp = meta.with_name(meta.name + ".tmp")
        meta_tmp.write_text(json.dumps({"plan": asdict(self.plan), "tuning": asdict(self.tuning)}))
        tmp.replace(path)
        meta_tmp.replace(meta)

    @classmethod
    def load(cls, path: Path, use_gpu: bool = False) -> BudgetIndex | None:
        """The index saved at ``path``, or None when it is absent or unreadable."""
        meta = path.with_suffix(".json")
        if not path.exists() or not meta.exists():
            return None
        try:
            info = json.loads(meta.read_text())
            # vectors stay in the file, mapped (4.7x faster open for HNSW at 20k rows);
            # a later save replaces the file by rename, so a mapped index stays valid
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
            _read_ahead(path)
        except (OSError, RuntimeError, ValueError):
            return None
        plan = FaissPlan(**info["plan"])
        tuning = Tuning(**{**info["tuning"], "tried": {}})
        loaded = cls(index, plan, tuning)
        loaded._apply(tuning.value)
        if use_gpu and plan.gpu:
            loaded.index = _to_gpu(index)
        return loaded

    def _cpu_index(self) -> faiss.Index:
        if gpu_faiss_available() and not isinstance(self.index, faiss.IndexHNSW):
            try:
                return faiss.index_gpu_to_cpu(self.index)
            except (RuntimeError, AttributeError):
                return self.index
        return self.index

    # ------------------------------------------------------------------ tuning
    def tune(self, x: np.ndarray, queries: np.ndarray, target_recall: float) -> Tuning:
        """The smallest efSearch / nprobe whose recall@10 for ``queries`` (held-out rows, not
        in the index yet) against exact search over ``x`` (the indexed rows) meets the target."""
        truth = _exact_topk(x, queries, TUNE_K)
        grid = EF_GRID if self.plan.kind == "hnsw" else NPROBE_GRID
        if self.plan.kind != "hnsw":
            grid = tuple(v for v in grid if v <= self.plan.nlist) or (self.plan.nlist,)
        tried: dict[int, float] = {}
        chosen = grid[-1]
        for value in grid:
            self._apply(value)
            _, found = self.index.search(queries, TUNE_K)
            recall = recall_at_k(found, truth)
            tried[value] = round(recall, 4)
            if recall >= target_recall:
                chosen = value
                break
        self._apply(chosen)
        param = "efSearch" if self.plan.kind == "hnsw" else "nprobe"
        return Tuning(param, int(chosen), tried[chosen], tried)

    def _apply(self, value: int) -> None:
        if value <= 0:
            return
        if self.plan.kind == "hnsw":
            faiss.downcast_index(self.index).hnsw.efSearch = int(value)
        elif self.plan.kind in ("ivf_flat", "ivf_pq"):
            faiss.extract_index_ivf(self.index).nprobe = int(value)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        """Top-k rows per query; ``allowed`` is an optional boolean row mask (vectorised)."""
        q = l2_normalise(np.atleast_2d(queries))
        n = self.index.ntotal
        k = max(1, int(k))
        kk = min(k, n)
        params = None
        index = self.index
        if allowed is not None:
            count = int(np.count_nonzero(allowed))
            if count == 0:
                return _empty(len(q), k)
            selector = bitmap_selector(allowed)
            selectivity = count / n
            if self.plan.kind == "hnsw" and (
                count <= EXACT_SUBSET_MAX or self.tuning.value / selectivity > EF_GRID[-1]
            ):
                # few allowed rows: an exact scan of just those rows beats a sparse graph walk
                index = self._flat()
                params = faiss.SearchParameters(sel=selector)
            elif self.plan.kind == "hnsw":
                ef = int(min(EF_GRID[-1], max(kk, self.tuning.value / selectivity)))
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            elif self.plan.kind in ("ivf_flat", "ivf_pq"):
                nprobe = int(min(self.plan.nlist, np.ceil(self.tuning.value / selectivity**0.5)))
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
            params._keep = selector  # the selector must outlive the call
        scores, positions = index.search(q, kk, params=params)
        scores = np.minimum(scores, 1.0)
        positions = positions.astype(np.int64)
        scores = np.where(positions < 0, -np.inf, scores).astype(np.float32)
        if kk < k:
            positions = np.pad(positions, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        return Neighbours(positions, scores)

    def _flat(self) -> faiss.Index:
        """The HNSW index's own flat storage: exact scans without a second copy of the rows."""
        if self._flat_view is None:
            self._flat_view = faiss.downcast_index(faiss.downcast_index(self.index).storage)
        return self._flat_view

    def memory_mb(self) -> float:
        return self.plan.memory_mb


def bitmap_selector(allowed: np.ndarray) -> faiss.IDSelectorBitmap:
    """A FAISS selector over a boolean row mask, packed 8 rows a byte (bit i of byte i>>3)."""
    bits = np.packbits(np.ascontiguousarray(allowed, dtype=bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    selector._bits = bits  # FAISS keeps a raw pointer: hold the array as long as the selector
    return selector


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found (positions; -1 never counts)."""
    k = truth.shape[1]
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
        for f, t in zip(found[:, :k], truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def _exact_topk(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    # faiss.knn scans x in place (no second copy of the library, unlike an IndexFlat)
    return faiss.knn(queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)[1]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` itself when already unit float32 rows (no copy of a large library)."""
    x = np.asarray(vectors)
    if x.dtype == np.float32 and x.flags.c_contiguous and len(x):
        probe = np.linalg.norm(x[:: max(1, len(x) // 1000)], axis=1)
        if np.allclose(probe, 1.0, atol=1e-4):
            return x
    return l2_normalise(x)


def _empty(nq: int, k: int) -> Neighbours:
    return Neighbours(np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32))


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Move a flat / IVF index to GPU 0 (FAISS has no GPU HNSW); unchanged without a GPU."""
    if not gpu_faiss_available() or isinstance(index, faiss.IndexHNSW):
        return index
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def _read_ahead(path: Path) -> None:
    """Read a mapped index once, sequentially, on a background thread, so its pages are in
    the page cache: from a cold cache each early query otherwise waits on random disk reads
    (200k rows: 134 ms p50 over the first 50 queries, 3.7 ms warm; a sequential read of the
    464 MB file takes 0.4 s). ``posix_fadvise(WILLNEED)`` alone did not warm it here."""

    def read() -> None:
        try:
            with open(path, "rb", buffering=0) as fh:
                while fh.read(16 << 20):
                    pass
        except OSError:
            pass  # only a warm-up: the mapped index reads the file itself

    threading.Thread(target=read, name="priorcase-faiss-read-ahead", daemon=True).start()
