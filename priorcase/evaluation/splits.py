"""Patient-grouped, label-stratified cross-validation folds, independent of salt and order.

Groups are patient pseudonyms, salted per index, so folds drawn from them would change with
every rebuild. Each group is therefore named by a digest of its rows' content keys (file
hashes), and the folds are drawn over groups sorted by that digest with a fixed seed: the
same films give the same folds, whatever the salt or the order they were stored in.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

FOLD_SEED = 0


def content_group_keys(groups: Sequence[str], keys: Sequence[str]) -> np.ndarray:
    """Per row, the SHA-256 of its group's sorted content keys (salt-independent group name)."""
    members: dict[str, list[str]] = defaultdict(list)
    for g, k in zip(groups, keys, strict=True):
        members[str(g)].append(str(k))
    digest = {
        g: hashlib.sha256("\n".join(sorted(ks)).encode()).hexdigest() for g, ks in members.items()
    }
    return np.array([digest[str(g)] for g in groups], dtype=object)


def supported_folds(y: np.ndarray, groups: np.ndarray | None) -> int:
    """The most folds in which every class can reach each test part: the fewest groups
    carrying any one class (for a label matrix, either value of any label); ``None`` makes
    every row its own group. The one fold-shrinking rule of outer and inner CV."""
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if y.ndim == 2:  # a missing value of a label counts as zero groups
        per_class = [len(np.unique(groups[col == c])) for col in y.T for c in (0, 1)]
    else:
        per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    return min(per_class, default=0)


def grouped_folds(
    y: np.ndarray,
    groups: np.ndarray | None,
    n_splits: int = 5,
    random_state: int = FOLD_SEED,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, test_idx)`` pairs from ``StratifiedGroupKFold``; no group is ever split.

    ``groups`` is the patient pseudonym (or e.g. lesion id), best given as
    :func:`content_group_keys` so the folds do not depend on the salt; ``None`` treats every
    row as its own group. Rows must come in a content-defined order (see ``labelled_set``).
    ``n_splits`` is reduced, with a warning, when there are fewer groups than folds, so that
    every test fold holds at least one group of each class where possible.
    """
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"{len(y)} labels but {len(groups)} groups")
    possible = supported_folds(y, groups)
    if possible < 2:
        raise ValueError(
            f"cannot cross-validate: the rarest label occurs in {possible} group(s); need 2"
        )
    if n_splits > possible:
        warnings.warn(
            f"reducing cross-validation from {n_splits} to {possible} folds: the rarest label "
            f"occurs in only {possible} groups",
            stacklevel=2,
        )
        n_splits = possible
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    # Encode groups as integers: StratifiedGroupKFold sorts them, and mixed types would fail.
    _, group_codes = np.unique(groups.astype(str), return_inverse=True)
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64))
        for tr, te in cv.split(np.zeros(len(y)), y, group_codes)
    ]
