"""Classify by voting among the most similar prior cases."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from priorcase.classifiers.validation import fit_inputs, predict_inputs
from priorcase.index.vector_index import VectorIndex, l2_normalise

QUERY_CHUNK_CELLS = 2**24  # query x reference scores per batched search (64 MiB of float32)


class KNNVoteClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour vote over L2-normalised embeddings.

    ``weights="uniform"`` gives every neighbour one vote; ``"similarity"`` gives
    softmax(score / temperature) over the k neighbours. ``prior_correction`` divides class
    votes by the class's share of the reference set (imbalanced libraries). With
    ``exclude_same_group`` neighbours sharing the query's group (patient) are skipped when
    ``fit`` got groups and ``groups`` is passed to ``predict_proba`` / ``kneighbors`` (else
    nothing is excluded). Probabilities are smoothed,
    p = (vote share + smoothing) / (1 + n_classes * smoothing), so none is exactly 0; a query
    with no usable neighbour gets the reference class prior.
    """

    def __init__(
        self,
        k: int = 10,
        weights: str = "uniform",
        temperature: float = 0.1,
        prior_correction: bool = False,
        exclude_same_group: bool = False,
        backend: str = "auto",
        smoothing: float = 1e-3,
    ) -> None:
        self.k = k
        self.weights = weights
        self.temperature = temperature
        self.prior_correction = prior_correction
        self.exclude_same_group = exclude_same_group
        self.backend = backend
        self.smoothing = smoothing

    def fit(self, X: np.ndarray, y, groups=None) -> KNNVoteClassifier:
        if self.weights not in {"uniform", "similarity"}:
            raise ValueError(f"weights must be 'uniform' or 'similarity', got {self.weights!r}")
        X, y = fit_inputs(self, X, y)
        X = l2_normalise(X)
        self.classes_, self.y_idx_ = np.unique(y, return_inverse=True)
        self.groups_ = None if groups is None else np.asarray(groups)
        self.prior_ = np.bincount(self.y_idx_, minlength=len(self.classes_)) / len(y)
        self.index_ = VectorIndex(X, backend=self.backend)
        return self

    def kneighbors(self, X: np.ndarray, groups=None) -> tuple[np.ndarray, np.ndarray]:
        """Reference-row positions (-1 = none) and cosine scores of the k nearest, (n, k)."""
        Q = l2_normalise(predict_inputs(self, X, "index_"))
        if not (self.exclude_same_group and groups is not None and self.groups_ is not None):
            nb = self.index_.search(Q, self.k)
            return nb.positions, nb.scores
        groups = np.asarray(groups)
        if len(groups) != len(Q):
            raise ValueError(f"{len(Q)} queries but {len(groups)} groups")
        # One batched search for k plus the largest query group's reference rows, then those
        # rows dropped: the neighbours of a masked search per group, exact and never short,
        # at one matrix product per chunk instead of one per group (O(n^2) calls on a big
        # library's calibration folds).
        names, counts = np.unique(self.groups_, return_counts=True)
        size = dict(zip(names.tolist(), counts.tolist(), strict=True))
        extra = max(size.get(g, 0) for g in np.unique(groups).tolist())
        chunk = max(1, QUERY_CHUNK_CELLS // max(1, len(self.index_)))
        positions = np.empty((len(Q), self.k), dtype=np.int64)
        scores = np.empty((len(Q), self.k), dtype=np.float32)
        for start in range(0, len(Q), chunk):
            rows = slice(start, start + chunk)
            nb = self.index_.search(Q[rows], self.k + extra)
            found = nb.positions >= 0
            keep = found & (self.groups_[np.where(found, nb.positions, 0)] != groups[rows, None])
            first = np.argsort(~keep, axis=1, kind="stable")[:, : self.k]  # kept, in rank order
            kept = np.take_along_axis(keep, first, axis=1)
            positions[rows] = np.where(kept, np.take_along_axis(nb.positions, first, axis=1), -1)
            scores[rows] = np.where(kept, np.take_along_axis(nb.scores, first, axis=1), -np.inf)
        return positions, scores

    def _votes(self, positions: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Summed neighbour weights per class, shape (n, n_classes)."""
        valid = positions >= 0
        w = valid.astype(np.float64)
        if self.weights == "similarity":
            z = np.where(valid, scores / self.temperature, -np.inf)
            top = np.max(z, axis=1, keepdims=True)
            z = z - np.where(np.isfinite(top), top, 0.0)  # stable softmax
            w = np.where(valid, np.exp(z), 0.0)
            w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
        onehot = np.eye(len(self.classes_))[self.y_idx_[np.where(valid, positions, 0)]]
        return np.einsum("nk,nkc->nc", w, onehot)

    def predict_proba(self, X: np.ndarray, groups=None) -> np.ndarray:
        positions, scores = self.kneighbors(X, groups)
        votes = self._votes(positions, scores)
        if self.prior_correction:
            votes = votes / self.prior_
        total = votes.sum(axis=1, keepdims=True)
        fallback = np.full(len(self.classes_), 1 / len(self.classes_))
        if not self.prior_correction:
            fallback = self.prior_
        share = np.where(total > 0, votes / np.where(total > 0, total, 1), fallback)
        return (share + self.smoothing) / (1 + len(self.classes_) * self.smoothing)

    def predict(self, X: np.ndarray, groups=None) -> np.ndarray:
        proba = self.predict_proba(X, groups)  # checks fitted before classes_ is read
        return self.classes_[np.argmax(proba, axis=1)]

    def explain(self, X: np.ndarray, groups=None) -> list[str]:
        """One line per query, e.g. "7 of 10 nearest cases are malignant"."""
        positions, _ = self.kneighbors(X, groups)
        lines = []
        for row in positions:
            row = row[row >= 0]
            if len(row) == 0:
                lines.append("no comparable prior cases")
                continue
            counts = np.bincount(self.y_idx_[row], minlength=len(self.classes_))
            top = int(np.argmax(counts))
            lines.append(f"{counts[top]} of {len(row)} nearest cases are {self.classes_[top]}")
        return lines
