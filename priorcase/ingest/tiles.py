"""Tiles: overlapping lesion-sized squares inside the breast, each indexed as a row of kind
``tile`` with its box in source-image pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from priorcase.ingest.breast import BreastView
from priorcase.ingest.roi import CONTEXT_FACTOR, MIN_CROP

TILE_KIND = "tile"
DEFAULT_SIZES = (128, 256)  # when no findings give lesion radii
DEFAULT_PERCENTILES = (50, 90)


@dataclass(frozen=True)
class TileConfig:
    """Tile scales (square side, pixels), overlap between neighbours, and how much of a tile
    must lie inside the breast. Recorded in the manifest: every film of an index gets the same."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    overlap: float = 0.5
    min_inside: float = 0.9
    max_per_scale: int = 24  # the stride grows until a film's tiles of one scale fit

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> TileConfig | None:
        if not data:
            return None
        return cls(**{**data, "sizes": tuple(data["sizes"])})


def sizes_from_radii(
    radii: Sequence[int], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> tuple[int, ...]:
    """Tile sides matching the lesion crops at these percentiles of the findings' radii."""
    if not radii:
        return DEFAULT_SIZES
    sides = {
        max(MIN_CROP, 2 * int(CONTEXT_FACTOR * float(np.percentile(radii, p)))) for p in percentiles
    }
    return tuple(sorted(sides))


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"128,256"`` -> (128, 256); ``"0"`` or ``"none"`` -> () (no tiles)."""
    if text.strip().lower() in ("", "0", "none", "off"):
        return ()
    try:
        sizes = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise ValueError(f"--tile-sizes: expected comma-separated pixels, got {text!r}") from None
    if any(s < 16 for s in sizes):
        raise ValueError(f"--tile-sizes: tiles must be at least 16 px, got {text!r}")
    return sizes


def _inside_fraction(mask: np.ndarray, side: int) -> np.ndarray:
    """Share of breast pixels of the ``side`` square whose top-left corner is at each pixel."""
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    total = (
        integral[side:, side:]
        - integral[:-side, side:]
        - integral[side:, :-side]
        + integral[:-side, :-side]
    )
    return total / float(side * side)


def _grid(length: int, side: int, stride: int) -> list[int]:
    """Start positions covering [0, length) with the last tile flush with the end."""
    starts = list(range(0, length - side + 1, stride))
    if starts and starts[-1] != length - side:
        starts.append(length - side)
    return starts


def tile_boxes(view: BreastView, cfg: TileConfig) -> list[tuple[int, int, int, int]]:
    """Tile boxes (x0, y0, x1, y1) in VIEW pixels, scales in ``cfg.sizes`` order."""
    boxes: list[tuple[int, int, int, int]] = []
    for side in cfg.sizes:
        if side > view.width or side > view.height:
            continue
        inside = _inside_fraction(view.mask, side)
        stride = max(1, round(side * (1 - cfg.overlap)))
        while True:
            kept = [
                (x, y, x + side, y + side)
                for y in _grid(view.height, side, stride)
                for x in _grid(view.width, side, stride)
                if inside[y, x] >= cfg.min_inside
            ]
            if len(kept) <= cfg.max_per_scale:
                break
            stride = int(stride * 1.25) + 1
        boxes += kept
    return boxes


def contains_point(box: tuple[int, int, int, int], x: float, y: float) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x < x1 and y0 <= y < y1


@dataclass(frozen=True)
class Tile:
    """One tile of a film: its box in view and in source pixels, and labels from the findings."""

    view_box: tuple[int, int, int, int]
    box: tuple[int, int, int, int]  # source pixels
    labels: dict


def film_tiles(
    view: BreastView, cfg: TileConfig, findings: Sequence, findings_known: bool
) -> list[Tile]:
    """The tiles of a film. With a findings table, a tile holding a finding's centre is a
    ``lesion`` tile with that finding's labels; a tile of a film with no findings is ``normal``;
    other tiles of abnormal films stay unlabelled (they may hold part of a lesion)."""
    from priorcase.ingest.pipeline import ROI_TYPE

    centres = [
        (view.point_from_source(int(f.x), int(f.y)), f.labels)
        for f in findings
        if f.x is not None and f.y is not None
    ]
    tiles = []
    for vbox in tile_boxes(view, cfg):
        labels: dict = {}
        hit = next((lab for (x, y), lab in centres if contains_point(vbox, x, y)), None)
        if hit is not None:
            labels = {**hit, ROI_TYPE: "lesion"}
        elif findings_known and not findings:
            labels = {ROI_TYPE: "normal"}
        tiles.append(Tile(vbox, view.to_source(vbox), labels))
    return tiles
