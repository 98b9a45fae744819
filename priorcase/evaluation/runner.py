"""Out-of-fold and holdout class probabilities for scikit-learn-style estimators."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def _accepts_groups(method: Callable[..., Any]) -> bool:
    """True when ``method`` names a ``groups`` parameter (``**kwargs`` does not count:
    e.g. sklearn ``Pipeline.fit`` would try to route it and fail)."""
    try:
        return "groups" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _fit(est: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> Any:
    if groups is not None and _accepts_groups(est.fit):
        return est.fit(X, y, groups=groups)
    return est.fit(X, y)


def _predict_proba(est: Any, X: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    if groups is not None and _accepts_groups(est.predict_proba):
        return np.asarray(est.predict_proba(X, groups=groups), dtype=np.float64)
    return np.asarray(est.predict_proba(X), dtype=np.float64)


def cross_val_proba(
    make_estimator: Callable[[np.ndarray], Any],
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    progress: bool = True,
    on_fold: Callable[[Any, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities ``(proba (n, n_classes), classes)``; classes = sorted labels.

    ``make_estimator(train_idx)`` builds a fresh estimator per fold; it gets the training
    indices so fold-specific parts (e.g. a text aligner) are fitted on training rows only.
    ``groups`` goes to ``fit`` / ``predict_proba`` where they accept it. Classes missing from
    a fold's training rows get probability 0 there; rows in no test fold stay NaN.
    ``on_fold(fitted_estimator, train_idx, test_idx, test_proba)`` sees every fold (e.g. to
    apply thresholds or prediction sets the fold's own training rows chose).
    """
    X = np.asarray(X)
    y = np.asarray(y)
    groups = None if groups is None else np.asarray(groups)
    classes = np.unique(y)
    column = {c: j for j, c in enumerate(classes.tolist())}
    proba = np.full((len(y), len(classes)), np.nan)
    for train_idx, test_idx in tqdm(
        folds, desc="cross-validation", unit="fold", disable=not progress
    ):
        train_idx = np.asarray(train_idx)
        test_idx = np.asarray(test_idx)
        if np.intersect1d(train_idx, test_idx).size:
            raise ValueError("a fold shares rows between training and test")
        est = make_estimator(train_idx)
        g_train = None if groups is None else groups[train_idx]
        g_test = None if groups is None else groups[test_idx]
        _fit(est, X[train_idx], y[train_idx], g_train)
        fold_proba = _predict_proba(est, X[test_idx], g_test)
        cols = [column[c] for c in np.asarray(est.classes_).tolist()]
        out = np.zeros((len(test_idx), len(classes)))
        out[:, cols] = fold_proba
        proba[test_idx] = out
        if on_fold is not None:
            on_fold(est, train_idx, test_idx, out)
    return proba, classes


def holdout_proba(
    estimator: Any,
    X_train: np.ndarray,
    y_train: np.ndarray,
    groups_train: np.ndarray | None,
    X_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on the training split, return ``(proba, classes)`` for the test split."""
    groups_train = None if groups_train is None else np.asarray(groups_train)
    _fit(estimator, np.asarray(X_train), np.asarray(y_train), groups_train)
    return _predict_proba(estimator, np.asarray(X_test), None), np.asarray(estimator.classes_)
