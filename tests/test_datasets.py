"""MIAS Info.txt conversion (the official download's format) and local discovery."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from priorcase.datasets.mias import as_mias_folder, convert_info_txt

INFO = """\
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb004 D NORM
mdb005 F CIRC B 477 133 30
mdb005 F CIRC B 500 168 26
mdb209 G CALC M 647 503 87
mdb210 G NORM
mdb219 G CALC B
"""


def test_convert_info_txt_writes_images_and_findings(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    ids = ["mdb001", "mdb002", "mdb003", "mdb004", "mdb005", "mdb209", "mdb210", "mdb219"]
    films = []
    for image_id in ids:
        path = tmp_path / "images" / f"{image_id}.pgm"
        Image.new("L", (8, 8)).save(path)
        films.append(path)
    info = tmp_path / "images" / "Info.txt"
    info.write_text(INFO)
    convert_info_txt(info, films, tmp_path)

    images = {r["image_id"]: r for r in _rows(tmp_path / "images.csv")}
    assert set(images) == set(ids)
    assert images["mdb001"]["patient_id"] == images["mdb002"]["patient_id"] == "P001"
    assert images["mdb001"]["laterality"] == "R" and images["mdb002"]["laterality"] == "L"
    assert images["mdb003"]["pathology"] == "normal"
    assert images["mdb209"]["pathology"] == "malignant"
    assert images["mdb001"]["file"] == "images/mdb001.pgm"

    findings = _rows(tmp_path / "findings.csv")
    with_findings = ["mdb001", "mdb002", "mdb005", "mdb005", "mdb209", "mdb219"]
    assert [f["image_id"] for f in findings] == with_findings
    # MIAS measures y from the bottom; the CSV from the top (1024-pixel films)
    assert (findings[0]["x"], findings[0]["y"], findings[0]["radius"]) == ("535", "599", "197")
    assert findings[-1]["x"] == "" and findings[-1]["severity"] == "benign"
    assert as_mias_folder(tmp_path) is not None


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
