"""Evaluation on arrays (independent of storage): grouped CV, metrics, thresholds, reports."""

from priorcase.evaluation.metrics import (
    MethodResult,
    RetrievalMetrics,
    default_positive,
    evaluate_probabilities,
    retrieval_metrics,
    subgroup_table,
    threshold_table,
)
from priorcase.evaluation.report import format_table, write_html_report
from priorcase.evaluation.runner import cross_val_proba, holdout_proba
from priorcase.evaluation.splits import grouped_folds

__all__ = [
    "MethodResult",
    "RetrievalMetrics",
    "cross_val_proba",
    "default_positive",
    "evaluate_probabilities",
    "format_table",
    "grouped_folds",
    "holdout_proba",
    "retrieval_metrics",
    "subgroup_table",
    "threshold_table",
    "write_html_report",
]
