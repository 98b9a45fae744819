"""Classification and retrieval metrics on arrays, with patient-level bootstrap CIs."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_curve,
)

from priorcase.index.vector_index import VectorIndex

# Shared false-positive-rate grid for macro-averaged one-vs-rest ROC curves.
_MACRO_FPR = np.linspace(0.0, 1.0, 101)


@dataclass
class RetrievalMetrics:
    """Same-label retrieval quality: ``precision_at_k`` keyed ``"P@k"`` and mean AP."""

    precision_at_k: dict[str, float]
    map: float | None
    n_queries: int


@dataclass
class MethodResult:
    """Everything measured for one method; ``roc`` holds curves for plotting.

    ``roc = {"positive": label or None, "curves": {name: {"fpr", "tpr", "auc"}}}``; binary
    results have one curve named after the positive class, multiclass ones a curve per
    class (one-vs-rest) plus ``"macro"``. ``auc`` is None when undefined (one class only).
    """

    method: str
    auc: float | None
    auc_ci: tuple[float, float]
    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]]
    precision_at_k: dict[str, float] = field(default_factory=dict)
    map: float | None = None
    roc: dict[str, Any] = field(default_factory=dict)
    n: int = 0
    positive: str | None = None
    ece: float | None = None
    brier: float | None = None
    coverage: float | None = None
    mean_set_size: float | None = None
    alpha: float | None = None
    calibrated: bool | None = None
    reliability: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN and infinities become None)."""
        return _json_ready(asdict(self))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# Class names that mean "nothing found": never the default positive class.
NEGATIVE_NAMES = frozenset({"normal", "norm", "n", "negative", "no", "0", "false", "none"})


def default_positive(classes: Sequence[Any], counts: Sequence[int] | None = None) -> Any:
    """The positive class of a binary problem when none is named.

    The "X" of a ("not X", "X") pair from :func:`binarize_labels`; else the class whose name
    is not a "normal"-like one; else the rarer class (``counts`` in ``classes`` order); else
    ``classes[1]``. The caller must say which class it took (outputs name it).
    """
    a, b = (str(c) for c in classes)
    if a == f"not {b}":
        return classes[1]
    if b == f"not {a}":
        return classes[0]
    negative = [str(c).strip().lower() in NEGATIVE_NAMES for c in classes]
    if negative[0] != negative[1]:
        return classes[1] if negative[0] else classes[0]
    if counts is not None and counts[0] != counts[1]:
        return classes[int(np.argmin(counts))]
    return classes[1]


