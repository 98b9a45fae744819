"""``priorcase ingest --engine ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``):
the same rows and vectors as one process, every file stored exactly once when an embedding
actor dies mid-run or the driver is killed and run again, and no Ray without ``--engine ray``.

The default run starts one cluster for the module (a few seconds); MIAS, the killed driver
and the workers' salt check run with ``--slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import (
    OFFLINE_ENV,
    assert_same_rows,
    assert_unique,
    breast_like,
    row_count,
    rows_by_id,
    write_csv,
    write_dicom,
    write_pngs,
)

import priorcase
from priorcase.ingest.pseudonym import SALT_FILE
from priorcase.records import IngestReport

ray = pytest.importorskip("ray")

from priorcase.ingest.ray_engine import Embedder, RayEngine  # noqa: E402

CRASH_FLAG_ENV = "PRIORCASE_TEST_CRASH_FLAG"
TESTS = Path(__file__).resolve().parent
FAST = {"progress": False, "workers": 0, "batch_size": 4}


class CrashOnceEmbedder(Embedder):
    """Kills its own worker process on its second batch, once per cluster (a flag file
    records it), as an OOM kill or a lost node would."""

    calls = 0

    def __call__(self, batch):
        CrashOnceEmbedder.calls += 1
        flag = Path(os.environ[CRASH_FLAG_ENV])
        if CrashOnceEmbedder.calls == 2 and not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A local two-CPU Ray cluster whose workers import this checkout and these tests."""
    flag = tmp_path_factory.mktemp("ray") / "crashed"
    path = os.pathsep.join([str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", CRASH_FLAG_ENV: str(flag)}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    yield flag
    ray.shutdown()


def _films(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` mammography-like DICOM films (two patients), two PNGs, one broken file, and
    findings for two of the films."""
    data = root / "data"
    for i in range(n):
        pixels, _ = breast_like(256, seed=i)
        write_dicom(data / f"film{i}.dcm", pixels, PatientID=f"P{i % 2}", Laterality="L")
    write_pngs(data, 2, prefix="plain")
    (data / "broken.png").write_bytes(b"not a png")
    findings = write_csv(
        root / "findings.csv",
        ["image_id", "severity", "x", "y", "radius"],
        [["film0", "benign", "60", "120", "20"], ["film1", "malignant", "80", "100", "24"]],
    )
    return data, findings


def _same_report(a: IngestReport, b: IngestReport) -> None:
    counts = ("stored_images", "stored_rois", "stored_tiles", "updated", "duplicates")
    assert [getattr(a, c) for c in counts] == [getattr(b, c) for c in counts]
    assert a.failures == b.failures and a.notes == b.notes


def _same_rows(one: Path, other: Path) -> None:
    assert_same_rows(rows_by_id(one), rows_by_id(other))


def _ingest(db: Path, encoder, data: Path, **options) -> IngestReport:
    return priorcase.open(db, encoder=encoder, notify=lambda m: None).ingest(data, **options)


def test_ray_ingest_matches_one_process_and_reruns_store_nothing(
    cluster, tmp_path: Path, bundled
) -> None:
    data, findings = _films(tmp_path, 3)
    views = {"findings": findings, "modality": "MG", "tile_sizes": (128,), **FAST}
    single = _ingest(tmp_path / "single", bundled, data, **views)
    assert single.stored_images == 5 and single.stored_rois == 2 and single.stored_tiles > 3
    assert len(single.failures) == 1 and "broken.png" in single.failures[0]

    # the same salt, so the DICOM PatientIDs get the same pseudonyms on the Ray workers
    (tmp_path / "ray").mkdir()
    shutil.copy(tmp_path / "single" / SALT_FILE, tmp_path / "ray" / SALT_FILE)
    engine = RayEngine(workers=1)
    distributed = _ingest(tmp_path / "ray", bundled, data, engine=engine, **views)
    _same_report(single, distributed)
    _same_rows(tmp_path / "single", tmp_path / "ray")
    patients = {r["patient"] for r in rows_by_id(tmp_path / "ray").values()}
    assert len(patients - {None}) == 2 and all(p.startswith("anon-") for p in patients - {None})

    # a re-run stores nothing twice and re-embeds nothing: tiles are not findings' ROIs
    again = _ingest(tmp_path / "ray", bundled, data, engine=engine, **views)
    assert again.stored == 0 and again.updated == 0 and again.duplicates == 5
    assert len(again.failures) == 1
    assert_unique(tmp_path / "ray")


def test_killed_embedding_actor_still_stores_every_file_once(
    cluster, tmp_path: Path, bundled
) -> None:
    files = write_pngs(tmp_path / "data", 8)
    engine = RayEngine(workers=1, embedder=CrashOnceEmbedder)
    report = _ingest(
        tmp_path / "db", bundled, tmp_path / "data", engine=engine, **{**FAST, "batch_size": 2}
    )
    assert cluster.exists(), "the embedding actor was never killed"
    assert report.stored_images == 8 and report.duplicates == 0 and report.failures == []
    rows = assert_unique(tmp_path / "db")
    assert sorted(rows.column("id").to_pylist()) == sorted(p.stem for p in files)


@pytest.mark.slow
def test_workers_without_the_salt_are_refused_in_one_line(
    cluster, tmp_path: Path, bundled, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pngs(tmp_path / "data", 2)
    # the driver's salt comes from its environment, which the cluster's workers lack
    monkeypatch.setenv("PRIORCASE_SALT", "driver-only-secret")
    with pytest.raises(priorcase.errors.PriorcaseError) as err:
        _ingest(tmp_path / "db", bundled, tmp_path / "data", engine=RayEngine(workers=1), **FAST)
    message = str(err.value)
    assert "no pseudonym salt" in message and "PRIORCASE_KEY_FILE" in message
    assert "\n" not in message and "driver-only-secret" not in message
    assert row_count(tmp_path / "db") == 0


_PROBE = (
    "import sys\n"
    "{block}\n"
    "from priorcase.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('ray imported:', 'ray' in sys.modules)\n"
    "sys.exit(rc)\n"
)


def _cli(tmp_path: Path, *args: str, block: str = "") -> subprocess.CompletedProcess:
    write_pngs(tmp_path / "data", 2)
    cmd = [
        sys.executable, "-c", _PROBE.format(block=block), "ingest", str(tmp_path / "data"),
        "--db", str(tmp_path / "db"), "--encoder", "bundled", "--workers", "0", "--quiet", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=OFFLINE_ENV)


def test_local_ingest_never_imports_ray(tmp_path: Path) -> None:
    done = _cli(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stored 2 images" in done.stdout and "ray imported: False" in done.stdout


def test_missing_ray_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    done = _cli(tmp_path, "--engine", "ray", block="sys.modules['ray'] = None  # not installed")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("priorcase:")]
    assert errors == [
        "priorcase: error: --engine ray needs Ray, which is not installed: "
        "pip install 'priorcase[ray]'"
    ]
    assert row_count(tmp_path / "db") == 0


# ---------------------------------------------------------------- slow: MIAS, killed driver
# (the workers' salt check above is slow too: a failing Ray job takes ~10 s to unwind)


@pytest.mark.slow
def test_mias_on_two_workers_matches_one_process(cluster, tmp_path: Path, bundled, mias) -> None:
    films = sorted(mias.images.glob("*.png"))[:8]
    data = tmp_path / "data"
    data.mkdir()
    for film in films:
        (data / film.name).symlink_to(film)
    views = {"findings": mias.findings, "labels": mias.labels, "modality": "MG", **FAST}
    single = _ingest(tmp_path / "single", bundled, data, **views)
    assert single.stored_images == 8 and single.stored_tiles > 8 * 10
    (tmp_path / "ray").mkdir()
    shutil.copy(tmp_path / "single" / SALT_FILE, tmp_path / "ray" / SALT_FILE)
    distributed = _ingest(tmp_path / "ray", bundled, data, engine=RayEngine(workers=2), **views)
    _same_report(single, distributed)
    _same_rows(tmp_path / "single", tmp_path / "ray")


@pytest.mark.slow
def test_killed_ray_driver_then_rerun_stores_every_file_once(tmp_path: Path) -> None:
    files = write_pngs(tmp_path / "data", 24)
    db = tmp_path / "db"
    cmd = [
        sys.executable, "-m", "priorcase.cli", "ingest", str(tmp_path / "data"), "--db", str(db),
        "--encoder", "bundled", "--quiet", "--engine", "ray", "--workers", "1",
        "--batch-size", "2",
    ]  # fmt: skip
    env = {**OFFLINE_ENV, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while row_count(db) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "ingest finished before it could be killed"
        assert 0 < row_count(db) < 24, "no rows committed within the deadline"
        proc.send_signal(signal.SIGKILL)  # the driver only: its cluster goes down with it
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = row_count(db)
    assert 0 < partial < 24

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_unique(db)
    assert sorted(rows.column("id").to_pylist()) == sorted(p.stem for p in files)
    assert f"stored {24 - partial} images" in done.stdout
    assert f"skipped {partial} duplicates, 0 failed" in done.stdout
