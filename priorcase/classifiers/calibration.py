"""Grouped post-hoc calibration and split-conformal prediction sets for any classifier.

``GroupCalibrated`` wraps an estimator: inner patient-grouped folds of the *training* rows give
out-of-fold probabilities, on which a temperature (one scale for every class) plus a bias per
class is fitted by minimising the log loss; the wrapped estimator is then refitted on all
training rows and its probabilities pass through that map. The same out-of-fold rows, held
out from the models that scored them, calibrate split-conformal prediction sets (LAC score
``1 - p(true class)``), so no row the wrapper is scored on ever shapes it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone

from priorcase.classifiers.linear import cv_splits
from priorcase.classifiers.validation import fit_inputs, predict_inputs

_EPS = 1e-12
BIAS_PENALTY = 1e-2  # keeps class biases finite when a training split separates perfectly


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(proba, _EPS, 1.0))


def scaled_log_proba(logp: np.ndarray, scale: float, bias: np.ndarray) -> np.ndarray:
    """log softmax(scale * log p + bias): temperature 1/scale and a bias per class."""
    return log_softmax(scale * logp + bias, axis=1)


def fit_scaling(logp: np.ndarray, y_idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale, bias) minimising the mean log loss of log-probabilities ``logp`` vs ``y_idx``."""
    n_classes = logp.shape[1]

    def loss(theta: np.ndarray) -> float:
        scale, bias = math.exp(theta[0]), theta[1:]
        lp = log_softmax(scale * logp + bias, axis=1)
        return float(-lp[np.arange(len(y_idx)), y_idx].mean() + BIAS_PENALTY * bias @ bias)

    res = minimize(loss, np.zeros(1 + n_classes), method="L-BFGS-B")
    theta = res.x
    return float(math.exp(theta[0])), np.asarray(theta[1:], dtype=np.float64)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """Split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest score (1.0 when n
    is too small for a finite quantile, so the set is every class)."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or rank > n:
        return 1.0
    return float(np.sort(scores)[rank - 1])


def _fit(est: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
    from priorcase.evaluation.runner import _fit as fit_with_groups

    return fit_with_groups(est, X, y, groups)


def _log_scores(
    est: Any, X: np.ndarray, groups: np.ndarray | None, classes: np.ndarray
) -> np.ndarray:
    """``est``'s log-probabilities with columns on ``classes`` (a class it never saw: log 1e-12).

    Prompt heads (softmax of cosine / 0.01) saturate to exactly 0 and 1, so their logits are
    taken instead: the fitted scale then sets the temperature.
    """
    from priorcase.evaluation.runner import _predict_proba

    if hasattr(est, "prompts_") and hasattr(est, "decision_function"):
        raw = log_softmax(np.asarray(est.decision_function(X), dtype=np.float64), axis=1)
    else:
        raw = _log(_predict_proba(est, X, groups))
    out = np.full((len(raw), len(classes)), math.log(_EPS))
    out[:, np.searchsorted(classes, np.asarray(est.classes_))] = raw
    return out


class GroupCalibrated(ClassifierMixin, BaseEstimator):
    """``estimator`` with probabilities calibrated on grouped out-of-fold training predictions.

    ``cv`` inner folds (grouped by ``groups`` when given, stratified). With too little data for
    two folds the wrapper passes probabilities through unchanged and ``calibrated_`` is False.
    ``prediction_sets(X)`` are split-conformal sets at level ``1 - alpha``.

    ``inner(rows)`` (optional) builds the estimator for an inner fold from its training row
    positions; a head whose text space was learnt from the training rows' reports needs it,
    since the space fitted on all of them has already seen the inner held-out rows' labels.
    """

    def __init__(
        self,
        estimator: Any,
        cv: int = 5,
        alpha: float = 0.1,
        random_state: int = 0,
        inner: Any = None,
    ) -> None:
        self.estimator = estimator
        self.cv = cv
        self.alpha = alpha
        self.random_state = random_state
        self.inner = inner

    def fit(self, X: np.ndarray, y, groups=None) -> GroupCalibrated:
        X, y = fit_inputs(self, X, y)
        groups = None if groups is None else np.asarray(groups)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        self.prior_ = np.bincount(y_idx, minlength=len(self.classes_)) / len(y)
        splits = cv_splits(y, groups, self.cv, self.random_state)
        oof = np.full((len(y), len(self.classes_)), np.nan)
        for train, test in splits:
            g_train = None if groups is None else groups[train]
            est = clone(self.estimator) if self.inner is None else self.inner(train)
            est = _fit(est, X[train], y[train], g_train)
            g_test = None if groups is None else groups[test]
            oof[test] = _log_scores(est, X[test], g_test, self.classes_)
        scored = ~np.isnan(oof).any(axis=1)
        self.calibrated_ = bool(splits) and scored.sum() >= 2 * len(self.classes_)
        if self.calibrated_:
            self.scale_, self.bias_ = fit_scaling(oof[scored], y_idx[scored])
        else:
            self.scale_, self.bias_ = 1.0, np.zeros(len(self.classes_))
        self.oof_proba_ = np.full_like(oof, np.nan)
        self.oof_proba_[scored] = np.exp(scaled_log_proba(oof[scored], self.scale_, self.bias_))
        self.oof_rows_ = np.flatnonzero(scored)
        true_p = self.oof_proba_[self.oof_rows_, y_idx[self.oof_rows_]]
        self.conformal_threshold_ = conformal_quantile(1.0 - true_p, self.alpha)
        self.y_idx_ = y_idx
        self.estimator_ = _fit(clone(self.estimator), X, y, groups)
        return self

    def uncalibrated_proba(self, X: np.ndarray, groups=None) -> np.ndarray:
        X = predict_inputs(self, X, "estimator_")
        return np.exp(_log_scores(self.estimator_, X, groups, self.classes_))

    def predict_proba(self, X: np.ndarray, groups=None) -> np.ndarray:
        X = predict_inputs(self, X, "estimator_")
        logp = _log_scores(self.estimator_, X, groups, self.classes_)
        return np.exp(scaled_log_proba(logp, self.scale_, self.bias_))

    def predict(self, X: np.ndarray, groups=None) -> np.ndarray:
        proba = self.predict_proba(X, groups)  # checks fitted before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]

    def sets_from_proba(self, proba: np.ndarray) -> np.ndarray:
        """Boolean (n, n_classes): classes whose score 1 - p is within the conformal threshold
        (never empty: the top class is always in)."""
        member = 1.0 - proba <= self.conformal_threshold_ + 1e-12
        member[np.arange(len(proba)), np.argmax(proba, axis=1)] = True
        return member

    def prediction_sets(self, X: np.ndarray, groups=None) -> np.ndarray:
        return self.sets_from_proba(self.predict_proba(X, groups))

    def __getattr__(self, name: str) -> Any:
        # explanations (kneighbors, explain, decision_function, prompts_, best_params_) come
        # from the wrapped, fitted estimator
        if name.startswith("__") or name in {"estimator_", "estimator"}:
            raise AttributeError(name)
        fitted = self.__dict__.get("estimator_")
        if fitted is None:
            raise AttributeError(name)
        return getattr(fitted, name)
