"""Locate the mini-MIAS mammograms for the demo: local copy, $PRIORCASE_DATA, or download.

The local layout (as in ``../shared/data/mias``) is ``images/*.png``, ``images.csv`` and
``findings.csv``. The official distribution is a tarball of PGM files plus ``Info.txt``;
:func:`convert_info_txt` writes the two CSVs from it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from priorcase.errors import PriorcaseError

DATA_ENV = "PRIORCASE_DATA"
MIAS_URL = "http://peipa.essex.ac.uk/pix/mias/all-mias.tar.gz"
# Digest of the official tarball, when known. Set PRIORCASE_MIAS_SHA256 to pin another.
MIAS_SHA256 = os.environ.get("PRIORCASE_MIAS_SHA256")
MIAS_FILMS = 322
MIAS_SIZE = 1024
SEVERITY = {"B": "benign", "M": "malignant"}


@dataclass(frozen=True)
class MiasFolder:
    """Paths the ingest needs."""

    root: Path
    images: Path
    labels: Path
    findings: Path


def as_mias_folder(root: Path) -> MiasFolder | None:
    """``root`` as a MIAS folder, or None when it lacks the expected files."""
    folder = MiasFolder(root, root / "images", root / "images.csv", root / "findings.csv")
    if folder.images.is_dir() and folder.labels.is_file() and folder.findings.is_file():
        return folder
    return None


def candidate_roots() -> list[Path]:
    """Where the demo looks, in order."""
    roots = []
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]).expanduser())
    roots += [
        Path.cwd() / ".." / "shared" / "data" / "mias",
        Path.cwd() / "shared" / "data" / "mias",
    ]
    package_root = Path(__file__).resolve().parents[2]
    roots.append(package_root.parent / "shared" / "data" / "mias")
    return roots


def find_mias() -> MiasFolder | None:
    """The first local MIAS folder found, or None."""
    for root in candidate_roots():
        folder = as_mias_folder(root.resolve())
        if folder is not None:
            return folder
    return None


def download_mias(target: Path, url: str = MIAS_URL) -> MiasFolder:
    """Download the official tarball into ``target``, verify it, and write the two CSVs."""
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "all-mias.tar.gz"
    if not archive.exists():
        print(f"downloading MIAS from {url} (research licence: see the MIAS licence)")
        tmp = archive.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if MIAS_SHA256 and digest != MIAS_SHA256:
        raise PriorcaseError(f"{archive}: SHA-256 {digest} does not match {MIAS_SHA256}")
    images = target / "images"
    images.mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(images, filter="data")
    info = next(images.rglob("Info.txt"), None)
    if info is None:
        raise PriorcaseError(f"{archive}: no Info.txt in the archive")
    films = sorted(images.rglob("mdb*.pgm"))
    if len(films) != MIAS_FILMS:
        raise PriorcaseError(f"{archive}: expected {MIAS_FILMS} films, found {len(films)}")
    convert_info_txt(info, films, target)
    print(f"MIAS archive SHA-256 {digest}")
    folder = as_mias_folder(target)
    assert folder is not None
    return folder


def convert_info_txt(info: Path, films: list[Path], target: Path) -> None:
    """Write images.csv and findings.csv (y measured from the top) from MIAS ``Info.txt``."""
    by_id = {f.stem: f for f in films}
    findings: list[dict[str, str]] = []
    per_image: dict[str, dict[str, str]] = {}
    for line in info.read_text().splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("mdb") or len(parts) < 3:
            continue
        image_id, tissue, abnormality = parts[:3]
        severity = SEVERITY.get(parts[3], "") if len(parts) > 3 else ""
        x, y, radius = [*parts[4:7], "", "", ""][:3] if len(parts) > 4 else ("", "", "")
        if y and y != "*NOTE":
            y = str(MIAS_SIZE - int(y))
        if x == "*NOTE":
            x = y = radius = ""
        row = per_image.setdefault(
            image_id,
            {
                "image_id": image_id,
                "tissue": tissue,
                "abnormality": abnormality,
                "pathology": "normal",
            },
        )
        if severity:
            findings.append(
                {
                    "image_id": image_id,
                    "abnormality": abnormality,
                    "severity": severity,
                    "x": x,
                    "y": y,
                    "radius": radius,
                    "tissue": tissue,
                }
            )
            if row["pathology"] != "malignant":
                row["pathology"] = severity
    with open(target / "images.csv", "w", newline="") as fh:
        writer = csv.DictWriter(
            fh,
            ["image_id", "file", "patient_id", "laterality", "tissue", "abnormality", "pathology"],
        )
        writer.writeheader()
        for image_id, row in sorted(per_image.items()):
            number = int(image_id[3:])
            writer.writerow(
                {
                    **row,
                    "file": str(by_id[image_id].relative_to(target)) if image_id in by_id else "",
                    "patient_id": f"P{(number + 1) // 2:03d}",
                    # films come in pairs: odd numbers are right breasts, even numbers left
                    "laterality": "R" if number % 2 else "L",
                }
            )
    with open(target / "findings.csv", "w", newline="") as fh:
        writer = csv.DictWriter(
            fh, ["image_id", "abnormality", "severity", "x", "y", "radius", "tissue"]
        )
        writer.writeheader()
        writer.writerows(findings)
