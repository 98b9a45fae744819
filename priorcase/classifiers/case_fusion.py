"""Case-level fusion: a film's score read together with the same patient's other breast.

Mammography readers compare the two breasts: a mass or an asymmetry is a difference between
mirrored views. :class:`CaseFusionClassifier` wraps any binary film classifier (the tile head,
or a head on whole-film embeddings) and feeds a small logistic regression with the film's own
score, the score of the patient's contralateral film (same view where views are known), their
difference and, for the tile head, the largest tile-by-tile difference against the mirrored
position on the other breast. The fusion is fitted on the training films' out-of-fold base
scores (grouped inner CV), never on in-sample ones. Partners are only ever films of the same
patient (:class:`CaseLayout`). Estimators take film ids as ``X``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from priorcase.classifiers.binarize import two_column_proba
from priorcase.classifiers.linear import cv_splits

if TYPE_CHECKING:
    from priorcase.index.store import CaseStore

FEATURES = ("own", "other", "own_minus_other", "mirrored_tile_difference")
SIDE_COLUMNS = ("laterality", "image_laterality", "breast_flipped")  # first one stored wins
VIEW_COLUMNS = ("view_position", "view")


@dataclass(frozen=True)
class CaseLayout:
    """Which films form one case: per film id its patient, breast side, view, and the frame
    (breast box in source pixels, and whether the view was flipped) that maps tiles to
    mirrored positions."""

    patient: dict[str, str]
    side: dict[str, str | None]
    view: dict[str, str | None]
    frame: dict[str, tuple[float, float, float, float, bool]]

    @classmethod
    def from_store(cls, store: CaseStore) -> CaseLayout:
        snapshot = store.snapshot("image")
        ids = [str(i) for i in snapshot.ids]
        patient = {i: str(g) for i, g in zip(ids, snapshot.groups, strict=True)}
        names = set(store.table.schema.names) if store.table is not None else set()

        def first_column(columns: tuple[str, ...]) -> dict[str, str | None]:
            for column in columns:
                if column in names:
                    values = store.column_values(column, "image")
                    return {i: _clean(values.get(i)) for i in ids}
            return dict.fromkeys(ids)

        frame: dict[str, tuple[float, float, float, float, bool]] = {}
        if {"breast_box", "breast_flipped"} <= names:
            boxes = store.column_values("breast_box", "image")
            flips = store.column_values("breast_flipped", "image")
            for i in ids:
                if boxes.get(i):
                    x0, y0, x1, y1 = (float(v) for v in str(boxes[i]).split(","))
                    frame[i] = (x0, y0, x1, y1, str(flips.get(i)).lower() == "true")
        return cls(patient, first_column(SIDE_COLUMNS), first_column(VIEW_COLUMNS), frame)

    def partners(self, film: str) -> list[str]:
        """The same patient's films of the other breast (same view where both say which)."""
        side, view = self.side.get(film), self.view.get(film)
        if side is None or film not in self.patient:
            return []
        mine = self.patient[film]
        return sorted(
            other
            for other, patient in self.patient.items()
            if patient == mine
            and other != film
            and self.side.get(other) not in (None, side)
            and (view is None or self.view.get(other) in (None, view))
        )

    def positions(self, film: str, boxes: np.ndarray) -> np.ndarray:
        """Tile centres as fractions of the breast box, mirrored so that both breasts face
        the same way (the frame of the preprocessed view)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        if film not in self.frame:
            return np.stack([cx, cy], 1) / max(float(boxes.max(initial=1.0)), 1.0)
        x0, y0, x1, y1, flipped = self.frame[film]
        u = (cx - x0) / max(x1 - x0, 1.0)
        return np.stack([1 - u if flipped else u, (cy - y0) / max(y1 - y0, 1.0)], 1)


def _clean(value: Any) -> str | None:
    text = None if value is None else str(value).strip().upper()
    return text or None


@dataclass
class FilmOutput:
    """A base model's answer for one film: its score, and per tile (when it scores tiles) the
    lesion probability, box side and box."""

    score: float
    tile_probs: np.ndarray | None = None
    tile_boxes: np.ndarray | None = None


def mirrored_difference(
    film: str, partner: str, outputs: dict[str, FilmOutput], layout: CaseLayout
) -> float:
    """Max over the film's tiles of its lesion probability minus that of the partner's tile of
    the same size nearest to the mirrored position (0 without tiles)."""
    own, other = outputs[film], outputs[partner]
    if own.tile_probs is None or other.tile_probs is None or not len(other.tile_probs):
        return 0.0
    assert own.tile_boxes is not None and other.tile_boxes is not None
    pos_a = layout.positions(film, own.tile_boxes)
    pos_b = layout.positions(partner, other.tile_boxes)
    side_a = own.tile_boxes[:, 2] - own.tile_boxes[:, 0]
    side_b = other.tile_boxes[:, 2] - other.tile_boxes[:, 0]
    best = 0.0
    for n in range(len(own.tile_probs)):
        same = np.flatnonzero(side_b == side_a[n])
        if not len(same):
            continue
        nearest = same[np.argmin(((pos_b[same] - pos_a[n]) ** 2).sum(1))]
        best = max(best, float(own.tile_probs[n] - other.tile_probs[nearest]))
    return best


def fusion_features(
    films: np.ndarray, outputs: dict[str, FilmOutput], layout: CaseLayout
) -> np.ndarray:
    """Per film the :data:`FEATURES`; a film with no scored partner is its own partner, so
    its differences are 0. Only the same patient's films are ever read."""
    out = np.zeros((len(films), len(FEATURES)))
    for n, film in enumerate(str(f) for f in films):
        own = outputs[film].score
        partners = [p for p in layout.partners(film) if p in outputs]
        other = float(np.mean([outputs[p].score for p in partners])) if partners else own
        diffs = [mirrored_difference(film, p, outputs, layout) for p in partners]
        mirrored = max(diffs, default=0.0)
        out[n] = (own, other, own - other, mirrored)
    return out


