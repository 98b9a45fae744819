"""DICOM to 8-bit pixels plus identifier-free metadata."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID

from priorcase.errors import ImageReadError
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.records import LoadedImage

MAX_PIXELS = 100_000_000  # larger images (DICOM or not) are refused before decoding

# Only coded acquisition tags are copied, and only when the value looks like a code (CS:
# upper-case letters, digits, space, underscore, at most 16). Free-text fields that sites
# fill with names (BodyPartExamined, Manufacturer, InstitutionName, any PN value), IDs,
# dates and UIDs are never read.
_METADATA_TAGS: dict[str, tuple[str, ...]] = {
    "modality": ("Modality",),
    "view_position": ("ViewPosition",),
    "laterality": ("ImageLaterality", "Laterality"),
}
_CODE = re.compile(r"[A-Z0-9 _]{1,16}")

_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


def read_dicom(
    path: Path, pseudonymize: Pseudonymizer, source: Path | bytes | None = None
) -> LoadedImage:
    """Decode a single-frame DICOM to uint8 pixels (HxW or HxWx3 RGB).

    Applies the modality LUT (rescale), then the VOI LUT / header window (min–max when the
    header has none), inverts MONOCHROME1 so bright always means dense, and scales to 8 bits.
    Raises :class:`ImageReadError` with a one-line reason for anything it cannot read.
    ``source`` is the file's bytes when they were read already (an object from object
    storage; ``path`` then only names it), else the file ``path`` is read.
    """
    if source is None:
        path = source = Path(path)
    ds = _read_dataset(path, source)
    frames = _int(ds.get("NumberOfFrames", 1), default=1)
    if frames > 1:
        raise ImageReadError(path, f"multi-frame DICOM ({frames} frames) is not supported")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(path, "DICOM float pixel data is not supported")
        raise ImageReadError(path, "DICOM has no pixel data")

    rows, columns = _int(ds.get("Rows", 0), default=0), _int(ds.get("Columns", 0), default=0)
    if rows * columns > MAX_PIXELS:
        raise ImageReadError(
            path,
            f"image too large: {columns}x{rows} pixels "
            f"(limit {MAX_PIXELS // 1_000_000} megapixels); not decoded",
        )
    slope = ds.get("RescaleSlope")
    if slope is not None and _float(slope) == 0.0:
        raise ImageReadError(path, "RescaleSlope is 0: every pixel would have the same value")
    raw = _decode(path, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric in _COLOUR or photometric == "PALETTE COLOR":
            pixels = _colour_to_uint8(raw, ds, photometric)
        else:
            pixels = _mono_to_uint8(raw, ds, invert=photometric == "MONOCHROME1")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ImageReadError(path, f"invalid DICOM pixel attributes: {_first_line(exc)}") from None

    patient_id = _text(ds.get("PatientID"))
    patient = pseudonymize(patient_id or _text(ds.get("PatientName")))
    return LoadedImage(path=path, pixels=pixels, metadata=_metadata(ds), patient=patient)


def _read_dataset(path: Path, source: Path | bytes) -> Dataset:
    def opened():  # a fresh stream for each read
        return io.BytesIO(source) if isinstance(source, bytes) else source

    try:
        return pydicom.dcmread(opened())
    except InvalidDicomError:
        pass  # no 128-byte preamble: may still be a raw (ACR-NEMA style) dataset
    except (OSError, EOFError) as exc:
        raise ImageReadError(path, f"cannot read file: {_first_line(exc)}") from None
    except Exception as exc:
        raise ImageReadError(path, f"corrupt DICOM header: {_first_line(exc)}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(opened(), force=True)
        ok = "PixelData" in ds or "SOPClassUID" in ds
    except Exception:
        ok = False
    if not ok:
        raise ImageReadError(path, "not a DICOM file (no DICM header)")
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # Preamble-less files are almost always implicit VR little endian.
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    """Return the stored pixel array, explaining codec problems in one line."""
    tsuid = UID(str(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)))
    label = f"{tsuid.name} ({tsuid})" if tsuid.name != tsuid else str(tsuid)
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise ImageReadError(
            path, f"unsupported compression {label}: pydicom has no decoder for it"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise ImageReadError(
            path, f"unsupported compression {label}: install pylibjpeg plugins ({needs})"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on minor header quirks
            return ds.pixel_array
    except Exception as exc:
        what = f"{label} " if tsuid.is_compressed else ""
        raise ImageReadError(path, f"cannot decode {what}pixel data: {_first_line(exc)}") from None


def _mono_to_uint8(raw: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    if raw.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale frame, got shape {raw.shape}")
    arr = apply_modality_lut(raw, ds)
    out_range = _voi_output_range(ds)
    if out_range is not None:
        try:
            arr = apply_voi_lut(arr, ds)
        except (ValueError, TypeError, IndexError, KeyError):
            out_range = None  # broken window in the header: fall back to min–max
    lo, hi = out_range if out_range is not None else (None, None)
    pixels = scale_to_uint8(arr, lo, hi)
    return 255 - pixels if invert else pixels


def _colour_to_uint8(raw: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        bits = 16 if raw.dtype.itemsize > 1 else 8
    else:
        # pydicom converts YBR to RGB while decoding (as_rgb defaults to True).
        bits = _int(ds.get("BitsStored", raw.dtype.itemsize * 8), default=8)
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 colour frame, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return np.ascontiguousarray(raw)
    return scale_to_uint8(raw, 0.0, float(2**bits - 1))


def _voi_output_range(ds: Dataset) -> tuple[float, float] | None:
    """Output range of pydicom's VOI step, or None when the header defines no VOI.

    Scaling from this fixed range (not the image min–max) keeps the header window's meaning:
    a region entirely inside the window must not be stretched to full contrast.
    """
    if ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    bits = _int(ds.get("BitsStored", 16), default=16)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif _int(ds.get("PixelRepresentation", 0), default=0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def scale_to_uint8(arr: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    """Linearly map [lo, hi] (default: the array's min–max) to uint8."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if lo is None or hi is None:
        if finite.size == 0:
            return np.zeros(arr.shape, dtype=np.uint8)
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.nan_to_num(arr, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _metadata(ds: Dataset) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key, keywords in _METADATA_TAGS.items():
        for keyword in keywords:
            value = _text(ds.get(keyword))
            if value and _CODE.fullmatch(value):
                meta[key] = value
                break
    return meta


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _int(value: Any, *, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The exception text squeezed onto one line (pydicom lists per-plugin causes on
    separate lines after a generic first line, so join them rather than cut)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
