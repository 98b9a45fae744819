"""The classification panel on a big library: heads fitted once per library version in the
background (saved ones reused), on a stated stratified, patient-grouped sample, and the kNN
vote's patient exclusion as one batched search (was one search per patient)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import priorcase
from priorcase import library
from priorcase.classifiers.knn import KNNVoteClassifier
from priorcase.classifiers.labelled import labelled_set
from priorcase.classifiers.sampling import capped, grouped_sample
from priorcase.index.vector_index import VectorIndex
from priorcase.ui.classify_panel import ClassifyPanel, figures_line

CASES = 3000
COLUMN = "pathology"
METHODS = ("knn", "logreg")


@pytest.fixture(scope="module")
def big(tmp_path_factory, bundled):
    """bench_ui's synthetic library: 12 ingested films replicated with noise to 3000 cases."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_ui import build_library

    db = tmp_path_factory.mktemp("ui-scale") / "db"
    pc, _, _ = build_library(db, CASES, 12)
    assert COLUMN in ClassifyPanel(pc).columns()
    return pc


def test_sample_keeps_whole_patients_and_class_shares(big):
    data = labelled_set(big.store, COLUMN, "image")
    rows = grouped_sample(data, 600)
    assert 400 <= len(rows) <= 800 and len(rows) < len(data.y)
    np.testing.assert_array_equal(rows, grouped_sample(data, 600))  # deterministic
    chosen = set(data.fold_groups[rows].tolist())
    assert chosen == {g for g in data.fold_groups.tolist() if g in chosen}
    everyone = np.flatnonzero(np.isin(data.fold_groups, list(chosen)))
    np.testing.assert_array_equal(rows, everyone)  # no patient split
    for value in set(data.y.tolist()):
        assert abs((data.y[rows] == value).mean() - (data.y == value).mean()) < 0.05
    assert capped(data, len(data.y)) is data


def test_batched_patient_exclusion_equals_a_masked_search_per_patient():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 24)).astype(np.float32)
    y = rng.integers(0, 3, 900)
    groups = np.array([f"p{i // rng.integers(1, 5)}" for i in range(900)], dtype=object)
    model = KNNVoteClassifier(k=7, exclude_same_group=True).fit(X[:600], y[:600], groups[:600])
    positions, scores = model.kneighbors(X, groups)
    index = VectorIndex(X[:600])
    for row in range(0, 900, 7):
        nb = index.search(X[row], 7, allowed=groups[:600] != groups[row])
        np.testing.assert_array_equal(positions[row], nb.positions[0])
        np.testing.assert_allclose(scores[row], nb.scores[0], rtol=1e-6)
        assert groups[row] not in set(groups[positions[row]].tolist())


def test_heads_fit_in_background_once_and_are_reused(big, monkeypatch):
    monkeypatch.setattr(library, "MAX_HEAD_ROWS", 500)
    monkeypatch.setattr(library, "MAX_EVAL_ROWS", 400)
    pc = big
    total = len(labelled_set(pc.store, COLUMN, "image").y)
    panel = ClassifyPanel(pc)
    vector = pc.store.snapshot("image").vectors[5]
    first = panel.classify(vector, COLUMN, methods=METHODS, wait=False)
    # answered at once, without the logistic head (its grid search runs in the background)
    assert "logreg" not in {p.method for p in first.predictions}
    for thread in list(panel._threads.values()):  # the background fits and evaluation
        thread.join(timeout=600)
    assert not panel.busy(COLUMN, "image", METHODS)
    assert panel.pending(COLUMN, "image", METHODS) == ()
    assert pc.classifiers.fits == 2

    second = panel.classify(vector, COLUMN, methods=METHODS, wait=False)
    knn, logreg = second.predictions
    assert (knn.method, logreg.method) == METHODS and not knn.error and not logreg.error
    assert "sample" not in knn.explanation  # the vote uses every case
    fitted_on = len(pc.classifiers.fitted("logreg", COLUMN)[1].y)
    assert fitted_on < total and f"sample of {fitted_on} of {total} cases" in logreg.explanation
    for p in (knn, logreg):
        assert p.evaluated["of"] == total and p.evaluated["n"] < total
        assert f"sample of the library's {total} cases" in figures_line(p.evaluated)
    panel.classify(vector, COLUMN, methods=METHODS, wait=False)
    assert pc.classifiers.fits == 2  # answered from memory

    saved = list((pc.store.db_dir / "classifiers").glob("*.joblib"))
    assert len(saved) == 1
    stamp = saved[0].stat().st_mtime_ns
    figures = pc.classifiers.evaluated(COLUMN)
    # another process (a restarted server): the saved head and figures are read, not refitted
    again = priorcase.open(pc.store.db_dir, encoder="bundled", device="cpu")
    _, data = again.classifiers.fitted("logreg", COLUMN)
    assert len(data.y) == fitted_on and saved[0].stat().st_mtime_ns == stamp
    assert list((pc.store.db_dir / "classifiers").glob("*.joblib")) == saved
    assert again.classifiers.evaluated(COLUMN) == figures
    assert set(figures) == set(METHODS)


def test_panel_says_which_methods_are_still_being_fitted():
    from priorcase.library import Classification
    from priorcase.ui.classify_panel import PENDING, panel_outputs

    out = panel_outputs(Classification(COLUMN, []), "case 7", METHODS, pending=METHODS)
    assert out[0].startswith("### Fitting the classifiers") and "case 7" in out[0]
    assert out[2] == PENDING and out[4] == PENDING
    done = panel_outputs(Classification(COLUMN, []), "case 7", METHODS)
    assert PENDING not in done and not done[0].startswith("### Fitting")


def test_panel_says_why_a_method_has_no_figures():
    from priorcase.library import Classification, MethodPrediction
    from priorcase.ui.classify_panel import panel_outputs

    knn = MethodPrediction("knn", probabilities={"a": 0.7, "b": 0.3}, prediction_set=["a"])
    why = {"knn": "cannot cross-validate: the rarest label occurs in 1 group(s); need 2"}
    out = panel_outputs(Classification(COLUMN, [knn]), "q", ("knn",), unavailable=why)
    assert "No cross-validated figures on this library: cannot cross-validate" in out[2]
    assert "evaluating" not in out[2]
    assert "evaluating" in panel_outputs(Classification(COLUMN, [knn]), "q", ("knn",))[2]
