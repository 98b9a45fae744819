"""A bounded, stratified, patient-grouped sample of a labelled set: what the library-wide heads
and their cross-validated figures are fitted on when a library is too big to fit in a request.
"""

from __future__ import annotations

import math

import numpy as np

from priorcase.classifiers.labelled import LabelledSet
from priorcase.evaluation.splits import grouped_folds

# Heads whose fit grows with the rows (grid-searched C, text aligners per calibration fold)
# are fitted on at most about this many cases; the kNN vote always uses every case.
MAX_HEAD_ROWS = 3000
# The library's cross-validated figures (shown in the UI and the export) are computed on at
# most about this many cases, the number evaluated stated beside them.
MAX_EVAL_ROWS = 3000


def grouped_sample(data: LabelledSet, cap: int) -> np.ndarray:
    """Row positions of about ``cap`` rows (all rows when there are no more): whole patients,
    class proportions kept, the same rows whatever the salt or storage order (one test fold
    of the salt-free grouped, stratified folds :func:`grouped_folds` makes for evaluation)."""
    n = len(data.y)
    if n <= cap:
        return np.arange(n)
    folds = grouped_folds(data.y, data.fold_groups, n_splits=math.ceil(n / cap))
    return np.sort(folds[0][1])


def capped(data: LabelledSet, cap: int) -> LabelledSet:
    """``data`` itself, or its :func:`grouped_sample` of about ``cap`` rows."""
    return data if len(data.y) <= cap else data.subset(grouped_sample(data, cap))
