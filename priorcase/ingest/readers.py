"""Read image files (PNG, JPEG, TIFF, PGM/PPM, DICOM) into uint8 pixels."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from priorcase.errors import ImageReadError
from priorcase.ingest.dicom import read_dicom, scale_to_uint8
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.records import LoadedImage

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm"})
SUPPORTED_SUFFIXES: frozenset[str] = PIL_SUFFIXES | DICOM_SUFFIXES

_DICOM_MAGIC_OFFSET = 128
_HASH_CHUNK = 1 << 20


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the ``DICM`` magic after the 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            fh.seek(_DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path: Path, pseudonymize: Pseudonymizer) -> LoadedImage:
    """Decode one file to a :class:`LoadedImage` (uint8, HxW gray or HxWx3 RGB).

    DICOM is recognised by extension or by its magic bytes, so extensionless files work.
    Every failure raises :class:`ImageReadError` naming the file and a short reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(path):
        return read_dicom(path, pseudonymize)
    return LoadedImage(path=path, pixels=_read_pil(path), metadata={}, patient=None)


def _read_pil(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow's DecompressionBombWarning and TIFF tag warnings are noise here;
            # the DecompressionBombError (2x the limit) still raises.
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()  # force a full decode so truncated files fail here, not later
                return _pil_to_array(img)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image: cannot identify image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large: {_first_line(exc)}") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except Exception as exc:
        raise ImageReadError(path, f"truncated or corrupt image: {_first_line(exc)}") from None


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Grayscale stays HxW, colour becomes HxWx3 RGB; alpha is dropped."""
    mode = img.mode
    if mode in ("L", "LA"):
        return np.asarray(img.getchannel("L") if mode == "LA" else img, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale (16-bit PNG/TIFF): stretch min–max to 8 bits.
        return _minmax_uint8(np.asarray(img))
    if mode in ("P", "PA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        # Grayscale palettes are common in medical exports: keep them single-channel.
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy()
        return rgb.copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:  # e.g. "I;16" read with a trailing singleton channel
        arr = arr[..., 0]
    return scale_to_uint8(arr, None, None)


def iter_image_files(paths: Iterable[Path]) -> list[Path]:
    """Expand files and folders into a de-duplicated list of candidate image files.

    Folders are walked recursively in sorted order, skipping hidden files/folders and
    files whose suffix is not an image type. Files without an image suffix (e.g. PACS
    exports named by UID) are kept only when they carry the DICOM magic. Files named
    explicitly are kept as given, so a bad one is reported rather than silently dropped.
    """
    seen: set[Path] = set()
    out: list[Path] = []

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            add(root)
            continue
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                continue
            suffix = p.suffix.lower()
            if suffix in SUPPORTED_SUFFIXES or (_maybe_dicom_name(suffix) and is_dicom_file(p)):
                add(p)
    return out


def _maybe_dicom_name(suffix: str) -> bool:
    # No suffix, or a numeric one from a UID-style name like "1.2.840.113619.2.55.3".
    return suffix == "" or suffix[1:].isdigit()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def to_rgb_pil(image: LoadedImage) -> Image.Image:
    """The pixels as an 8-bit RGB PIL image (grayscale replicated to 3 channels)."""
    pixels = np.asarray(image.pixels)
    if pixels.dtype != np.uint8:
        pixels = _minmax_uint8(pixels) if pixels.ndim == 2 else np.clip(pixels, 0, 255)
        pixels = pixels.astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
