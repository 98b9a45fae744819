"""Labelled training sets drawn from an index, and classifiers trained on the whole library."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np

from priorcase.classifiers import make_classifier
from priorcase.classifiers.joint_space import JointSpace
from priorcase.classifiers.prompts import MAMMOGRAPHY_TEMPLATES, class_prompts
from priorcase.errors import PriorcaseError, QueryError
from priorcase.evaluation.binarize import binarize_labels, binary_label_names
from priorcase.index.artifacts import BoundedCache, content_digest, load_or_build
from priorcase.records import SearchHit
from priorcase.retrieval.search import check_k

if TYPE_CHECKING:
    from priorcase.api import PriorCase

# Text-free heads whose fitting is worth keeping on disk (grid search over C).
PERSISTED = ("logreg", "svm")
MAX_CACHED_MODELS = 32  # fitted heads kept in memory (methods x labels x kinds x k)
TEXT_METHODS = ("zeroshot", "similarity")


@dataclass
class LabelledSet:
    """Rows of one kind with a value in ``label``: vectors, targets and grouping keys."""

    label: str
    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    positive: tuple[str, ...] = ()
    original: np.ndarray | None = None  # y before --positive collapsed it

    def subset(self, rows: np.ndarray) -> LabelledSet:
        original = None if self.original is None else self.original[rows]
        return LabelledSet(
            self.label,
            self.ids[rows],
            self.X[rows],
            self.y[rows],
            self.groups[rows],
            self.positive,
            original,
        )


def labelled_set(
    pc: PriorCase,
    label: str,
    kind: str = "image",
    where: str | None = None,
    positive: tuple[str, ...] = (),
) -> LabelledSet:
    """Every stored row of ``kind`` with a ``label`` value (optionally filtered / binarised)."""
    snapshot = pc.store.snapshot(kind)
    values = pc.store.column_values(label, kind)
    allowed = pc.store.ids_matching(where) if where else None
    # ordered by id, not by storage order, so folds do not change when a library is rebuilt
    rows = sorted(
        (
            n
            for n, i in enumerate(snapshot.ids)
            if values.get(i) is not None and (allowed is None or i in allowed)
        ),
        key=lambda n: snapshot.ids[n],
    )
    if not rows:
        raise QueryError(f"no {kind} rows with a value in column {label!r}")
    rows_arr = np.asarray(rows)
    original = np.array([values[snapshot.ids[n]] for n in rows], dtype=object)
    y = binarize_labels(original, positive) if positive else original
    return LabelledSet(
        label=label,
        ids=snapshot.ids[rows_arr],
        X=snapshot.vectors[rows_arr],
        y=np.asarray(y, dtype=object).astype(str),
        groups=np.asarray(snapshot.groups[rows_arr], dtype=object).astype(str),
        positive=tuple(positive),
        original=original,
    )


def prompts_for_set(
    data: LabelledSet, templates=MAMMOGRAPHY_TEMPLATES
) -> dict[str, list[str]] | None:
    """Class prompts; a binarised label gets the prompts of the values on each side."""
    if not data.positive:
        return None
    assert data.original is not None
    negative_name, positive_name = binary_label_names(data.positive)
    values = sorted(set(data.original.tolist()))
    per_value = class_prompts(values, data.label, templates)
    return {
        positive_name: [p for v in values if v in data.positive for p in per_value[v]],
        negative_name: [p for v in values if v not in data.positive for p in per_value[v]],
    }


@dataclass(frozen=True)
class KnnOptions:
    """How the kNN vote is taken (see :class:`priorcase.classifiers.KNNVoteClassifier`)."""

    k: int = 10
    weights: str = "uniform"  # or "similarity": softmax(score / temperature)
    temperature: float = 0.1
    prior_correction: bool = False


DEFAULT_KNN = KnnOptions()


def build_classifier(
    method: str, data: LabelledSet, space: JointSpace | None, knn: KnnOptions = DEFAULT_KNN
) -> Any:
    """An unfitted classifier for ``data``'s label (prompts from the label's vocabulary)."""
    if method in TEXT_METHODS:
        return make_classifier(method, space, data.label, prompts=prompts_for_set(data))
    if method == "knn":
        return make_classifier(
            "knn",
            k=knn.k,
            weights=knn.weights,
            temperature=knn.temperature,
            prior_correction=knn.prior_correction,
            exclude_same_group=True,
        )
    if method == "ensemble":
        ensemble = make_classifier("ensemble", space, data.label)
        # its kNN member votes with the asked-for k and can leave the query's patient out
        ensemble.estimators = [
            (name, est.set_params(k=knn.k, exclude_same_group=True) if name == "knn" else est)
            for name, est in ensemble.estimators
        ]
        return ensemble
    return make_classifier(method)


@dataclass
class MethodPrediction:
    """One method's probabilities for one query, with a one-line reason (or why it failed)."""

    method: str
    probabilities: dict[str, float] = field(default_factory=dict)
    explanation: str = ""
    error: str | None = None
    box: tuple[int, int, int, int] | None = None  # tiles: the tile that drove the score


