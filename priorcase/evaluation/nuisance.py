"""Nuisance-only baseline for ROI tasks: does patch geometry alone tell the classes apart?

Features per ROI: share of its crop box that is film background (Otsu on the parent film's
stored thumbnail), its radius (patch size), and its centre's position on the film. A
classifier that does well on these alone has found a shortcut the image methods could use too.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from priorcase.classifiers.linear import choose_scoring, cv_splits
from priorcase.ingest.roi import breast_mask, crop_box

if TYPE_CHECKING:
    from priorcase.index.store import CaseStore

FEATURES = ("background_fraction", "radius", "x", "y")


def nuisance_features(store: CaseStore, ids: np.ndarray) -> np.ndarray:
    """(n, 4) features of the ROI rows ``ids``; x and y are fractions of the film's size."""
    rows = store.fetch([str(i) for i in ids])
    parents = store.fetch(sorted({r["parent_id"] for r in rows.values() if r.get("parent_id")}))
    masks: dict[str, np.ndarray] = {}
    out = np.zeros((len(ids), len(FEATURES)))
    for n, i in enumerate(ids):
        row = rows[str(i)]
        parent = parents.get(row.get("parent_id") or "")
        width = float((parent or {}).get("width") or 1024)
        height = float((parent or {}).get("height") or 1024)
        x, y, r = row["roi_x"], row["roi_y"], row["roi_radius"]
        background = 0.0
        if parent is not None and parent.get("thumbnail"):
            pid = row["parent_id"]
            if pid not in masks:
                with Image.open(io.BytesIO(parent["thumbnail"])) as thumb:
                    masks[pid] = breast_mask(np.asarray(thumb.convert("L")))
            mask = masks[pid]
            sx, sy = mask.shape[1] / width, mask.shape[0] / height
            left, top, right, bottom = crop_box(width, height, x, y, r)
            box = mask[
                int(top * sy) : max(int(top * sy) + 1, int(bottom * sy)),
                int(left * sx) : max(int(left * sx) + 1, int(right * sx)),
            ]
            background = float(1.0 - box.mean())
        out[n] = (background, r, x / width, y / height)
    return out


class NuisanceHead(ClassifierMixin, BaseEstimator):
    """Standardised features + logistic regression, C from the same grid and grouped inner CV
    as the logistic head on embeddings (the baseline gets the same tuning)."""

    def __init__(self, Cs=(0.1, 1, 10, 100), cv: int = 5, random_state: int = 0) -> None:
        self.Cs = Cs
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: np.ndarray, y, groups=None) -> NuisanceHead:
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        splits = cv_splits(y, groups, self.cv, self.random_state)
        if not splits:
            self.estimator_: Any = model.set_params(logisticregression__C=1.0).fit(X, y)
            return self
        search = GridSearchCV(
            model,
            {"logisticregression__C": list(self.Cs)},
            scoring=choose_scoring(y, splits, True),
            cv=splits,
        )
        self.estimator_ = search.fit(X, y).best_estimator_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator_.predict_proba(X)
