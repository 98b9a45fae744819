"""The seeds' plain pipeline (frozen features + scikit-learn LogisticRegression, no retrieval)
against every priorcase method, on the same patient-grouped folds of the MIAS index.

    python benchmarks/bench_seed_baseline.py --db priorcase-data/mias-bundled

The baseline and the methods share the salt-free ``grouped_folds`` of ``cross_validate``, and
the baseline gets the seeds' C grid {0.1, 1, 10, 100}, chosen by grouped inner CV as the heads
choose theirs, so the difference in AUC is the methods' own and not the baseline's tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import machine, mias_index
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from priorcase.classifiers.labelled import labelled_set
from priorcase.classifiers.linear import choose_scoring, cv_splits
from priorcase.evaluation.experiment import cross_validate
from priorcase.evaluation.metrics import evaluate_probabilities
from priorcase.evaluation.runner import cross_val_proba
from priorcase.evaluation.splits import grouped_folds

TASKS = (
    ("pathology (image)", dict(label="pathology", kind="image")),
    ("tissue (image)", dict(label="tissue", kind="image")),
    ("lesion vs normal (ROI)", dict(label="roi_type", kind="roi")),
    ("benign vs malignant (ROI)", dict(label="severity", kind="roi", where="roi_type = 'lesion'")),
)


SEED_CS = (0.1, 1, 10, 100)


class SeedBaseline(ClassifierMixin, BaseEstimator):
    """LogisticRegression on the raw embeddings, C from the seeds' grid by grouped inner CV."""

    def fit(self, X, y, groups=None):
        y = np.asarray(y)
        splits = cv_splits(y, groups, 5, 0)
        model = LogisticRegression(max_iter=5000)
        if not splits:
            self.estimator_ = model.fit(X, y)
        else:
            search = GridSearchCV(
                model, {"C": list(SEED_CS)}, scoring=choose_scoring(y, splits, True), cv=splits
            )
            self.estimator_ = search.fit(X, y).best_estimator_
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X):
        return self.estimator_.predict_proba(X)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("priorcase-data/mias-bundled"))
    parser.add_argument("--methods", default="knn,logreg,svm,zeroshot,similarity,ensemble")
    args = parser.parse_args()
    pc = mias_index(args.db)
    methods = args.methods.split(",")
    print(f"machine: {machine()}; index {args.db} ({pc.encoder.spec})")
    print(f"{'task':<28}{'method':<12}{'AUC':>7}{'95% CI':>16}{'bal.acc':>9}{'ΔAUC vs seed':>14}")
    for name, task in TASKS:
        data = labelled_set(pc.store, task["label"], task["kind"], task.get("where"))
        groups = data.fold_groups
        folds = grouped_folds(data.y, groups, n_splits=5)
        proba, classes = cross_val_proba(
            lambda _: SeedBaseline(), data.X, data.y, groups, folds, progress=False
        )
        seed = evaluate_probabilities(data.y, proba, classes, "seed", groups=groups)
        rows = [seed, *cross_validate(pc, methods=methods, progress=False, **task).results]
        for r in rows:
            delta = "" if r is seed else f"{(r.auc or 0) - (seed.auc or 0):+.3f}"
            ci = f"[{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]"
            print(
                f"{name:<28}{r.method:<12}{r.auc:>7.3f}{ci:>16}{r.balanced_accuracy:>9.3f}{delta:>14}"
            )


if __name__ == "__main__":
    main()
