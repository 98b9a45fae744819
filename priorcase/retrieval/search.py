"""kNN search over the case store, with SQL filters and same-patient exclusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from priorcase.classifiers.joint_space import JointSpace
from priorcase.errors import QueryError
from priorcase.index.store import CaseStore, Snapshot
from priorcase.index.vector_index import VectorIndex
from priorcase.records import SearchHit
from priorcase.retrieval.scaled import SCALE_BACKENDS, Query, ScaledSearcher

KINDS = ("image", "roi")


class Searcher:
    """Searches one store; kNN indexes are cached per table version and kind."""

    def __init__(self, store: CaseStore, backend: str = "auto", use_gpu: bool = False) -> None:
        self.store = store
        self.backend = "auto" if backend in SCALE_BACKENDS else backend  # text queries
        self.use_gpu = use_gpu
        self._indexes: dict[tuple[int, str | None], VectorIndex] = {}
        # large libraries (auto) and the faiss-ann / lance backends: batched, filters pushed down
        self.scaled = ScaledSearcher(store, backend, use_gpu)

    def index_for(
        self, snapshot: Snapshot, kind: str | None, space: JointSpace | None = None
    ) -> VectorIndex:
        """The kNN index of a snapshot, in image space or mapped into a joint text-image space."""
        key = (snapshot.version, kind, id(space))
        if key not in self._indexes:
            name = f"v{snapshot.version}-{kind or 'all'}{'-joint' if space else ''}.index"
            vectors = snapshot.vectors if space is None else space.images(snapshot.vectors)
            cache = None if space else Path(self.store.db_dir) / "faiss" / name
            index = VectorIndex(vectors, self.backend, self.use_gpu, cache_path=cache)
            # keep only the current version's indexes
            self._indexes = {k: v for k, v in self._indexes.items() if k[0] == snapshot.version}
            self._indexes[key] = index
        return self._indexes[key]

    def allowed_mask(
        self,
        snapshot: Snapshot,
        where: str | None = None,
        exclude_group: str | None = None,
        exclude_ids: set[str] | None = None,
    ) -> np.ndarray | None:
        """Boolean mask of rows a query may return, or None when every row may."""
        mask = np.ones(len(snapshot.ids), dtype=bool)
        if where:
            matching = self.store.ids_matching(where)
            mask &= np.fromiter((i in matching for i in snapshot.ids), bool, len(snapshot.ids))
        if exclude_group is not None:
            mask &= snapshot.groups != exclude_group
        if exclude_ids:
            mask &= np.fromiter((i not in exclude_ids for i in snapshot.ids), bool, len(mask))
        return None if mask.all() else mask

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        kind: str | None = None,
        where: str | None = None,
        exclude_group: str | None = None,
        exclude_ids: set[str] | None = None,
        space: JointSpace | None = None,
    ) -> list[SearchHit]:
        """The k stored cases most similar to ``vector``, best first.

        With ``space``, ``vector`` is a text embedding in that joint space and the stored image
        vectors are mapped into it before comparing.
        """
        if kind is not None and kind not in KINDS:
            raise QueryError(f"unknown kind {kind!r}: use image or roi")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if space is None and self.scaled.routes():
            query = Query(vector, exclude_group, frozenset(exclude_ids or ()))
            return self.scaled.search([query], k, kind, where)[0]
        snapshot = self.store.snapshot(kind)
        if len(snapshot.ids) == 0:
            return []
        index = self.index_for(snapshot, kind, space)
        if vector.shape[-1] != index.vectors.shape[1]:
            raise QueryError(
                f"query vector has {vector.shape[-1]} dimensions, "
                f"index has {index.vectors.shape[1]}"
            )
        mask = self.allowed_mask(snapshot, where, exclude_group, exclude_ids)
        found = index.search(vector, k, allowed=mask)
        positions = [int(p) for p in found.positions[0] if p >= 0]
        ids = [str(snapshot.ids[p]) for p in positions]
        return self.store.hits(ids, [float(s) for s in found.scores[0][: len(ids)]])
