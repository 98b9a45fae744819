"""Linear (and RBF) heads on embeddings with C picked by grouped, stratified grid search."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import SVC, LinearSVC

from priorcase.classifiers.validation import fit_inputs, need_two_classes, predict_inputs
from priorcase.evaluation.splits import supported_folds
from priorcase.index.vector_index import l2_normalise

Split = tuple[np.ndarray, np.ndarray]


def class_counts(y: np.ndarray) -> np.ndarray:
    """Members per class; for a label matrix, the rarer of positives / negatives per label."""
    if y.ndim == 2:
        pos = y.sum(axis=0)
        return np.minimum(pos, len(y) - pos)
    return np.unique(y, return_counts=True)[1]


def cv_splits(
    y: np.ndarray, groups, n_splits: int, random_state: int, min_train: int = 1
) -> list[Split]:
    """Grouped (when groups given), stratified (when single-label) folds, shrunk to fit the data.

    ``n_splits`` is cut to what the data support (:func:`supported_folds`); folds whose
    training part has fewer than ``min_train`` members of some class are dropped. Fewer than
    two usable folds returns ``[]`` (too little data to choose C by CV).
    """
    multilabel = y.ndim == 2
    n_splits = min(n_splits, supported_folds(y, groups))
    if n_splits < 2:
        return []
    if multilabel:  # stratification is undefined for indicator matrices
        splitter = (
            GroupKFold(n_splits)
            if groups is not None
            else KFold(n_splits, shuffle=True, random_state=random_state)
        )
    elif groups is not None:
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)
    else:
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    splits = [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]
    n_classes = len(class_counts(y))
    splits = [
        (tr, te)
        for tr, te in splits
        if len(te)
        and len(class_counts(y[tr])) == n_classes
        and class_counts(y[tr]).min() >= min_train
    ]
    return splits if len(splits) >= 2 else []


def multilabel_auc(estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Macro ROC AUC over label columns.

    The stock "roc_auc" scorer infers the task from ``classes_``, and a two-label
    OneVsRestClassifier's ``classes_ == [0, 1]`` looks binary to it.
    """
    method = getattr(estimator, "predict_proba", None) or estimator.decision_function
    return float(roc_auc_score(y, method(X), average="macro"))


def choose_scoring(y: np.ndarray, splits: Sequence[Split], has_proba: bool) -> str:
    """ROC AUC when every test fold holds every class (else it is undefined); else a fallback."""
    if y.ndim == 2:
        ok = all(np.all((y[te].min(0) == 0) & (y[te].max(0) == 1)) for _, te in splits)
        return "roc_auc_multilabel" if ok else "f1_macro"
    classes = np.unique(y)
    ok = all(len(np.unique(y[te])) == len(classes) for _, te in splits)
    if not ok or not has_proba:
        return "balanced_accuracy"
    return "roc_auc" if len(classes) == 2 else "roc_auc_ovr"


def _n_iter(estimator: Any) -> np.ndarray:
    """Solver iterations of a fitted model, of each member for a one-vs-rest or calibrated one."""
    if hasattr(estimator, "n_iter_"):
        return np.atleast_1d(estimator.n_iter_)
    members = getattr(estimator, "estimators_", None) or [
        c.estimator for c in getattr(estimator, "calibrated_classifiers_", [])
    ]
    return np.concatenate([_n_iter(m) for m in members]) if members else np.array([1])


