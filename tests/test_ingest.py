"""Ingest: labels and findings CSVs, ROIs, bad inputs, re-runs, pseudonyms, encoder checks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import (
    OFFLINE_ENV,
    TINY_SPEC,
    assert_unique,
    breast_like,
    ingest_command,
    row_count,
    rows_by_id,
    table_rows,
    write_csv,
    write_dicom,
    write_png,
    write_pngs,
)
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

import priorcase
from priorcase.errors import EncoderMismatchError, EncoderSpecError
from priorcase.index.manifest import MANIFEST_NAME
from priorcase.ingest.pseudonym import SALT_FILE

FAST = {"workers": 0, "progress": False}


# ---------------------------------------------------------------- labels CSV


def test_labels_join_by_file_column(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    write_png(data / "sub" / "a.png", 1)
    write_png(data / "b.png", 2)
    write_png(data / "c.png", 3)  # no row in the CSV
    csv = write_csv(
        data / "labels.csv",
        ["file", "tissue", "code", "note"],
        [["sub/a.png", "D", "007", ""], ["b.png", "F", "1e3", "  spaced  "]],
    )
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip)
    report = pc.ingest(data, labels=csv, **FAST)
    assert report.stored_images == 3 and report.failures == []
    assert any("1 images have no row" in n for n in report.notes)
    rows = rows_by_id(tmp_path / "db")
    assert set(rows) == {"a", "b", "c"}
    # strings are kept as written (no number parsing), empty cells become None
    assert (rows["a"]["tissue"], rows["a"]["code"], rows["a"]["note"]) == ("D", "007", None)
    assert (rows["b"]["tissue"], rows["b"]["code"], rows["b"]["note"]) == ("F", "1e3", "spaced")
    assert rows["c"]["tissue"] is None
    assert pc.store.manifest.label_columns == ["tissue", "code", "note"]
    hits = {h.id: h for h in pc.search(id="a", k=3)}
    assert set(hits) == {"b", "c"}
    assert hits["b"].labels == {"tissue": "F", "code": "1e3", "note": "spaced"}


@pytest.mark.parametrize("id_column", ["image_id", "id"])
def test_labels_join_by_id_is_file_stem(tmp_path: Path, tiny_clip, id_column: str) -> None:
    data = tmp_path / "data"
    write_pngs(data / "deep" / "er", 3)  # img000..img002
    csv = write_csv(
        tmp_path / "labels.csv",
        [id_column, "pathology"],
        [["img000", "benign"], ["img002", "malignant"]],
    )
    report = priorcase.open(tmp_path / "db", encoder=tiny_clip).ingest(data, labels=csv, **FAST)
    assert report.stored_images == 3 and report.failures == []
    rows = rows_by_id(tmp_path / "db")
    assert {i: r["pathology"] for i, r in rows.items()} == {
        "img000": "benign",
        "img001": None,
        "img002": "malignant",
    }


# ---------------------------------------------------------------- findings and ROIs


def test_findings_make_one_roi_row_per_located_finding(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    write_png(data / "a.png", 1, size=128)
    write_png(data / "b.png", 2, size=128)
    write_png(data / "c.png", 3, size=128)
    findings = write_csv(
        tmp_path / "findings.csv",
        ["image_id", "abnormality", "severity", "x", "y", "radius"],
        [
            ["a", "CIRC", "benign", "40", "50", "10"],
            ["a", "CALC", "malignant", "90.0", "20", "8"],
            ["b", "ASYM", "benign", "", "", ""],  # no coordinates: no ROI
            ["c", "SPIC", "malignant", "64", "64", "30"],
        ],
    )
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip)
    report = pc.ingest(data, findings=findings, **FAST)
    assert (report.stored_images, report.stored_rois, report.failures) == (3, 3, [])
    rows = rows_by_id(tmp_path / "db")
    rois = {i: r for i, r in rows.items() if r["kind"] == "roi"}
    assert set(rois) == {"a-roi1", "a-roi2", "c-roi1"}
    geometry = {i: (r["roi_x"], r["roi_y"], r["roi_radius"]) for i, r in rois.items()}
    assert geometry == {"a-roi1": (40, 50, 10), "a-roi2": (90, 20, 8), "c-roi1": (64, 64, 30)}
    assert {i: r["parent_id"] for i, r in rois.items()} == {
        "a-roi1": "a",
        "a-roi2": "a",
        "c-roi1": "c",
    }
    assert all(r["roi_type"] == "lesion" for r in rois.values())
    assert rois["a-roi2"]["severity"] == "malignant" and rois["a-roi2"]["abnormality"] == "CALC"
    assert all(rows[i]["kind"] == "image" and rows[i]["parent_id"] is None for i in "abc")
    assert pc.store.count("roi") == 3 and pc.store.count("image") == 3
    # an ROI row carries its geometry through to search hits
    hit = next(h for h in pc.search(id="a", k=10, kind="roi") if h.id == "c-roi1")
    assert hit.roi == (64, 64, 30) and hit.parent_id == "c" and hit.labels["roi_type"] == "lesion"


def test_repeated_findings_row_gives_one_roi(tmp_path: Path, tiny_clip) -> None:
    write_pngs(tmp_path / "data", 2)
    findings = write_csv(
        tmp_path / "findings.csv",
        ["image_id", "severity", "x", "y", "radius"],
        [["img000", "benign", "20", "20", "5"]] * 2 + [["img000", "benign", "40", "20", "5"]],
    )
    report = priorcase.open(tmp_path / "db", encoder=tiny_clip).ingest(
        tmp_path / "data", findings=findings, **FAST
    )
    assert report.stored_rois == 2
    rows = assert_unique(tmp_path / "db")
    assert sorted(rows.column("id").to_pylist()) == [
        "img000",
        "img000-roi1",
        "img000-roi2",
        "img001",
    ]


def _normal_and_lesion_films(tmp_path: Path, seed: int, lesion_radius: int):
    """A breast-like normal film and a film with one lesion; returns (folder, findings, mask)."""
    data = tmp_path / "data"
    data.mkdir()
    pixels, mask = breast_like(256, seed=seed)
    Image.fromarray(pixels).save(data / "normal.png")
    write_png(data / "lesion.png", seed + 2, size=256)
    findings = write_csv(
        tmp_path / "findings.csv",
        ["image_id", "severity", "x", "y", "radius"],
        [["lesion", "benign", "100", "100", str(lesion_radius)]],
    )
    return data, findings, mask


def test_normal_roi_sampled_inside_the_breast(tmp_path: Path, tiny_clip) -> None:
    data, findings, mask = _normal_and_lesion_films(tmp_path, 3, lesion_radius=20)
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip)
    report = pc.ingest(data, findings=findings, normal_rois=1, normal_roi_radius=16, **FAST)
    assert report.failures == [] and report.stored_rois == 2
    rows = rows_by_id(tmp_path / "db")
    normal = [r for r in rows.values() if r["kind"] == "roi" and r["parent_id"] == "normal"]
    assert len(normal) == 1
    roi = normal[0]
    assert roi["roi_type"] == "normal" and roi["roi_radius"] == 16
    x, y = roi["roi_x"], roi["roi_y"]
    assert mask[y, x], "normal ROI centre lies outside the breast"
    # the circle lies in the breast, as a lesion does (its crop may reach past the skin line)
    half = int(16 * 2**0.5) // 2
    assert mask[y - half : y + half, x - half : x + half].mean() >= 0.9
    # the image with a finding gets its lesion ROI and no normal one
    lesion = [r for r in rows.values() if r["parent_id"] == "lesion"]
    assert [r["roi_type"] for r in lesion] == ["lesion"]


# ---------------------------------------------------------------- bad inputs


def _make_bad(kind: str, root: Path) -> tuple[list[Path], list[list[str]], list[str]]:
    """Bad input of one kind: (extra sources, extra CSV rows, substrings of its failure line)."""
    bad = root / "bad"
    bad.mkdir()
    if kind == "zero-byte":
        (bad / "empty.png").write_bytes(b"")
        return [bad], [], ["empty.png", "empty file (0 bytes)"]
    if kind == "truncated-png":
        write_png(bad / "trunc.png", 99, size=128)
        data = (bad / "trunc.png").read_bytes()
        (bad / "trunc.png").write_bytes(data[: len(data) // 2])
        return [bad], [], ["trunc.png", "truncated or corrupt image"]
    if kind == "text-as-png":
        (bad / "notes.png").write_text("referral letter, not an image\n")
        return [bad], [], ["notes.png", "not an image"]
    if kind == "dicom-no-pixels":
        write_dicom(bad / "report.dcm", None)
        return [bad], [], ["report.dcm", "no pixel data"]
    if kind == "dicom-compressed":
        write_dicom(
            bad / "jpegls.dcm",
            np.zeros((8, 8), np.uint8),
            transfer_syntax=JPEGLSLossless,
            PixelData=encapsulate([b"\xff\xd8 not really compressed \xff\xd9"]),
        )
        return [bad], [], ["jpegls.dcm", "JPEG-LS"]
    if kind == "csv-missing-file":
        return (
            [],
            [["gone", "good/gone.png", "F"]],
            ["labels.csv line 5", "gone.png does not exist"],
        )
    if kind == "duplicate-stem":
        write_png(bad / "img001.png", 77)  # same stem as good/img001.png, other pixels
        return [bad], [], ["bad/img001.png", "duplicate id 'img001'"]
    if kind == "duplicate-csv-row":
        return (
            [],
            [["img001", "good/img001.png", "X"]],
            [
                "labels.csv line 5",
                "duplicate id 'img001'",
            ],
        )
    raise AssertionError(kind)


BAD_KINDS = [
    "zero-byte",
    "truncated-png",
    "text-as-png",
    "dicom-no-pixels",
    "dicom-compressed",
    "csv-missing-file",
    "duplicate-stem",
    "duplicate-csv-row",
]


def _good_batch(root: Path) -> tuple[list[Path], list[list[str]]]:
    good = write_pngs(root / "good", 3)
    rows = [[p.stem, f"good/{p.name}", "D"] for p in good]
    return good, rows


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_is_one_failure_line_and_good_files_are_stored(
    tmp_path: Path, tiny_clip, kind: str
) -> None:
    root = tmp_path / "in"
    good, rows = _good_batch(root)
    sources, extra_rows, expected = _make_bad(kind, root)
    labels = write_csv(root / "labels.csv", ["image_id", "file", "tissue"], rows + extra_rows)
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    report = pc.ingest([root / "good", *sources], labels=labels, batch_size=2, **FAST)
    assert len(report.failures) == 1, report.failures
    line = report.failures[0]
    assert all(s in line for s in expected), line
    assert "\n" not in line and "Traceback" not in line
    assert report.stored_images == len(good)
    rows_after = assert_unique(db)
    assert sorted(rows_after.column("id").to_pylist()) == sorted(p.stem for p in good)
    assert set(rows_after.column("tissue").to_pylist()) == {"D"}  # duplicate row was ignored

    again = priorcase.open(db, encoder=tiny_clip).ingest(
        [root / "good", *sources], labels=labels, batch_size=2, **FAST
    )
    assert again.stored == 0 and again.duplicates == len(good)
    assert len(again.failures) == 1
    assert assert_unique(db).num_rows == len(good)


def test_all_bad_inputs_together_with_dataloader_workers(tmp_path: Path, tiny_clip) -> None:
    """Every kind of bad input in one run, decoded in 2 DataLoader worker processes."""
    root = tmp_path / "in"
    good, rows = _good_batch(root)
    good += write_pngs(root / "good", 4, prefix="more", start=100)
    rows += [[p.stem, f"good/{p.name}", "D"] for p in good[3:]]
    expected_lines = []
    extra_rows: list[list[str]] = []
    for kind in ["zero-byte", "truncated-png", "text-as-png", "dicom-no-pixels", "duplicate-stem"]:
        sub = root / kind
        sub.mkdir()
        _, more_rows, expected = _make_bad(kind, sub)
        extra_rows += more_rows
        expected_lines.append(expected)
    labels = write_csv(root / "labels.csv", ["image_id", "file", "tissue"], rows + extra_rows)
    db = tmp_path / "db"
    sources = [root / "good"] + [
        root / k
        for k in ["zero-byte", "truncated-png", "text-as-png", "dicom-no-pixels", "duplicate-stem"]
    ]
    report = priorcase.open(db, encoder=tiny_clip).ingest(
        sources, labels=labels, batch_size=3, workers=2, progress=False
    )
    assert report.stored_images == len(good) == 7
    assert len(report.failures) == len(expected_lines), report.failures
    for expected in expected_lines:
        assert sum(all(s in f for s in expected) for f in report.failures) == 1, expected
    again = priorcase.open(db, encoder=tiny_clip).ingest(  # in-process: worker startup is slow
        sources, labels=labels, batch_size=3, **FAST
    )
    assert again.stored == 0 and again.duplicates == 7
    assert assert_unique(db).num_rows == 7


# ---------------------------------------------------------------- patient data


def test_patient_identifiers_never_reach_the_index(tmp_path: Path, tiny_clip) -> None:
    data = tmp_path / "data"
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4000
    write_dicom(
        data / "study1.dcm",
        pixels.astype(np.uint16),
        PatientName="Doe^Jane",
        PatientID="MRN-778899",
        PatientBirthDate="19610203",
        AccessionNumber="ACC4242",
    )
    write_png(data / "film2.png", 4)
    write_png(data / "film3.png", 5)
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "patient_id", "tissue"],
        [["film2", "HOSP-551234", "F"], ["film3", "HOSP-551234", "G"]],
    )
    db = tmp_path / "db"
    pc = priorcase.open(db, encoder=tiny_clip)
    report = pc.ingest(data, labels=labels, **FAST)
    assert report.stored_images == 3 and report.failures == []

    secrets = [
        "Doe",
        "Jane",
        "MRN-778899",
        "778899",
        "19610203",
        "ACC4242",
        "HOSP-551234",
        "551234",
    ]
    table = table_rows(db)
    for name in table.column_names:
        column = table.column(name)
        if str(column.type) not in ("string", "large_string"):
            continue
        for value in column.to_pylist():
            for secret in secrets:
                assert secret not in (value or ""), f"{secret!r} stored in column {name!r}"
    manifest = (db / MANIFEST_NAME).read_text()
    assert not any(s in manifest for s in secrets)
    # nor anywhere in the files LanceDB wrote
    long_secrets = [s for s in secrets if len(s) >= 6]  # short ones occur in binary by chance
    for path in db.rglob("*"):
        if path.is_file() and path.name != SALT_FILE:
            blob = path.read_bytes()
            assert not any(s.encode() in blob for s in long_secrets), f"identifier in {path}"

    rows = rows_by_id(db)
    assert rows["study1"]["patient"].startswith("anon-")
    assert rows["film2"]["patient"].startswith("anon-")
    assert rows["film2"]["patient"] == rows["film3"]["patient"] == rows["film2"]["group"]
    assert rows["study1"]["patient"] != rows["film2"]["patient"]
    assert "patient_id" not in table.column_names
    assert rows["study1"]["modality"] == "MG"  # safe DICOM metadata is kept


# ---------------------------------------------------------------- encoders


def test_index_refuses_another_encoder(tmp_path: Path, bundled, tiny_clip) -> None:
    data = tmp_path / "data"
    files = write_pngs(data, 2)
    db = tmp_path / "db"
    assert priorcase.open(db, encoder=bundled).ingest(data, **FAST).stored_images == 2
    more = write_pngs(tmp_path / "more", 2, start=10)

    with pytest.raises(EncoderMismatchError) as err:
        priorcase.open(db, encoder=tiny_clip).ingest(more, **FAST)
    assert "'bundled'" in str(err.value) and TINY_SPEC in str(err.value)
    with pytest.raises(EncoderMismatchError) as err:
        priorcase.open(db, encoder=tiny_clip).search(image=files[0])
    assert "'bundled'" in str(err.value) and TINY_SPEC in str(err.value)
    with pytest.raises(EncoderMismatchError, match="bundled"):
        priorcase.open(db, encoder=TINY_SPEC)
    assert row_count(db) == 2
    # the right encoder still works on the untouched index
    assert priorcase.open(db, encoder=bundled).search(image=files[0], k=1)[0].id == files[0].stem


def test_unknown_encoder_spec(tmp_path: Path) -> None:
    write_pngs(tmp_path / "data", 1)
    pc = priorcase.open(tmp_path / "db", encoder="resnet:whatever")
    with pytest.raises(EncoderSpecError) as err:
        pc.ingest(tmp_path / "data", **FAST)
    msg = str(err.value)
    assert "unknown encoder spec 'resnet:whatever'" in msg and "bundled" in msg and "\n" not in msg
    assert row_count(tmp_path / "db") == 0


# ---------------------------------------------------------------- crash safety


def test_sigkill_mid_ingest_then_rerun_stores_everything_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = write_pngs(data, 60)
    findings_rows = [[f"img{i:03d}", "benign", "20", "30", "8"] for i in range(0, 60, 3)]
    findings = write_csv(
        tmp_path / "findings.csv", ["image_id", "severity", "x", "y", "radius"], findings_rows
    )
    db = tmp_path / "db"
    cmd = ingest_command(data, "--db", db, "--findings", findings, "--batch-size", "4")
    proc = subprocess.Popen(cmd, env=OFFLINE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while row_count(db) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "ingest finished before it could be killed"
        assert row_count(db) > 0, "no rows committed within the deadline"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = row_count(db)
    assert 0 < partial < 60 + len(findings_rows)

    done = subprocess.run(cmd, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_unique(db)
    kinds = rows.column("kind").to_pylist()
    ids = rows.column("id").to_pylist()
    assert sorted(i for i, k in zip(ids, kinds, strict=True) if k == "image") == sorted(
        p.stem for p in files
    )
    assert sorted(i for i, k in zip(ids, kinds, strict=True) if k == "roi") == sorted(
        f"{r[0]}-roi1" for r in findings_rows
    )
    assert "skipped" in done.stdout and "0 failed" in done.stdout


def test_normal_roi_radius_matches_the_lesion_radii(tmp_path: Path, tiny_clip) -> None:
    data, findings, mask = _normal_and_lesion_films(tmp_path, 4, lesion_radius=22)
    pc = priorcase.open(tmp_path / "db", encoder=tiny_clip)
    pc.ingest(data, findings=findings, normal_rois=1, **FAST)  # no fixed radius given
    rows = rows_by_id(tmp_path / "db")
    normal = [r for r in rows.values() if r["kind"] == "roi" and r["parent_id"] == "normal"]
    assert [r["roi_radius"] for r in normal] == [22]  # the only lesion radius on offer
    assert mask[normal[0]["roi_y"], normal[0]["roi_x"]]
