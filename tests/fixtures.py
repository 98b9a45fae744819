"""Helpers that write real test files: PNGs, DICOMs and CSVs."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

TINY_ARCH = "priorcase-test-tiny"
TINY_SPEC = f"openclip:{TINY_ARCH}"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(folder: Path) -> str:
    """Register the tiny open_clip architecture (random weights) from a JSON config file."""
    import open_clip

    if TINY_ARCH not in open_clip.list_models():
        path = folder / f"{TINY_ARCH}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)
    return TINY_ARCH


def pattern(i: int, size: int = 64) -> np.ndarray:
    """A uint8 image that differs per ``i``: a gradient at an angle, a disc and seeded noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = (i * 0.61) % np.pi
    grad = (np.cos(angle) * xx + np.sin(angle) * yy) / size
    img = 120 + 100 * np.sin(grad * (2 + i % 5) * np.pi)
    cx, cy = (i * 17) % size, (i * 29) % size
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / (4 + i % 3)) ** 2] = 255 - 10 * (i % 7)
    img += np.random.default_rng(i).normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_png(path: Path, i: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern(i, size)).save(path)
    return path


def write_pngs(folder: Path, n: int, prefix: str = "img", start: int = 0, size: int = 64):
    """``n`` distinct PNGs ``<prefix>NNN.png``; returns their paths."""
    return [write_png(folder / f"{prefix}{i:03d}.png", start + i, size) for i in range(n)]


def breast_like(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A mammogram-like image (textured half-disc on black) and its foreground mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = xx**2 + (yy - size / 2) ** 2 < (0.8 * size) ** 2
    rng = np.random.default_rng(seed)
    img = np.where(mask, 150 + rng.normal(0, 15, mask.shape), 3 + rng.normal(0, 1, mask.shape))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    *,
    photometric: str = "MONOCHROME2",
    **tags: object,
) -> Path:
    """A minimal single-frame secondary-capture DICOM file (grey, signed or RGB pixels)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
        if pixels.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table_rows(db: Path) -> pa.Table:
    """Every row of the ``cases`` table, read with lancedb directly (not through priorcase)."""
    return lancedb.connect(str(db)).open_table("cases").to_arrow()


def rows_by_id(db: Path) -> dict[str, dict]:
    """Every row of the ``cases`` table as a dict, by id."""
    return {r["id"]: r for r in table_rows(db).to_pylist()}


def row_count(db: Path) -> int:
    conn = lancedb.connect(str(db))
    if "cases" not in conn.list_tables().tables:
        return 0
    try:
        return conn.open_table("cases").count_rows()
    except ValueError as err:  # its folder is there, its first commit not yet
        if "was not found" not in str(err):
            raise
        return 0


def assert_same_rows(rows: dict[str, dict], expected: dict[str, dict]) -> None:
    """The same ids and columns, and vectors equal to float tolerance (rows by id)."""
    assert sorted(rows) == sorted(expected)
    for row_id, row in rows.items():
        theirs = expected[row_id]
        assert {k: v for k, v in row.items() if k != "vector"} == {
            k: v for k, v in theirs.items() if k != "vector"
        }, row_id
        np.testing.assert_allclose(row["vector"], theirs["vector"], rtol=1e-4, atol=1e-5)


def assert_unique(db: Path) -> pa.Table:
    """No duplicate ids or dedup keys in the table; returns the rows."""
    rows = table_rows(db)
    ids = rows.column("id").to_pylist()
    keys = rows.column("key").to_pylist()
    assert len(set(ids)) == len(ids), f"duplicate ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert len(set(keys)) == len(keys), "duplicate dedup keys"
    return rows


def ingest_command(*args: str | Path) -> list[str]:
    """``priorcase ingest ARGS`` as a child process runs it (bundled encoder, no workers, quiet)."""
    return [
        sys.executable, "-m", "priorcase.cli", "ingest", *map(str, args),
        "--encoder", "bundled", "--workers", "0", "--quiet",
    ]  # fmt: skip


OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a child must never try a model hub


def write_mias_labels(mias, ids: set[str], path: Path) -> Path:
    """The MIAS labels CSV cut to ``ids``, with absolute file paths (paths in the CSV are
    relative to its own folder, which the copy leaves)."""
    with open(mias.labels, newline="") as src, open(path, "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for row in reader:
            if row["image_id"] in ids:
                writer.writerow({**row, "file": str(mias.root / row["file"])})
    return path
