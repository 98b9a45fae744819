"""``priorcase eval``: grouped cross-validation inside an index, or library-vs-queries holdout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import clone

from priorcase.classifiers import METHODS
from priorcase.classifiers.binarize import binarize_labels
from priorcase.classifiers.calibration import GroupCalibrated
from priorcase.classifiers.labelled import LabelledSet, labelled_set
from priorcase.classifiers.sampling import capped
from priorcase.classifiers.text_spaces import FoldSpaces
from priorcase.classifiers.tiles import TileData, TileMILClassifier, l2_mean
from priorcase.errors import PriorcaseError, QueryError
from priorcase.evaluation.cases import FUSABLE, FUSED, case_result, fused_classifier, layout_for
from priorcase.evaluation.metrics import (
    MethodResult,
    RetrievalMetrics,
    default_positive,
    evaluate_probabilities,
    nested_threshold_table,
    retrieval_metrics,
    subgroup_table,
)
from priorcase.evaluation.nuisance import NuisanceHead, nuisance_features
from priorcase.evaluation.runner import cross_val_proba, holdout_proba
from priorcase.evaluation.splits import FOLD_SEED, grouped_folds
from priorcase.index.vector_index import VectorIndex
from priorcase.library import (
    DEFAULT_ALPHA,
    DEFAULT_KNN,
    TEXT_METHODS,
    KnnOptions,
    LibraryClassifiers,
    build_classifier,
)
from priorcase.retrieval.regions import query_tiles

if TYPE_CHECKING:
    from priorcase.api import PriorCase

    # anything holding the core and its text spaces: the facade or the classifiers service
    Library = PriorCase | LibraryClassifiers

SPACE_METHODS = (*TEXT_METHODS, "ensemble")
TILES = "tiles"  # film scores pooled from tiles (priorcase.classifiers.tiles); X = film ids
TILE_MEAN = "tilemean"  # a logistic head on the mean of each film's tile vectors


@dataclass
class Evaluation:
    """The outcome of one ``priorcase eval`` run."""

    label: str
    mode: str  # "cv" | "holdout"
    n: int
    kind: str
    results: list[MethodResult]
    thresholds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    subgroups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    cases: list[MethodResult] = field(default_factory=list)  # --case-fusion: per patient

    def to_json(self) -> dict[str, Any]:
        def entries(results: list[MethodResult]) -> list[dict[str, Any]]:
            out = []
            for r in results:
                entry = r.to_dict()
                entry.pop("roc", None)
                entry["precision_at_k"] = {
                    key.removeprefix("P@"): value for key, value in r.precision_at_k.items()
                }
                out.append(entry)
            return out

        return {
            "label": self.label,
            "mode": self.mode,
            "n": self.n,
            "kind": self.kind,
            "methods": entries(self.results),
            "thresholds": self.thresholds,
            "subgroups": self.subgroups,
            "meta": self.meta,
            **({"cases": entries(self.cases)} if self.cases else {}),
        }


def resolve_methods(method: str) -> list[str]:
    if method == "all":
        return list(METHODS)
    chosen = [m.strip() for m in method.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in (*METHODS, TILES, TILE_MEAN)]
    if unknown:
        raise QueryError(
            f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}, {TILES}, "
            f"{TILE_MEAN}, all"
        )
    return chosen


def positive_class(data: LabelledSet, classes: np.ndarray) -> tuple[str | None, str]:
    """The positive class of a binary task and how it was chosen (said in every output)."""
    if len(classes) != 2:
        return None, "multiclass: no positive class"
    if data.positive:
        return str(default_positive(list(classes))), "--positive"
    counts = [int((data.y == c).sum()) for c in classes]
    chosen = str(default_positive(list(classes), counts))
    return chosen, "default: the class not named like 'normal', else the rarer (set --positive)"


class _FoldRecorder:
    """Per outer fold: conformal sets and operating points chosen on that fold's training rows
    (the calibrator's out-of-fold predictions), applied to its held-out rows."""

    def __init__(
        self,
        n: int,
        classes: np.ndarray,
        y: np.ndarray,
        positive: str | None,
        y_train: np.ndarray | None = None,
    ) -> None:
        self.sets = np.zeros((n, len(classes)), dtype=bool)
        self.has_sets = True
        self.calibrated: list[bool] = []
        self.folds: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.y = y
        self.y_train = y if y_train is None else y_train  # holdout: the library's labels
        self.classes = classes
        self.positive = positive

    def __call__(self, est: Any, train: np.ndarray, test: np.ndarray, proba: np.ndarray) -> None:
        if not isinstance(est, GroupCalibrated):
            self.has_sets = False
            return
        self.calibrated.append(bool(est.calibrated_))
        self.sets[test] = est.sets_from_proba(proba)
        if self.positive is None or self.positive not in est.classes_.tolist():
            return
        rows = est.oof_rows_
        col = est.classes_.tolist().index(self.positive)
        train_pos = self.y_train[train][rows] == self.positive
        test_col = self.classes.tolist().index(self.positive)
        self.folds.append(
            (
                train_pos,
                est.oof_proba_[rows, col],
                self.y[test] == self.positive,
                proba[:, test_col],
            )
        )

    def thresholds(self) -> list[dict[str, Any]]:
        if not self.folds:
            return []
        return [{**r, "positive": self.positive} for r in nested_threshold_table(self.folds)]


def _subgroups(
    evaluation: Evaluation,
    method: str,
    data: LabelledSet,
    proba: np.ndarray,
    classes: np.ndarray,
    by: dict[str, np.ndarray],
    positive: str | None,
) -> None:
    for column, values in by.items():
        evaluation.subgroups[f"{method} by {column}"] = subgroup_table(
            data.y, proba, classes, values, positive
        )


def _subgroup_values(
    pc: Library, data: LabelledSet, by: list[str], kind: str
) -> dict[str, np.ndarray]:
    out = {}
    for column in by:
        values = pc.core.store.column_values(column, kind)
        out[column] = np.array([str(values.get(i)) for i in data.ids], dtype=object)
    return out


def cross_validate(
    pc: Library,
    label: str,
    methods: list[str],
    n_splits: int = 5,
    kind: str = "image",
    where: str | None = None,
    positive: tuple[str, ...] = (),
    by: list[str] | None = None,
    knn: KnnOptions = DEFAULT_KNN,
    n_boot: int = 1000,
    progress: bool = True,
    alpha: float = DEFAULT_ALPHA,
    nuisance: bool | None = None,
    case_fusion: bool = False,
    max_rows: int | None = None,
) -> Evaluation:
    """Out-of-fold results for each method (calibrated, with conformal sets and nested operating
    points). Folds are grouped by a salt-free digest of each patient's files (see
    :func:`grouped_folds`). ``nuisance`` (default: for ROI rows) adds the geometry-only
    baseline. ``case_fusion`` adds each film method fused with the patient's other breast
    (``<method>+contralateral``) and scores every method per case (patient). ``max_rows``
    (default: every row) evaluates a stratified, patient-grouped sample of about that many
    (:func:`~priorcase.classifiers.sampling.grouped_sample`)."""
    data = labelled_set(pc.core.store, label, kind, where, positive)
    total = len(data.y)
    if max_rows is not None:
        data = capped(data, max_rows)
    if len(set(data.y.tolist())) < 2:
        raise QueryError(f"column {label!r} has a single class among the selected rows")
    # everything downstream (inner CV, bootstrap) sees salt-free group names
    groups = data.fold_groups
    folds = grouped_folds(data.y, groups, n_splits=n_splits, random_state=FOLD_SEED)
    spaces = FoldSpaces(pc.spaces, data)
    retrieval = retrieval_metrics(data.X, data.y, groups, exclude_same_group=True)
    evaluation = _new_evaluation(pc, data, "cv", kind, where, n_splits=len(folds), alpha=alpha)
    if len(data.y) < total:
        evaluation.meta["sampled_from"] = total
    subgroups = _subgroup_values(pc, data, by or [], kind)
    classes = np.unique(data.y)
    pos, how = positive_class(data, classes)
    evaluation.meta["positive"], evaluation.meta["positive_chosen_by"] = pos, how
    tile_data = _tile_data(pc, kind, data, TILES in methods) if _uses_tiles(methods) else None
    runs: list[tuple[str, Any, np.ndarray | None]] = [(m, None, data.X) for m in methods]
    if nuisance if nuisance is not None else kind == "roi":
        runs.append(("nuisance", GroupCalibrated(NuisanceHead(), alpha=alpha), None))
    layout = layout_for(pc.core.store, data, pos, kind) if case_fusion else None
    if layout is not None:
        runs += [(m + FUSED, None, data.ids) for m in methods if m in FUSABLE]
    for method, fixed, X in runs:
        if X is None:
            X = nuisance_features(pc.core.store, data.ids)
        if method == TILES:
            X = data.ids  # the tile head looks its films' tiles up by id
        if method == TILE_MEAN:
            X = tile_data.mean_vectors(data.ids)

        def make(train_idx: np.ndarray, method: str = method, fixed: Any = fixed) -> Any:
            if fixed is not None:
                return clone(fixed)
            if method.endswith(FUSED):
                return fused_classifier(method.removesuffix(FUSED), layout, data, tile_data, knn)
            if method == TILES:
                return TileMILClassifier(tile_data)
            if method == TILE_MEAN:
                return build_classifier("logreg", data, None, knn, alpha=alpha)
            space = spaces.for_rows(train_idx) if method in SPACE_METHODS else None
            return build_classifier(
                method, data, space, knn, alpha=alpha, space_for=spaces.for_rows, rows=train_idx
            )

        recorder = _FoldRecorder(len(data.y), classes, data.y, pos)
        proba, classes_ = cross_val_proba(
            make, X, data.y, groups, folds, progress=progress, on_fold=recorder
        )
        result = evaluate_probabilities(
            data.y,
            proba,
            classes_,
            method,
            groups=groups,
            n_boot=n_boot,
            positive=pos,
            retrieval=retrieval,
            sets=recorder.sets if recorder.has_sets else None,
            alpha=alpha,
            calibrated=bool(recorder.calibrated) and all(recorder.calibrated),
        )
        evaluation.results.append(result)
        thresholds = recorder.thresholds()
        if thresholds:
            evaluation.thresholds[method] = thresholds
        _subgroups(evaluation, method, data, proba, classes_, subgroups, pos)
        if layout is not None and pos is not None:
            evaluation.cases.append(case_result(method, data, groups, proba, classes_, pos, n_boot))
    return evaluation


def holdout(
    pc: PriorCase,
    queries: Path,
    labels_csv: Path,
    label: str,
    methods: list[str],
    kind: str = "image",
    where: str | None = None,
    positive: tuple[str, ...] = (),
    knn: KnnOptions = DEFAULT_KNN,
    n_boot: int = 1000,
    progress: bool = True,
    alpha: float = DEFAULT_ALPHA,
) -> Evaluation:
    """The index is the reference library; query images are embedded, never stored.
    Calibration, conformal sets and operating points come from the library alone."""
    from priorcase.ingest.labels import read_labels
    from priorcase.ingest.readers import iter_image_files

    library = labelled_set(pc.core.store, label, kind, where, positive)
    tile_data = _tile_data(pc, kind, library, TILES in methods) if _uses_tiles(methods) else None
    table = read_labels(labels_csv)
    if label not in table.columns:
        raise QueryError(f"{labels_csv} has no column {label!r}")
    vectors, targets, groups, failures = [], [], [], []
    query_tile_vectors: list[np.ndarray] = []  # each query film cut into the index's tiles
    for path in iter_image_files([queries]):
        row = table.lookup(path)
        if row is None or row.labels.get(label) is None:
            continue
        try:
            loaded = pc.read(path)
            vector = pc.embed(loaded)
            if tile_data is not None:
                cut = query_tiles(pc.core, loaded)[1]
                if not len(cut):  # skipped for every method: all are scored on the same films
                    raise QueryError(f"{path}: no tile of the index's sizes fits in the breast")
                query_tile_vectors.append(cut)
            vectors.append(vector)
        except PriorcaseError as err:
            failures.append(str(err))
            continue
        targets.append(row.labels[label])
        groups.append(row.patient_key or path.stem)
    if not vectors:
        raise QueryError(f"no labelled query images under {queries}")
    y = np.asarray(targets, dtype=object)
    y = (binarize_labels(y, positive) if positive else y).astype(str)
    test = LabelledSet(
        label,
        np.asarray(groups, dtype=object),
        np.stack(vectors),
        y,
        np.asarray(groups, dtype=object).astype(str),
        tuple(positive),
        None,
    )
    # the library's own text space (fitted on the library, never on the queries)
    space = pc.spaces.joint_space() if any(m in SPACE_METHODS for m in methods) else None
    evaluation = _new_evaluation(pc, test, "holdout", kind, where, alpha=alpha)
    evaluation.meta["library_rows"] = len(library.y)
    evaluation.meta["query_failures"] = failures
    classes = np.unique(library.y)
    pos, how = positive_class(library, classes)
    evaluation.meta["positive"], evaluation.meta["positive_chosen_by"] = pos, how
    retrieval = _holdout_retrieval(library, test)
    lib_groups = library.fold_groups
    for method in methods:
        if method == TILES:
            assert tile_data is not None
            model, proba, classes_ = _holdout_tiles(tile_data, library, query_tile_vectors)
        elif method == TILE_MEAN:
            assert tile_data is not None
            films = _with_tiles(library, tile_data)
            model = build_classifier("logreg", films, None, knn, alpha=alpha)
            X_lib = tile_data.mean_vectors(films.ids)
            proba, classes_ = holdout_proba(
                model, X_lib, films.y, films.fold_groups, l2_mean(query_tile_vectors)
            )
        else:
            model = build_classifier(
                method,
                library,
                space,
                knn,
                alpha=alpha,
                space_for=FoldSpaces(pc.spaces, library).for_rows,
            )
            proba, classes_ = holdout_proba(model, library.X, library.y, lib_groups, test.X)
        recorder = _FoldRecorder(len(test.y), classes_, test.y, pos, y_train=library.y)
        recorder(model, np.arange(len(library.y)), np.arange(len(test.y)), proba)
        result = evaluate_probabilities(
            test.y,
            proba,
            classes_,
            method,
            groups=test.groups,
            n_boot=n_boot,
            positive=pos,
            retrieval=retrieval,
            sets=recorder.sets if recorder.has_sets else None,
            alpha=alpha,
            calibrated=bool(getattr(model, "calibrated_", False)),
        )
        evaluation.results.append(result)
        thresholds = recorder.thresholds()
        if thresholds:
            evaluation.thresholds[method] = thresholds
    return evaluation


def _uses_tiles(methods: list[str]) -> bool:
    return TILES in methods or TILE_MEAN in methods


def _tile_data(pc: Library, kind: str, data: LabelledSet, binary: bool) -> TileData:
    if kind != "image":
        raise QueryError("--method tiles / tilemean score whole films: use --kind image")
    if binary and len(set(data.y.tolist())) != 2:
        raise QueryError("--method tiles scores a binary label: give --positive")
    return TileData.from_library(pc.core)


def _with_tiles(library: LabelledSet, tiles: TileData) -> LabelledSet:
    """The library's films that have tiles (the tile heads are fitted on those only)."""
    return library.subset(np.flatnonzero([str(i) in tiles.tiles for i in library.ids]))


def _holdout_tiles(
    tiles: TileData, library: LabelledSet, query_tiles: list[np.ndarray]
) -> tuple[TileMILClassifier, np.ndarray, np.ndarray]:
    """The tile head fitted on the library's films with tiles, scoring each query film's
    tiles (cut as the library's were): (model, proba, classes)."""
    films = _with_tiles(library, tiles)
    prefix = "query:"
    while any(str(k).startswith(prefix) for k in tiles.tiles):  # never a stored film's id
        prefix = "_" + prefix
    names = [f"{prefix}{n}" for n in range(len(query_tiles))]
    extra = {}
    for name, vectors in zip(names, query_tiles, strict=True):
        ids = np.array([f"{name}-tile{k}" for k in range(len(vectors))], dtype=object)
        extra[name] = (vectors, np.zeros((len(vectors), 4), int), ids)
    data = TileData({**tiles.tiles, **extra}, tiles.lesions)
    model = TileMILClassifier(data)
    proba, classes = holdout_proba(
        model, films.ids, films.y, films.fold_groups, np.asarray(names, dtype=object)
    )
    return model, proba, classes


def _holdout_retrieval(library: LabelledSet, test: LabelledSet, ks=(1, 5, 10)) -> RetrievalMetrics:
    """Same-label precision@k of library neighbours for each query (mAP not computed)."""
    found = VectorIndex(library.X).search(test.X, max(ks))
    same = library.y[np.where(found.positions >= 0, found.positions, 0)] == test.y[:, None]
    same &= found.positions >= 0
    return RetrievalMetrics(
        precision_at_k={f"P@{k}": float(same[:, :k].mean()) for k in ks},
        map=None,
        n_queries=len(test.y),
    )


def _new_evaluation(
    pc: Library, data: LabelledSet, mode: str, kind: str, where: str | None, **meta
) -> Evaluation:
    from priorcase import __version__

    manifest = pc.core.store.manifest
    assert manifest is not None
    counts = {str(c): int((data.y == c).sum()) for c in sorted(set(data.y.tolist()))}
    return Evaluation(
        label=data.label,
        mode=mode,
        n=len(data.y),
        kind=kind,
        results=[],
        meta={
            "index": str(pc.core.store.db_dir),
            "encoder": manifest.encoder_spec,
            "encoder_weights_sha256": manifest.encoder["weights_sha256"],
            "table_version": pc.core.store.version,
            "fold_seed": FOLD_SEED,
            "folds": "StratifiedGroupKFold over groups named by a digest of their files",
            "priorcase": __version__,
            "group_column": manifest.group_column,
            "where": where,
            "class_counts": counts,
            **meta,
        },
    )
