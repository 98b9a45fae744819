"""Average the class probabilities of several fitted classifiers."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted


def _accepts_groups(method: Any) -> bool:
    return "groups" in inspect.signature(method).parameters


class ProbabilityEnsemble(ClassifierMixin, BaseEstimator):
    """Weighted mean of members' ``predict_proba``, columns aligned on the union of classes.

    Members are cloned and fitted in ``fit``; a class a member never saw gets 0 from it.
    ``groups`` reaches members whose ``fit`` / ``predict_proba`` take it (kNN exclusion).
    """

    def __init__(
        self, estimators: Sequence[tuple[str, Any]], weights: Sequence[float] | None = None
    ) -> None:
        self.estimators = estimators
        self.weights = weights

    def fit(self, X: np.ndarray, y, groups=None) -> ProbabilityEnsemble:
        if not self.estimators:
            raise ValueError("ProbabilityEnsemble needs at least one estimator")
        if self.weights is not None and len(self.weights) != len(self.estimators):
            raise ValueError(f"{len(self.weights)} weights for {len(self.estimators)} estimators")
        self.estimators_ = []
        for name, est in self.estimators:
            fitted = clone(est)
            kw = {"groups": groups} if _accepts_groups(fitted.fit) else {}
            self.estimators_.append((name, fitted.fit(X, y, **kw)))
        self.classes_ = np.unique(np.concatenate([e.classes_ for _, e in self.estimators_]))
        return self

    def predict_proba(self, X: np.ndarray, groups=None) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        weights = np.ones(len(self.estimators_)) if self.weights is None else self.weights
        total = np.zeros((len(np.atleast_2d(X)), len(self.classes_)))
        for w, (_, est) in zip(weights, self.estimators_, strict=True):
            kw = {"groups": groups} if _accepts_groups(est.predict_proba) else {}
            cols = np.searchsorted(self.classes_, est.classes_)
            total[:, cols] += w * est.predict_proba(X, **kw)
        return total / total.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray, groups=None) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X, groups), axis=1)]