def expected_calibration_error(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[Any], n_bins: int = 10
) -> tuple[float, dict[str, list[float]]]:
    """Top-label ECE over ``n_bins`` equal-width confidence bins, and the reliability table
    (per non-empty bin: mean confidence, accuracy, count)."""
    classes_arr = np.asarray(list(classes), dtype=object)
    conf = proba.max(axis=1)
    correct = (classes_arr[np.argmax(proba, axis=1)] == np.asarray(y, dtype=object)).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece, table = 0.0, {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        if not m.any():
            continue
        ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
        table["confidence"].append(float(conf[m].mean()))
        table["accuracy"].append(float(correct[m].mean()))
        table["count"].append(int(m.sum()))
    return float(ece), table


def brier_score(y: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float:
    """Multiclass Brier score: mean over rows of sum over classes of (p - 1[y = class])^2."""
    onehot = np.asarray(y, dtype=object)[:, None] == np.asarray(list(classes), dtype=object)
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def set_metrics(y: np.ndarray, sets: np.ndarray, classes: Sequence[Any]) -> tuple[float, float]:
    """(coverage, mean set size) of boolean prediction sets (n, n_classes)."""
    onehot = np.asarray(y, dtype=object)[:, None] == np.asarray(list(classes), dtype=object)
    return float((sets & onehot).any(axis=1).mean()), float(sets.sum(axis=1).mean())


def _auc_binary(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney rank statistic (equal to sklearn's, ties averaged)."""
    n_pos = int(is_pos.sum())
    n_neg = len(is_pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _per_class_auc(
    y: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: Any
) -> dict[Any, float | None]:
    """AUC per scored class: the positive one if binary, each class (one-vs-rest) otherwise."""
    if len(classes) == 2:
        j = int(np.flatnonzero(classes == positive)[0])
        return {positive: _auc_binary(y == positive, proba[:, j])}
    return {c: _auc_binary(y == c, proba[:, j]) for j, c in enumerate(classes)}


def _auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: Any) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC over the classes that are defined."""
    if len(classes) < 2:
        return None
    defined = [a for a in _per_class_auc(y, proba, classes, positive).values() if a is not None]
    return float(np.mean(defined)) if defined else None


def _bootstrap_auc_ci(
    y: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    positive: Any,
    groups: np.ndarray | None,
    n_boot: int,
    random_state: int,
) -> tuple[float, float]:
    """95% percentile CI, resampling whole groups (patients) so correlated rows move together."""
    if len(classes) < 2 or n_boot <= 0:
        return (math.nan, math.nan)
    full = _per_class_auc(y, proba, classes, positive)
    scored = [c for c, a in full.items() if a is not None]
    if not scored:
        return (math.nan, math.nan)
    codes = np.arange(len(y)) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(random_state)
    cols = {c: int(np.flatnonzero(classes == c)[0]) for c in scored}
    values = []
    for _ in range(n_boot):
        # Times each group was drawn -> times each of its rows is repeated.
        draws = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        idx = np.repeat(np.arange(len(y)), draws[codes])
        yb = y[idx]
        aucs = [_auc_binary(yb == c, proba[idx, cols[c]]) for c in scored]
        # Skip degenerate resamples: a class that is scorable overall lost its positives/negatives.
        if any(a is None for a in aucs):
            continue
        values.append(float(np.mean(aucs)))
    if not values:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def _roc_curves(
    y: np.ndarray, proba: np.ndarray, classes: np.ndarray, positive: Any
) -> dict[str, dict[str, Any]]:
    curves: dict[str, dict[str, Any]] = {}
    aucs = _per_class_auc(y, proba, classes, positive)
    tprs = []
    for c, a in aucs.items():
        if a is None:
            continue
        j = int(np.flatnonzero(classes == c)[0])
        fpr, tpr, _ = roc_curve(y == c, proba[:, j])
        curves[str(c)] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": a}
        tprs.append(np.interp(_MACRO_FPR, fpr, tpr))
    if len(classes) > 2 and tprs:
        macro = np.mean(tprs, axis=0)
        macro[0] = 0.0
        curves["macro"] = {
            "fpr": _MACRO_FPR.tolist(),
            "tpr": macro.tolist(),
            "auc": _auc(y, proba, classes, positive),
        }
    return curves


def evaluate_probabilities(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
    method: str,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    random_state: int = 0,
    positive: Any | None = None,
    retrieval: RetrievalMetrics | None = None,
    sets: np.ndarray | None = None,
    alpha: float | None = None,
    calibrated: bool | None = None,
) -> MethodResult:
    """Score class probabilities ``proba`` (columns in ``classes`` order) against ``y_true``.

    Binary AUC uses ``positive`` (default: :func:`default_positive`); multiclass AUC is
    one-vs-rest macro. The 95% CI resamples ``groups`` (patients) when given, else rows.
    Predictions are the argmax class. ``retrieval`` fills ``precision_at_k`` and ``map``.
    ECE (10-bin, top-label) and Brier are always scored; ``sets`` (boolean prediction sets,
    e.g. conformal at level ``1 - alpha``) give coverage and mean set size.
    """
    y = np.asarray(y_true, dtype=object)
    proba = np.asarray(proba, dtype=np.float64)
    classes_arr = np.asarray(list(classes), dtype=object)
    if proba.shape != (len(y), len(classes_arr)):
        raise ValueError(f"proba has shape {proba.shape}; expected ({len(y)}, {len(classes_arr)})")
    if np.isnan(proba).any():
        raise ValueError("proba contains NaN (rows left out of every test fold?)")
    groups = None if groups is None else np.asarray(groups)
    pos = None
    if len(classes_arr) == 2:
        counts = [int((y == c).sum()) for c in classes_arr]
        pos = default_positive(list(classes_arr), counts) if positive is None else positive
        if pos not in set(classes_arr.tolist()):
            raise ValueError(f"positive class {pos!r} is not one of {classes_arr.tolist()}")

    auc = _auc(y, proba, classes_arr, pos)
    ece, reliability = expected_calibration_error(y, proba, classes_arr) if len(y) else (None, {})
    brier = brier_score(y, proba, classes_arr) if len(y) else None
    coverage = set_size = None
    if sets is not None and len(y):
        coverage, set_size = set_metrics(y, sets, classes_arr)
    ci = _bootstrap_auc_ci(y, proba, classes_arr, pos, groups, n_boot, random_state)
    y_pred = classes_arr[np.argmax(proba, axis=1)] if len(y) else y
    # True labels the model never saw still get confusion rows.
    labels = list(classes_arr) + sorted(set(y.tolist()) - set(classes_arr.tolist()), key=str)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        str(c): {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(labels)
    }
    cm = confusion_matrix(y, y_pred, labels=labels)
    confusion = {
        str(t): {str(p): int(cm[i, j]) for j, p in enumerate(labels)} for i, t in enumerate(labels)
    }
    with warnings.catch_warnings():
        # sklearn warns when predictions include classes absent from y_true; that is fine here.
        warnings.simplefilter("ignore", UserWarning)
        bal = float(balanced_accuracy_score(y, y_pred)) if len(y) else math.nan
    return MethodResult(
        method=method,
        auc=auc,
        auc_ci=ci,
        accuracy=float(accuracy_score(y, y_pred)) if len(y) else math.nan,
        balanced_accuracy=bal,
        per_class=per_class,
        confusion=confusion,
        precision_at_k=dict(retrieval.precision_at_k) if retrieval else {},
        map=retrieval.map if retrieval else None,
        roc={
            "positive": None if pos is None else str(pos),
            "curves": _roc_curves(y, proba, classes_arr, pos),
        },
        n=len(y),
        positive=None if pos is None else str(pos),
        ece=ece,
        brier=brier,
        coverage=coverage,
        mean_set_size=set_size,
        alpha=alpha if sets is not None else None,
        calibrated=calibrated,
        reliability=reliability,
    )


def retrieval_metrics(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None,
    ks: Sequence[int] = (1, 5, 10),
    exclude_same_group: bool = True,
    backend: str = "auto",
) -> RetrievalMetrics:
    """Leave-one-out retrieval: does each row's neighbourhood share its label?

    For every query the candidates are all other rows, minus rows of the same group when
    ``exclude_same_group`` (a patient's other views would flatter the score). ``P@k`` is the
    same-label fraction of the top ``min(k, candidates)``; mAP averages, over queries with at
    least one same-label candidate, the average precision of the full ranking.
    """
    y = np.asarray(y, dtype=object)
    n = len(y)
    index = VectorIndex(np.asarray(X), backend=backend)
    y_codes = np.unique(y.astype(str), return_inverse=True)[1]
    g_codes = None
    if exclude_same_group and groups is not None:
        g_codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]
    hits_k = {k: [] for k in ks}
    aps: list[np.ndarray] = []
    # Full rankings are n x n; chunk the queries to bound memory.
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        pos = index.search(index.vectors[rows], k=n).positions
        safe = np.where(pos < 0, 0, pos)
        valid = (pos >= 0) & (pos != rows[:, None])
        if g_codes is not None:
            valid &= g_codes[safe] != g_codes[rows][:, None]
        rel = valid & (y_codes[safe] == y_codes[rows][:, None])
        rank = np.cumsum(valid, axis=1)
        n_cand = valid.sum(axis=1)
        has_cand = n_cand > 0
        for k in ks:
            hits = (rel & (rank <= k)).sum(axis=1)
            hits_k[k].append((hits / np.maximum(np.minimum(k, n_cand), 1))[has_cand])
        n_rel = rel.sum(axis=1)
        prec_at_rank = np.cumsum(rel, axis=1) / np.maximum(rank, 1)
        ap = (prec_at_rank * rel).sum(axis=1) / np.maximum(n_rel, 1)
        aps.append(ap[n_rel > 0])
    precision_at_k = {}
    for k in ks:
        vals = np.concatenate(hits_k[k]) if hits_k[k] else np.array([])
        precision_at_k[f"P@{k}"] = float(vals.mean()) if len(vals) else math.nan
    all_ap = np.concatenate(aps) if aps else np.array([])
    n_queries = int(sum(len(v) for v in hits_k[ks[0]])) if ks else 0
    return RetrievalMetrics(
        precision_at_k=precision_at_k,
        map=float(all_ap.mean()) if len(all_ap) else None,
        n_queries=n_queries,
    )


def _operating_row(target: str, threshold: float, is_pos: np.ndarray, score: np.ndarray) -> dict:
    pred = score >= threshold
    tp = int((pred & is_pos).sum())
    fp = int((pred & ~is_pos).sum())
    tn = int((~pred & ~is_pos).sum())
    fn = int((~pred & is_pos).sum())
    return {"target": target, "threshold": float(threshold), **_confusion(tp, fp, tn, fn)}


def _confusion(tp: int, fp: int, tn: int, fn: int) -> dict[str, Any]:
    """Sensitivity, specificity and the four counts of one operating point."""
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
    }


def threshold_table(
    y_true_binary: np.ndarray,
    score: np.ndarray,
    sensitivities: Sequence[float] = (0.8, 0.9, 0.95),
    specificities: Sequence[float] = (0.9,),
) -> list[dict[str, Any]]:
    """ROC operating points, one row per target; positive means ``score >= threshold``.

    For a sensitivity target the highest threshold reaching it (best specificity); for a
    specificity target the lowest threshold keeping it (best sensitivity).
    ``y_true_binary`` is boolean or 0/1 with 1 = positive.
    """
    is_pos = np.asarray(y_true_binary)
    if is_pos.dtype.kind not in "biuf":
        raise ValueError("y_true_binary must be boolean or 0/1; compare labels to the positive one")
    is_pos = is_pos.astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if is_pos.all() or not is_pos.any():
        return []
    fpr, tpr, thr = roc_curve(is_pos, score, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive); keep it finite for tables/JSON.
    thr = np.where(np.isfinite(thr), thr, np.nextafter(score.max(), np.inf))
    rows = []
    for s in sensitivities:
        i = int(np.flatnonzero(tpr >= s)[0])
        rows.append(_operating_row(f"sensitivity >= {s:g}", thr[i], is_pos, score))
    for sp in specificities:
        i = int(np.flatnonzero(fpr <= 1 - sp + 1e-12)[-1])
        rows.append(_operating_row(f"specificity >= {sp:g}", thr[i], is_pos, score))
    return rows


def nested_threshold_table(
    folds: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    sensitivities: Sequence[float] = (0.8, 0.9, 0.95),
    specificities: Sequence[float] = (0.9,),
) -> list[dict[str, Any]]:
    """Operating points chosen inside the training folds, scored on the held-out folds.

    ``folds`` holds, per outer fold, ``(train_is_pos, train_score, test_is_pos, test_score)``
    where the training scores are out-of-fold predictions within that fold's training rows.
    Each target's threshold is chosen on the training scores (as :func:`threshold_table`
    would) and applied to the fold's held-out rows; counts are pooled over folds, and
    ``thresholds`` lists the per-fold values (``threshold`` is their median).
    """
    per_target: dict[str, list[dict[str, Any]]] = {}
    for train_pos, train_score, test_pos, test_score in folds:
        chosen = threshold_table(train_pos, train_score, sensitivities, specificities)
        for row in chosen:
            applied = _operating_row(
                row["target"], row["threshold"], np.asarray(test_pos, bool), test_score
            )
            per_target.setdefault(row["target"], []).append(applied)
    out = []
    for target, rows in per_target.items():
        tp, fp, tn, fn = (sum(r[k] for r in rows) for k in ("TP", "FP", "TN", "FN"))
        thresholds = [r["threshold"] for r in rows]
        out.append(
            {
                "target": target,
                "threshold": float(np.median(thresholds)),
                "thresholds": thresholds,
                **_confusion(tp, fp, tn, fn),
                "chosen_on": "training folds (out-of-fold predictions)",
            }
        )
    return out


def subgroup_table(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
    subgroup_values: np.ndarray,
    positive: Any | None = None,
) -> list[dict[str, Any]]:
    """Per subgroup (e.g. breast density, scanner): n, accuracy and AUC (None if undefined)."""
    y = np.asarray(y_true, dtype=object)
    proba = np.asarray(proba, dtype=np.float64)
    classes_arr = np.asarray(list(classes), dtype=object)
    sub = np.asarray([str(v) for v in subgroup_values], dtype=object)
    pos = None
    if len(classes_arr) == 2:
        pos = default_positive(list(classes_arr)) if positive is None else positive
    pred = classes_arr[np.argmax(proba, axis=1)] if len(y) else y
    rows = []
    for value in sorted(set(sub.tolist())):
        m = sub == value
        rows.append(
            {
                "subgroup": value,
                "n": int(m.sum()),
                "accuracy": float((pred[m] == y[m]).mean()),
                "auc": _auc(y[m], proba[m], classes_arr, pos),
            }
        )
    return rows
