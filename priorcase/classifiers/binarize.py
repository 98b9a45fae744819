"""Collapse multi-class labels into a named positive / negative pair.

The positive label is ``"+".join(sorted(positive))`` (e.g. ``"benign+malignant"``) and the
negative one is ``"not " + positive_label`` (``"not benign+malignant"``), so reports stay
readable without a separate legend. :func:`priorcase.evaluation.metrics.evaluate_probabilities`
recognises such a pair and treats the non-"not" label as positive.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def binary_label_names(positive: Iterable[str]) -> tuple[str, str]:
    """``(negative_label, positive_label)`` for a set of positive classes."""
    names = sorted({str(p) for p in positive})
    if not names:
        raise ValueError("the set of positive labels is empty")
    pos = "+".join(names)
    return f"not {pos}", pos


def binarize_labels(y: Iterable[str], positive: Iterable[str]) -> np.ndarray:
    """Labels in ``positive`` become the positive label, all others the negative label."""
    positive = {str(p) for p in positive}
    neg_label, pos_label = binary_label_names(positive)
    y = np.asarray([str(v) for v in y], dtype=object)
    is_pos = np.isin(y, sorted(positive))
    if len(y) and not is_pos.any():
        # Almost always a typo in the positive class names: say which labels exist.
        known = ", ".join(sorted(set(y.tolist())))
        raise ValueError(f"none of the positive labels {sorted(positive)} occur; labels: {known}")
    return np.where(is_pos, pos_label, neg_label).astype(object)


def two_column_proba(p_positive: np.ndarray, classes: np.ndarray, positive: str) -> np.ndarray:
    """``predict_proba`` columns in ``classes`` order from the positive class's probability."""
    p = np.asarray(p_positive, dtype=float)
    out = np.zeros((len(p), 2))
    col = list(classes).index(positive)
    out[:, col], out[:, 1 - col] = p, 1 - p
    return out
