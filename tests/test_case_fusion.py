"""Case-level fusion (issue 9): a film read against the same patient's other breast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_csv
from PIL import Image
from test_lesion import film
from threadpoolctl import threadpool_limits

import priorcase
from priorcase.classifiers.case_fusion import CaseFusionClassifier, CaseLayout
from priorcase.classifiers.tiles import TileData, TileMILClassifier
from priorcase.cli import main

FAST = {"workers": 0, "progress": False}
RIGHT_BLOB, LEFT_BLOB = (200, 160), (55, 160)  # mirrored positions on a 256-px-wide film


def _patients(folder: Path) -> tuple[Path, Path, Path]:
    """Twenty patients, a left and a right film each, the same bright blob everywhere it is:
    8 with it on one side only (that film malignant, a finding), 8 with it on both sides at
    mirrored places (normal: symmetric tissue), 4 with none. Only the comparison of the two
    breasts tells a malignant film from a symmetric normal one."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows, findings = [], []
    for p in range(20):
        kind = "asym" if p < 8 else "sym" if p < 16 else "plain"
        for side in ("R", "L"):
            blob = RIGHT_BLOB if side == "R" else LEFT_BLOB
            lesion = kind == "asym" and side == ("R" if p % 2 else "L")
            has_blob = lesion or kind == "sym"
            shift = (p % 3) * 8  # the blob moves a little from patient to patient
            at = (blob[0] + (shift if side == "R" else -shift), blob[1] + shift)
            pixels, _ = film("right" if side == "R" else "left", at if has_blob else None, p)
            name = f"p{p:02d}{side}"
            Image.fromarray(pixels).save(images / f"{name}.png")
            rows.append([name, f"images/{name}.png", f"P{p:02d}", side, kind])
            rows[-1].append("malignant" if lesion else "normal")
            if lesion:
                findings.append([name, "CIRC", "malignant", at[0], at[1], 15])
    labels = write_csv(
        folder / "images.csv",
        ["image_id", "file", "patient_id", "laterality", "pattern", "pathology"],
        rows,
    )
    found = write_csv(
        folder / "findings.csv",
        ["image_id", "abnormality", "severity", "x", "y", "radius"],
        findings,
    )
    return images, labels, found


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """On a shared 2-core machine two BLAS threads per process spin against each other:
    the many small logistic fits here ran 12x slower under load (same results either way)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def case_library(tmp_path_factory, tiny_clip):
    folder = tmp_path_factory.mktemp("cases")
    images, labels, found = _patients(folder)
    pc = priorcase.open(folder / "db", encoder=tiny_clip)
    pc.ingest(images, labels=labels, findings=found, modality="MG", tile_sizes=(64,), **FAST)
    return pc


def _films(pc) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    pathology = pc.store.column_values("pathology", "image")
    pattern = pc.store.column_values("pattern", "image")
    ids = np.array(sorted(pathology), dtype=object)
    layout = CaseLayout.from_store(pc.store)
    groups = np.array([layout.patient[i] for i in ids], dtype=object)
    y = np.array(["malignant" if pathology[i] == "malignant" else "normal" for i in ids])
    return ids, y, groups, {i: str(pattern[i]) for i in ids}


def test_partners_are_the_same_patients_other_breast_only(case_library) -> None:
    layout = CaseLayout.from_store(case_library.store)
    assert len(layout.patient) == 40
    for film_id, patient in layout.patient.items():
        partners = layout.partners(film_id)
        assert len(partners) == 1, film_id
        (other,) = partners
        assert layout.patient[other] == patient and layout.side[other] != layout.side[film_id]
    # mirrored positions: the blob's tile on a right film maps onto the left film's blob tile
    boxes = np.array([[RIGHT_BLOB[0] - 32, 128, RIGHT_BLOB[0] + 32, 192]])
    mirror = np.array([[LEFT_BLOB[0] - 32, 128, LEFT_BLOB[0] + 32, 192]])
    assert np.allclose(layout.positions("p16R", boxes), layout.positions("p16L", mirror), atol=0.03)


def test_mirrored_asymmetry_scores_above_a_symmetric_pair(case_library) -> None:
    pc = case_library
    ids, y, groups, pattern = _films(pc)
    tiles = TileData.from_library(pc.core)
    layout = CaseLayout.from_store(pc.store)
    test_patients = {"P06", "P07", "P14", "P15"}  # two asymmetric, two symmetric
    # group names are pseudonyms: the patient is read from the film's name
    held = np.array([i[:3].upper() in test_patients for i in ids])
    train = ~held

    fused = CaseFusionClassifier(lambda: TileMILClassifier(tiles), layout).fit(
        ids[train], y[train], groups[train]
    )
    alone = TileMILClassifier(tiles).fit(ids[train], y[train], groups[train])
    col = list(fused.classes_).index("malignant")
    p_fused = fused.predict_proba(ids[held])[:, col]
    p_alone = alone.predict_proba(ids[held])[:, col]
    lesion = y[held] == "malignant"
    symmetric = np.array([pattern[i] == "sym" for i in ids[held]])
    assert lesion.sum() == 2 and symmetric.sum() == 4
    # the fused score puts every lesion film above every symmetric film
    assert p_fused[lesion].min() > p_fused[symmetric].max()
    # ... which the tile head alone (same blob on both) does less well
    margin_fused = p_fused[lesion].min() - p_fused[symmetric].max()
    margin_alone = p_alone[lesion].min() - p_alone[symmetric].max()
    assert margin_fused > margin_alone
    features = fused.features(ids[held])
    assert (features[lesion, 2] > features[symmetric, 2].max()).all(), "own minus other"


def test_fusion_never_reads_another_patients_film(case_library) -> None:
    pc = case_library
    ids, y, groups, _ = _films(pc)
    tiles = TileData.from_library(pc.core)
    layout = CaseLayout.from_store(pc.store)
    model = CaseFusionClassifier(lambda: TileMILClassifier(tiles), layout).fit(ids, y, groups)
    before = model.features(np.array(["p16R", "p16L"], dtype=object))
    # turn every other patient's tiles into copies of a lesion tile: nothing of P16 moves
    lesion = tiles.lesions["p00L"][0]
    for film_id, (vectors, boxes, tile_ids) in list(tiles.tiles.items()):
        if not film_id.startswith("p16"):
            tiles.tiles[film_id] = (np.tile(lesion, (len(vectors), 1)), boxes, tile_ids)
    after = model.features(np.array(["p16R", "p16L"], dtype=object))
    assert np.array_equal(before, after)
    # ... while changing P16's own other breast does
    vectors, boxes, tile_ids = tiles.tiles["p16L"]
    tiles.tiles["p16L"] = (np.tile(lesion, (len(vectors), 1)), boxes, tile_ids)
    assert model.features(np.array(["p16R"], dtype=object))[0, 1] != before[0, 1]


def test_eval_case_fusion_cli(case_library, capsys) -> None:
    db = str(case_library.store.db_dir)
    args = ["--device", "cpu", "eval", "--db", db, "--label", "pathology"]
    args += ["--positive", "malignant", "--method", "tiles", "--case-fusion"]
    assert main([*args, "--cv", "3", "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    film_auc = {m["method"]: m["auc"] for m in out["methods"]}
    case_auc = {m["method"]: m["auc"] for m in out["cases"]}
    assert set(film_auc) == set(case_auc) == {"tiles", "tiles+contralateral"}
    assert {m["n"] for m in out["cases"]} == {20} and out["n"] == 40
    # symmetric normal films carry the same blob: only the fused tile score separates them
    assert film_auc["tiles+contralateral"] > max(film_auc["tiles"], 0.8)
    args[args.index("tiles")] = "logreg"  # the whole-film head, fused the same way
    assert main([*args, "--cv", "3", "--bootstrap", "20"]) == 0
    text = capsys.readouterr().out
    assert "case level (20 cases" in text and "logreg+contralateral" in text
    # a label without a binary positive class is refused in one line
    bad = ["--device", "cpu", "eval", "--db", db, "--label", "pattern", "--case-fusion"]
    assert main([*bad, "--method", "logreg"]) == 2
    assert "--case-fusion" in capsys.readouterr().err


def test_eval_tiles_on_held_out_query_films(case_library, tmp_path, capsys) -> None:
    """``--method tiles --queries``: query films (new patients, never stored) are cut into the
    index's tiles and scored by the tile head fitted on the library."""
    pc = case_library
    folder = tmp_path / "queries"
    folder.mkdir()
    rows = []
    for n, (side, lesion) in enumerate([("R", True), ("L", True), ("R", False), ("L", False)]):
        blob = (RIGHT_BLOB if side == "R" else LEFT_BLOB) if lesion else None
        pixels, _ = film("right" if side == "R" else "left", blob, 100 + n)
        Image.fromarray(pixels).save(folder / f"q{n}.png")
        rows.append([f"q{n}", f"q{n}.png", f"Q{n}", side, "malignant" if lesion else "normal"])
    labels = write_csv(
        folder / "labels.csv", ["image_id", "file", "patient_id", "laterality", "pathology"], rows
    )
    before = pc.store.count("image")
    db = str(pc.store.db_dir)
    args = ["--device", "cpu", "eval", "--db", db, "--label", "pathology", "--positive"]
    args += ["malignant", "--method", "tiles,tilemean,logreg", "--queries", str(folder)]
    assert main([*args, "--labels", str(labels), "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "holdout" and out["n"] == 4
    tiles = next(m for m in out["methods"] if m["method"] == "tiles")
    assert tiles["auc"] == 1.0, "the films with the blob score above the plain ones"
    assert {m["method"] for m in out["methods"]} == {"tiles", "tilemean", "logreg"}
    assert pc.store.count("image") == before, "queries are never stored"


def test_eval_tilemean_on_a_multiclass_label(case_library, capsys) -> None:
    """``--method tilemean``: a logistic head on each film's mean tile vector, any label."""
    db = str(case_library.store.db_dir)
    args = ["--device", "cpu", "eval", "--db", db, "--label", "pattern", "--cv", "3"]
    assert main([*args, "--method", "tilemean,logreg", "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {m["method"]: m for m in out["methods"]}
    assert set(rows) == {"tilemean", "logreg"} and rows["tilemean"]["n"] == 40
    assert rows["tilemean"]["auc"] is not None
