"""Zero-shot classification: cosine similarity to text prompts in a joint space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from priorcase.classifiers.joint_space import JointSpace
from priorcase.classifiers.prompts import MAMMOGRAPHY_TEMPLATES, class_prompts
from priorcase.index.vector_index import l2_normalise


def prompts_for(
    classes: np.ndarray,
    prompts: Mapping[str, Sequence[str]] | None,
    column: str | None,
    templates: Sequence[str],
    vocabulary: Mapping[str, Mapping[str, str]] | None,
) -> dict[str, list[str]]:
    """The given prompts per class (every class must have some), else template-built ones."""
    if prompts is None:
        return class_prompts(classes, column, templates, vocabulary)
    missing = [str(c) for c in classes if not prompts.get(str(c))]
    if missing:
        raise ValueError(f"no prompts for classes {missing}")
    return {str(c): list(prompts[str(c)]) for c in classes}


def prompt_centroids(space: JointSpace, prompts: Mapping[str, Sequence[str]]) -> np.ndarray:
    """One unit vector per class: the normalised mean of its prompts' embeddings."""
    return l2_normalise(np.stack([space.texts(list(p)).mean(axis=0) for p in prompts.values()]))


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """softmax(cos(image, class prompt centroid) / temperature); ``fit`` only records classes."""

    def __init__(
        self,
        space: JointSpace,
        column: str | None = None,
        prompts: Mapping[str, Sequence[str]] | None = None,
        templates: Sequence[str] = MAMMOGRAPHY_TEMPLATES,
        temperature: float = 0.01,
        vocabulary: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.space = space
        self.column = column
        self.prompts = prompts
        self.templates = templates
        self.temperature = temperature
        self.vocabulary = vocabulary

    def fit(self, X: np.ndarray | None, y, groups=None) -> ZeroShotClassifier:
        self.classes_ = np.unique(np.asarray(y))
        self.prompts_ = prompts_for(
            self.classes_, self.prompts, self.column, self.templates, self.vocabulary
        )
        self.class_embeddings_ = prompt_centroids(self.space, self.prompts_)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Cosine similarity of each image to each class centroid, (n, n_classes)."""
        check_is_fitted(self, "class_embeddings_")
        return self.space.images(X) @ self.class_embeddings_.T

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(X) / self.temperature, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
