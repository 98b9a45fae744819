"""Similarity-guided head: a trained projection scored against fixed class prompt embeddings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from priorcase.classifiers.alignment import MAX_LOGIT_SCALE, seeded
from priorcase.classifiers.joint_space import JointSpace
from priorcase.classifiers.prompts import MAMMOGRAPHY_TEMPLATES
from priorcase.classifiers.zeroshot import prompts_for


class ResidualProjection(nn.Module):
    """x + f(x), with f zero at init, so training starts from the zero-shot classifier."""

    def __init__(self, dim: int, hidden: int | None) -> None:
        super().__init__()
        if hidden:
            self.f: nn.Module = nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
            )
        else:
            self.f = nn.Linear(dim, dim)
        last = self.f[-1] if isinstance(self.f, nn.Sequential) else self.f
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x + self.f(x), dim=-1)


class SimilarityGuidedHead(ClassifierMixin, BaseEstimator):
    """Logits = scale * cos(projected image, fixed prompt embeddings of each class).

    Only the projection (and the logit scale, init 1/temperature) trains, full-batch AdamW with
    class-balanced cross-entropy; the prompt embeddings stay fixed, so classes keep their
    text meaning. ``aggregate`` combines a class's prompts: ``"mean"`` (centroid) or ``"max"``.
    """

    def __init__(
        self,
        space: JointSpace,
        column: str | None = None,
        prompts: Mapping[str, Sequence[str]] | None = None,
        templates: Sequence[str] = MAMMOGRAPHY_TEMPLATES,
        hidden: int | None = None,
        epochs: int = 200,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        temperature: float = 0.01,
        aggregate: str = "mean",
        vocabulary: Mapping[str, Mapping[str, str]] | None = None,
        random_state: int = 0,
    ) -> None:
        self.space = space
        self.column = column
        self.prompts = prompts
        self.templates = templates
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.aggregate = aggregate
        self.vocabulary = vocabulary
        self.random_state = random_state

    def _logits(self, z: torch.Tensor) -> torch.Tensor:
        sims = self.projection_(z) @ self.prompt_embeddings_.T  # (n, n_prompts)
        if self.aggregate == "max":
            cols = [sims[:, self.prompt_class_ == c].amax(dim=1) for c in range(len(self.classes_))]
        else:
            cols = [sims[:, self.prompt_class_ == c].mean(dim=1) for c in range(len(self.classes_))]
        return self.logit_scale_.exp().clamp(max=MAX_LOGIT_SCALE) * torch.stack(cols, dim=1)

    def fit(self, X: np.ndarray, y, groups=None) -> SimilarityGuidedHead:
        if self.aggregate not in {"mean", "max"}:
            raise ValueError(f"aggregate must be 'mean' or 'max', got {self.aggregate!r}")
        self.classes_, y_idx = np.unique(np.asarray(y), return_inverse=True)
        self.prompts_ = prompts_for(
            self.classes_, self.prompts, self.column, self.templates, self.vocabulary
        )
        texts = [p for ps in self.prompts_.values() for p in ps]
        self.prompt_class_ = torch.tensor(
            [i for i, ps in enumerate(self.prompts_.values()) for _ in ps]
        )
        self.prompt_embeddings_ = torch.from_numpy(self.space.texts(texts))
        z = torch.from_numpy(self.space.images(X))
        target = torch.from_numpy(y_idx.astype(np.int64))
        counts = np.bincount(y_idx, minlength=len(self.classes_))
        balance = torch.tensor(len(y_idx) / (len(counts) * counts), dtype=torch.float32)
        with seeded(self.random_state):
            self.projection_ = ResidualProjection(z.shape[1], self.hidden)
        self.logit_scale_ = nn.Parameter(torch.tensor(math.log(1 / self.temperature)))
        opt = torch.optim.AdamW(
            [
                {"params": self.projection_.parameters(), "weight_decay": self.weight_decay},
                {"params": [self.logit_scale_], "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        loss_fn = nn.CrossEntropyLoss(weight=balance)
        self.history_: list[float] = []
        for _ in range(self.epochs):
            loss = loss_fn(self._logits(z), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.history_.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "projection_")
        return self._logits(torch.from_numpy(self.space.images(X))).numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(X).astype(np.float64), axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
