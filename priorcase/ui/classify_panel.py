"""Classification panel: kNN voting, a logistic head and zero-shot prompts for one label column.

``PriorCase.classify`` is not part of the library API yet, so this adapter drives
``priorcase.classifiers`` directly. Fitted models are cached per (table version, kind, column):
the kNN vote and the prompt centroids are cheap; the logistic head is fitted lazily on the
first request for a column and reused until the library changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from priorcase.api import PriorCase
from priorcase.classifiers import KNNVoteClassifier, LogisticHead, ZeroShotClassifier
from priorcase.errors import PriorcaseError
from priorcase.ingest.pipeline import ROI_TYPE

METHOD_TITLES = {
    "knn": "kNN vote (similar prior cases)",
    "logreg": "Logistic head (trained on library embeddings)",
    "zeroshot": "Text prompts (zero-shot)",
}
DEFAULT_METHODS = ("knn", "logreg", "zeroshot")
KNN_K = 10
# Grid-searching C with 5-fold CV on 10k rows takes a while; 3 folds is plenty for a panel.
LOGREG_CV = 3


@dataclass
class MethodResult:
    """One method's answer: class probabilities and a one-line explanation (or an error)."""

    method: str
    title: str
    probabilities: dict[str, float] = field(default_factory=dict)
    explanation: str = ""
    error: str | None = None


@dataclass
class _Training:
    version: int
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    ids: set[str]


class ClassifyPanel:
    """Per-column classifiers over one library, cached per table version."""

    def __init__(self, pc: PriorCase, k: int = KNN_K) -> None:
        self.pc = pc
        self.k = k
        self._lock = threading.Lock()
        self._cache: dict[tuple, object] = {}

    # ------------------------------------------------------------------ columns
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

    # ------------------------------------------------------------------ training data
    def _cached(self, key: tuple, build):
        with self._lock:
            version = key[0]
            if key not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k[0] == version}
            else:
                return self._cache[key]
        value = build()  # outside the lock: a logistic fit must not block other columns
        with self._lock:
            self._cache.setdefault(key, value)
            return self._cache[key]

    def training(self, column: str, kind: str | None) -> _Training:
        version = self.pc.store.version

        def build() -> _Training:
            snapshot = self.pc.store.snapshot(kind)
            values = self.pc.store.column_values(column, kind)
            y = np.array([values.get(i) or "" for i in snapshot.ids], dtype=object)
            keep = y != ""
            groups = np.array(
                [
                    g if g is not None else i
                    for g, i in zip(snapshot.groups, snapshot.ids, strict=True)
                ],
                dtype=object,
            )
            return _Training(
                version,
                snapshot.vectors[keep],
                y[keep].astype(str),
                groups[keep].astype(str),
                set(snapshot.ids[keep].tolist()),
            )

        return self._cached((version, "data", column, kind), build)  # type: ignore[return-value]

    # ------------------------------------------------------------------ methods
    def _knn(self, column: str, kind: str | None) -> tuple[KNNVoteClassifier, _Training]:
        data = self.training(column, kind)
        k = min(self.k, len(data.y))

        def build() -> KNNVoteClassifier:
            clf = KNNVoteClassifier(k=k, exclude_same_group=True)
            return clf.fit(data.X, data.y, groups=data.groups)

        return self._cached((data.version, "knn", column, kind), build), data  # type: ignore[return-value]

    def _logreg(self, column: str, kind: str | None) -> tuple[LogisticHead, _Training]:
        data = self.training(column, kind)

        def build() -> LogisticHead:
            return LogisticHead(cv=LOGREG_CV).fit(data.X, data.y, groups=data.groups)

        return self._cached((data.version, "logreg", column, kind), build), data  # type: ignore[return-value]

    def _zeroshot(self, column: str, kind: str | None) -> ZeroShotClassifier:
        data = self.training(column, kind)

        def build() -> ZeroShotClassifier:
            space = self.pc.joint_space()
            return ZeroShotClassifier(space, column=column).fit(None, np.unique(data.y))

        return self._cached((data.version, "zeroshot", column, kind), build)  # type: ignore[return-value]

    # ------------------------------------------------------------------ public
    def classify(
        self,
        vector: np.ndarray,
        column: str,
        kind: str | None = "image",
        methods: tuple[str, ...] | list[str] = DEFAULT_METHODS,
        exclude_group: str | None = None,
        query_id: str | None = None,
    ) -> list[MethodResult]:
        """Class probabilities for one image vector, one :class:`MethodResult` per method.

        ``exclude_group`` (the query's patient) keeps that patient's films out of the kNN vote;
        ``query_id`` names a stored query, flagged where a fitted model has seen it.
        """
        X = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        results = []
        for method in methods:
            result = MethodResult(method, METHOD_TITLES.get(method, method))
            try:
                if method == "knn":
                    self._run_knn(result, X, column, kind, exclude_group)
                elif method == "logreg":
                    self._run_logreg(result, X, column, kind, query_id)
                elif method == "zeroshot":
                    self._run_zeroshot(result, X, column, kind)
                else:
                    result.error = f"unknown method {method!r}"
            except (PriorcaseError, ValueError) as err:
                result.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            results.append(result)
        return results

    def _run_knn(self, result, X, column, kind, exclude_group) -> None:
        clf, _ = self._knn(column, kind)
        groups = None if exclude_group is None else np.array([exclude_group], dtype=object)
        proba = clf.predict_proba(X, groups)[0]
        result.probabilities = _as_dict(clf.classes_, proba)
        line = clf.explain(X, groups)[0]
        if groups is not None:
            line += " (same patient excluded)"
        result.explanation = line

    def _run_logreg(self, result, X, column, kind, query_id) -> None:
        clf, data = self._logreg(column, kind)
        proba = clf.predict_proba(X)[0]
        result.probabilities = _as_dict(clf.classes_, proba)
        top = clf.classes_[int(np.argmax(proba))]
        how = f"C={clf.best_params_['C']:g}"
        if getattr(clf, "scoring_", None) and hasattr(clf, "best_score_"):
            how += f", {LOGREG_CV}-fold CV {clf.scoring_} {clf.best_score_:.2f}"
        line = f"logistic regression on {len(data.y)} labelled embeddings ({how}) favours {top}"
        if query_id is not None and query_id in data.ids:
            line += "; this case was in its training set"
        result.explanation = line

    def _run_zeroshot(self, result, X, column, kind) -> None:
        clf = self._zeroshot(column, kind)
        proba = clf.predict_proba(X)[0]
        cosine = clf.decision_function(X)[0]
        result.probabilities = _as_dict(clf.classes_, proba)
        best = int(np.argmax(cosine))
        prompt = clf.prompts_[str(clf.classes_[best])][0]
        result.explanation = f'closest prompt: "{prompt}" (cosine {cosine[best]:.2f})'


def _as_dict(classes: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    return {str(c): float(p) for c, p in zip(classes, proba, strict=True)}