class _GridHead(ClassifierMixin, BaseEstimator):
    """Shared fit/predict: subclasses give the base estimator and its C parameter's name."""

    def _base(self, y: np.ndarray) -> tuple[Any, str, int]:
        """(estimator, name of its C parameter, members per class each training fold needs)."""
        raise NotImplementedError

    def _has_proba(self) -> bool:
        return True

    def fit(self, X: np.ndarray, y, groups=None) -> _GridHead:
        X, y = fit_inputs(self, X, y, multilabel=True)
        X = l2_normalise(X)
        self.multilabel_ = y.ndim == 2
        if self.multilabel_:
            y = y.astype(int)
            self.classes_ = np.arange(y.shape[1])
        else:
            self.classes_ = np.unique(y)
            need_two_classes(self.classes_)
        estimator, param, min_train = self._base(y)
        if self.multilabel_:
            estimator, param = OneVsRestClassifier(estimator), f"estimator__{param}"
        splits = cv_splits(y, groups, self.cv, self.random_state, min_train)
        if not splits:  # too tiny for CV: use the grid's middle C
            C = sorted(self.Cs)[len(self.Cs) // 2]
            self.estimator_ = estimator.set_params(**{param: C}).fit(X, y)
            self.best_params_, self.scoring_ = {"C": C}, None
        else:
            self.scoring_ = choose_scoring(y, splits, self._has_proba())
            search = GridSearchCV(
                estimator,
                {param: list(self.Cs)},
                scoring=multilabel_auc if self.scoring_ == "roc_auc_multilabel" else self.scoring_,
                cv=splits,
                refit=True,
            )
            search.fit(X, y)
            self.estimator_, self.cv_results_ = search.best_estimator_, search.cv_results_
            self.best_params_ = {"C": search.best_params_[param]}
            self.best_score_ = float(search.best_score_)
        self.n_iter_ = _n_iter(self.estimator_)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = predict_inputs(self, X, "estimator_")
        return self.estimator_.predict_proba(l2_normalise(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= 0.5).astype(int)
        return self.classes_[np.argmax(proba, axis=1)]


class LogisticHead(_GridHead):
    """L2 logistic regression, ``"multinomial"`` (softmax) or ``"ovr"`` (one-vs-rest).

    A 2-D 0/1 ``y`` is treated as multi-label (one binary model per column).
    """

    def __init__(
        self,
        multi_class: str = "multinomial",
        Cs: Sequence[float] = (0.1, 1, 10, 100),
        cv: int = 5,
        class_weight: str | dict | None = None,
        max_iter: int = 2000,
        random_state: int = 0,
    ) -> None:
        self.multi_class = multi_class
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def _base(self, y: np.ndarray) -> tuple[Any, str, int]:
        if self.multi_class not in {"multinomial", "ovr"}:
            raise ValueError(
                f"multi_class must be 'multinomial' or 'ovr', got {self.multi_class!r}"
            )
        lr = LogisticRegression(class_weight=self.class_weight, max_iter=self.max_iter)
        if self.multi_class == "ovr" and y.ndim == 1:
            return OneVsRestClassifier(lr), "estimator__C", 1
        return lr, "C", 1


class SVMHead(_GridHead):
    """Support-vector head: ``"linear_svc"`` (LinearSVC), ``"svc_linear"`` or ``"svc_rbf"`` (SVC).

    With ``calibrate`` probabilities come from ``CalibratedClassifierCV`` (sigmoid). Without it,
    or when a class has fewer than 2 members (``calibrated_`` is then False), ``predict_proba``
    is a softmax (sigmoid per label) of decision scores: a ranking, not a calibrated
    probability, and C is then picked by balanced accuracy (ROC AUC for multi-label).
    """

    def __init__(
        self,
        kind: str = "linear_svc",
        loss: str = "squared_hinge",
        gamma: str | float = "scale",
        Cs: Sequence[float] = (0.01, 0.1, 1, 10),
        cv: int = 5,
        calibrate: bool = True,
        class_weight: str | dict | None = None,
        random_state: int = 0,
    ) -> None:
        self.kind = kind
        self.loss = loss
        self.gamma = gamma
        self.Cs = Cs
        self.cv = cv
        self.calibrate = calibrate
        self.class_weight = class_weight
        self.random_state = random_state

    def _has_proba(self) -> bool:
        return self.calibrated_

    def _base(self, y: np.ndarray) -> tuple[Any, str, int]:
        cw = self.class_weight
        if self.kind == "linear_svc":
            svm: Any = LinearSVC(loss=self.loss, class_weight=cw, max_iter=10_000)
        elif self.kind == "svc_linear":
            svm = SVC(kernel="linear", class_weight=cw)
        elif self.kind == "svc_rbf":
            svm = SVC(kernel="rbf", gamma=self.gamma, class_weight=cw)
        else:
            raise ValueError(f"kind must be linear_svc, svc_linear or svc_rbf, got {self.kind!r}")
        # Calibration holds out folds of its own: it needs >= 2 members of every class.
        counts = class_counts(y)
        self.calibrated_ = bool(self.calibrate and counts.min() >= 2)
        if not self.calibrated_:
            return svm, "C", 1
        inner = int(max(2, min(3, counts.min() // 2)))
        return CalibratedClassifierCV(svm, method="sigmoid", cv=inner), "estimator__C", inner

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = predict_inputs(self, X, "estimator_")
        if self.calibrated_:
            return self.estimator_.predict_proba(l2_normalise(X))
        scores = self.estimator_.decision_function(l2_normalise(X))
        if self.multilabel_:
            return expit(scores)
        if scores.ndim == 1:  # binary: one margin for the second class
            p = expit(scores)
            return np.column_stack([1 - p, p])
        return softmax(scores, axis=1)
