"""Film scores from tiles: a tile-level lesion probability pooled over each film's tiles.

Multiple-instance scoring (Shen et al. 2019 train a patch classifier, then read whole films
through it): the instance classifier learns lesion crops of positive films against the tiles
of negative films; a film's score is the max or top-m mean of its tiles' probabilities.
Estimators take film ids as ``X``: their tiles and lesions come from a :class:`TileData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from priorcase.classifiers.binarize import two_column_proba
from priorcase.classifiers.linear import LogisticHead

if TYPE_CHECKING:
    from priorcase.core import Core

POOLINGS = ("max", "topm")


@dataclass
class TileData:
    """Per film: its tiles (vectors, source boxes, ids) and its lesion crops' vectors."""

    tiles: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # film -> (vectors, boxes, ids)
    lesions: dict[str, np.ndarray]  # film -> vectors of lesion ROIs and lesion tiles

    @classmethod
    def from_library(cls, core: Core) -> TileData:
        bank = core.tiles()
        tiles = {}
        for parent in sorted(set(bank.parents.tolist())):
            mine = bank.of(parent)
            tiles[parent] = (bank.vectors[mine], bank.boxes[mine], bank.ids[mine])
        lesions: dict[str, list[np.ndarray]] = {}
        table = core.store.table
        if table is not None and "roi_type" in table.schema.names:
            rows = (
                table.search()
                .where("roi_type = 'lesion'")
                .select(["parent_id", "vector"])
                .limit(None)
                .to_arrow()
            )
            for parent, vector in zip(
                rows.column("parent_id").to_pylist(), rows.column("vector").to_pylist(), strict=True
            ):
                lesions.setdefault(parent, []).append(np.asarray(vector, np.float32))
        return cls(tiles, {k: np.stack(v) for k, v in lesions.items()})

    def mean_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Per film the L2-normalised mean of its tile vectors (a texture summary of the
        whole breast at lesion scale; used by ``--method tilemean``)."""
        self.require(ids)
        return l2_mean([self.tiles[str(i)][0] for i in ids])

    def require(self, ids: np.ndarray) -> None:
        missing = [str(i) for i in ids if str(i) not in self.tiles]
        if missing:
            raise ValueError(
                f"{len(missing)} films have no tiles (e.g. {missing[0]}): ingest with "
                "--modality MG or --tile-sizes to score films from tiles"
            )


def l2_mean(tile_vectors: list[np.ndarray]) -> np.ndarray:
    """(n, dim): each film's tile vectors averaged, then L2-normalised."""
    means = np.stack([np.asarray(v, np.float32).mean(0) for v in tile_vectors])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _pool(probs: np.ndarray, pooling: str, m: int) -> float:
    if pooling == "max":
        return float(probs.max())
    return float(np.sort(probs)[-min(m, len(probs)) :].mean())


class TileMILClassifier(ClassifierMixin, BaseEstimator):
    """Binary film classifier from a lesion-vs-tissue tile head, pooled per film.

    ``fit(ids, y, groups)``: instances are the lesion crops of positive films (label 1) and all
    tiles and lesion crops of negative films (label 0); the head is :class:`LogisticHead`
    (C by patient-grouped CV, as for the whole-film baseline). The pooled scores of the training
    films are mapped to a probability by a one-feature logistic regression.
    """

    def __init__(self, data: TileData | None = None, pooling: str = "topm", m: int = 3):
        self.data = data
        self.pooling = pooling
        self.m = m

    def fit(self, X, y, groups=None) -> TileMILClassifier:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        assert self.data is not None
        ids = np.asarray(X, dtype=object).astype(str)
        y = np.asarray(y).astype(str)
        self.data.require(ids)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("tiles scores a binary label: give --positive")
        from priorcase.evaluation.metrics import default_positive

        self.positive_ = str(default_positive(list(self.classes_)))
        groups = ids if groups is None else np.asarray(groups).astype(str)
        feats, targets, inst_groups = [], [], []
        for film, label, group in zip(ids, y, groups, strict=True):
            lesions = self.data.lesions.get(film)
            parts = [] if lesions is None else [(lesions, int(label == self.positive_))]
            if label != self.positive_:
                parts.append((self.data.tiles[film][0], 0))
            for vectors, target in parts:
                feats.append(vectors)
                targets += [target] * len(vectors)
                inst_groups += [group] * len(vectors)
        if len(set(targets)) < 2:
            raise ValueError("tiles needs lesion crops (findings) on films of the positive class")
        # balanced: a few lesion crops against thousands of tissue tiles
        self.head_ = LogisticHead(class_weight="balanced", cv=3).fit(
            np.concatenate(feats), np.asarray(targets), groups=np.asarray(inst_groups)
        )
        scores = self._scores(ids)[0][:, None]
        self.calibrator_ = LogisticRegression().fit(scores, (y == self.positive_).astype(int))
        return self

    def _tile_probs(self, film: str) -> np.ndarray:
        return self.head_.predict_proba(self.data.tiles[film][0])[:, 1]

    def _scores(self, ids: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Pooled score per film, and the position of the tile that drove it."""
        scores, drivers = [], []
        for film in ids:
            probs = self._tile_probs(str(film))
            scores.append(_pool(probs, self.pooling, self.m))
            drivers.append(int(np.argmax(probs)))
        return np.asarray(scores), drivers

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "head_")
        ids = np.asarray(X, dtype=object).astype(str)
        self.data.require(ids)
        return self._scores(ids)[0]

    def predict_proba(self, X) -> np.ndarray:
        p = self.calibrator_.predict_proba(self.decision_function(X)[:, None])[:, 1]
        return two_column_proba(p, self.classes_, self.positive_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def film_tiles(self, film: str) -> tuple[np.ndarray, np.ndarray]:
        """(lesion probability, source box) of each of a stored film's tiles."""
        check_is_fitted(self, "head_")
        return self._tile_probs(film), self.data.tiles[film][1]

    def tile_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Lesion probability of tile vectors (e.g. a new film's tiles)."""
        check_is_fitted(self, "head_")
        return self.head_.predict_proba(np.asarray(vectors, np.float32))[:, 1]

    def score_tiles(self, vectors: np.ndarray) -> tuple[float, int]:
        """(film probability of the positive class, index of the driving tile) for new tiles."""
        probs = self.tile_probabilities(vectors)
        pooled = _pool(probs, self.pooling, self.m)
        return float(self.calibrator_.predict_proba([[pooled]])[0, 1]), int(np.argmax(probs))

    def explain(self, film: str) -> tuple[str, tuple[int, ...], float]:
        """(tile id, its box in source pixels, its lesion probability) of the driving tile."""
        probs = self._tile_probs(film)
        best = int(np.argmax(probs))
        _, boxes, ids = self.data.tiles[film]
        return str(ids[best]), tuple(int(v) for v in boxes[best]), float(probs[best])


def positive_values(values: dict[str, str | None], data: TileData) -> tuple[str, ...]:
    """Label values of films that mostly have lesion crops: the positive class tiles can score
    (e.g. benign and malignant for pathology, every abnormality but NORM)."""
    counts: dict[str, list[int]] = {}
    for film, value in values.items():
        if value is not None and film in data.tiles:
            counts.setdefault(str(value), []).append(int(film in data.lesions))
    positive = tuple(sorted(v for v, has in counts.items() if np.mean(has) > 0.5))
    if not positive or len(positive) == len(counts):
        raise ValueError("tiles needs a label whose positive class has findings and one without")
    return positive
