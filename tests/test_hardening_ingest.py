"""Issue 7, write side: salt, identifiers, column names, ids, corrections, erasure, bad files.

Every test writes real files (PNG, TIFF, GIF, DICOM, CSV, FIFOs, links) and reads the LanceDB
table back directly; each one failed on the code before this change.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import lancedb
import numpy as np
import pytest
from fixtures import (
    OFFLINE_ENV,
    assert_unique,
    breast_like,
    ingest_command,
    rows_by_id,
    table_rows,
    write_csv,
    write_dicom,
    write_png,
    write_pngs,
)
from PIL import Image

import priorcase
from priorcase.cli import main
from priorcase.errors import LabelsError, SaltMismatchError
from priorcase.index.manifest import MANIFEST_NAME
from priorcase.index.store import OPTIMIZE_AT_FRAGMENTS
from priorcase.ingest.pseudonym import KEY_FILE_ENV, SALT_ENV, SALT_FILE, Pseudonymizer

FAST = {"workers": 0, "progress": False}


def _files_state(db: Path) -> dict[str, bytes]:
    return {str(p.relative_to(db)): p.read_bytes() for p in sorted(db.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- salt


def test_salt_fingerprint_recorded_and_a_changed_salt_is_refused(
    tmp_path: Path, tiny_clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    db = tmp_path / "db"
    write_png(tmp_path / "a" / "one.png", 1)
    priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "a", **FAST)
    salt = (db / SALT_FILE).read_bytes()
    manifest = json.loads((db / MANIFEST_NAME).read_text())
    assert manifest["salt_fingerprint"] == Pseudonymizer(salt).fingerprint()
    assert salt.hex() not in (db / MANIFEST_NAME).read_text()

    write_png(tmp_path / "b" / "two.png", 2)
    before = _files_state(db)
    monkeypatch.setenv(SALT_ENV, "another salt")
    with pytest.raises(SaltMismatchError) as err:
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "b", **FAST)
    assert "\n" not in str(err.value) and SALT_ENV in str(err.value)
    assert _files_state(db) == before  # nothing written

    # the same refusal when the key file is moved and a new one is made elsewhere
    monkeypatch.delenv(SALT_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "keys" / "other.key"))
    (db / SALT_FILE).unlink()
    with pytest.raises(SaltMismatchError, match="another pseudonym salt"):
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "b", **FAST)
    assert rows_by_id(db).keys() == {"one"}


def test_key_file_outside_the_library(
    tmp_path: Path, tiny_clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)
    key = tmp_path / "secrets" / "priorcase.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(key))
    write_png(tmp_path / "a" / "one.png", 1)
    db = tmp_path / "db"
    priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "a", **FAST)
    assert key.is_file() and len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (db / SALT_FILE).exists()
    assert not any(key.read_bytes() in p.read_bytes() for p in db.rglob("*") if p.is_file())


def test_key_creation_is_atomic_under_concurrent_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many threads create the key of fresh libraries at once: all read the same full key
    (before, a reader between create and write saw an empty key and was told to delete it)."""
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    for n in range(30):
        db = tmp_path / f"db{n}"
        barrier = threading.Barrier(6)
        results: list[object] = []

        def first_use(
            db: Path = db, barrier: threading.Barrier = barrier, results: list = results
        ) -> None:
            barrier.wait()
            try:
                results.append(Pseudonymizer.for_index(db).fingerprint())
            except Exception as err:
                results.append(err)

        threads = [threading.Thread(target=first_use) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(map(str, results))) == 1, results
        assert not any(isinstance(r, Exception) for r in results), results
        assert [p.name for p in db.iterdir()] == [SALT_FILE]  # no temporary file left


# ---------------------------------------------------------------- identifiers


