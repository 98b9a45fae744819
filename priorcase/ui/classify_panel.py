"""Classification panel: which label columns it offers and how each method is titled.

The probabilities come from ``PriorCase.classifiers`` (one implementation for the CLI, the
Python API and the UI); this module only adapts them to the page.
"""

from __future__ import annotations

import numpy as np

from priorcase.api import PriorCase
from priorcase.ingest.pipeline import ROI_TYPE
from priorcase.library import KnnOptions, MethodPrediction

METHOD_TITLES = {
    "knn": "kNN vote (similar prior cases)",
    "logreg": "Logistic head (trained on library embeddings)",
    "zeroshot": "Text prompts (zero-shot)",
}
DEFAULT_METHODS = ("knn", "logreg", "zeroshot")
KNN_K = 10


class ClassifyPanel:
    """The panel's view of one library's classifiers."""

    def __init__(self, pc: PriorCase, k: int = KNN_K) -> None:
        self.pc = pc
        self.k = k

    def columns(self, kind: str | None = "image") -> list[str]:
        """Label columns with at least two classes among rows of ``kind``."""
        manifest = self.pc.store.manifest
        if manifest is None:
            return []
        out = []
        for column in manifest.label_columns:
            if column == manifest.group_column or (column == ROI_TYPE and kind == "image"):
                continue
            values = {v for v in self.pc.store.column_values(column, kind).values() if v}
            if len(values) >= 2:
                out.append(column)
        return out

    def classify(
        self,
        vector: np.ndarray,
        column: str,
        kind: str | None = "image",
        methods: tuple[str, ...] = DEFAULT_METHODS,
        exclude_group: str | None = None,
        query_id: str | None = None,
    ) -> list[MethodPrediction]:
        """One prediction per method (an ``error`` instead where a method cannot answer)."""
        result = self.pc.classifiers.classify(
            vector,
            column,
            tuple(methods),
            kind or "image",
            KnnOptions(k=self.k),
            exclude_group,
            query_id,
        )
        return result.predictions
