"""Case level for ``priorcase eval --case-fusion``: films fused with the patient's other breast,
and scores per case (patient) from the films' out-of-fold probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np

from priorcase.classifiers.case_fusion import CaseFusionClassifier, CaseLayout, case_scores
from priorcase.classifiers.labelled import LabelledSet
from priorcase.classifiers.tiles import TileData, TileMILClassifier
from priorcase.errors import QueryError
from priorcase.evaluation.metrics import MethodResult, evaluate_probabilities
from priorcase.library import KnnOptions, build_classifier

FUSED = "+contralateral"  # suffix of a fused method's name
FUSABLE = ("knn", "logreg", "svm", "tiles")  # no per-fold text space to thread through


def layout_for(store: Any, data: LabelledSet, positive: str | None, kind: str) -> CaseLayout:
    """The case layout of the evaluated films; a one-line error where fusion cannot apply."""
    if kind != "image" or positive is None:
        raise QueryError("--case-fusion scores whole films of a binary label (--positive, image)")
    layout = CaseLayout.from_store(store)
    if not any(layout.partners(str(i)) for i in data.ids):
        raise QueryError(
            "--case-fusion: no film has a contralateral partner (same patient, other breast: "
            "a laterality column in the labels CSV or DICOM ImageLaterality)"
        )
    keep = {str(i) for i in data.ids}  # partners must be scoreable (selected rows only)
    return CaseLayout(
        {i: p for i, p in layout.patient.items() if i in keep},
        layout.side,
        layout.view,
        layout.frame,
    )


def fused_classifier(
    method: str, layout: CaseLayout, data: LabelledSet, tiles: TileData | None, knn: KnnOptions
) -> CaseFusionClassifier:
    """``method`` fused with the other breast (X = film ids). The base is not calibrated: the
    fusion's logistic regression maps its scores to a probability."""
    position = {str(i): n for n, i in enumerate(data.ids)}

    def vectors(ids: np.ndarray) -> np.ndarray:
        return data.X[[position[str(i)] for i in ids]]

    if method == "tiles":
        assert tiles is not None
        return CaseFusionClassifier(lambda: TileMILClassifier(tiles), layout)
    return CaseFusionClassifier(
        lambda: build_classifier(method, data, None, knn, calibrate=False), layout, vectors
    )


def case_result(
    method: str,
    data: LabelledSet,
    groups: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    positive: str,
    n_boot: int,
) -> MethodResult:
    """One method at case level: a case (group) is positive when any of its films is, and
    scores the max of its films' out-of-fold probabilities; the CI resamples cases."""
    col = list(classes).index(positive)
    cases, truth, score = case_scores(groups, data.y == positive, proba[:, col])
    negative = next(str(c) for c in classes if c != positive)
    y = np.where(truth, positive, negative).astype(object)
    case_proba = np.zeros((len(cases), 2))
    case_proba[:, list(classes).index(positive)] = score
    case_proba[:, list(classes).index(negative)] = 1 - score
    return evaluate_probabilities(
        y, case_proba, classes, method, groups=cases, n_boot=n_boot, positive=positive
    )