class CaseFusionClassifier(ClassifierMixin, BaseEstimator):
    """A binary film classifier that also reads the patient's contralateral film.

    ``make_base()`` builds the base classifier (its ``fit`` takes ``groups``);
    ``base_input(ids)`` gives its ``X`` for film ids (the ids themselves for the tile head,
    vectors for a whole-film head). ``fit(ids, y, groups)``: base scores of the training films
    come from ``cv`` grouped inner folds, the fusion (a logistic regression on
    :data:`FEATURES`) is fitted on them, and the base is refitted on all training films.
    ``predict_proba(ids)`` scores each film and its partners (from ``layout``: same patient,
    other breast) with the refitted base.
    """

    def __init__(
        self,
        make_base: Callable[[], Any] | None = None,
        layout: CaseLayout | None = None,
        base_input: Callable[[np.ndarray], Any] | None = None,
        cv: int = 3,
        random_state: int = 0,
    ):
        self.make_base = make_base
        self.layout = layout
        self.base_input = base_input
        self.cv = cv
        self.random_state = random_state

    def _input(self, ids: np.ndarray) -> Any:
        return ids if self.base_input is None else self.base_input(ids)

    def fit(self, X, y, groups=None) -> CaseFusionClassifier:
        from priorcase.evaluation.metrics import default_positive

        assert self.make_base is not None and self.layout is not None
        ids = np.asarray(X, dtype=object).astype(str)
        y = np.asarray(y).astype(str)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("case fusion scores a binary label: give --positive")
        self.positive_ = str(default_positive(list(self.classes_)))
        if groups is None:
            groups = np.array([self.layout.patient.get(i, i) for i in ids], dtype=object)
        groups = np.asarray(groups).astype(str)
        outputs: dict[str, FilmOutput] = {}
        splits = cv_splits(y, groups, self.cv, self.random_state)
        if not splits:
            raise ValueError("case fusion needs at least two patients of each class")
        for train, test in splits:
            model = self.make_base().fit(self._input(ids[train]), y[train], groups=groups[train])
            outputs |= self._outputs(model, ids[test])
        features = fusion_features(ids, outputs, self.layout)
        target = (y == self.positive_).astype(int)
        self.fusion_ = LogisticRegression(max_iter=1000).fit(features, target)
        self.base_ = self.make_base().fit(self._input(ids), y, groups=groups)
        return self

    def _outputs(self, model: Any, ids: np.ndarray) -> dict[str, FilmOutput]:
        """Scores (and tile probabilities) of films and of their partners."""
        wanted = sorted({str(i) for i in ids} | {p for i in ids for p in self.layout.partners(i)})
        films = np.asarray(wanted, dtype=object)
        proba = model.predict_proba(self._input(films))
        col = list(model.classes_).index(self.positive_)
        outputs = {}
        for film, score in zip(wanted, proba[:, col], strict=True):
            probs = boxes = None
            if hasattr(model, "film_tiles"):
                probs, boxes = model.film_tiles(film)
            outputs[film] = FilmOutput(float(score), probs, boxes)
        return outputs

    def features(self, X) -> np.ndarray:
        """The fusion's inputs for films (scored by the refitted base)."""
        check_is_fitted(self, "fusion_")
        ids = np.asarray(X, dtype=object).astype(str)
        return fusion_features(ids, self._outputs(self.base_, ids), self.layout)

    def predict_proba(self, X) -> np.ndarray:
        p = self.fusion_.predict_proba(self.features(X))[:, 1]
        return two_column_proba(p, self.classes_, self.positive_)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def case_scores(
    groups: np.ndarray, y_positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cases, case is positive (any film is), case score = max over its films)."""
    cases = np.array(sorted({str(g) for g in groups}), dtype=object)
    where = {c: n for n, c in enumerate(cases)}
    truth = np.zeros(len(cases), dtype=bool)
    best = np.full(len(cases), -np.inf)
    for g, t, s in zip(groups, y_positive, scores, strict=True):
        n = where[str(g)]
        truth[n] |= bool(t)
        best[n] = max(best[n], float(s))
    return cases, truth, best
