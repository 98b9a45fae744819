"""Regions of interest: lesion crops, and normal-tissue patches placed as lesions are."""

from __future__ import annotations

import numpy as np

# A crop shows the lesion with context around it, never less than this many pixels a side.
CONTEXT_FACTOR = 1.5
MIN_CROP = 64


def crop_box(width: int, height: int, x: int, y: int, radius: int) -> tuple[int, int, int, int]:
    """Square (left, top, right, bottom) around a circle, clipped to the image."""
    half = max(int(radius * CONTEXT_FACTOR), MIN_CROP // 2)
    left, top = max(0, x - half), max(0, y - half)
    right, bottom = min(width, x + half), min(height, y + half)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def crop_roi(pixels: np.ndarray, x: int, y: int, radius: int) -> np.ndarray:
    """The lesion crop of ``pixels`` (HxW or HxWx3)."""
    left, top, right, bottom = crop_box(pixels.shape[1], pixels.shape[0], x, y, radius)
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image (separates breast from the dark background)."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    cum = np.cumsum(hist)
    cum_mean = np.cumsum(hist * np.arange(256))
    w0, w1 = cum, total - cum
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (cum_mean[-1] * w0 / total - cum_mean) ** 2 / (w0 * w1 / total)
    return int(np.nanargmax(np.nan_to_num(between, nan=-1.0)))


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """Otsu foreground of a film: the breast (and any bright label), not the dark background."""
    gray = pixels if pixels.ndim == 2 else pixels.mean(axis=2).astype(np.uint8)
    return gray > otsu_threshold(gray)


def background_fraction(pixels: np.ndarray, x: int, y: int, radius: int) -> float:
    """Share of the crop box around (x, y, radius) that is film background."""
    mask = breast_mask(pixels)
    left, top, right, bottom = crop_box(mask.shape[1], mask.shape[0], x, y, radius)
    return float(1.0 - mask[top:bottom, left:right].mean())


def _box_sums(mask: np.ndarray, side: int) -> np.ndarray:
    """Foreground count of every ``side`` x ``side`` box; entry (i, j) is the box at (j, i)."""
    integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (
        integral[side:, side:]
        - integral[:-side, side:]
        - integral[side:, :-side]
        + integral[:-side, :-side]
    )


def sample_normal_rois(
    pixels: np.ndarray, count: int, radius: int, seed: int, min_tissue: float = 0.95
) -> list[tuple[int, int, int]]:
    """Up to ``count`` circles (x, y, radius) placed as a lesion could be.

    A lesion lies in the breast but its crop box (with context) may reach past the skin line,
    so normal patches obey the same constraint and no stricter one: the circle itself (its
    inscribed square) is at least ``min_tissue`` breast (Otsu foreground), while the crop box
    may hold background. Were normal crops required to be all breast, background fraction
    alone would tell them from lesion crops (a shortcut). Centres are drawn at random (seeded)
    from every qualifying position, so they spread over the breast as lesions do, at least
    two radii apart.
    """
    mask = breast_mask(pixels)
    height, width = mask.shape
    inner = max(2, int(radius * 2**0.5))  # side of the square inscribed in the circle
    if height <= inner or width <= inner:
        return []
    ys, xs = np.nonzero(_box_sums(mask, inner) >= min_tissue * inner * inner)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int, int]] = []
    for i in rng.permutation(len(ys)):
        cx, cy = int(xs[i]) + inner // 2, int(ys[i]) + inner // 2
        if all((cx - px) ** 2 + (cy - py) ** 2 >= (2 * radius) ** 2 for px, py, _ in chosen):
            chosen.append((cx, cy, radius))
        if len(chosen) == count:
            break
    return chosen
