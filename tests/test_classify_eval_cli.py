"""``priorcase classify`` and ``priorcase eval`` end to end on a small real index.

The images are synthetic but the classes are visible (stripes, a bright disc, a checkerboard),
so the bundled encoder separates them and the methods must beat chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from fixtures import row_count, write_csv
from PIL import Image

import priorcase
from priorcase.cli import main

CLASSES = ("stripes", "disc", "checks")


def textured(kind: str, seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        img = 128 + 100 * np.sin((xx + rng.integers(0, 8)) / (2 + rng.random()))
    elif kind == "disc":
        cx, cy = rng.integers(30, 66, 2)
        img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 20**2, 230, 30).astype(float)
    else:
        cell = int(rng.integers(8, 14))
        img = np.where(((xx // cell) + (yy // cell)) % 2, 220, 40).astype(float)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_set(folder: Path, n_per_class: int, start: int) -> Path:
    """PNGs plus a labels CSV (two films per patient, as in mammography)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for c, kind in enumerate(CLASSES):
        for i in range(n_per_class):
            n = start + c * 1000 + i
            Image.fromarray(textured(kind, n)).save(folder / f"case{n}.png")
            rows.append([f"case{n}", f"P{start + c * 1000 + i // 2}", kind, "yes" if c else "no"])
    return write_csv(
        folder / "labels.csv", ["image_id", "patient_id", "texture", "has_edges"], rows
    )


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, bundled) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("classify")
    labels = write_set(root / "library", 12, 0)
    db = root / "db"
    priorcase.open(db, encoder=bundled).ingest(
        root / "library", labels=labels, workers=0, progress=False
    )
    write_set(root / "queries", 4, 500)
    return db, root / "queries"


def run_json(capsys, args: list[str]) -> dict:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def eval_json(capsys, db: Path, *options: str) -> dict:
    """``priorcase eval --db DB --label texture OPTIONS --json`` as a dict."""
    return run_json(capsys, ["eval", "--db", str(db), "--label", "texture", *options])


