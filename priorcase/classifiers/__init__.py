"""scikit-learn-style classifiers on L2-normalised image embeddings, plus the joint space."""

from __future__ import annotations

from typing import Any

from priorcase.classifiers.alignment import ContrastiveAligner
from priorcase.classifiers.ensemble import ProbabilityEnsemble
from priorcase.classifiers.joint_space import ClipSpace, JointSpace
from priorcase.classifiers.knn import KNNVoteClassifier
from priorcase.classifiers.linear import LogisticHead, SVMHead
from priorcase.classifiers.prompts import IMAGE_TEMPLATES, MAMMOGRAPHY_TEMPLATES, class_prompts
from priorcase.classifiers.reports import MIAS_VOCABULARY, report_from_labels
from priorcase.classifiers.similarity import SimilarityGuidedHead
from priorcase.classifiers.zeroshot import ZeroShotClassifier

METHODS = ("knn", "logreg", "svm", "zeroshot", "similarity", "ensemble")


def make_classifier(
    method: str, space: JointSpace | None = None, column: str | None = None, **kw: Any
) -> Any:
    """A classifier by name; ``kw`` goes to its constructor.

    ``"zeroshot"`` / ``"similarity"`` need a joint ``space``. ``"ensemble"`` is kNN + logistic
    + SVM (+ similarity head when a space is given); its ``kw`` may hold ``weights``.
    """
    if method == "knn":
        return KNNVoteClassifier(**kw)
    if method == "logreg":
        return LogisticHead(**kw)
    if method == "svm":
        return SVMHead(**kw)
    if method in {"zeroshot", "similarity"}:
        if space is None:
            raise ValueError(f"method {method!r} needs a joint text-image space")
        cls = ZeroShotClassifier if method == "zeroshot" else SimilarityGuidedHead
        return cls(space, column=column, **kw)
    if method == "ensemble":
        members: list[tuple[str, Any]] = [
            ("knn", KNNVoteClassifier(weights="similarity")),
            ("logreg", LogisticHead()),
            ("svm", SVMHead(calibrate=False)),  # the ensemble as a whole is calibrated
        ]
        if space is not None:
            members.append(("similarity", SimilarityGuidedHead(space, column=column)))
        return ProbabilityEnsemble(members, **kw)
    raise ValueError(f"unknown classifier method {method!r}; choose one of {', '.join(METHODS)}")


__all__ = [
    "IMAGE_TEMPLATES",
    "MAMMOGRAPHY_TEMPLATES",
    "METHODS",
    "MIAS_VOCABULARY",
    "ClipSpace",
    "ContrastiveAligner",
    "JointSpace",
    "KNNVoteClassifier",
    "LogisticHead",
    "ProbabilityEnsemble",
    "SVMHead",
    "SimilarityGuidedHead",
    "ZeroShotClassifier",
    "class_prompts",
    "make_classifier",
    "report_from_labels",
]