def test_identifier_columns_paths_and_dicom_free_text_are_never_stored(
    tmp_path: Path, tiny_clip
) -> None:
    # a PACS export: folder and file names carry the patient's name
    data = tmp_path / "DOE_JANE_19610203"
    write_png(data / "JANE_DOE_left.png", 1)
    write_png(data / "JANE_DOE_right.png", 2)
    write_dicom(
        data / "SMITH_JOHN.dcm",
        (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 5) % 3000,
        PatientName="Smith^John",
        PatientID="PID-4711",
        BodyPartExamined="SMITHJOHN",  # sites put names in free-text fields
        InstitutionName="St Johnsbury Clinic",
        ReferringPhysicianName="Welby^Marcus",
        Manufacturer="Marcuswelby Imaging",
        StudyDate="20240131",
        ViewPosition="MLO",
    )
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "patient_name", "Birth Date", "MRN", "dob", "accession", "note", "tissue"],
        [
            [f"JANE_DOE_{side}", "Jane Doe", "1961-02-03", "MRN-998877", "03/02/1961", "ACC55",
             "x", tissue]
            for side, tissue in (("left", "F"), ("right", "G"))
        ],
    )  # fmt: skip
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    report = pc.ingest(data, labels=labels, group="MRN", identifier_columns=("note",), **FAST)
    assert report.stored_images == 3 and report.failures == []
    assert any("identifier columns not stored" in n and "patient_name" in n for n in report.notes)

    secrets = [
        "Jane Doe", "1961-02-03", "19610203", "998877", "03/02/1961", "ACC55",
        "Smith", "PID-4711", "SMITHJOHN", "Johnsbury", "Welby", "Marcuswelby", "20240131",
        "DOE_JANE", "JANE_DOE_left.png", str(data),
    ]  # fmt: skip
    for path in db.rglob("*"):
        if path.is_file() and path.name != SALT_FILE:
            blob = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in blob, f"{secret!r} stored in {path}"
    table = table_rows(db)
    assert not {"patient_name", "Birth Date", "dob", "accession", "note", "body_part"} & set(
        table.column_names
    )
    rows = rows_by_id(db)
    # the group column is kept as a pseudonym, same for the same record number
    left, right = rows["JANE_DOE_left"], rows["JANE_DOE_right"]
    assert left["MRN"].startswith("anon-") and left["MRN"] == right["MRN"] == left["group"]
    assert rows["SMITH_JOHN"]["view_position"] == "MLO"  # coded tags are kept
    assert "path" not in table.column_names
    hits = pc.search(id="JANE_DOE_left", k=2)
    assert all("path" not in h.to_json() for h in hits)


# ---------------------------------------------------------------- column names


def _bad_header(kind: str) -> tuple[list[str], list[list[str]], str]:
    """(header, rows, expected message part) of a labels CSV whose columns are refused."""
    if kind == "empty-name-with-values":
        return ["image_id", "tissue", ""], [["img0", "F", "oops"]], "no name"
    if kind == "normalise-clash":
        return ["image_id", "kind", "label_kind"], [["img0", "a", "b"]], "both be stored"
    if kind == "case-clash":
        return ["image_id", "Tissue", "tissue"], [["img0", "a", "b"]], "both be stored"
    if kind == "dotted":
        return ["image_id", "a.b"], [["img0", "x"]], "dots"
    if kind == "reserved":
        return ["image_id", "_rowid"], [["img0", "x"]], "reserved"
    if kind == "too-many":
        header = ["image_id"] + [f"c{i}" for i in range(300)]
        return header, [["img0"] + ["v"] * 300], "at most 256"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["empty-name-with-values", "normalise-clash", "case-clash", "dotted", "reserved", "too-many"],
)
@pytest.mark.parametrize("existing", [False, True])
def test_bad_column_names_are_refused_before_anything_is_written(
    tmp_path: Path, tiny_clip, kind: str, existing: bool
) -> None:
    db = tmp_path / "db"
    write_png(tmp_path / "data" / "img0.png", 0)
    if existing:
        write_png(tmp_path / "old" / "old0.png", 5)
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "old", **FAST)
    before = _files_state(db) if db.exists() else {}
    header, rows, expected = _bad_header(kind)
    labels = write_csv(tmp_path / "labels.csv", header, rows)
    with pytest.raises(LabelsError) as err:
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "data", labels=labels, **FAST)
    assert expected in str(err.value) and "\n" not in str(err.value)
    after = _files_state(db) if db.exists() else {}
    assert {k: v for k, v in after.items() if k != SALT_FILE} == {
        k: v for k, v in before.items() if k != SALT_FILE
    }
    # the library is not poisoned: a good ingest still works, and search and info too
    good = write_csv(tmp_path / "good.csv", ["image_id", "tissue"], [["img0", "F"]])
    pc = priorcase.open(db, encoder=tiny_clip)
    assert pc.ingest(tmp_path / "data", labels=good, **FAST).stored_images == 1
    assert pc.search(id="img0", k=1) is not None