@dataclass
class Classification:
    """All methods' answers for one query and label, plus the neighbours that voted."""

    label: str
    predictions: list[MethodPrediction]
    neighbours: list[SearchHit] = field(default_factory=list)
    query_in_library: str | None = None  # id of the stored copy of the query (same bytes)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "query_in_library": self.query_in_library,
            "methods": [
                {
                    "method": p.method,
                    "probabilities": p.probabilities,
                    "explanation": p.explanation,
                    "error": p.error,
                    **({"box": list(p.box)} if p.box else {}),
                }
                for p in self.predictions
            ],
            "neighbours": [h.to_json() for h in self.neighbours],
        }


def _explain(
    method: str,
    model: Any,
    data: LabelledSet,
    query: np.ndarray,
    proba: np.ndarray,
    query_id: str | None,
) -> str:
    """One line saying why a (non-kNN) method answers as it does."""
    if method in TEXT_METHODS:
        scores = model.decision_function(query)[0]
        best = int(np.argmax(scores))
        prompt = model.prompts_[str(model.classes_[best])][0]
        if method == "zeroshot":
            return f'closest prompt: "{prompt}" (cosine {scores[best]:.2f})'
        return f'trained prompt-similarity head favours "{prompt}"'
    top = model.classes_[int(np.argmax(proba))]
    how = f"C={model.best_params_['C']:g}, " if hasattr(model, "best_params_") else ""
    name = {"logreg": "logistic regression", "svm": "SVM"}.get(method, method)
    line = f"{name} on {len(data.y)} labelled cases ({how}grouped CV) favours {top}"
    if query_id is not None and query_id in set(data.ids.tolist()):
        line += "; this case was in its training set"
    return line


def _fit_tiles(pc: PriorCase, label: str) -> tuple[Any, LabelledSet]:
    """The tile head for ``label``, its positive class = the values of films with findings."""
    from priorcase.classifiers.tiles import TileData, TileMILClassifier, positive_values

    tiles = TileData.from_library(pc)
    positive = positive_values(pc.store.column_values(label, "image"), tiles)
    data = labelled_set(pc, label, "image", positive=positive)
    keep = np.array([i in tiles.tiles for i in data.ids])
    data = data.subset(np.flatnonzero(keep))
    return TileMILClassifier(tiles).fit(data.ids, data.y, groups=data.groups), data


