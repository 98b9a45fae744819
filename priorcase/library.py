"""Classifiers trained on the whole library (a service on the :class:`~priorcase.core.Core`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from priorcase.classifiers import make_classifier
from priorcase.classifiers.calibration import GroupCalibrated
from priorcase.classifiers.joint_space import JointSpace
from priorcase.classifiers.labelled import LabelledSet, labelled_set, prompts_for_set
from priorcase.classifiers.sampling import MAX_EVAL_ROWS, MAX_HEAD_ROWS, capped
from priorcase.classifiers.text_spaces import FoldSpaces, TextSpaces
from priorcase.core import Core
from priorcase.errors import PriorcaseError, QueryError
from priorcase.index.artifacts import BoundedCache, content_digest, load_or_build
from priorcase.index.location import LibraryFile
from priorcase.records import SearchHit
from priorcase.retrieval.reference import OK, LibraryReference, Reference
from priorcase.retrieval.search import check_k

# Text-free heads whose fitting is worth keeping on disk (grid search over C).
PERSISTED = ("logreg", "svm")
MAX_CACHED_MODELS = 32  # fitted heads kept in memory (methods x labels x kinds x k)
TEXT_METHODS = ("zeroshot", "similarity")
DEFAULT_ALPHA = 0.1  # conformal prediction sets cover the true class 90% of the time


@dataclass(frozen=True)
class KnnOptions:
    """How the kNN vote is taken (see :class:`priorcase.classifiers.KNNVoteClassifier`)."""

    k: int = 10
    weights: str = "uniform"  # or "similarity": softmax(score / temperature)
    temperature: float = 0.1
    prior_correction: bool = False


DEFAULT_KNN = KnnOptions()


def build_classifier(
    method: str,
    data: LabelledSet,
    space: JointSpace | None,
    knn: KnnOptions = DEFAULT_KNN,
    calibrate: bool = True,
    alpha: float = DEFAULT_ALPHA,
    space_for: Callable[[np.ndarray], JointSpace] | None = None,
    rows: np.ndarray | None = None,
) -> Any:
    """An unfitted classifier for ``data``'s label (prompts from the label's vocabulary).

    With ``calibrate`` (the default) it is wrapped in :class:`GroupCalibrated`: probabilities
    calibrated on grouped out-of-fold training predictions, conformal sets at ``1 - alpha``.
    ``space_for(data_rows)`` fits a text space on those rows only; given (with ``rows``, the
    data rows this classifier will be fitted on, default all), each inner calibration fold of
    a text method gets its own space, so calibration never sees a space fitted on its rows.
    """
    model = _base_classifier(method, data, space, knn)
    if not calibrate:
        return model
    inner = None
    if space_for is not None and method in (*TEXT_METHODS, "ensemble"):
        fit_rows = np.arange(len(data.y)) if rows is None else np.asarray(rows)

        def inner(positions: np.ndarray) -> Any:
            return _base_classifier(method, data, space_for(fit_rows[positions]), knn)

    return GroupCalibrated(model, alpha=alpha, inner=inner)


def _base_classifier(
    method: str, data: LabelledSet, space: JointSpace | None, knn: KnnOptions
) -> Any:
    if method in TEXT_METHODS:
        return make_classifier(method, space, data.label, prompts=prompts_for_set(data))
    if method == "svm":
        # no inner, ungrouped sigmoid fit: GroupCalibrated calibrates it grouped
        return make_classifier("svm", calibrate=False)
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
        # its kNN member votes with the asked-for k and can leave the query's group out
        ensemble.estimators = [
            (name, est.set_params(k=knn.k, exclude_same_group=True) if name == "knn" else est)
            for name, est in ensemble.estimators
        ]
        return ensemble
    return make_classifier(method)


@dataclass
class MethodPrediction:
    """One method's probabilities for one query, with a one-line reason (or why it failed).

    ``prediction_set`` is the split-conformal set at level ``1 - alpha``; ``prior_like`` says
    the probabilities equal the library's class prior (the image told the head nothing);
    ``evaluated`` holds the method's cross-validated AUC / accuracy / n on this library (and
    ``of``, the library's labelled cases, when those n were a sample of them).
    """

    method: str
    probabilities: dict[str, float] = field(default_factory=dict)
    explanation: str = ""
    error: str | None = None
    prediction_set: list[str] = field(default_factory=list)
    calibrated: bool = False
    prior_like: bool = False
    evaluated: dict[str, Any] | None = None
    box: tuple[int, int, int, int] | None = None  # tiles: the tile that drove the score

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "probabilities": self.probabilities,
            "prediction_set": self.prediction_set,
            "calibrated": self.calibrated,
            "evaluated": self.evaluated,
            "explanation": self.explanation,
            "prior_like": self.prior_like,
            "error": self.error,
            **({"box": list(self.box)} if self.box else {}),
        }


@dataclass
class Classification:
    """All methods' answers for one query and label, plus the neighbours that voted and where
    the query's best match sits in the library (``reference``)."""

    label: str
    predictions: list[MethodPrediction]
    neighbours: list[SearchHit] = field(default_factory=list)
    query_in_library: str | None = None  # id of the stored copy of the query (same bytes)
    reference: Reference | None = None
    alpha: float = DEFAULT_ALPHA

    @property
    def abstain(self) -> bool:
        return self.reference is not None and self.reference.status != OK

    @property
    def abstain_reason(self) -> str | None:
        return self.reference.reason if self.abstain and self.reference else None

    def headline(self) -> str:
        """What the page says first: the answer, "Uncertain" or "No close reference"."""
        if self.abstain:
            return "No close reference in the library"
        answered = [p for p in self.predictions if p.probabilities and not p.error]
        if not answered:
            return "No method could answer"
        first = answered[0]
        if len(first.prediction_set) != 1 or first.prior_like:
            return "Uncertain"
        return f"{first.prediction_set[0]} ({first.method})"

    def to_json(self, query: str = "") -> dict:
        return {
            "query": query,
            "label": self.label,
            "query_in_library": self.query_in_library,
            "reference": None if self.reference is None else self.reference.to_json(),
            "abstain": self.abstain,
            "abstain_reason": self.abstain_reason,
            "alpha": self.alpha,
            "predictions": [p.to_json() for p in self.predictions],
            "neighbours": [h.to_json() for h in self.neighbours],
        }