def test_trailing_comma_header_is_ignored_not_stored(tmp_path: Path, tiny_clip) -> None:
    write_png(tmp_path / "data" / "img0.png", 0)
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,tissue,\nimg0,F,\n")
    db = tmp_path / "db"
    report = priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "data", labels=labels, **FAST)
    assert report.stored_images == 1
    assert "" not in table_rows(db).column_names
    assert json.loads((db / MANIFEST_NAME).read_text())["label_columns"] == ["tissue"]
    assert main(["info", "--db", str(db)]) == 0


def test_a_clash_with_a_stored_column_is_refused(tmp_path: Path, tiny_clip) -> None:
    write_png(tmp_path / "data" / "img0.png", 0)
    db = tmp_path / "db"
    first = write_csv(tmp_path / "first.csv", ["image_id", "kind"], [["img0", "mass"]])
    priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "data", labels=first, **FAST)
    before = _files_state(db)
    write_png(tmp_path / "more" / "img1.png", 1)
    second = write_csv(tmp_path / "second.csv", ["image_id", "label_kind"], [["img1", "x"]])
    with pytest.raises(LabelsError, match="both be stored as 'label_kind'"):
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "more", labels=second, **FAST)
    assert _files_state(db) == before


# ---------------------------------------------------------------- ids


def test_a_corrupt_file_does_not_steal_the_id_of_a_good_one(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    write_png(data / "case1.png", 1)
    (data / "case1.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut off")  # sorts first
    report = priorcase.open(tmp_path / "db", encoder=tiny_clip).ingest(data, **FAST)
    assert report.stored_images == 1
    assert len(report.failures) == 1 and "case1.jpg" in report.failures[0]
    assert "truncated or corrupt" in report.failures[0]
    assert set(rows_by_id(tmp_path / "db")) == {"case1"}


def test_same_bytes_under_two_names_keep_their_own_ids_and_labels(
    tmp_path: Path, tiny_clip
) -> None:
    data = tmp_path / "data"
    write_png(data / "mdb021.png", 21)
    (data / "aaa_copy.png").write_bytes((data / "mdb021.png").read_bytes())
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "pathology"],
        [["mdb021", "malignant"], ["aaa_copy", "benign"]],
    )
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    report = pc.ingest(data, labels=labels, **FAST)
    assert report.stored_images == 2 and report.failures == []
    assert any("same bytes" in n and "mdb021" in n for n in report.notes)
    rows = rows_by_id(db)
    assert rows["mdb021"]["pathology"] == "malignant"
    assert rows["aaa_copy"]["pathology"] == "benign"
    assert {h.id for h in pc.search(id="aaa_copy", k=1)} == {"mdb021"}
    again = pc.ingest(data, labels=labels, **FAST)
    assert again.stored == 0 and again.duplicates == 2 and again.failures == []


def test_uid_named_dicom_files_keep_distinct_ids(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "series"
    for n in (1001, 1002, 1003):
        pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * n) % 4000
        path = write_dicom(data / "tmp.dcm", pixels.astype(np.uint16))
        path.rename(data / f"1.2.840.113619.2.55.3.{n}")
    report = priorcase.open(tmp_path / "db", encoder=tiny_clip).ingest(data, **FAST)
    assert report.stored_images == 3, report.summary()
    assert set(rows_by_id(tmp_path / "db")) == {
        f"1.2.840.113619.2.55.3.{n}" for n in (1001, 1002, 1003)
    }


# ---------------------------------------------------------------- corrections


