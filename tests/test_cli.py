"""The ``priorcase`` command line: exit codes, summaries, JSON output, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import TINY_SPEC, row_count, write_csv, write_pngs

from priorcase.cli import main

HIT_KEYS = {"id", "score", "kind", "labels", "metadata"}  # never the source path


def _ingest(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(["ingest", *argv, "--quiet", "--workers", "0"])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


@pytest.fixture
def tiny_db(tmp_path: Path, tiny_arch: str, capsys) -> tuple[Path, Path]:
    """A CLI-built index with the tiny open_clip encoder: 4 labelled images, 1 ROI."""
    data = tmp_path / "data"
    write_pngs(data, 4, size=64)
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "tissue", "patient_id"],
        [["img000", "D", "A"], ["img001", "F", "A"], ["img002", "D", "B"], ["img003", "G", "C"]],
    )
    findings = write_csv(
        tmp_path / "findings.csv", ["image_id", "severity", "x", "y", "radius"],
        [["img001", "benign", "30", "30", "10"]],
    )  # fmt: skip
    db = tmp_path / "db"
    code, lines, _ = _ingest(
        capsys, str(data), "--db", str(db), "--encoder", TINY_SPEC,
        "--labels", str(labels), "--findings", str(findings),
    )  # fmt: skip
    assert code == 0 and lines[0].startswith("stored 4 images and 1 ROIs"), lines
    return db, data


def test_ingest_summary_and_exit_codes(tmp_path: Path, tiny_arch: str, capsys) -> None:
    data = tmp_path / "data"
    write_pngs(data, 3)
    (data / "notes.png").write_text("not an image")
    (data / "empty.png").write_bytes(b"")
    db = tmp_path / "db"
    code, lines, _ = _ingest(capsys, str(data), "--db", str(db), "--encoder", TINY_SPEC)
    assert code == 0
    assert lines[0].startswith(
        f"stored 3 images and 0 ROIs, skipped 0 duplicates, 2 failed (encoder {TINY_SPEC}, "
    )
    failed = [line for line in lines if line.startswith("  failed: ")]
    assert len(failed) == 2 and len(lines) == 3
    assert any("notes.png: not an image" in line for line in failed)
    assert any("empty.png: empty file (0 bytes)" in line for line in failed)

    # the same folder again: nothing new, the good files are known duplicates
    write_pngs(tmp_path / "more", 2, prefix="new", start=50)
    code, lines, _ = _ingest(capsys, str(tmp_path / "more"), str(data / "img000.png"),
                             "--db", str(db), "--encoder", TINY_SPEC)  # fmt: skip
    assert code == 0 and lines[0].startswith("stored 2 images and 0 ROIs, skipped 1 duplicates")
    code, lines, _ = _ingest(capsys, str(data / "img001.png"), "--db", str(db))
    assert code == 0 and lines[0].startswith("stored 0 images and 0 ROIs, skipped 1 duplicates")
    assert row_count(db) == 5


def test_ingest_fails_when_nothing_can_be_stored(tmp_path: Path, tiny_arch: str, capsys) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("text")
    (bad / "b.png").write_bytes(b"")
    code, lines, _ = _ingest(capsys, str(bad), "--db", str(tmp_path / "db"), "--encoder", TINY_SPEC)
    assert code != 0
    assert lines[0].startswith("stored 0 images and 0 ROIs, skipped 0 duplicates, 2 failed")
    assert sum(line.startswith("  failed: ") for line in lines) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, _ = _ingest(capsys, str(empty), "--db", str(tmp_path / "db2"), "--encoder", TINY_SPEC)
    assert code != 0


def test_ingest_bad_labels_csv_is_a_one_line_error(tmp_path: Path, tiny_arch: str, capsys) -> None:
    write_pngs(tmp_path / "data", 1)
    labels = write_csv(tmp_path / "labels.csv", ["name", "tissue"], [["img000", "D"]])
    code = main(["ingest", str(tmp_path / "data"), "--db", str(tmp_path / "db"),
                 "--encoder", TINY_SPEC, "--labels", str(labels), "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("priorcase: error: ")
    assert "labels.csv" in err and "'image_id'" in err


def test_search_json_contract(tiny_db, capsys) -> None:
    db, data = tiny_db
    code = main(["search", "--db", str(db), "--image", str(data / "img002.png"), "-k", "3",
                 "--json"])  # fmt: skip
    out, _err = capsys.readouterr()
    assert code == 0
    payload = json.loads(out)  # exactly one JSON document on stdout
    assert out.strip().count("\n") == 0
    assert set(payload) == {"encoder", "library", "reference", "warning", "results"}
    assert payload["encoder"] == TINY_SPEC and payload["library"]["encoder"] == TINY_SPEC
    assert set(payload["reference"]) == {"top_score", "percentile", "status"}
    results = payload["results"]
    assert len(results) == 3 and results[0]["id"] == "img002" and results[0]["score"] > 0.99
    for hit in results:
        assert set(hit) >= HIT_KEYS
        assert isinstance(hit["id"], str) and isinstance(hit["score"], float)
        assert hit["kind"] in ("image", "roi") and "path" not in hit
        assert isinstance(hit["labels"], dict) and isinstance(hit["metadata"], dict)
    assert results[0]["labels"]["tissue"] == "D"
    assert results[0]["metadata"]["width"] == "64"

    code = main(["search", "--db", str(db), "--id", "img000", "--kind", "roi", "--json"])
    roi = json.loads(capsys.readouterr().out)["results"]
    assert code == 0 and [h["id"] for h in roi] == ["img001-roi1"]
    assert roi[0]["parent_id"] == "img001" and roi[0]["roi"] == {"x": 30, "y": 30, "radius": 10}
    assert roi[0]["labels"]["roi_type"] == "lesion"

    code = main(["search", "--db", str(db), "--text", "dense", "-k", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and len(json.loads(out)["results"]) == 2


def test_search_table_output_and_filters(tiny_db, capsys) -> None:
    db, _data = tiny_db
    code = main(["search", "--db", str(db), "--id", "img000", "--where", "tissue = 'D'",
                 "--exclude-same-patient"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["#", "id", "score", "(pct)", "kind", "labels"]
    assert [line.split()[1] for line in out[1:]] == ["img002"]  # img001 is patient A
    code = main(["search", "--db", str(db), "--id", "img000", "--where", "tissue = 'Z'"])
    assert code == 0 and capsys.readouterr().out.strip() == "no matching cases"


def test_invalid_where_exits_2_with_one_line(tiny_db, capsys) -> None:
    db, data = tiny_db
    code = main(["search", "--db", str(db), "--image", str(data / "img000.png"),
                 "--where", "tissue = = 'D'"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("priorcase: error: invalid --where") and err.count("\n") == 1
    assert "Traceback" not in err
    assert row_count(db) == 5


def test_search_refuses_another_encoder(tiny_db, capsys) -> None:
    db, _data = tiny_db
    code = main(["search", "--db", str(db), "--id", "img000", "--encoder", "bundled"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("priorcase: error: ") and err.count("\n") == 1
    assert TINY_SPEC in err and "'bundled'" in err


def test_text_search_json_stays_clean_with_bundled(tmp_path: Path, bundled, capsys) -> None:
    """Aligner-training notices must not corrupt ``--json`` stdout."""
    import priorcase

    data = tmp_path / "data"
    write_pngs(data, 4)
    labels = write_csv(
        tmp_path / "labels.csv",
        ["image_id", "pathology"],
        [["img000", "benign"], ["img001", "malignant"], ["img002", "normal"]],
    )
    db = tmp_path / "db"
    priorcase.open(db, encoder=bundled).ingest(data, labels=labels, workers=0, progress=False)
    code = main(["search", "--db", str(db), "--text", "malignant mass", "-k", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    payload = json.loads(out)
    assert payload["encoder"] == "bundled" and len(payload["results"]) == 2
    assert "learning text-image alignment" in err


def test_console_script_error_has_no_traceback(tiny_db) -> None:
    """The installed ``priorcase`` script, in a real process: exit 2 and one stderr line."""
    db, _ = tiny_db
    exe = Path(sys.executable).parent / "priorcase"
    if not exe.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    done = subprocess.run(
        [str(exe), "search", "--db", str(db), "--id", "img000", "--where", "nosuchcol >"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert (
        done.stderr.startswith("priorcase: error: invalid --where") and done.stderr.count("\n") == 1
    ), done.stderr


@pytest.mark.mias
def test_mias_ingest_contract(tmp_path: Path, mias, bundled, capsys) -> None:
    with open(mias.findings, newline="") as fh:
        located = [r for r in csv.DictReader(fh) if r["x"] and r["y"] and r["radius"]]
    images = sorted(mias.images.glob("*.png"))
    db = tmp_path / "mias-db"
    code = main(["ingest", str(mias.images), "--labels", str(mias.labels),
                 "--findings", str(mias.findings), "--db", str(db), "--encoder", "bundled",
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"stored {len(images)} images and {len(located)} ROIs"), out
    import priorcase

    pc = priorcase.open(db, encoder=bundled)
    assert pc.store.count("image") == len(images) == 216
    assert pc.store.count("roi") == len(located)
    rows = pc.store.table.to_arrow()
    ids = rows.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    # every located finding is an ROI row on its parent, with the CSV geometry
    stored = {
        (r["parent_id"], r["roi_x"], r["roi_y"], r["roi_radius"])
        for r in rows.to_pylist()
        if r["kind"] == "roi"
    }
    assert stored == {(r["image_id"], int(r["x"]), int(r["y"]), int(r["radius"])) for r in located}
    hit = pc.search(id="mdb001", k=1, where="tissue = 'G'")[0]
    assert hit.labels["tissue"] == "G"
