"""Small JPEG thumbnails stored in the index, so the UI never reads source files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from priorcase.encoders.preprocess import to_rgb_image

THUMBNAIL_SIZE = 256


def make_thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_SIZE) -> bytes:
    """JPEG bytes of ``pixels`` scaled to fit a ``size`` square."""
    image = to_rgb_image(pixels) if pixels.ndim == 3 else Image.fromarray(pixels, mode="L")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
