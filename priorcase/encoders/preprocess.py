"""Image preprocessing shared by every encoder: letterbox to square, resize, normalise.

Letterboxing (instead of open_clip's default centre crop) keeps the whole film: a crop of a
mammogram can cut off the lesion that decides the case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class PreprocessConfig:
    """What an encoder expects; recorded in the index manifest."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "letterbox-bicubic"

    def to_dict(self) -> dict:
        return asdict(self)


def to_rgb_image(pixels: np.ndarray) -> Image.Image:
    """uint8 HxW or HxWx3 pixels as an RGB PIL image (grey replicated to three channels)."""
    if pixels.ndim == 2:
        return Image.fromarray(pixels, mode="L").convert("RGB")
    return Image.fromarray(pixels[..., :3], mode="RGB")


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Scale the longer side to ``size`` and pad the rest with black, keeping aspect ratio
    (and the image's mode)."""
    w, h = image.size
    scale = size / max(w, h)
    resized = image.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC
    )
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return canvas


def preprocess_pixels(pixels: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """uint8 pixels -> normalised float tensor (3, size, size), exactly as the encoder sees them."""
    # grey is resized as one plane and spread to three channels by the normalisation's
    # broadcast: the same numbers as resizing its RGB copy, in a third of the work
    image = Image.fromarray(pixels, mode="L") if pixels.ndim == 2 else to_rgb_image(pixels)
    square = np.asarray(letterbox(image, cfg.image_size), dtype=np.float32)
    if square.ndim == 2:
        square = square[..., None]
    # NumPy, not torchvision's to_tensor + normalize: on a busy CPU torch's thread pool made
    # these small per-image ops 3-17x slower than the arithmetic (tiles make ~30 per film)
    mean = np.asarray(cfg.mean, np.float32) * 255
    scale = 1 / (np.asarray(cfg.std, np.float32) * 255)
    return torch.from_numpy(np.ascontiguousarray(((square - mean) * scale).transpose(2, 0, 1)))


def model_view(pixels: np.ndarray, cfg: PreprocessConfig) -> Image.Image:
    """The preprocessed image before normalisation, for showing what the model saw."""
    return letterbox(to_rgb_image(pixels), cfg.image_size)
