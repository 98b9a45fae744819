"""Input checks shared by the library's estimators (scikit-learn's own, so its messages)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data


def fit_inputs(
    estimator: Any, X: Any, y: Any, multilabel: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Dense finite 2-D ``X`` and class targets ``y``; sets ``n_features_in_``.

    A 2-D 0/1 ``y`` is kept (multi-label) only where ``multilabel``; a single column is
    flattened with scikit-learn's DataConversionWarning. Continuous targets are refused.
    """
    X, y = validate_data(estimator, X, y, accept_sparse=False, multi_output=multilabel)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    return X, y


def predict_inputs(estimator: Any, X: Any, fitted: str) -> np.ndarray:
    """``X`` checked against what ``estimator`` was fitted on (raises NotFittedError first)."""
    check_is_fitted(estimator, fitted)
    return validate_data(estimator, X, accept_sparse=False, reset=False)


def need_two_classes(classes: np.ndarray) -> None:
    if len(classes) < 2:
        raise ValueError(f"need at least two classes to train, got 1 class: {list(classes)}")
