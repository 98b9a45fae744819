"""Typed records shared by ingest, index, retrieval, classifiers and UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LoadedImage:
    """One decoded image, ready for preprocessing.

    ``pixels`` is uint8, HxW (grayscale) or HxWx3 (RGB), after DICOM modality/VOI LUT and
    MONOCHROME1 inversion. ``metadata`` never holds patient identifiers; ``patient`` is a
    salted pseudonym (DICOM PatientID) or None. ``encoded`` holds the file's bytes where
    they were read into memory (an object on object storage), else None.
    """

    path: Path
    pixels: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    patient: str | None = None
    encoded: bytes | None = field(default=None, repr=False)


@dataclass
class Finding:
    """A lesion on a parent image (pixel coordinates, origin top-left)."""

    image_id: str
    x: int | None
    y: int | None
    radius: int | None
    labels: dict[str, str | None] = field(default_factory=dict)


@dataclass
class CaseRecord:
    """One row of the index: a whole image or a region of interest on it."""

    id: str
    kind: str  # "image" | "roi"
    vector: np.ndarray
    key: str  # the row's id (libraries before 0.2 hold the content hash here)
    content_hash: str  # SHA-256 of the source file: the same bytes under two ids share it
    labels: dict[str, str | None] = field(default_factory=dict)
    metadata: dict[str, str | None] = field(default_factory=dict)
    patient: str | None = None  # salted pseudonym, never the identifier itself
    group: str | None = None  # value of the grouping column (patient pseudonym by default)
    thumbnail: bytes = b""  # JPEG
    parent_id: str | None = None
    roi: tuple[int, int, int] | None = None  # x, y, radius on the parent, pixels
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 embedded, source pixels


@dataclass
class SearchHit:
    """A reference case returned by a search, best first."""

    id: str
    score: float
    kind: str
    labels: dict[str, str | None]
    metadata: dict[str, str | None]
    patient: str | None = None
    group: str | None = None
    parent_id: str | None = None
    roi: tuple[int, int, int] | None = None
    box: tuple[int, int, int, int] | None = None  # region rows: x0, y0, x1, y1 on the parent
    match: dict | None = None  # where it matched: best (query box, hit box) pair
    thumbnail: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict:
        """The JSON shape of ``priorcase search --json`` (no thumbnail bytes; source paths
        are never stored, as folder and file names from PACS exports hold patient names)."""
        out: dict = {
            "id": self.id,
            "score": float(self.score),
            "kind": self.kind,
            "labels": self.labels,
            "metadata": self.metadata,
        }
        if self.parent_id is not None:
            out["parent_id"] = self.parent_id
        if self.roi is not None:
            out["roi"] = {"x": self.roi[0], "y": self.roi[1], "radius": self.roi[2]}
        if self.box is not None:
            out["box"] = list(self.box)
        if self.match is not None:
            out["match"] = self.match
        return out


@dataclass
class IngestReport:
    """What an ingest did: counts plus one line per failed file."""

    stored_images: int = 0
    stored_rois: int = 0
    updated: int = 0  # stored images whose labels or findings were corrected
    stored_tiles: int = 0
    duplicates: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    encoder: str = ""
    seconds: float = 0.0
    stopped: str | None = None  # why the ingest stopped early (e.g. the disk is full)

    @property
    def stored(self) -> int:
        return self.stored_images + self.stored_rois + self.stored_tiles

    def summary(self) -> str:
        lines = [
            f"stored {self.stored_images} images and {self.stored_rois} ROIs, "
            + (f"updated {self.updated}, " if self.updated else "")
            + (f"{self.stored_tiles} tiles, " if self.stored_tiles else "")
            + f"skipped {self.duplicates} duplicates, {len(self.failures)} failed "
            f"(encoder {self.encoder}, {self.seconds:.1f} s)"
        ]
        if self.stopped:
            lines.append(f"  stopped: {self.stopped}")
        lines += [f"  failed: {line}" for line in self.failures]
        lines += [f"  note: {line}" for line in self.notes]
        return "\n".join(lines)
