"""The export's "evaluated accuracy" line on a library with enough patients to cross-validate:
the figure printed is the one the library's cross-validation gives (MIAS subset, no browser)."""

from __future__ import annotations

import csv

import pytest
from fixtures import write_mias_labels

import priorcase
from priorcase.evaluation.experiment import cross_validate
from priorcase.ui.actions import Actions
from priorcase.ui.export import write_summary

FILMS = 40  # 20 patients: enough for grouped 5-fold cross-validation of tissue density
COLUMN = "tissue"


@pytest.fixture(scope="module")
def library(tmp_path_factory, mias, bundled):
    tmp = tmp_path_factory.mktemp("ui-export")
    with open(mias.labels, newline="") as fh:
        ids = sorted(row["image_id"] for row in csv.DictReader(fh))[:FILMS]
    labels = write_mias_labels(mias, set(ids), tmp / "labels.csv")
    pc = priorcase.open(tmp / "db", encoder=bundled)
    files = [mias.images / f"{i}.png" for i in ids]
    report = pc.ingest(files, labels=labels, progress=False, workers=0)
    assert report.stored_images == FILMS, report.summary()
    return pc, tmp


def test_export_states_the_cross_validated_accuracy_it_was_evaluated_at(library):
    pc, tmp = library
    figures = pc.classifiers.evaluate(COLUMN, ("knn",))  # what the UI's background thread runs
    actions = Actions(pc)
    query = actions.query_from_id(sorted(pc.store.column_values(COLUMN, "image"))[4])
    result = pc.classifiers.classify(query.vector, COLUMN, ("knn",), exclude_group=query.group)
    (knn,) = result.predictions
    assert knn.evaluated == figures["knn"] and figures["knn"]["n"] == FILMS
    hits = actions.search_vector(query, 5)
    (tmp / "out").mkdir()
    page, _ = write_summary(
        pc, query.name, query.view, hits, [None] * len(hits), result, {}, tmp / "out"
    )
    # the same figure, computed afresh by the evaluation code the published results use
    (fresh,) = cross_validate(pc, COLUMN, ["knn"], n_boot=0, progress=False).results
    text = page.read_text()
    line = f"cross-validated accuracy {fresh.accuracy:.3f}, AUC {fresh.auc:.3f} (n={FILMS})"
    assert line in text, text[text.find("<h2>Predictions") :][:600]
    assert "sample" not in text  # 40 cases: evaluated whole, no cap
