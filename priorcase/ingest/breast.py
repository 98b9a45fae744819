"""Breast-region preprocessing for mammograms: segment, crop, flip to one laterality, CLAHE.

The encoder then sees the breast instead of a film that is mostly background with a label in
a corner, and left and right breasts face the same way. Every transform is kept in a
:class:`BreastView`, so boxes move between the view and the source image's pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from priorcase.ingest.roi import otsu_threshold

# Policies recorded in the manifest: "on" for every image, "auto" for DICOM Modality MG only.
POLICIES = ("off", "auto", "on")
MAMMOGRAPHY = "MG"
MARGIN = 8  # pixels of background kept around the breast, so its edge is not cut


@dataclass(frozen=True)
class BreastConfig:
    """How images of an index are preprocessed (stored in the manifest, applied to queries)."""

    policy: str = "auto"
    flip: bool = True  # breast on the left of every view
    clahe: bool = False
    clahe_clip: float = 2.0  # CLAHE clip limit, in multiples of the mean histogram bin
    clahe_tiles: int = 8  # CLAHE grid, tiles a side

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> BreastConfig:
        """The recorded config; an index from before this existed is left untouched ("off")."""
        return cls(**data) if data else cls(policy="off")

    def applies(self, metadata: dict[str, str]) -> bool:
        """Whether an image with this (DICOM) metadata is a mammogram to preprocess."""
        if self.policy == "on":
            return True
        return self.policy == "auto" and (metadata.get("modality") or "").upper() == MAMMOGRAPHY


@dataclass(frozen=True)
class BreastView:
    """A view of a source image: ``pixels`` = source[y0:y0+h, x0:x0+w], mirrored if ``flipped``."""

    pixels: np.ndarray
    mask: np.ndarray  # breast mask in view coordinates
    x0: int
    y0: int
    flipped: bool
    source_shape: tuple[int, int]  # (height, width)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_source(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A half-open (x0, y0, x1, y1) box of the view in source-image pixels."""
        bx0, by0, bx1, by1 = box
        if self.flipped:
            bx0, bx1 = self.width - bx1, self.width - bx0
        return (bx0 + self.x0, by0 + self.y0, bx1 + self.x0, by1 + self.y0)

    def from_source(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A source-image box in view pixels, clipped to the view."""
        sx0, sy0, sx1, sy1 = box
        vx0, vx1 = sx0 - self.x0, sx1 - self.x0
        if self.flipped:
            vx0, vx1 = self.width - vx1, self.width - vx0
        vy0, vy1 = sy0 - self.y0, sy1 - self.y0
        vx0, vx1 = sorted((min(max(vx0, 0), self.width), min(max(vx1, 0), self.width)))
        vy0, vy1 = sorted((min(max(vy0, 0), self.height), min(max(vy1, 0), self.height)))
        return vx0, vy0, vx1, vy1

    def point_from_source(self, x: int, y: int) -> tuple[int, int]:
        vx = x - self.x0
        return (self.width - 1 - vx if self.flipped else vx), y - self.y0

    def crop(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """Pixels of a view box (view coordinates)."""
        x0, y0, x1, y1 = box
        return np.ascontiguousarray(self.pixels[y0:y1, x0:x1])

    def describe(self) -> dict[str, str]:
        """Metadata kept with the row: how to map the view back to the source."""
        return {
            "breast_box": f"{self.x0},{self.y0},{self.x0 + self.width},{self.y0 + self.height}",
            "breast_flipped": str(self.flipped).lower(),
        }


def gray(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=2).astype(np.uint8)


def segment_breast(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast: Otsu foreground, its largest connected component, holes filled.

    Labels and markers are bright but small and apart from the breast, so they fall outside the
    largest component. An image with no foreground gives an all-True mask (nothing to crop).
    """
    g = gray(pixels)
    # Smooth first, so film grain and thin artefact lines do not join labels to the breast.
    small = ndimage.uniform_filter(g.astype(np.float32), size=5)
    threshold = otsu_threshold(g)
    fg = small > threshold
    fg = ndimage.binary_opening(fg, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones(g.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def breast_on_right(mask: np.ndarray) -> bool:
    """True when the mask's mass lies in the right half of the image."""
    cols = mask.sum(axis=0).astype(np.float64)
    if cols.sum() == 0:
        return False
    centre = float((cols * np.arange(len(cols))).sum() / cols.sum())
    return centre > (len(cols) - 1) / 2


def breast_view(pixels: np.ndarray, cfg: BreastConfig | None = None) -> BreastView:
    """Crop ``pixels`` to the breast (background outside it set to 0), flip it to the left."""
    cfg = cfg or BreastConfig(policy="on")
    mask = segment_breast(pixels)
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    if len(xs) == 0:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        x0, x1 = max(0, int(xs.min()) - MARGIN), min(width, int(xs.max()) + 1 + MARGIN)
        y0, y1 = max(0, int(ys.min()) - MARGIN), min(height, int(ys.max()) + 1 + MARGIN)
    flipped = cfg.flip and breast_on_right(mask)
    view_mask = mask[y0:y1, x0:x1]
    view = pixels[y0:y1, x0:x1].copy()
    view[~view_mask] = 0  # labels and markers inside the bounding box go too
    if cfg.clahe:
        view = clahe(view, cfg.clahe_clip, cfg.clahe_tiles)
        view[~view_mask] = 0
    if flipped:
        view, view_mask = view[:, ::-1], view_mask[:, ::-1]
    return BreastView(
        pixels=np.ascontiguousarray(view),
        mask=np.ascontiguousarray(view_mask),
        x0=x0,
        y0=y0,
        flipped=flipped,
        source_shape=(height, width),
    )


def identity_view(pixels: np.ndarray, need_mask: bool = True) -> BreastView:
    """The whole image as a view (no crop, no flip); its mask marks the foreground (all of the
    image without ``need_mask``: segmenting costs ~0.2 s a megapixel, and only tiles use it)."""
    height, width = pixels.shape[:2]
    mask = segment_breast(pixels) if need_mask else np.ones((height, width), dtype=bool)
    return BreastView(pixels, mask, 0, 0, False, (height, width))


def prepare(
    pixels: np.ndarray, cfg: BreastConfig, metadata: dict[str, str], need_mask: bool = True
) -> BreastView:
    """The view an index with this config embeds for an image with this metadata."""
    if cfg.applies(metadata):
        return breast_view(pixels, cfg)
    return identity_view(pixels, need_mask)


def clahe(pixels: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of uint8 pixels (per channel).

    Histograms of a ``tiles`` x ``tiles`` grid are clipped at ``clip`` times their mean bin,
    the excess spread evenly, and each pixel's value mapped by bilinear interpolation between
    the four nearest tiles' cumulative histograms (Zuiderveld 1994).
    """
    if pixels.ndim == 3:
        return np.stack([clahe(pixels[..., c], clip, tiles) for c in range(pixels.shape[2])], 2)
    height, width = pixels.shape
    ty, tx = min(tiles, height), min(tiles, width)
    ys = np.linspace(0, height, ty + 1).astype(int)
    xs = np.linspace(0, width, tx + 1).astype(int)
    maps = np.zeros((ty, tx, 256), dtype=np.float64)
    for i in range(ty):
        for j in range(tx):
            block = pixels[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
            hist = np.bincount(block.ravel(), minlength=256).astype(np.float64)
            limit = max(1.0, clip * block.size / 256)
            excess = np.clip(hist - limit, 0, None).sum()
            hist = np.minimum(hist, limit) + excess / 256
            cdf = np.cumsum(hist)
            maps[i, j] = 255 * (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1)
    # position of each pixel between tile centres
    cy = (ys[:-1] + ys[1:]) / 2
    cx = (xs[:-1] + xs[1:]) / 2
    fy = np.clip(np.interp(np.arange(height), cy, np.arange(ty)), 0, ty - 1)
    fx = np.clip(np.interp(np.arange(width), cx, np.arange(tx)), 0, tx - 1)
    y0 = np.floor(fy).astype(int)
    x0 = np.floor(fx).astype(int)
    y1 = np.minimum(y0 + 1, ty - 1)
    x1 = np.minimum(x0 + 1, tx - 1)
    wy = (fy - y0)[:, None]
    wx = (fx - x0)[None, :]
    v = pixels.astype(np.intp)
    top = maps[y0[:, None], x0[None, :], v] * (1 - wx) + maps[y0[:, None], x1[None, :], v] * wx
    bottom = maps[y1[:, None], x0[None, :], v] * (1 - wx) + maps[y1[:, None], x1[None, :], v] * wx
    return np.clip(top * (1 - wy) + bottom * wy, 0, 255).astype(np.uint8)
