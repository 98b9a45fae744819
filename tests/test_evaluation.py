"""Fast tests for priorcase.evaluation (arrays only, no storage or encoders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from priorcase.classifiers.binarize import binarize_labels
from priorcase.evaluation import (
    cross_val_proba,
    evaluate_probabilities,
    format_table,
    grouped_folds,
    holdout_proba,
    retrieval_metrics,
    subgroup_table,
    threshold_table,
    write_html_report,
)


def _patients(n_patients: int = 40, per_patient: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient)
    patient_label = rng.choice(["benign", "malignant", "normal"], n_patients, p=[0.3, 0.2, 0.5])
    y = np.repeat(patient_label, per_patient)
    return y, groups


def test_grouped_folds_keep_groups_whole_and_stratify():
    y, groups = _patients()
    folds = grouped_folds(y, groups, n_splits=4)
    assert len(folds) == 4
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(len(y)))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
        # Every class appears in every test fold (stratified).
        assert set(y[te]) == set(y)


def test_grouped_folds_reduce_splits_with_warning():
    y = np.array(["a"] * 6 + ["b"] * 6)
    groups = np.array(["g1", "g1", "g2", "g2", "g3", "g3", "h1", "h1", "h2", "h2", "h3", "h3"])
    with pytest.warns(UserWarning, match="reducing cross-validation from 5 to 3"):
        folds = grouped_folds(y, groups, n_splits=5)
    assert len(folds) == 3


def test_evaluate_probabilities_matches_sklearn_and_hand_confusion():
    y = np.array(["neg", "neg", "neg", "pos", "pos", "neg", "pos", "pos"])
    p_pos = np.array([0.1, 0.4, 0.6, 0.8, 0.3, 0.2, 0.9, 0.7])
    proba = np.column_stack([1 - p_pos, p_pos])
    r = evaluate_probabilities(y, proba, ["neg", "pos"], "toy", n_boot=200)
    assert r.auc == pytest.approx(roc_auc_score(y == "pos", p_pos))
    # Predictions (p >= .5): neg neg pos pos neg neg pos pos.
    assert r.confusion == {"neg": {"neg": 3, "pos": 1}, "pos": {"neg": 1, "pos": 3}}
    assert r.accuracy == pytest.approx(6 / 8)
    assert r.per_class["pos"]["precision"] == pytest.approx(3 / 4)
    assert r.per_class["pos"]["support"] == 4
    assert r.positive == "pos"
    assert json.loads(r.to_json())["method"] == "toy"


def test_multiclass_auc_is_ovr_macro():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], 90)
    proba = rng.dirichlet(np.ones(3), 90) + 0.5 * (y[:, None] == np.array(["a", "b", "c"]))
    proba /= proba.sum(axis=1, keepdims=True)
    r = evaluate_probabilities(y, proba, ["a", "b", "c"], "mc", n_boot=100)
    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=["a", "b", "c"])
    assert r.auc == pytest.approx(expected)
    assert "macro" in r.roc["curves"] and r.positive is None


def _noisy_binary(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(size=n))))
    return np.where(y == 1, "pos", "neg"), np.column_stack([1 - score, score])


def test_ci_contains_estimate_and_narrows_with_more_data():
    y_small, p_small = _noisy_binary(60, 0)
    y_big, p_big = _noisy_binary(2000, 0)
    small = evaluate_probabilities(y_small, p_small, ["neg", "pos"], "s", n_boot=300)
    big = evaluate_probabilities(y_big, p_big, ["neg", "pos"], "b", n_boot=300)
    for r in (small, big):
        assert r.auc_ci[0] <= r.auc <= r.auc_ci[1]
    assert big.auc_ci[1] - big.auc_ci[0] < small.auc_ci[1] - small.auc_ci[0]


def test_group_bootstrap_is_wider_for_correlated_rows():
    # Each patient contributes 10 identical rows: resampling rows would overstate certainty.
    y1, p1 = _noisy_binary(50, 3)
    y, proba = np.repeat(y1, 10), np.repeat(p1, 10, axis=0)
    groups = np.repeat(np.arange(50), 10)
    by_row = evaluate_probabilities(y, proba, ["neg", "pos"], "r", n_boot=300)
    by_group = evaluate_probabilities(y, proba, ["neg", "pos"], "g", groups=groups, n_boot=300)
    assert by_group.auc == pytest.approx(by_row.auc)
    width = lambda r: r.auc_ci[1] - r.auc_ci[0]  # noqa: E731
    assert width(by_group) > 1.5 * width(by_row)


def test_perfect_classifier_auc_one():
    y = np.array(["a", "b"] * 10)
    proba = np.column_stack([(y == "a").astype(float), (y == "b").astype(float)])
    r = evaluate_probabilities(y, proba, ["a", "b"], "perfect", n_boot=50)
    assert r.auc == 1.0 and r.accuracy == 1.0 and r.balanced_accuracy == 1.0
    assert r.auc_ci == (1.0, 1.0)


def test_binarize_labels_names_and_default_positive():
    y = ["normal", "benign", "malignant", "normal"]
    yb = binarize_labels(y, {"malignant", "benign"})
    assert yb.tolist() == [
        "not benign+malignant",
        "benign+malignant",
        "benign+malignant",
        "not benign+malignant",
    ]
    classes = sorted(set(yb.tolist()))  # "benign+malignant" sorts first
    proba = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3], [0.1, 0.9]])
    r = evaluate_probabilities(yb, proba, classes, "bin", n_boot=10)
    assert r.positive == "benign+malignant" and r.auc == 1.0
    with pytest.raises(ValueError, match="none of the positive labels"):
        binarize_labels(y, {"malgnant"})


def test_retrieval_metrics_clusters_and_group_exclusion():
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(6, 3))
    b = np.array([0.0, 1.0, 0.0]) + 0.01 * rng.normal(size=(6, 3))
    X = np.vstack([a, b])
    y = np.array(["a"] * 6 + ["b"] * 6)
    groups = np.arange(12)
    r = retrieval_metrics(X, y, groups, ks=(1, 5))
    assert r.precision_at_k == {"P@1": 1.0, "P@5": 1.0}
    assert r.map == pytest.approx(1.0)
    assert retrieval_metrics(X, y, groups, ks=(1, 5), backend="faiss") == r
    # Same-patient rows excluded: p1's two 'a' rows can then only see the 'b' rows.
    three = np.vstack([a[:2], b[:2]])
    y3 = np.array(["a", "a", "b", "b"])
    g3 = np.array(["p1", "p1", "p2", "p3"])
    inc = retrieval_metrics(three, y3, g3, ks=(1,), exclude_same_group=False)
    exc = retrieval_metrics(three, y3, g3, ks=(1,), exclude_same_group=True)
    assert inc.precision_at_k["P@1"] == 1.0
    # Excluded: p1's rows see only 'b' rows (P@1 = 0) and have nothing relevant left for AP;
    # p2/p3 still find each other.
    assert exc.precision_at_k["P@1"] == pytest.approx(0.5)
    assert exc.n_queries == 4 and exc.map == pytest.approx(1.0)


def test_threshold_table_reaches_sensitivity():
    y, proba = _noisy_binary(300, 5)
    is_pos = y == "pos"
    rows = threshold_table(is_pos, proba[:, 1], sensitivities=(0.8, 0.95), specificities=(0.9,))
    assert len(rows) == 3
    for row, target in zip(rows[:2], (0.8, 0.95), strict=True):
        assert row["sensitivity"] >= target
        assert row["TP"] + row["FN"] == is_pos.sum()
        assert row["TP"] == ((proba[:, 1] >= row["threshold"]) & is_pos).sum()
    assert rows[2]["specificity"] >= 0.9
    # Higher sensitivity target never needs a higher threshold.
    assert rows[1]["threshold"] <= rows[0]["threshold"]


def test_subgroup_table():
    y = np.array(["a", "b", "a", "b", "a", "a"])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.1, 0.9]])
    rows = subgroup_table(y, proba, ["a", "b"], ["x", "x", "x", "x", "y", "y"])
    assert [r["subgroup"] for r in rows] == ["x", "y"]
    assert rows[0]["n"] == 4 and rows[0]["accuracy"] == pytest.approx(3 / 4)
    assert rows[0]["auc"] == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.1, 0.8, 0.4, 0.3]))
    assert rows[1]["auc"] is None  # only class 'a' in subgroup y


def test_html_report_and_table(tmp_path):
    y, proba = _noisy_binary(80, 2)
    r1 = evaluate_probabilities(y, proba, ["neg", "pos"], "method-1", n_boot=50)
    r2 = evaluate_probabilities(y, proba[:, ::-1], ["neg", "pos"], "method<2>", n_boot=50)
    r1.precision_at_k, r1.map = {"P@1": 0.9, "P@5": 0.8, "P@10": 0.7}, 0.6
    thr = threshold_table(y == "pos", proba[:, 1])
    out = write_html_report(
        tmp_path / "sub" / "report.html",
        "Toy report",
        [r1, r2],
        {"Thresholds": thr, "Subgroups": subgroup_table(y, proba, ["neg", "pos"], ["s"] * 80)},
        {"encoder": "bundled", "folds": 5},
    )
    text = out.read_text()
    assert text.count("<img alt='confusion matrix") == 2
    assert "<img alt='ROC curves' src=\"data:image/png;base64," in text
    assert 'src="data:image/png;base64,' in text
    assert "method&lt;2&gt;" in text and "Thresholds" in text and "bundled" in text
    table = format_table([r1, r2])
    assert "AUC [95% CI]" in table and "P@10" in table and "0.900" in table
    assert len({len(line) for line in table.splitlines()}) == 1  # fixed width

    # Multiclass: one ROC axes per method, still one image.
    yc = np.array(["a", "b", "c"] * 20)
    pc = np.eye(3)[np.arange(60) % 3] * 0.6 + 0.4 / 3
    rc = evaluate_probabilities(yc, pc, ["a", "b", "c"], "mc", n_boot=20)
    text = write_html_report(tmp_path / "mc.html", "mc", [rc], {}, {}).read_text()
    assert "<img alt='ROC curves' src=\"data:image/png;base64," in text


class _Recorder:
    """Wraps make_estimator to remember the training indices per fold."""

    def __init__(self):
        self.train_sets: list[np.ndarray] = []

    def __call__(self, train_idx: np.ndarray) -> LogisticRegression:
        self.train_sets.append(np.asarray(train_idx).copy())
        return LogisticRegression(max_iter=1000)


def test_cross_val_proba_logistic_separable():
    rng = np.random.default_rng(0)
    n_patients = 60
    groups = np.repeat(np.arange(n_patients), 2)
    label = np.repeat(rng.integers(0, 2, n_patients), 2)
    y = np.where(label == 1, "malignant", "benign")
    X = rng.normal(size=(len(y), 8)) + 3.0 * label[:, None]
    folds = grouped_folds(y, groups, n_splits=5)
    rec = _Recorder()
    proba, classes = cross_val_proba(rec, X, y, groups, folds, progress=False)
    assert classes.tolist() == ["benign", "malignant"]
    assert proba.shape == (len(y), 2) and not np.isnan(proba).any()
    assert len(rec.train_sets) == len(folds)
    for tr, (fold_tr, te) in zip(rec.train_sets, folds, strict=True):
        assert np.array_equal(tr, fold_tr)
        assert not set(tr) & set(te)
    r = evaluate_probabilities(y, proba, classes, "logreg", groups=groups, n_boot=100)
    assert r.auc > 0.9


class _GroupAware:
    """Minimal estimator accepting ``groups`` in fit and predict_proba (like kNN)."""

    def fit(self, X, y, groups=None):
        self.classes_ = np.unique(y)
        self.fit_groups = groups
        return self

    def predict_proba(self, X, groups=None):
        self.predict_groups = groups
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


def test_runner_passes_groups_when_accepted_and_fills_missing_classes():
    X = np.zeros((6, 2))
    y = np.array(["a", "a", "b", "b", "c", "c"])
    groups = np.array([1, 2, 3, 4, 5, 6])
    made: list[_GroupAware] = []

    def make(train_idx):
        made.append(_GroupAware())
        return made[-1]

    # Fold trains without class 'c': its column must come back as zeros.
    folds = [(np.array([0, 1, 2, 3]), np.array([4, 5])), (np.array([2, 3, 4, 5]), np.array([0, 1]))]
    proba, classes = cross_val_proba(make, X, y, groups, folds, progress=False)
    assert classes.tolist() == ["a", "b", "c"]
    assert np.allclose(proba[4:], [0.5, 0.5, 0.0])
    assert made[0].fit_groups.tolist() == [1, 2, 3, 4]
    assert made[0].predict_groups.tolist() == [5, 6]
    assert np.isnan(proba[2:4]).all()  # never in a test fold

    p, c = holdout_proba(LogisticRegression(), X[:4] + np.arange(4)[:, None], y[:4], None, X[4:])
    assert p.shape == (2, 2) and c.tolist() == ["a", "b"]
