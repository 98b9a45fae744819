"""kNN search over the case store, with SQL filters and same-patient exclusion."""

from __future__ import annotations

import numpy as np

from priorcase.classifiers.joint_space import ClipSpace, JointSpace
from priorcase.errors import QueryError
from priorcase.index.artifacts import BoundedCache
from priorcase.index.store import CaseStore, Snapshot
from priorcase.index.vector_index import VectorIndex
from priorcase.records import SearchHit
from priorcase.retrieval.scaled import SCALE_BACKENDS, Query, ScaledSearcher
from priorcase.retrieval.where import parse_where

KINDS = ("image", "roi", "tile")
MAX_K = 10_000  # results per query: beyond this a "k" is a typo, and would allocate k columns
MAX_TEXT_CHARS = 1_000  # CLIP reads 77 tokens; a longer "description" is a pasted document


def check_k(k: object, what: str = "k") -> int:
    """``k`` as an int in 1..MAX_K, else a one-line QueryError (never a huge allocation)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QueryError(f"{what} must be a whole number, got {k!r}")
    if not 1 <= int(k) <= MAX_K:
        raise QueryError(f"{what} must be between 1 and {MAX_K}, got {k}")
    return int(k)


def check_text(text: str) -> str:
    """A text query stripped of outer space; empty or over MAX_TEXT_CHARS is a QueryError."""
    stripped = (text or "").strip()
    if not stripped:
        raise QueryError("the text query is empty: describe a finding, e.g. 'dense breast'")
    if len(stripped) > MAX_TEXT_CHARS:
        raise QueryError(
            f"the text query has {len(stripped)} characters; the limit is {MAX_TEXT_CHARS}"
        )
    return stripped


# image / roi / all, each in image space and at most one learned text space, plus slack
MAX_CACHED_INDEXES = 8


def _space_key(space: JointSpace | None) -> str | None:
    """ "" where ``space`` leaves image vectors as they are (CLIP), else its ``content_key``
    (None: a space with no content identity, whose index is not cached)."""
    if space is None or isinstance(space, ClipSpace):
        return ""
    return getattr(space, "content_key", None)


class Searcher:
    """Searches one store; kNN indexes are cached per table version and kind."""

    def __init__(self, store: CaseStore, backend: str = "auto", use_gpu: bool = False) -> None:
        self.store = store
        self.backend = "auto" if backend in SCALE_BACKENDS else backend  # text queries
        self.use_gpu = use_gpu
        self._indexes = BoundedCache(MAX_CACHED_INDEXES)
        # large libraries (auto) and the faiss-ann / lance backends: batched, filters pushed down
        self.scaled = ScaledSearcher(store, backend, use_gpu)

    def search_batch(
        self,
        vectors: np.ndarray,
        k: int,
        kind: str | None = None,
        where: str | None = None,
        exclude_groups: list[str | None] | None = None,
        exclude_ids: set[str] | None = None,
    ) -> list[list[SearchHit]]:
        """Image-space kNN for many query vectors in one batched call of the scaled searcher
        (large libraries, ``faiss-ann``, ``lance``; exact otherwise); each query may leave one
        group out. ``where`` goes through the same strict parser as every other search, and a
        search of no particular kind leaves tiles out, as :meth:`search` does."""
        if kind is not None and kind not in KINDS:
            raise QueryError(f"unknown kind {kind!r}: use image, roi or tile")
        k = check_k(k)
        groups = exclude_groups or [None] * len(vectors)
        if not self.scaled.routes():
            return [
                self.search(v, k, kind, where, g, exclude_ids)
                for v, g in zip(vectors, groups, strict=True)
            ]
        return self._search_scaled(vectors, k, kind, where, groups, exclude_ids)

    def _search_scaled(self, vectors, k, kind, where, groups, exclude_ids):
        """The scaled searcher's batched path, on the table version ``routes()`` checked out."""
        try:
            sql = parse_where(where, self.store.filterable_columns()) if where is not None else None
        except QueryError:
            self.scaled.release()
            raise
        if kind is None:
            sql = "kind != 'tile'" if sql is None else f"({sql}) AND kind != 'tile'"
        ids = frozenset(exclude_ids or ())
        queries = [Query(v, g, ids) for v, g in zip(vectors, groups, strict=True)]
        return self.scaled.search(queries, k, kind, sql)

    def index_for(
        self, snapshot: Snapshot, kind: str | None, space: JointSpace | None = None
    ) -> VectorIndex:
        """The kNN index of a snapshot, in image space or mapped into a joint text-image space.

        Keyed by the snapshot's content digest and the space's identity (``space_key``), so a
        table recreated at the same path never gets the old index, and a new ``ClipSpace``
        per text query reuses the image-space index instead of copying the matrix again.
        """
        space_key = _space_key(space)
        key = (snapshot.digest, kind, space_key, self.backend)

        def make() -> VectorIndex:
            if not space_key:
                name = f"{kind or 'all'}-{self.backend}-{snapshot.digest[:32]}.index"
                cache = self.store.location.file("faiss", name)
                return VectorIndex(snapshot.vectors, self.backend, self.use_gpu, cache_path=cache)
            assert space is not None
            vectors = space.images(snapshot.vectors)
            return VectorIndex(vectors, self.backend, self.use_gpu)

        if space_key is None:
            return make()
        return self._indexes.get_or_make(key, make)

    def allowed_mask(
        self,
        snapshot: Snapshot,
        where: str | None = None,
        exclude_group: str | None = None,
        exclude_ids: set[str] | None = None,
    ) -> np.ndarray | None:
        """Boolean mask of rows a query may return, or None when every row may."""
        mask = np.ones(len(snapshot.ids), dtype=bool)
        if where is not None:  # "" is an error (an empty --where), not "no filter"
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
            raise QueryError(f"unknown kind {kind!r}: use image, roi or tile")
        k = check_k(k)
        if space is None and self.scaled.routes():
            one = vector[None, :]
            return self._search_scaled(one, k, kind, where, [exclude_group], exclude_ids)[0]
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
        if kind is None and (snapshot.kinds == "tile").any():
            # tiles answer region queries; a query of any kind gets films and ROIs
            keep = snapshot.kinds != "tile"
            mask = keep if mask is None else mask & keep
        found = index.search(vector, k, allowed=mask)
        positions = [int(p) for p in found.positions[0] if p >= 0]
        ids = [str(snapshot.ids[p]) for p in positions]
        return self.store.hits(ids, [float(s) for s in found.scores[0][: len(ids)]])
