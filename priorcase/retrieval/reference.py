"""How close is a query to anything in the library? The "no close reference" check.

The library's own leave-one-patient-out nearest-neighbour similarities form the reference
distribution: for each stored row, the score of its best match among other patients' rows.
A query whose best score falls below a low percentile of that distribution (default 1%) is
unlike every case the library holds, so no method should answer for it. The distribution is
computed once per table content and kept on disk, keyed by a digest of the rows' content
keys and the encoder weights.

Text queries are checked once: the text tower must recognise the words. The query must be
closer to the library's vocabulary (its label-derived report sentences and label phrases) than
off-topic control sentences are, by ``TEXT_MARGIN`` (measured with all-MiniLM-L6-v2: controls
reach 0.31, "microcalcifications" 0.56, "asdfgh qwerty" 0.37). The best text-image score's
percentile among the report sentences' own best scores is reported, not used to abstain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from priorcase.index.vector_index import VectorIndex, l2_normalise

if TYPE_CHECKING:
    from priorcase.api import PriorCase
    from priorcase.classifiers.text_spaces import TextSpaces

OK = "ok"
NO_CLOSE_REFERENCE = "no close reference"
DEFAULT_PERCENTILE = 1.0
# sentences no medical library describes: the floor a recognised description must clear
CONTROL_TEXTS = (
    "a photo of a cat",
    "banana bread recipe",
    "the weather is nice today",
    "qwerty asdf zxcv",
    "lorem ipsum dolor sit amet",
    "a red car parked on the street",
    "stock market report",
    "hello world",
)
TEXT_MARGIN = 0.1


@dataclass
class Reference:
    """Where a query's best score sits in the library's own distribution."""

    top_score: float | None
    percentile: float | None
    status: str
    reason: str | None = None

    def to_json(self) -> dict:
        return {"top_score": self.top_score, "percentile": self.percentile, "status": self.status}


def _percentile_of(sorted_scores: np.ndarray, score: float) -> float:
    """Percent of the distribution at or below ``score`` (0-100)."""
    if len(sorted_scores) == 0:
        return 100.0
    return float(100.0 * np.searchsorted(sorted_scores, score, side="right") / len(sorted_scores))


def leave_one_group_out_top(vectors: np.ndarray, groups: np.ndarray, k: int = 32) -> np.ndarray:
    """Per row, the best cosine score among rows of other groups (NaN when there is none)."""
    index = VectorIndex(l2_normalise(vectors), backend="exact")
    n = len(vectors)
    found = index.search(index.vectors, min(n, k))
    out = np.full(n, np.nan)
    for row in range(n):
        for pos, score in zip(found.positions[row], found.scores[row], strict=True):
            if pos >= 0 and groups[pos] != groups[row]:
                out[row] = score
                break
    for row in np.flatnonzero(np.isnan(out)):  # a group with more than k near-duplicates
        allowed = groups != groups[row]
        if allowed.any():
            nb = index.search(index.vectors[row : row + 1], 1, allowed=allowed)
            out[row] = nb.scores[0, 0]
    return out


class LibraryReference:
    """The reference distributions of one library (per table content and kind)."""

    def __init__(self, spaces: TextSpaces, percentile: float = DEFAULT_PERCENTILE) -> None:
        self.spaces = spaces
        self.core = spaces.core
        self.percentile = percentile
        self._cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ images
    def _digest(self, kind: str | None, extra: str = "") -> str:
        from priorcase.classifiers.labelled import content_keys

        manifest = self.core.store.manifest
        assert manifest is not None
        keys = sorted(content_keys(self.core.store, kind).values())
        h = hashlib.sha256(f"{manifest.encoder['weights_sha256']}|{kind}|{extra}".encode())
        h.update("\n".join(keys).encode())
        return h.hexdigest()[:20]

    def image_scores(self, kind: str | None = "image") -> np.ndarray:
        """Sorted leave-one-patient-out best-match scores of the library's rows of ``kind``."""
        key = ("image", self.core.store.version, kind)
        if key not in self._cache:
            name = f"{kind or 'all'}-{self._digest(kind)}.npy"
            file = self.core.store.location.file("reference", name)
            if file.fetch():
                scores = np.load(file.local)
            else:
                snap = self.core.store.snapshot(kind)
                top = leave_one_group_out_top(snap.vectors, np.asarray(snap.groups, dtype=str))
                scores = np.sort(top[~np.isnan(top)])
                file.save(lambda tmp: _save_npy(tmp, scores))
            self._cache = {k: v for k, v in self._cache.items() if k[1] == key[1]}
            self._cache[key] = scores
        return self._cache[key]

    def score_percentile(self, score: float, kind: str | None = "image") -> float:
        return _percentile_of(self.image_scores(kind), score)

    def assess_image(self, top_score: float | None, kind: str | None = "image") -> Reference:
        """Status of an image query from its best match's score."""
        scores = self.image_scores(kind)
        if top_score is None or not len(scores):
            return Reference(None, None, NO_CLOSE_REFERENCE, "the library has no comparable case")
        pct = _percentile_of(scores, top_score)
        # "lower": a real library score, so a tiny library never rejects its own least-alike case
        floor = float(np.percentile(scores, self.percentile, method="lower"))
        if top_score < floor:
            reason = (
                f"best match {top_score:.3f} is below {floor:.3f}, the {self.percentile:g}% "
                "quantile of the library's own nearest-neighbour scores: no close reference"
            )
            return Reference(float(top_score), pct, NO_CLOSE_REFERENCE, reason)
        return Reference(float(top_score), pct, OK)

    # ------------------------------------------------------------------ texts
    def _text_distributions(self) -> tuple[np.ndarray, float, np.ndarray]:
        """(vocabulary vectors in the text tower, the recognition floor, sorted best
        text-image scores of the library's report sentences)."""
        from priorcase.classifiers.reports import MIAS_VOCABULARY

        key = ("text", self.core.store.version)
        if key not in self._cache:
            _, reports = self.spaces.reports()
            reports = sorted(set(reports))
            phrases = sorted({p for codes in MIAS_VOCABULARY.values() for p in codes.values()})
            embed = self.core.encoder.embed_texts
            tower = l2_normalise(np.asarray(embed([*reports, *phrases])))
            controls = l2_normalise(np.asarray(embed(list(CONTROL_TEXTS))))
            floor = float((controls @ tower.T).max()) + TEXT_MARGIN
            space = self.spaces.joint_space()
            images = space.images(self.core.store.snapshot(None).vectors)
            known = [*reports, *phrases]
            best = np.sort((space.texts(known) @ images.T).max(axis=1))
            self._cache = {k: v for k, v in self._cache.items() if k[1] == key[1]}
            self._cache[key] = (tower, floor, best)  # type: ignore[assignment]
        return self._cache[key]  # type: ignore[return-value]

    def text_percentile(self, score: float) -> float:
        return _percentile_of(self._text_distributions()[2], score)

    def assess_text(self, text: str, top_score: float | None) -> Reference:
        """Status of a text query: does the text space know the words, and does it match?"""
        if not text.strip():
            return Reference(None, None, NO_CLOSE_REFERENCE, "the description is empty")
        tower, floor, best = self._text_distributions()
        query = l2_normalise(np.asarray(self.core.encoder.embed_texts([text])))[0]
        closest = float((tower @ query).max()) if len(tower) else -1.0
        pct = None if top_score is None else _percentile_of(best, top_score)
        if closest < floor:
            reason = (
                f"the text space does not recognise {text!r}: it is no closer to the library's "
                f"report vocabulary (cosine {closest:.2f}) than off-topic sentences are "
                f"(floor {floor:.2f}); describe the finding in radiology words"
            )
            return Reference(top_score, pct, NO_CLOSE_REFERENCE, reason)
        # The score's percentile is reported but not used to abstain: short descriptions score
        # below the long report sentences they paraphrase (measured: "dense glandular breast"
        # 0.67 against reports' 1% quantile above it), so a floor would reject good queries.
        return Reference(top_score, pct, OK)


def search_reference(
    pc: PriorCase, hits: list, text: str | None, kind: str | None
) -> tuple[Reference, list[float | None]]:
    """The reference status of a search and each hit's score percentile in the library's own
    distribution (of image-to-image or report-text-to-image best scores)."""
    ref = pc.reference
    top = hits[0].score if hits else None
    if text is not None:
        status = ref.assess_text(text, top)
        return status, [ref.text_percentile(h.score) for h in hits]
    scope = kind or "image"
    return ref.assess_image(top, scope), [ref.score_percentile(h.score, scope) for h in hits]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save(path) would append ".npy" to a temporary name
        np.save(fh, array)
