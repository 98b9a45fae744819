"""Inner-product kNN over L2-normalised vectors: exact NumPy or FAISS, same answers up to ties.

Vectors are L2-normalised float32, so inner product equals cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

if TYPE_CHECKING:
    from priorcase.index.location import LibraryFile

# From this many vectors a GPU FAISS index pays for its transfer. On CPU, benchmarks/
# bench_search.py measured NumPy's BLAS product faster than FAISS IndexFlatIP up to 300k rows
# (2 cores, 512-d), so exact CPU search stays NumPy.
FAISS_MIN_ROWS = 20_000
BACKENDS = ("auto", "exact", "faiss", "hnsw")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class Neighbours:
    """Row positions (-1 where fewer than k candidates) and cosine scores, shape (n_queries, k)."""

    positions: np.ndarray
    scores: np.ndarray


class VectorIndex:
    """kNN over a fixed matrix of reference vectors.

    ``backend``:
    - ``"exact"``: NumPy matrix product;
    - ``"faiss"``: FAISS ``IndexFlatIP``, exact, on the GPU when ``use_gpu`` and one is there;
    - ``"hnsw"``: FAISS ``IndexHNSWFlat``, approximate (opt-in, for very large libraries);
    - ``"auto"``: ``"faiss"`` on a GPU from ``FAISS_MIN_ROWS`` rows, else ``"exact"``.
    ``"exact"``, ``"faiss"`` and ``"auto"`` give the same answers up to ties.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        backend: str = "auto",
        use_gpu: bool = False,
        cache_path: Path | LibraryFile | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown kNN backend {backend!r}; use {', '.join(BACKENDS)}")
        self.vectors = l2_normalise(vectors)
        if backend == "auto":
            on_gpu = use_gpu and gpu_faiss_available() and len(self.vectors) >= FAISS_MIN_ROWS
            backend = "faiss" if on_gpu else "exact"
        self.backend = backend
        self._faiss: faiss.Index | None = None
        if backend in ("faiss", "hnsw"):
            self._faiss = _load_or_build(self.vectors, backend == "hnsw", use_gpu, cache_path)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> Neighbours:
        """The k most similar rows to each query; ``allowed`` is an optional boolean row mask."""
        q = l2_normalise(np.atleast_2d(queries))
        k = max(1, int(k))
        if self.backend == "exact" or self._faiss is None:
            return _exact_search(self.vectors, q, k, allowed)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.flatnonzero(allowed)))
        scores, positions = self._faiss.search(q, min(k, len(self)), params=params)
        scores = np.minimum(scores, 1.0)  # float rounding can give 1.0000001 for identical vectors
        return _pad(Neighbours(positions.astype(np.int64), scores.astype(np.float32)), k)


def gpu_faiss_available() -> bool:
    """True with a GPU build of FAISS (the ``gpu`` extra) and a visible GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _load_or_build(
    vectors: np.ndarray, hnsw: bool, use_gpu: bool, cache_path: Path | LibraryFile | None
) -> faiss.Index:
    """Reuse the FAISS index saved at ``cache_path`` (a name holding the vectors' digest), else
    build and save it atomically; a file that does not load or does not fit is rebuilt."""
    if cache_path is None:
        index = build_faiss_index(vectors, hnsw=hnsw)
        return _to_gpu(index) if use_gpu else index
    from priorcase.index.artifacts import load_or_build

    def load(path: Path) -> faiss.Index:
        index = faiss.read_index(str(path))
        if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
            raise ValueError(f"holds {index.ntotal}x{index.d} vectors, not {vectors.shape}")
        return index

    # "image-faiss-<digest>.index": older digests of the same kind and backend are stale
    prefix = cache_path.name.rsplit("-", 1)[0] + "-"
    index = load_or_build(
        cache_path,
        load,
        lambda: build_faiss_index(vectors, hnsw=hnsw),
        lambda index, tmp: faiss.write_index(index, str(tmp)),
        notify=lambda message: None,  # an index is cheap to rebuild: no need to say so
        stale=lambda old: old.name.startswith(prefix) and old.suffix == ".index",
    )
    return _to_gpu(index) if use_gpu else index


def _to_gpu(index: faiss.Index) -> faiss.Index:
    if not gpu_faiss_available() or isinstance(index, faiss.IndexHNSWFlat):
        return index  # HNSW has no GPU version in FAISS
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def build_faiss_index(vectors: np.ndarray, hnsw: bool = False) -> faiss.Index:
    """An inner-product FAISS index over ``vectors``: exact flat, or an HNSW graph."""
    dim = vectors.shape[1]
    if hnsw:
        index: faiss.Index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def _exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None
) -> Neighbours:
    sims = np.minimum(queries @ vectors.T, 1.0)  # rounding can exceed 1 for identical vectors
    if allowed is not None:
        sims = np.where(allowed[None, :], sims, -np.inf)
    kk = min(k, vectors.shape[0])
    part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    positions = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(part_scores, order, axis=1)
    positions = np.where(np.isfinite(scores), positions, -1)
    return _pad(Neighbours(positions.astype(np.int64), scores.astype(np.float32)), k)


def _pad(nb: Neighbours, k: int) -> Neighbours:
    """Pad to k columns with position -1 and score -inf so callers see a fixed shape."""
    missing = k - nb.positions.shape[1]
    positions, scores = nb.positions, nb.scores
    if missing > 0:
        positions = np.pad(positions, ((0, 0), (0, missing)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
    scores = np.where(positions < 0, -np.inf, scores).astype(np.float32)
    return Neighbours(positions, scores)