def test_corrected_labels_and_findings_update_the_stored_rows(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    data.mkdir()
    film, _ = breast_like(256, seed=1)
    Image.fromarray(film).save(data / "f1.png")
    write_png(data / "f2.png", 2, size=128)
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "tissue", "density"],
        [["f1", "F", "2"], ["f2", "G", "1"]],
    )
    findings = write_csv(  # the lesion has its own density: a label correction keeps it
        tmp_path / "findings.csv",
        ["image_id", "severity", "density", "x", "y", "radius"],
        [["f1", "benign", "4", "60", "120", "20"]],
    )
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    first = pc.ingest(data, labels=labels, findings=findings, **FAST)
    assert (first.stored_images, first.stored_rois) == (2, 1)
    thumb_before = rows_by_id(db)["f1-roi1"]["thumbnail"]

    # a corrected labels row: updated in place, ROI rows follow the image's label
    write_csv(labels, ["image_id", "tissue", "density"], [["f1", "D", "3"], ["f2", "G", "1"]])
    second = pc.ingest(data, labels=labels, findings=findings, **FAST)
    assert (second.stored, second.updated, second.duplicates) == (0, 1, 1)
    assert "updated 1" in second.summary()
    rows = rows_by_id(db)
    assert rows["f1"]["tissue"] == "D" and rows["f1-roi1"]["tissue"] == "D"
    assert rows["f1"]["density"] == "3" and rows["f1-roi1"]["density"] == "4"
    assert rows["f1-roi1"]["severity"] == "benign"
    again = pc.ingest(data, labels=labels, findings=findings, **FAST)
    assert (again.stored, again.updated, again.duplicates) == (0, 0, 2)

    # a corrected finding (moved, reclassified) replaces the ROI; a second one is added
    write_csv(
        findings,
        ["image_id", "severity", "density", "x", "y", "radius"],
        [["f1", "malignant", "4", "80", "100", "24"], ["f1", "benign", "4", "40", "160", "16"]],
    )
    third = pc.ingest(data, labels=labels, findings=findings, **FAST)
    assert third.updated == 1 and third.failures == [], third.summary()
    rows = assert_unique(db).to_pylist()
    rois = sorted(
        ((r["roi_x"], r["roi_y"], r["roi_radius"]), r["severity"])
        for r in rows
        if r["parent_id"] == "f1"
    )
    assert rois == [((40, 160, 16), "benign"), ((80, 100, 24), "malignant")]
    assert rows_by_id(db)["f1-roi1"]["thumbnail"] != thumb_before
    assert sum(r["kind"] == "image" for r in rows) == 2


# ---------------------------------------------------------------- erasure


