"""Labelled training sets drawn from a case store: vectors, targets, groups, prompts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from priorcase.classifiers.binarize import binarize_labels, binary_label_names
from priorcase.classifiers.prompts import MAMMOGRAPHY_TEMPLATES, class_prompts
from priorcase.errors import QueryError
from priorcase.evaluation.splits import content_group_keys
from priorcase.index.store import CaseStore


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
    keys: np.ndarray | None = None  # content keys (file hash, ROI geometry): salt-free

    @property
    def fold_groups(self) -> np.ndarray:
        """Salt-independent group names (digest of each group's content keys) for CV."""
        if self.keys is None:
            return self.groups
        return content_group_keys(self.groups, self.keys)

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
            None if self.keys is None else self.keys[rows],
        )


def content_keys(store: CaseStore, kind: str | None) -> dict[str, str]:
    """id -> dedup key (the file's SHA-256, plus the geometry for an ROI), salt-independent."""
    table = store.table
    if table is None:
        return {}
    query = table.search().select(["id", "key"])
    if kind:
        query = query.where(f"kind = '{kind}'")
    arrow = query.limit(None).to_arrow()
    return dict(zip(arrow.column("id").to_pylist(), arrow.column("key").to_pylist(), strict=True))


def labelled_set(
    store: CaseStore,
    label: str,
    kind: str = "image",
    where: str | None = None,
    positive: tuple[str, ...] = (),
) -> LabelledSet:
    """Every stored row of ``kind`` with a ``label`` value (optionally filtered / binarised)."""
    snapshot = store.snapshot(kind)
    values = store.column_values(label, kind)
    allowed = store.ids_matching(where) if where else None
    keys = content_keys(store, kind)
    # ordered by content key, not by storage order or id, so folds do not change when a
    # library is rebuilt from the same files
    rows = sorted(
        (
            n
            for n, i in enumerate(snapshot.ids)
            if values.get(i) is not None and (allowed is None or i in allowed)
        ),
        key=lambda n: (keys.get(snapshot.ids[n], ""), snapshot.ids[n]),
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
        keys=np.array([keys.get(snapshot.ids[n], snapshot.ids[n]) for n in rows], dtype=object),
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
