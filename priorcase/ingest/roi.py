"""Regions of interest: lesion crops, and normal-tissue patches sampled inside the breast."""

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


def sample_normal_rois(
    pixels: np.ndarray, count: int, radius: int, seed: int, min_tissue: float = 0.95
) -> list[tuple[int, int, int]]:
    """Up to ``count`` circles (x, y, radius) whose crop lies inside the breast.

    The breast is the Otsu foreground; a centre qualifies when at least ``min_tissue`` of its
    crop box is foreground, so patches never show background or the film edge. Centres are
    drawn at random (seeded) from the qualifying ones, at least one radius apart.
    """
    gray = pixels if pixels.ndim == 2 else pixels.mean(axis=2).astype(np.uint8)
    mask = gray > otsu_threshold(gray)
    half = max(int(radius * CONTEXT_FACTOR), MIN_CROP // 2)
    height, width = mask.shape
    if height <= 2 * half or width <= 2 * half:
        return []
    integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    side = 2 * half
    box_sum = (
        integral[side:, side:]
        - integral[:-side, side:]
        - integral[side:, :-side]
        + integral[:-side, :-side]
    )
    ys, xs = np.nonzero(box_sum >= min_tissue * side * side)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, int, int]] = []
    for i in rng.permutation(len(ys)):
        cx, cy = int(xs[i]) + half, int(ys[i]) + half
        if all((cx - px) ** 2 + (cy - py) ** 2 >= (2 * radius) ** 2 for px, py, _ in chosen):
            chosen.append((cx, cy, radius))
        if len(chosen) == count:
            break
    return chosen