def test_delete_erases_rows_rois_derived_files_and_old_versions(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for n in range(3):
        film, _ = breast_like(256, seed=n)
        Image.fromarray(film).save(data / f"f{n}.png")
    write_dicom(
        data / "pat.dcm",
        (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 3) % 4000,
        PatientID="ERASE-ME",
    )
    findings = write_csv(
        tmp_path / "findings.csv",
        ["image_id", "severity", "x", "y", "radius"],
        [["f0", "benign", "60", "120", "20"], ["f1", "benign", "70", "110", "20"]],
    )
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    pc.ingest(data, findings=findings, batch_size=1, **FAST)  # several versions on disk
    rows = rows_by_id(db)
    erased = [rows["f0"]["thumbnail"], rows["f0-roi1"]["thumbnail"]]
    for derived in ("classifiers/head.joblib", "faiss/index.faiss", "text-aligner-v3.pt"):
        (db / derived).parent.mkdir(parents=True, exist_ok=True)
        (db / derived).write_bytes(b"derived")

    assert pc.delete(ids=["f0"]) == (1, 1)
    assert set(rows_by_id(db)) == {"f1", "f1-roi1", "f2", "pat"}
    assert not (db / "classifiers").exists() and not (db / "faiss").exists()
    assert not list(db.glob("text-aligner-*.pt"))
    for path in db.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(t in blob for t in erased), f"erased thumbnail still in {path}"

    # from the command line: by patient ID (pseudonymised), and by filter
    assert main(["delete", "--db", str(db), "--patient-id", "ERASE-ME"]) == 0
    assert "pat" not in rows_by_id(db)
    assert main(["delete", "--db", str(db), "--where", "id = 'f1'"]) == 0
    assert main(["delete", "--db", str(db), "--id", "nosuch"]) == 1
    assert set(rows_by_id(db)) == {"f2"}
    assert priorcase.open(db, encoder=tiny_clip).search(id="f2", k=5) == []


# ---------------------------------------------------------------- bad inputs


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def _make(kind: str, folder: Path) -> tuple[Path, str]:
    """One bad input file in ``folder``: (path, substring of its failure line)."""
    if kind == "animated-gif":
        frames = [Image.new("L", (16, 16), c) for c in (0, 128, 255)]
        path = folder / "cine.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:])
        return path, "3 frames/pages"
    if kind == "multipage-tiff":
        pages = [Image.fromarray(np.full((16, 16), c, np.uint8)) for c in (10, 200)]
        path = folder / "stack.tif"
        pages[0].save(path, save_all=True, append_images=pages[1:])
        return path, "2 frames/pages"
    if kind == "png-cut-after-header":
        write_png(folder / "cut.png", 3, size=128)
        data = (folder / "cut.png").read_bytes()
        (folder / "cut.png").write_bytes(data[:40])
        return folder / "cut.png", "truncated or corrupt PNG"
    if kind == "rescale-slope-0":
        path = write_dicom(
            folder / "flat.dcm",
            np.arange(64, dtype=np.uint16).reshape(8, 8),
            RescaleSlope="0",
            RescaleIntercept="0",
        )
        return path, "RescaleSlope is 0"
    if kind == "huge-png":
        return _png_with_size(folder / "bomb.png", 20000, 20000), "limit 100 megapixels"
    if kind == "huge-dicom":
        path = write_dicom(folder / "huge.dcm", np.zeros((8, 8), np.uint16))
        import pydicom

        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = 20000, 20000
        ds.save_as(path)
        return path, "limit 100 megapixels"
    if kind == "dangling-link":
        (folder / "gone.png").symlink_to(folder / "nowhere.png")
        return folder / "gone.png", "dangling symbolic link"
    if kind == "fifo":
        os.mkfifo(folder / "pipe.png")
        return folder / "pipe.png", "FIFO"
    raise AssertionError(kind)


BAD = [
    "animated-gif",
    "multipage-tiff",
    "png-cut-after-header",
    "rescale-slope-0",
    "huge-png",
    "huge-dicom",
    "dangling-link",
    "fifo",
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("named", [False, True], ids=["in-folder", "named"])
def test_every_bad_file_is_counted_with_its_reason(tmp_path: Path, tiny_clip, named: bool) -> None:
    good = tmp_path / "good"
    write_png(good / "ok1.png", 1)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(good / "still.gif")  # one frame: fine
    bad = tmp_path / "bad"
    bad.mkdir()
    made = [_make(kind, bad) for kind in BAD]
    (bad / "readme.txt").write_text("not an image")
    sources = [good, *(p for p, _ in made)] if named else [good, bad]
    report = priorcase.open(tmp_path / "db", encoder=tiny_clip).ingest(sources, **FAST)
    assert report.stored_images == 2, report.summary()
    assert len(report.failures) == len(BAD), report.summary()
    for path, reason in made:
        lines = [f for f in report.failures if path.name in f]
        assert len(lines) == 1 and reason in lines[0], (path.name, report.failures)
    assert all("\n" not in f and "Traceback" not in f for f in report.failures)
    if not named:
        assert any("1 files are not images" in n and ".txt" in n for n in report.notes)


@pytest.mark.timeout(60)
def test_cli_fifo_on_the_command_line_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")
    write_png(tmp_path / "ok.png", 1)
    cmd = ingest_command(tmp_path / "pipe.dcm", tmp_path / "ok.png", "--db", tmp_path / "db")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=50, env=OFFLINE_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stored 1 images" in done.stdout and "1 failed" in done.stdout
    assert "pipe.dcm: is a FIFO" in done.stdout and "Traceback" not in done.stderr


# ---------------------------------------------------------------- full disk


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + done.stderr.decode().strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_one_line_and_a_summary(tmp_path: Path, tiny_clip, tiny_disk) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for n in range(80):  # noise: thumbnails that do not compress, ~25 KiB each
        noise = rng.integers(0, 255, (256, 256), dtype=np.uint8)
        Image.fromarray(noise).save(data / f"n{n:02d}.png")
    db = tiny_disk / "db"
    report = priorcase.open(db, encoder=tiny_clip).ingest(data, batch_size=4, **FAST)
    assert report.stopped is not None, report.summary()
    assert "No space left on device" in report.stopped and "\n" not in report.stopped
    assert 0 < report.stored_images < 80
    summary = report.summary()
    assert summary.startswith(f"stored {report.stored_images} images") and "stopped:" in summary
    leftovers = [p for p in db.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []
    assert (db / MANIFEST_NAME).stat().st_size > 0
    stored = assert_unique(db)
    assert stored.num_rows == report.stored_images


def test_many_small_ingests_are_compacted(tmp_path: Path, tiny_clip) -> None:
    files = write_pngs(tmp_path / "data", OPTIMIZE_AT_FRAGMENTS + 2, size=32)
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    compacted_at = []
    for n, path in enumerate(files, start=1):  # one commit, so one fragment, per ingest
        report = pc.ingest([path], **FAST)
        assert report.stored_images == 1, report.summary()
        if any("compacted" in note for note in report.notes):
            compacted_at.append(n)
    assert compacted_at == [OPTIMIZE_AT_FRAGMENTS]
    stats = lancedb.connect(str(db)).open_table("cases").stats()
    assert stats["fragment_stats"]["num_fragments"] == 3  # one compacted, two added since
    assert stats["num_rows"] == len(files)