class LibraryClassifiers:
    """Classifiers fitted on every labelled case of an index, cached per table version.

    Logistic and SVM heads are saved under ``<db>/classifiers`` with the encoder's weight
    digest; a saved head from another encoder is refused, one from an older table is refitted.
    """

    def __init__(self, pc: PriorCase) -> None:
        self.pc = pc
        self._cache = BoundedCache(MAX_CACHED_MODELS)

    def fitted(
        self, method: str, label: str, kind: str = "image", knn: KnnOptions = DEFAULT_KNN
    ) -> tuple[Any, LabelledSet]:
        snapshot = self.pc.store.snapshot(kind)
        key = (snapshot.version, snapshot.digest, method, label, kind)
        key += (knn if method in ("knn", "ensemble") else None,)

        def fit() -> tuple[Any, LabelledSet]:
            if method == "tiles":
                return _fit_tiles(self.pc, label)
            data = labelled_set(self.pc, label, kind)
            if method in PERSISTED:
                return self._load_or_fit(method, kind, data, knn), data
            return self._fit(method, data, knn), data

        # under the cache's lock: the UI warm-up thread and a first user never fit twice
        return self._cache.get_or_make(key, fit)

    def _fit(self, method: str, data: LabelledSet, knn: KnnOptions) -> Any:
        space = self.pc.joint_space() if method in (*TEXT_METHODS, "ensemble") else None
        model = build_classifier(method, data, space, knn)
        return model.fit(data.X, data.y, groups=data.groups)

    def classify(
        self,
        vector: np.ndarray,
        label: str,
        methods: tuple[str, ...] = ("knn", "logreg", "zeroshot"),
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        exclude_group: str | None = None,
        query_id: str | None = None,
    ) -> Classification:
        """Probabilities per method for one image-space vector.

        ``exclude_group`` (the query's patient) keeps that patient's cases out of the kNN vote;
        ``query_id`` names a stored query, flagged where a trained head has seen it. A method
        that fails (e.g. text prompts without labels) reports its error and the others go on.
        """
        knn = replace(knn, k=check_k(knn.k))
        manifest = self.pc.store.manifest
        if manifest is None or label not in manifest.label_columns:
            known = ", ".join(manifest.label_columns) if manifest else "none"
            raise QueryError(
                f"no label column {label!r} in {self.pc.store.db_dir} (labels: {known})"
            )
        query = np.asarray(vector, dtype=np.float32)[None, :]
        groups = None if exclude_group is None else np.array([exclude_group], dtype=object)
        result = Classification(label, [], query_in_library=query_id)
        for method in methods:
            prediction = MethodPrediction(method)
            try:
                model, data = self.fitted(method, label, kind, knn)
                if method == "knn":
                    proba = model.predict_proba(query, groups)[0]
                    prediction.explanation = model.explain(query, groups)[0]
                    if groups is not None:
                        prediction.explanation += " (same patient excluded)"
                    elif query_id is not None and query_id in set(data.ids.tolist()):
                        prediction.explanation += f"; the query is stored as {query_id} and votes"
                    positions, scores = model.kneighbors(query, groups)
                    valid = positions[0] >= 0
                    result.neighbours = self.pc.store.hits(
                        [str(data.ids[p]) for p in positions[0][valid]],
                        [float(s) for s in scores[0][valid]],
                    )
                elif method == "ensemble":  # its kNN member leaves the query's patient out too
                    proba = model.predict_proba(query, groups)[0]
                    prediction.explanation = _explain(method, model, data, query, proba, query_id)
                    if groups is not None:
                        prediction.explanation += " (same patient excluded from its kNN vote)"
                else:
                    proba = model.predict_proba(query)[0]
                    prediction.explanation = _explain(method, model, data, query, proba, query_id)
                prediction.probabilities = {
                    str(c): float(p) for c, p in zip(model.classes_, proba, strict=True)
                }
            except (PriorcaseError, ValueError) as err:
                prediction.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            result.predictions.append(prediction)
        return result

    def _load_or_fit(self, method: str, kind: str, data: LabelledSet, knn: KnnOptions) -> Any:
        """A saved head fitted on exactly ``data`` with this encoder, else fitted and saved.

        The file name holds a digest of the training rows, targets, groups, the encoder's
        weights and the method, so a head of another table, label set or encoder is never
        loaded; a file that does not load is refitted (see :func:`load_or_build`).
        """
        manifest = self.pc.store.manifest
        assert manifest is not None
        weights = manifest.encoder["weights_sha256"]
        digest = content_digest(
            data.ids, data.X, data.y, data.groups, data.positive, method, weights
        )
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in data.label)
        prefix = f"{kind}-{safe}-{method}-"
        path = self.pc.store.db_dir / "classifiers" / f"{prefix}{digest[:32]}.joblib"

        def load(p: Path) -> Any:
            saved = joblib.load(p)
            if saved.get("digest") != digest:
                raise ValueError("saved for other training data")
            return saved["model"]

        def save(model: Any, tmp: Path) -> None:
            payload = {"model": model, "digest": digest, "encoder": manifest.encoder_spec}
            joblib.dump(payload, tmp)

        return load_or_build(
            path,
            load,
            lambda: self._fit(method, data, knn),
            save,
            notify=self.pc._notify,
            stale=lambda old: old.name.startswith(prefix) and old.suffix == ".joblib",
        )
