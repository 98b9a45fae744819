"""Read image files (PNG, JPEG, TIFF, PGM/PPM, DICOM) into uint8 pixels."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from priorcase.errors import ImageReadError
from priorcase.ingest.dicom import MAX_PIXELS, read_dicom, scale_to_uint8
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.sources import ObjectFile, is_object_uri, list_objects
from priorcase.records import LoadedImage

# A file to read: a local path, or an object on object storage (read whole into memory).
SourceFile = Path | ObjectFile

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PIL_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm", ".gif", ".bmp"}
)
SUPPORTED_SUFFIXES: frozenset[str] = PIL_SUFFIXES | DICOM_SUFFIXES
# MAX_PIXELS (defined beside the DICOM reader): larger images are refused before their
# pixels are decoded; a 100-megapixel film is far beyond any mammogram.
# Signatures of the formats above: a file that starts with one but cannot be opened is
# truncated or corrupt, not "not an image".
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}

_DICOM_MAGIC_OFFSET = 128
_HASH_CHUNK = 1 << 20


def is_dicom_file(path: Path | bytes) -> bool:
    """True when the file (or its bytes) carries the ``DICM`` magic after the 128-byte
    preamble."""
    end = _DICOM_MAGIC_OFFSET + 4
    return _head(path, end)[_DICOM_MAGIC_OFFSET:end] == b"DICM"


def _head(source: Path | bytes, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    try:
        with open(source, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def read_image(path: SourceFile, pseudonymize: Pseudonymizer) -> LoadedImage:
    """Decode one file to a :class:`LoadedImage` (uint8, HxW gray or HxWx3 RGB).

    DICOM is recognised by extension or by its magic bytes, so extensionless files work.
    An object on object storage is read into memory, never onto local disk.
    Every failure raises :class:`ImageReadError` naming the file and a short reason.
    """
    source: Path | bytes
    if isinstance(path, ObjectFile):
        source = path.read_bytes()
        size = len(source)
    else:
        path = source = Path(path)
        size = check_regular_file(path)
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(source):
        return read_dicom(path, pseudonymize, source)
    pixels = _read_pil(path, source)
    encoded = source if isinstance(source, bytes) else None
    return LoadedImage(path=path, pixels=pixels, metadata={}, patient=None, encoded=encoded)


def check_regular_file(path: Path) -> int:
    """The file's size; raises :class:`ImageReadError` unless it is a regular file.

    Checked with ``stat`` before the file is opened: opening a FIFO blocks forever.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(path, "dangling symbolic link (no target)") from None
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a regular file"
        )
        raise ImageReadError(path, f"is {kind}, not a regular file; not read")
    return info.st_size


def _read_pil(path: SourceFile, source: Path | bytes | None = None) -> np.ndarray:
    source = path if source is None else source  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            # Pillow's DecompressionBombWarning and TIFF tag warnings are noise here;
            # the size is checked against MAX_PIXELS before decoding.
            warnings.simplefilter("ignore")
            opened = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(opened) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageReadError(
                        path,
                        f"image too large: {width}x{height} pixels "
                        f"(limit {MAX_PIXELS // 1_000_000} megapixels); not decoded",
                    )
                frames = getattr(img, "n_frames", 1)
                if frames > 1:
                    raise ImageReadError(
                        path,
                        f"{img.format} with {frames} frames/pages is not supported: "
                        "save each page as its own file",
                    )
                img.load()  # force a full decode so truncated files fail here, not later
                return _pil_to_array(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        kind = _signature(source)
        if kind is not None:
            raise ImageReadError(
                path, f"truncated or corrupt {kind}: its header is cut short or damaged"
            ) from None
        raise ImageReadError(path, "not an image: cannot identify image file") from None
    except Image.DecompressionBombError:
        raise ImageReadError(
            path, f"image too large (limit {MAX_PIXELS // 1_000_000} megapixels); not decoded"
        ) from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except Exception as exc:
        raise ImageReadError(path, f"truncated or corrupt image: {_first_line(exc)}") from None


def _signature(source: Path | bytes) -> str | None:
    head = _head(source, 8)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


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


def file_id(path: SourceFile) -> str:
    """A file's case id: its name without an image extension (``mdb001.png`` -> ``mdb001``),
    else its whole name, so DICOM files named by UID (``1.2.3.1001``) keep distinct ids."""
    path = path if isinstance(path, ObjectFile) else Path(path)
    return path.stem if path.suffix.lower() in SUPPORTED_SUFFIXES else path.name


def iter_image_files(
    paths: Iterable[str | Path], skipped: list[str] | None = None, ignored: list[str] | None = None
) -> list[SourceFile]:
    """Expand files and folders into a de-duplicated list of candidate image files.

    Folders are walked recursively in sorted order, skipping hidden files/folders and
    files whose suffix is not an image type. Files without an image suffix (e.g. PACS
    exports named by UID) are kept only when they carry the DICOM magic. Files named
    explicitly are kept as given, so a bad one is reported rather than silently dropped.
    Found in a folder, dangling links and non-regular files (FIFOs, sockets) are never
    opened; they go to ``skipped`` (one line each), and a count of the other files left
    out goes to ``ignored``. An object-storage URI (``s3://bucket/prefix``) is a folder
    when objects lie under it (same rules; a prefix that cannot be listed is one line in
    ``skipped``), else one object.
    """
    seen: set[SourceFile] = set()
    out: list[SourceFile] = []
    other: dict[str, int] = {}

    def add(p: SourceFile) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for raw in paths:
        if is_object_uri(raw):
            _add_objects(str(raw), add, other, skipped)
            continue
        root = Path(raw)
        if not root.is_dir():
            add(root)
            continue
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            suffix = p.suffix.lower()
            try:
                mode = os.stat(p).st_mode
            except OSError:
                if skipped is not None and os.path.islink(p):
                    skipped.append(f"{p}: dangling symbolic link (no target)")
                continue
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                if skipped is not None:
                    skipped.append(f"{p}: not a regular file (FIFO, socket or device); not read")
                continue
            if suffix in SUPPORTED_SUFFIXES or (_maybe_dicom_name(suffix) and is_dicom_file(p)):
                add(p)
            else:
                other[suffix or "(no suffix)"] = other.get(suffix or "(no suffix)", 0) + 1
    if ignored is not None and other:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(other.items()))
        ignored.append(f"{sum(other.values())} files are not images and were left out ({counts})")
    return out


def _add_objects(uri: str, add, other: dict[str, int], skipped: list[str] | None) -> None:
    """The objects under a prefix, by the folder rules of :func:`iter_image_files`."""
    try:
        listed = list_objects(uri)
    except ImageReadError as err:
        if skipped is not None:
            skipped.append(str(err))
        return
    if listed is None:  # one object named explicitly: kept, so a bad one is reported
        add(ObjectFile(uri))
        return
    for rel, obj in listed:
        if any(part.startswith(".") for part in rel):
            continue
        suffix = obj.suffix.lower()
        if suffix in SUPPORTED_SUFFIXES or (
            _maybe_dicom_name(suffix) and is_dicom_file(obj.head(_DICOM_MAGIC_OFFSET + 4))
        ):
            add(obj)
        else:
            other[suffix or "(no suffix)"] = other.get(suffix or "(no suffix)", 0) + 1


def _maybe_dicom_name(suffix: str) -> bool:
    # No suffix, or a numeric one from a UID-style name like "1.2.840.113619.2.55.3".
    return suffix == "" or suffix[1:].isdigit()


def file_sha256(path: SourceFile) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB chunks."""
    if isinstance(path, ObjectFile):
        return path.sha256()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
