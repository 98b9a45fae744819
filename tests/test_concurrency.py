"""Two ``priorcase ingest`` processes writing one library at the same time."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fixtures import OFFLINE_ENV, assert_unique, ingest_command, write_csv, write_pngs

from priorcase.index.manifest import MANIFEST_NAME


def _start(db: Path, source: Path, labels: Path) -> subprocess.Popen:
    cmd = ingest_command(source, "--db", db, "--labels", labels, "--batch-size", "2")
    return subprocess.Popen(
        cmd, env=OFFLINE_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run_together(*runs: tuple[Path, Path, Path]) -> list[tuple[int, str, str]]:
    procs = [_start(*run) for run in runs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=400)
        out.append((proc.returncode, stdout, stderr))
    return out


def _check(results: list[tuple[int, str, str]]) -> None:
    for code, stdout, stderr in results:
        assert code == 0, stdout + stderr
        assert "Traceback" not in stderr and "0 failed" in stdout, stdout + stderr


@pytest.mark.timeout(600)
def test_two_ingests_into_a_new_library(tmp_path: Path) -> None:
    """Same files, different label columns, new library: the table-creation race and the
    manifest race are both hit; each file is stored once and carries both labels."""
    files = write_pngs(tmp_path / "data", 8)
    tissue = write_csv(tmp_path / "a.csv", ["image_id", "tissue"], [[p.stem, "F"] for p in files])
    pathology = write_csv(
        tmp_path / "b.csv", ["image_id", "pathology"], [[p.stem, "benign"] for p in files]
    )
    db = tmp_path / "db"
    _check(_run_together((db, tmp_path / "data", tissue), (db, tmp_path / "data", pathology)))
    rows = assert_unique(db)
    assert sorted(rows.column("id").to_pylist()) == sorted(p.stem for p in files)
    assert set(rows.column("tissue").to_pylist()) == {"F"}
    assert set(rows.column("pathology").to_pylist()) == {"benign"}
    manifest = json.loads((db / MANIFEST_NAME).read_text())
    assert set(manifest["label_columns"]) == {"tissue", "pathology"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ingests_into_an_existing_library(tmp_path: Path) -> None:
    """Overlapping new files with different label columns into a library that exists."""
    old = write_pngs(tmp_path / "old", 4)
    first = write_csv(tmp_path / "old.csv", ["image_id", "tissue"], [[p.stem, "F"] for p in old])
    db = tmp_path / "db"
    _check(_run_together((db, tmp_path / "old", first)))
    shared = write_pngs(tmp_path / "x", 3, prefix="s", start=50)
    for p in shared:
        (tmp_path / "y").mkdir(exist_ok=True)
        (tmp_path / "y" / p.name).write_bytes(p.read_bytes())
    only_x = write_pngs(tmp_path / "x", 4, prefix="x", start=20)
    only_y = write_pngs(tmp_path / "y", 4, prefix="y", start=30)
    severity = write_csv(
        tmp_path / "x.csv", ["image_id", "severity"], [[p.stem, "low"] for p in shared + only_x]
    )
    density = write_csv(
        tmp_path / "y.csv", ["image_id", "density"], [[p.stem, "2"] for p in shared + only_y]
    )
    _check(_run_together((db, tmp_path / "x", severity), (db, tmp_path / "y", density)))
    rows = {r["id"]: r for r in assert_unique(db).to_pylist()}
    assert set(rows) == {p.stem for p in old + shared + only_x + only_y}
    assert all(rows[p.stem]["severity"] == "low" for p in shared + only_x)
    assert all(rows[p.stem]["density"] == "2" for p in shared + only_y)
    assert all(rows[p.stem]["tissue"] == "F" for p in old)
    manifest = json.loads((db / MANIFEST_NAME).read_text())
    assert set(manifest["label_columns"]) == {"tissue", "severity", "density"}


@pytest.mark.timeout(600)
def test_search_during_an_ingest_never_errors_and_sees_new_rows(tmp_path: Path, bundled) -> None:
    """A reader (one open PriorCase, as the UI holds) searches while another process ingests:
    no query fails, and rows committed by the writer become visible to the open handle."""
    import time

    import priorcase

    first = write_pngs(tmp_path / "first", 4)
    labels = write_csv(tmp_path / "a.csv", ["image_id", "tissue"], [[p.stem, "F"] for p in first])
    db = tmp_path / "db"
    _check(_run_together((db, tmp_path / "first", labels)))
    more = write_pngs(tmp_path / "more", 10, prefix="m", start=40)
    more_labels = write_csv(
        tmp_path / "b.csv", ["image_id", "tissue"], [[p.stem, "G"] for p in more]
    )
    reader = priorcase.open(db, encoder=bundled)
    writer = _start(db, tmp_path / "more", more_labels)
    seen: set[int] = set()
    while writer.poll() is None:
        hits = reader.search(id=first[0].stem, k=50)
        seen.add(len(hits))
        time.sleep(0.2)
    stdout, stderr = writer.communicate()
    assert writer.returncode == 0, stdout + stderr
    hits = reader.search(id=first[0].stem, k=50)
    assert len(hits) == 3 + len(more)  # every committed row, the query itself excluded
    assert {h.labels["tissue"] for h in hits} == {"F", "G"}
    assert min(seen) >= 3
    assert_unique(db)
