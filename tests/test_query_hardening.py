"""Bad queries from the command line: strict --where, bounded -k, empty or huge texts, unknown
labels; the ensemble honours -k and same-patient exclusion; a library image is flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import TINY_SPEC, row_count, write_csv, write_pngs

import priorcase
from priorcase.cli import main
from priorcase.errors import QueryError
from priorcase.retrieval.search import MAX_K, MAX_TEXT_CHARS

N = 24


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_clip) -> tuple[Path, list[Path]]:
    """24 tiny-CLIP images, two per patient, labelled tissue (G/F/D) and pathology."""
    root = tmp_path_factory.mktemp("hardening")
    files = write_pngs(root / "images", N, size=32)
    labels = write_csv(
        root / "labels.csv",
        ["image_id", "patient_id", "tissue", "pathology"],
        [
            [f.stem, f"JANE{i // 2}", "GFD"[i % 3], "malignant" if i % 4 == 0 else "benign"]
            for i, f in enumerate(files)
        ],
    )
    db = root / "db"
    report = priorcase.open(db, encoder=tiny_clip).ingest(
        root / "images", labels=labels, workers=0, progress=False
    )
    assert report.stored_images == N
    return db, files


def fails(capsys, args: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr (returned)."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("priorcase: error:") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def search(db: Path, *options: str) -> list[str]:
    return ["search", "--db", str(db), "--id", "img000", *options]


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("tissue = 'G' AN pathology = 'malignant'", "after a complete expression"),
        ("tissue = 'G' pathology = 'malignant'", "after a complete expression"),
        ("1=1; DROP TABLE cases", "only one expression"),
        ("1=1", "expected a column name"),
        ("tissue = 'G'; DROP TABLE cases", "only one expression"),
        ("tissue = 'G' -- comment", "unexpected"),
        ("path LIKE '%JANE%'", "hidden column 'path'"),
        ("tissue = 'G' OR `path` LIKE '%JANE%'", "hidden column 'path'"),
        ('"patient" IS NOT NULL', "hidden column 'patient'"),
        ("group = 'x'", "hidden column 'group'"),
        ("patient_id = 'anon-1'", "hidden column 'patient_id'"),
        ("key != ''", "hidden column 'key'"),
        ("content_hash = 'abc'", "hidden column 'content_hash'"),
        ("vector IS NULL", "hidden column 'vector'"),
        ("thumbnail IS NULL", "hidden column 'thumbnail'"),
        ("tissue = ", "expected a value"),
        ("(tissue = 'G'", "expected ')'"),
        ("tissue NOT = 'G'", "NOT after a column"),
        ("", "empty filter"),
        ("tissue = 'G' AND", "expected a column name"),
    ],
)
def test_bad_where_is_a_one_line_error(library, capsys, where: str, problem: str) -> None:
    db, _ = library
    before = row_count(db)
    err = fails(capsys, search(db, "--where", where))
    assert problem in err and "invalid --where" in err
    assert row_count(db) == before


@pytest.mark.parametrize(
    "where",
    [
        "tissue = 'G' AND pathology = 'malignant'",
        "tissue IN ('G', 'F') AND NOT pathology = 'benign'",
        "(tissue = 'D' OR tissue = 'G') and pathology != 'benign'",
        "pathology LIKE 'mal%' AND tissue IS NOT NULL",
        "`tissue` BETWEEN 'A' AND 'G' AND kind = 'image'",
        "pathology NOT IN ('benign') AND id != 'img012'",
    ],
)
def test_good_where_filters_like_python(library, tiny_clip, where: str) -> None:
    db, _ = library
    pc = priorcase.open(db, encoder=tiny_clip)
    hits = pc.search(id="img004", k=100, where=where)
    rows = {h.id: h.labels for h in pc.search(id="img004", k=100)}
    lowered = where.replace("`", "")
    expected = {
        i
        for i, lab in rows.items()
        if eval(
            _python(lowered), {}, {"tissue": lab["tissue"], "pathology": lab["pathology"], "id": i}
        )
    }
    assert {h.id for h in hits} == expected and expected


def _python(where: str) -> str:
    """The six filters above as Python expressions (a second, independent evaluation)."""
    table = {
        "tissue = 'G' AND pathology = 'malignant'": "tissue == 'G' and pathology == 'malignant'",
        "tissue IN ('G', 'F') AND NOT pathology = 'benign'": (
            "tissue in ('G', 'F') and not pathology == 'benign'"
        ),
        "(tissue = 'D' OR tissue = 'G') and pathology != 'benign'": (
            "(tissue == 'D' or tissue == 'G') and pathology != 'benign'"
        ),
        "pathology LIKE 'mal%' AND tissue IS NOT NULL": (
            "pathology.startswith('mal') and tissue is not None"
        ),
        "tissue BETWEEN 'A' AND 'G' AND kind = 'image'": "'A' <= tissue <= 'G'",
        "pathology NOT IN ('benign') AND id != 'img012'": (
            "pathology not in ('benign',) and id != 'img012'"
        ),
    }
    return table[where]


@pytest.mark.parametrize("k", ["0", "-1", str(MAX_K + 1), str(10**20), "1000000000"])
def test_search_k_out_of_range(library, capsys, k: str) -> None:
    db, _ = library
    assert "k must be between 1 and" in fails(capsys, search(db, "-k", k))


@pytest.mark.parametrize("k", ["0", "-3", str(10**20), "1000000000"])
def test_classify_k_out_of_range_is_refused_before_allocating(library, capsys, k: str) -> None:
    db, files = library
    args = ["classify", "--db", str(db), "--image", str(files[0]), "--label", "tissue", "-k", k]
    assert "k must be between 1 and" in fails(capsys, args)


def test_k_at_the_limit_is_fine(library, capsys) -> None:
    db, _ = library
    assert main([*search(db, "-k", str(MAX_K)), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == N - 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "empty"), ("   \t ", "empty"), ("x" * (MAX_TEXT_CHARS + 1), "the limit is")],
)
def test_bad_text_query(library, capsys, text: str, problem: str) -> None:
    db, _ = library
    assert problem in fails(capsys, ["search", "--db", str(db), "--text", text])


def test_classify_unknown_label_exits_2(library, capsys) -> None:
    db, files = library
    args = ["classify", "--db", str(db), "--image", str(files[0]), "--label", "nosuch"]
    err = fails(capsys, args)
    assert "no label column 'nosuch'" in err and "tissue" in err


def test_library_image_is_flagged_new_image_is_not(library, capsys, tmp_path: Path) -> None:
    db, files = library
    base = ["classify", "--db", str(db), "--label", "tissue", "--method", "knn,logreg"]
    assert main([*base, "--image", str(files[5]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query_in_library"] == "img005"
    logreg = next(m for m in out["predictions"] if m["method"] == "logreg")
    assert "this case was in its training set" in logreg["explanation"]
    assert main([*base, "--image", str(files[5])]) == 0
    assert "stored in the library as img005" in capsys.readouterr().out

    (new,) = write_pngs(tmp_path, 1, prefix="new", start=900, size=32)
    assert main([*base, "--image", str(new), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query_in_library"] is None
    assert all("training set" not in m["explanation"] for m in out["predictions"])


def test_ensemble_honours_k_and_same_patient_exclusion(library, tiny_clip) -> None:
    db, _ = library
    pc = priorcase.open(db, encoder=tiny_clip)
    for k in (1, 7):
        model, _ = pc.classifiers.fitted("ensemble", "tissue", knn=priorcase.api.KnnOptions(k=k))
        knn = dict(model.estimators_)["knn"]
        assert knn.k == k and knn.exclude_same_group
    # img000 and img001 are one patient (JANE0): with exclusion, neither may vote for img000
    vector = pc.store.fetch(["img000"], with_vectors=True)["img000"]["vector"]
    vector = np.asarray(vector, dtype=np.float32)
    group = pc.store.fetch(["img000"])["img000"]["group"]
    options = priorcase.api.KnnOptions(k=1)
    kept = pc.classifiers.classify(vector, "tissue", ("ensemble", "knn"), knn=options)
    excluded = pc.classifiers.classify(
        vector, "tissue", ("ensemble", "knn"), knn=options, exclude_group=group
    )
    assert kept.neighbours[0].id == "img000"
    assert excluded.neighbours[0].group != group
    ens_kept, ens_excluded = kept.predictions[0], excluded.predictions[0]
    assert ens_kept.error is None and ens_excluded.error is None
    assert ens_kept.probabilities != ens_excluded.probabilities
    assert "same patient excluded" in ens_excluded.explanation


def test_api_rejects_bad_k_and_text(library, tiny_clip) -> None:
    db, _ = library
    pc = priorcase.open(db, encoder=tiny_clip)
    for bad in (0, -1, 10**20, 2.5, True):
        with pytest.raises(QueryError, match="k must be"):
            pc.search(id="img000", k=bad)
    with pytest.raises(QueryError, match="empty"):
        pc.search(text=" ")
    with pytest.raises(QueryError, match="k must be"):
        pc.classify(np.zeros(32, np.float32), "tissue", knn=priorcase.api.KnnOptions(k=0))
    assert pc.encoder.spec == TINY_SPEC
