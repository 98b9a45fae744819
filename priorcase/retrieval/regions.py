"""Region queries and where-it-matched: boxes on a query film, and the stored tiles of films."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from priorcase.errors import QueryError
from priorcase.index.store import BOX_COLUMNS, CaseStore
from priorcase.ingest.breast import BreastConfig, BreastView, prepare
from priorcase.ingest.tiles import TILE_KIND, TileConfig, tile_boxes
from priorcase.records import LoadedImage, SearchHit

if TYPE_CHECKING:
    from priorcase.core import Core

Box = tuple[int, int, int, int]


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` -> a box (source pixels, origin top-left), or a one-line QueryError."""
    try:
        x0, y0, x1, y1 = (round(float(v)) for v in text.split(","))
    except ValueError:
        raise QueryError(f"--box: expected x0,y0,x1,y1 in pixels, got {text!r}") from None
    return x0, y0, x1, y1


def query_view(store: CaseStore, image: LoadedImage, need_mask: bool = False) -> BreastView:
    """The query as the index's films were embedded (same breast crop, flip and CLAHE)."""
    manifest = store.manifest
    cfg = BreastConfig.from_dict(manifest.breast if manifest else None)
    return prepare(image.pixels, cfg, image.metadata, need_mask)


def box_pixels(view: BreastView, box: Box, path: object = "query") -> np.ndarray:
    """The view's pixels inside a source-image box; a box off the image is a QueryError."""
    x0, y0, x1, y1 = box
    height, width = view.source_shape
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise QueryError(
            f"{path}: box {x0},{y0},{x1},{y1} is not inside the {width}x{height} image "
            "(x0 < x1, y0 < y1, pixels from the top-left corner)"
        )
    vbox = view.from_source(box)
    if vbox[2] - vbox[0] < 2 or vbox[3] - vbox[1] < 2:
        raise QueryError(f"{path}: box {x0},{y0},{x1},{y1} lies outside the breast")
    return view.crop(vbox)


@dataclass
class TileBank:
    """Every stored tile of one table version: vectors, parent film ids and source boxes."""

    ids: np.ndarray
    parents: np.ndarray
    boxes: np.ndarray  # int (n, 4)
    vectors: np.ndarray

    @classmethod
    def load(cls, store: CaseStore) -> TileBank:
        table = store.table
        if table is None or "box_x0" not in table.schema.names or not store.count(TILE_KIND):
            return cls(np.array([], object), np.array([], object), np.zeros((0, 4), int), None)
        snapshot = store.snapshot(TILE_KIND)
        arrow = (
            table.search()
            .where(f"kind = '{TILE_KIND}'")
            .select(["id", "parent_id", *BOX_COLUMNS])
            .limit(None)
            .to_arrow()
        )
        by_id = {
            i: n for n, i in enumerate(arrow.column("id").to_pylist())
        }  # snapshot order may differ from this query's
        order = np.array([by_id[i] for i in snapshot.ids], dtype=np.int64)
        parents = np.array(arrow.column("parent_id").to_pylist(), dtype=object)[order]
        boxes = np.stack([np.asarray(arrow.column(c).to_pylist()) for c in BOX_COLUMNS], 1)
        return cls(snapshot.ids, parents, boxes[order].astype(int), snapshot.vectors)

    def of(self, parent: str) -> np.ndarray:
        """Positions of a film's tiles."""
        return np.flatnonzero(self.parents == parent)

    def __len__(self) -> int:
        return len(self.ids)


def query_tiles(core: Core, image: LoadedImage) -> tuple[np.ndarray, np.ndarray]:
    """The query film cut into the index's tiles: (source boxes (n, 4), vectors (n, dim))."""
    manifest = core.store.manifest
    cfg = TileConfig.from_dict(manifest.tiles if manifest else None)
    if cfg is None:
        return np.zeros((0, 4), int), np.zeros((0, core.encoder.dim), np.float32)
    view = query_view(core.store, image, need_mask=True)
    boxes = tile_boxes(view, cfg)
    vectors = core.encoder.embed_pixels([view.crop(b) for b in boxes])
    return np.array([view.to_source(b) for b in boxes], int).reshape(-1, 4), vectors


def add_matches(
    hits: list[SearchHit], bank: TileBank, q_boxes: np.ndarray, q_vectors: np.ndarray
) -> None:
    """Set ``hit.match`` on film hits: the (query tile, hit tile) pair of highest cosine."""
    if len(q_vectors) == 0 or len(bank) == 0:
        return
    for hit in hits:
        if hit.kind != "image":
            continue
        mine = bank.of(hit.id)
        if len(mine) == 0:
            continue
        sims = q_vectors @ bank.vectors[mine].T
        qi, hi = np.unravel_index(int(np.argmax(sims)), sims.shape)
        hit.match = {
            "query_box": [int(v) for v in q_boxes[qi]],
            "hit_box": [int(v) for v in bank.boxes[mine[hi]]],
            "hit_tile": str(bank.ids[mine[hi]]),
            "score": float(sims[qi, hi]),
        }