def test_classify_json_gives_probabilities_and_voters(library, capsys) -> None:
    db, queries = library
    query = queries / "case1500.png"  # a disc, not in the library
    out = run_json(
        capsys,
        [
            "classify",
            "--db",
            str(db),
            "--image",
            str(query),
            "--label",
            "texture",
            "--method",
            "knn,logreg,svm,zeroshot",  # similarity/ensemble: test_trust (slow)
            "--json",
        ],
    )
    # the contract: query, library, reference, abstain, predictions
    assert out["query"] == str(query) and out["label"] == "texture"
    assert set(out["library"]) == {"version", "encoder", "weights_sha256", "priorcase"}
    assert out["library"]["encoder"] == "bundled" and len(out["library"]["weights_sha256"]) == 64
    assert set(out["reference"]) == {"top_score", "percentile", "status"}
    assert out["reference"]["status"] == "ok" and out["abstain"] is False
    assert out["abstain_reason"] is None
    by_method = {m["method"]: m for m in out["predictions"]}
    assert set(by_method) == {"knn", "logreg", "svm", "zeroshot"}
    for method in by_method.values():
        assert method["error"] is None, method
        assert set(method["probabilities"]) == set(CLASSES)
        assert sum(method["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert method["calibrated"] is True and method["evaluated"] is None
        assert method["prediction_set"] and set(method["prediction_set"]) <= set(CLASSES)
        top = max(method["probabilities"], key=method["probabilities"].get)
        assert top in method["prediction_set"]
    for method in ("knn", "logreg", "svm"):
        probs = by_method[method]["probabilities"]
        assert max(probs, key=probs.get) == "disc", (method, probs)
    assert "nearest cases are disc" in by_method["knn"]["explanation"]
    assert len(out["neighbours"]) == 10
    assert all(n["labels"]["texture"] for n in out["neighbours"])
    # the fitted logistic/SVM heads are kept beside the index
    saved = sorted(p.name for p in (db / "classifiers").glob("*.joblib"))
    assert [name.rsplit("-", 1)[0] for name in saved] == [
        "image-texture-logreg",
        "image-texture-svm",
    ]


def test_saved_head_from_other_training_data_is_refitted(library, bundled) -> None:
    db, queries = library
    pc = priorcase.open(db, encoder=bundled)
    pc.classify(queries / "case500.png", "texture", methods=("logreg",))
    (saved,) = (db / "classifiers").glob("image-texture-logreg-*.joblib")
    payload = joblib.load(saved)
    payload["digest"] = "0" * 64  # as if fitted on other rows or another encoder's vectors
    joblib.dump(payload, saved)
    notes: list[str] = []
    fresh = priorcase.open(db, encoder=bundled, notify=notes.append)
    model, _ = fresh.classifiers.fitted("logreg", "texture")
    assert hasattr(model, "classes_")
    assert any("unusable" in n and saved.name in n for n in notes), notes
    assert joblib.load(saved)["digest"] != "0" * 64  # rewritten with the right digest


def test_eval_cv_json_contract_and_report(library, capsys, tmp_path: Path) -> None:
    db, _ = library
    report = tmp_path / "report.html"
    out = eval_json(
        capsys,
        db,
        "--cv",
        "3",
        "--method",
        "knn,logreg",
        "--bootstrap",
        "200",
        "--report",
        str(report),
        "--json",
    )
    assert out["label"] == "texture" and out["mode"] == "cv" and out["n"] == 36
    assert [m["method"] for m in out["methods"]] == ["knn", "logreg"]
    for m in out["methods"]:
        assert m["auc"] > 0.8, m  # visible classes: far above chance (0.5)
        lo, hi = m["auc_ci"]
        assert lo <= m["auc"] <= hi
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["balanced_accuracy"] <= 1
        assert set(m["precision_at_k"]) == {"1", "5", "10"}
        assert set(m["per_class"]) >= set(CLASSES)
        assert sum(sum(row.values()) for row in m["confusion"].values()) == 36
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 2  # ROC + confusion matrices


def test_eval_positive_gives_operating_points_and_subgroups(library, capsys) -> None:
    db, _ = library
    out = eval_json(
        capsys,
        db,
        "--positive",
        "disc,checks",
        "--cv",
        "3",
        "--method",
        "logreg",
        "--by",
        "has_edges",
        "--bootstrap",
        "100",
        "--json",
    )
    assert out["meta"]["class_counts"] == {"checks+disc": 24, "not checks+disc": 12}
    rows = out["thresholds"]["logreg"]
    assert rows and all(r["positive"] == "checks+disc" for r in rows)
    assert all(r["TP"] + r["FN"] == 24 and r["FP"] + r["TN"] == 12 for r in rows)
    assert {r["subgroup"] for r in out["subgroups"]["logreg by has_edges"]} == {"yes", "no"}


def test_eval_holdout_never_adds_queries(library, capsys) -> None:
    db, queries = library
    before = row_count(db)
    out = eval_json(
        capsys,
        db,
        "--queries",
        str(queries),
        "--labels",
        str(queries / "labels.csv"),
        "--method",
        "knn,zeroshot",
        "--bootstrap",
        "100",
        "--json",
    )
    assert out["mode"] == "holdout" and out["n"] == 12
    assert out["methods"][0]["auc"] > 0.8
    assert row_count(db) == before


def test_eval_unknown_method_is_a_one_line_error(library, capsys) -> None:
    db, _ = library
    assert main(["eval", "--db", str(db), "--label", "texture", "--method", "forest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("priorcase: error: unknown method 'forest'") and "\n" not in err


def test_knn_options_change_the_vote(library, capsys) -> None:
    db, queries = library
    args = [
        "classify",
        "--db",
        str(db),
        "--image",
        str(queries / "case500.png"),
        "--label",
        "texture",
        "--method",
        "knn",
        "-k",
        "15",
        "--json",
    ]
    uniform = run_json(capsys, args)["predictions"][0]["probabilities"]
    weighted = run_json(
        capsys, [*args, "--knn-weights", "similarity", "--knn-temperature", "0.01"]
    )["predictions"][0]["probabilities"]
    assert uniform != weighted
    assert max(weighted, key=weighted.get) == "stripes"
