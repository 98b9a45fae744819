"""Source images on object storage: ``priorcase ingest s3://bucket/prefix/`` against a real S3
server (moto's server mode on a random port, the fixtures of test_object_storage), with the
local engine into a local and an ``s3://`` library, and with ``--engine ray`` (slow). The
objects give the same ids, rows and vectors as the same files in a local folder; a bad object
is one line naming its URI; the patient name in an object key is stored nowhere."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_object_storage as storage
from fixtures import assert_same_rows, rows_by_id, write_dicom
from test_object_storage import ACCESS, BUCKET, SECRET

import priorcase
from priorcase.cli import main
from priorcase.index.location import LibraryLocation
from priorcase.ingest.sources import ObjectFile

FILMS = [f"mdb{n:03d}" for n in (1, 2, 3, 4, 7, 8)]
# the S3 server and AWS variables of test_object_storage (one server for this module)
s3_server, s3_env = storage.s3_server, storage.s3_env
NAME = "Doe_Jane"  # a patient's name, as PACS exports put it in folder names
QUIET = {"progress": False, "workers": 0, "batch_size": 8}


@pytest.fixture(scope="module")
def sources(s3_env, mias, tmp_path_factory):
    """6 MIAS films, a DICOM film in a folder named after its patient, an extension-less
    DICOM, a corrupt PNG, a hidden file and a note: in a local folder and under
    ``s3://BUCKET/src/``. One salt for every library of the module (same pseudonyms)."""
    client, _ = s3_env
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIORCASE_SALT", "s3-sources-test-salt")
    folder = tmp_path_factory.mktemp("src") / "films"
    folder.mkdir()
    for name in FILMS:
        film = mias.images / f"{name}.png"
        if not film.exists():
            pytest.skip(f"MIAS film {film.name} not found")
        shutil.copy(film, folder / film.name)
    pixels = np.asarray(np.linspace(0, 4000, 128 * 128).reshape(128, 128), dtype=np.uint16)
    write_dicom(folder / NAME / "scan-1.dcm", pixels, PatientName="Doe^Jane", PatientID="DOE-77")
    write_dicom(folder / NAME / "1.2.826.0.1.99", pixels[::-1].copy(), PatientID="DOE-77")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "skip.png").write_bytes((folder / f"{FILMS[0]}.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = "src/" + path.relative_to(folder).as_posix()
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    yield folder, f"s3://{BUCKET}/src/"
    mp.undo()


@pytest.fixture(scope="module")
def local_rows(sources, bundled, tmp_path_factory):
    """The rows of the local folder ingested in one process: what the objects must give."""
    folder, _ = sources
    db = tmp_path_factory.mktemp("local") / "db"
    report = priorcase.open(db, encoder=bundled, notify=lambda m: None).ingest(folder, **QUIET)
    assert report.stored_images == len(FILMS) + 2 and len(report.failures) == 1
    return rows_by_id(db)


def _remote_rows(db: str) -> dict[str, dict]:
    table = LibraryLocation.parse(db).connect().open_table("cases").to_arrow()
    return {r["id"]: r for r in table.to_pylist()}


def _no_name_in(rows: dict[str, dict], *texts: str) -> None:
    for text in (json.dumps(rows, default=str), *texts):
        assert NAME not in text and "Doe" not in text and "DOE-77" not in text


@pytest.mark.mias
def test_s3_prefix_ingests_like_the_local_folder(
    sources, local_rows, tmp_path: Path, capsys
) -> None:
    folder, uri = sources
    db = tmp_path / "db"
    args = ["ingest", uri, "--db", str(db), "--encoder", "bundled", "--quiet", "--workers", "0"]
    assert main(args) == 0
    out = capsys.readouterr()
    rows = rows_by_id(db)
    assert_same_rows(rows, local_rows)
    assert set(rows) == {*FILMS, "scan-1", "1.2.826.0.1.99"}
    dicom = rows["scan-1"]
    assert (
        dicom["patient"].startswith("anon-")
        and dicom["patient"] == rows["1.2.826.0.1.99"]["patient"]
    )
    # one line for the corrupt object, naming its URI; the hidden object and the note left out
    failures = [line for line in out.out.splitlines() if "broken.png" in line]
    assert len(failures) == 1
    assert (
        failures[0].strip()
        == f"failed: s3://{BUCKET}/src/broken.png: truncated or corrupt image: Truncated File Read"
    )
    assert "1 files are not images and were left out (.txt 1)" in out.out
    manifest = (db / "priorcase-manifest.json").read_text()
    _no_name_in(rows, out.out, out.err, manifest)
    assert SECRET not in out.out + out.err + manifest and ACCESS not in out.out + out.err
    assert "s3://" not in json.dumps(rows, default=str) + manifest  # no source location kept

    # a re-run stores nothing; the same bytes from the local folder are duplicates too
    pc = priorcase.open(db, notify=lambda m: None)
    again = pc.ingest(uri, **QUIET)
    assert again.stored == 0 and again.duplicates == len(FILMS) + 2 and len(again.failures) == 1
    local = pc.ingest(folder, **QUIET)
    assert local.stored == 0 and local.duplicates == len(FILMS) + 2


@pytest.mark.mias
def test_s3_sources_into_an_s3_library(sources, local_rows, bundled) -> None:
    _, uri = sources
    db = f"s3://{BUCKET}/from-objects"
    one = f"s3://{BUCKET}/src/{FILMS[0]}.png"  # an object named on its own, and in its prefix
    pc = priorcase.open(db, encoder=bundled, notify=lambda m: None)
    report = pc.ingest([one, uri], **QUIET)
    assert report.stored_images == len(FILMS) + 2 and len(report.failures) == 1
    rows = _remote_rows(db)
    assert_same_rows(rows, local_rows)
    manifest = LibraryLocation.parse(db).file("priorcase-manifest.json").read_bytes()
    _no_name_in(rows, report.summary(), manifest.decode())
    assert pc.ingest(uri, **QUIET).stored == 0


def test_unreadable_objects_are_one_line_each(s3_env, bundled, tmp_path: Path, monkeypatch):
    """A missing bucket, a missing object and a plain-http endpoint without AWS_ALLOW_HTTP:
    one line each naming the URI, never the credentials; the objects pickle without them."""
    client, _ = s3_env
    client.put_object(Bucket=BUCKET, Key="few/.keep/x.png", Body=b"hidden")
    pc = priorcase.open(tmp_path / "db", encoder=bundled, notify=lambda m: None)
    missing = f"s3://{BUCKET}/few/gone.png"
    report = pc.ingest(["s3://no-such-bucket/films/", missing], **QUIET)
    assert report.stored == 0 and len(report.failures) == 2, report.failures
    assert report.failures[0].startswith("s3://no-such-bucket/films: ")
    assert report.failures[1] == f"{missing}: object not found"
    text = report.summary() + pickle.dumps(ObjectFile(missing)).decode("latin-1")
    assert SECRET not in text and ACCESS not in text
    # only hidden objects under the prefix: nothing found, nothing read
    assert pc.ingest(f"s3://{BUCKET}/few", **QUIET).notes[-1].startswith("no image files")

    monkeypatch.delenv("AWS_ALLOW_HTTP")
    report = pc.ingest([f"s3://{BUCKET}/few/"], **QUIET)
    assert len(report.failures) == 1 and "set AWS_ALLOW_HTTP=true" in report.failures[0]
    assert report.failures[0].startswith(f"s3://{BUCKET}/few: ")


@pytest.mark.slow
@pytest.mark.mias
def test_ray_workers_read_the_objects(sources, local_rows, bundled, tmp_path: Path) -> None:
    """--engine ray on a local cluster started with the AWS variables in its environment (as
    every node of a deployment has them): the hash and decode tasks read the objects."""
    ray = pytest.importorskip("ray")
    from priorcase.ingest.ray_engine import RayEngine

    _, uri = sources
    tests = Path(__file__).resolve().parent
    path = os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])
    assert not ray.is_initialized()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}},
    )
    try:
        pc = priorcase.open(tmp_path / "db", encoder=bundled, notify=lambda m: None)
        report = pc.ingest(uri, engine=RayEngine(workers=1), **QUIET)
        assert report.stored_images == len(FILMS) + 2 and len(report.failures) == 1
        assert report.failures[0].startswith(f"s3://{BUCKET}/src/broken.png: ")
        assert_same_rows(rows_by_id(tmp_path / "db"), local_rows)
    finally:
        ray.shutdown()