# Total-variation distance under which a head's output counts as the library prior.
PRIOR_TOLERANCE = 0.02


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


def _fit_tiles(core: Core, label: str) -> tuple[Any, LabelledSet]:
    """The tile head for ``label``, its positive class = the values of films with findings."""
    from priorcase.classifiers.tiles import TileData, TileMILClassifier, positive_values

    tiles = TileData.from_library(core)
    positive = positive_values(core.store.column_values(label, "image"), tiles)
    data = labelled_set(core.store, label, "image", positive=positive)
    keep = np.array([i in tiles.tiles for i in data.ids])
    data = data.subset(np.flatnonzero(keep))
    return TileMILClassifier(tiles).fit(data.ids, data.y, groups=data.groups), data


class LibraryClassifiers:
    """Classifiers fitted on every labelled case of an index, cached per table version.

    Logistic and SVM heads are saved under ``<db>/classifiers`` with the encoder's weight
    digest; a saved head from another encoder is refused, one from an older table is refitted.
    """

    def __init__(self, core: Core, spaces: TextSpaces, reference: LibraryReference) -> None:
        self.core = core
        self.spaces = spaces
        self.library_reference = reference
        self._cache = BoundedCache(MAX_CACHED_MODELS)
        self.fits = 0  # heads fitted or loaded from disk by this process (tests count them)
        self.fit_rows: dict[tuple[str, str, str], int] = {}  # labelled rows before any sample

    def _key(
        self, method: str, label: str, kind: str, knn: KnnOptions, alpha: float
    ) -> tuple[Any, ...]:
        snapshot = self.core.store.snapshot(kind)
        knn_key = knn if method in ("knn", "ensemble") else None
        return (snapshot.version, snapshot.digest, method, label, kind, knn_key, alpha)

    def ready(
        self,
        method: str,
        label: str,
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        alpha: float = DEFAULT_ALPHA,
    ) -> bool:
        """Whether :meth:`fitted` answers at once (the head is fitted and in memory)."""
        return self._key(method, label, kind, replace(knn, k=check_k(knn.k)), alpha) in self._cache

    def fitted(
        self,
        method: str,
        label: str,
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        alpha: float = DEFAULT_ALPHA,
    ) -> tuple[Any, LabelledSet]:
        """The head for ``label`` and the rows it was fitted on: every labelled case for kNN,
        else a stratified, patient-grouped sample of at most about ``MAX_HEAD_ROWS``."""
        key = self._key(method, label, kind, knn, alpha)

        def fit() -> tuple[Any, LabelledSet]:
            if method == "tiles":
                return _fit_tiles(self.core, label)
            data = labelled_set(self.core.store, label, kind)
            self.fit_rows[(method, label, kind)] = len(data.y)
            if method != "knn":  # the vote uses every case; the other fits grow with the rows
                data = capped(data, MAX_HEAD_ROWS)
            self.fits += 1
            if method in PERSISTED:
                return self._load_or_fit(method, kind, data, knn, alpha), data
            return self._fit(method, label, kind, data, knn, alpha), data

        # under the cache's lock: the UI warm-up thread and a first user never fit twice
        return self._cache.get_or_make(key, fit)

    def _fit(
        self, method: str, label: str, kind: str, data: LabelledSet, knn: KnnOptions, alpha: float
    ) -> Any:
        space = space_for = None
        if method in (*TEXT_METHODS, "ensemble"):
            space, space_for = self.spaces.joint_space(), self._spaces(label, kind, data).for_rows
        model = build_classifier(method, data, space, knn, alpha=alpha, space_for=space_for)
        # salt-free group names: the inner folds (C, calibration) do not change with the salt
        return model.fit(data.X, data.y, groups=data.fold_groups)

    def _spaces(self, label: str, kind: str, data: LabelledSet) -> FoldSpaces:
        """Text spaces fitted on subsets of ``data`` (calibration folds), shared by the text
        methods of one label so each subset's aligner is trained once."""
        key = (self.core.store.snapshot(kind).digest, "spaces", label, kind)
        return self._cache.get_or_make(key, lambda: FoldSpaces(self.spaces, data))

    def reference(
        self, vector: np.ndarray, kind: str = "image", exclude_group: str | None = None
    ) -> tuple[Reference, list[SearchHit]]:
        """Where the query's best match (its own patient left out) sits in the library's
        leave-one-patient-out distribution, and that match."""
        hits = self.core.searcher.search(vector, 1, kind, exclude_group=exclude_group)
        top = hits[0].score if hits else None
        return self.library_reference.assess_image(top, kind), hits

    def classify(
        self,
        vector: np.ndarray,
        label: str,
        methods: tuple[str, ...] = ("knn", "logreg", "zeroshot"),
        kind: str = "image",
        knn: KnnOptions = DEFAULT_KNN,
        exclude_group: str | None = None,
        query_id: str | None = None,
        alpha: float = DEFAULT_ALPHA,
    ) -> Classification:
        """Calibrated probabilities and a conformal set per method for one image-space vector.

        ``exclude_group`` (the query's group: its patient by default) keeps that group's cases
        out of the kNN vote and of the reference check; ``query_id`` names a stored query,
        flagged where a trained head has seen it. With no close reference every method abstains
        (no probabilities). A method that fails (e.g. text prompts without labels) reports its
        error; others go on.
        """
        knn = replace(knn, k=check_k(knn.k))
        manifest = self.core.store.manifest
        if manifest is None or label not in manifest.label_columns:
            known = ", ".join(manifest.label_columns) if manifest else "none"
            raise QueryError(
                f"no label column {label!r} in {self.core.store.db_dir} (labels: {known})"
            )
        query = np.asarray(vector, dtype=np.float32)[None, :]
        groups = None if exclude_group is None else np.array([exclude_group], dtype=object)
        reference, _ = self.reference(query[0], kind, exclude_group)
        result = Classification(
            label, [], reference=reference, alpha=alpha, query_in_library=query_id
        )
        figures = self.evaluated(label, kind)
        for method in methods:
            prediction = MethodPrediction(method, evaluated=figures.get(method))
            if result.abstain:
                prediction.explanation = "abstains: no close reference in the library"
                result.predictions.append(prediction)
                continue
            try:
                model, data = self.fitted(method, label, kind, knn, alpha)
                total = self.fit_rows.get((method, label, kind), len(data.y))
                groups = None
                if exclude_group is not None:
                    salt_free = dict(
                        zip(data.groups.tolist(), data.fold_groups.tolist(), strict=True)
                    )
                    groups = np.array([salt_free.get(exclude_group, exclude_group)], dtype=object)
                proba = model.predict_proba(query, groups)[0]
                if method == "knn":
                    prediction.explanation = model.explain(query, groups)[0]
                    if groups is not None:
                        prediction.explanation += " (same patient excluded)"
                    elif query_id is not None and query_id in set(data.ids.tolist()):
                        prediction.explanation += f"; the query is stored as {query_id} and votes"
                    positions, scores = model.kneighbors(query, groups)
                    valid = positions[0] >= 0
                    result.neighbours = self.core.store.hits(
                        [str(data.ids[p]) for p in positions[0][valid]],
                        [float(s) for s in scores[0][valid]],
                    )
                elif method == "ensemble":  # its kNN member leaves the query's group out too
                    proba = model.predict_proba(query, groups)[0]
                    prediction.explanation = _explain(method, model, data, query, proba, query_id)
                    if groups is not None:
                        prediction.explanation += " (same patient excluded from its kNN vote)"
                else:
                    prediction.explanation = _explain(method, model, data, query, proba, query_id)
                if len(data.y) < total:
                    prediction.explanation += (
                        f" (fitted on a stratified, patient-grouped sample of {len(data.y)} of "
                        f"{total} cases)"
                    )
                classes = [str(c) for c in model.classes_]
                prediction.probabilities = {
                    c: float(p) for c, p in zip(classes, proba, strict=True)
                }
                members = model.sets_from_proba(proba[None, :])[0]
                prediction.prediction_set = [c for c, m in zip(classes, members, strict=True) if m]
                prediction.calibrated = bool(model.calibrated_)
                prediction.prior_like = bool(
                    0.5 * np.abs(proba - model.prior_).sum() < PRIOR_TOLERANCE
                )
                if prediction.prior_like:
                    prediction.explanation += "; its output equals the library's class prior"
            except (PriorcaseError, ValueError) as err:
                prediction.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            result.predictions.append(prediction)
        return result

    # ------------------------------------------------------------------ evaluated figures
    def _figures_path(self, label: str, kind: str) -> LibraryFile:
        """Named by the content of the rows evaluated (not the version number, which LanceDB
        restarts when a table is recreated)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        digest = self.core.store.snapshot(kind).digest[:16]
        return self.core.store.location.file("evaluation", f"{kind}-{safe}-{digest}.json")

    def evaluated(self, label: str, kind: str = "image") -> dict[str, dict[str, Any]]:
        """Cross-validated {auc, accuracy, n} per method on this table version, if computed."""
        try:
            data = self._figures_path(label, kind).read_bytes()
            return {} if data is None else json.loads(data.decode("utf-8"))
        except (OSError, ValueError):
            return {}

    def evaluate(
        self, label: str, methods: tuple[str, ...], kind: str = "image"
    ) -> dict[str, dict[str, Any]]:
        """Compute (once per table version) and store the methods' cross-validated figures."""
        from priorcase.evaluation.experiment import cross_validate

        figures = self.evaluated(label, kind)
        missing = [m for m in methods if m not in figures]
        if missing:
            evaluation = cross_validate(
                self, label, missing, kind=kind, n_boot=0, progress=False, nuisance=False,
                max_rows=MAX_EVAL_ROWS,
            )  # fmt: skip
            total = int(evaluation.meta.get("sampled_from") or 0)
            for r in evaluation.results:
                figures[r.method] = {"auc": r.auc, "accuracy": r.accuracy, "n": r.n}
                if total > r.n:  # a sample: the UI says so beside the figure
                    figures[r.method]["of"] = total
            file = self._figures_path(label, kind)
            for old in file.siblings():
                if fnmatch(old.name, f"{kind}-*.json"):
                    old.delete()
            file.write_bytes(json.dumps(figures).encode("utf-8"))
        return figures

    def _load_or_fit(
        self, method: str, kind: str, data: LabelledSet, knn: KnnOptions, alpha: float
    ) -> Any:
        """A saved head fitted on exactly ``data`` with this encoder, else fitted and saved.

        The file name holds a digest of the training rows, targets, groups, the encoder's
        weights and the method, so a head of another table, label set or encoder is never
        loaded; a file that does not load is refitted (see :func:`load_or_build`).
        """
        manifest = self.core.store.manifest
        assert manifest is not None
        weights = manifest.encoder["weights_sha256"]
        digest = content_digest(
            data.ids, data.X, data.y, data.fold_groups, data.positive, method, alpha, weights
        )
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in data.label)
        prefix = f"{kind}-{safe}-{method}-"
        file = self.core.store.location.file("classifiers", f"{prefix}{digest[:32]}.joblib")

        def load(p: Path) -> Any:
            saved = joblib.load(p)
            if saved.get("digest") != digest:
                raise ValueError("saved for other training data")
            return saved["model"]

        def save(model: Any, tmp: Path) -> None:
            payload = {"model": model, "digest": digest, "encoder": manifest.encoder_spec}
            joblib.dump(payload, tmp)

        return load_or_build(
            file,
            load,
            lambda: self._fit(method, data.label, kind, data, knn, alpha),
            save,
            notify=self.core.notify,
            stale=lambda old: old.name.startswith(prefix) and old.suffix == ".joblib",
        )
