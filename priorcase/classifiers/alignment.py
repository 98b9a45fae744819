"""Contrastive alignment of an image tower and a text tower that were never trained together.

Two projection heads (the towers stay frozen: only stored embeddings are used) map image
and report-text embeddings into a shared space with the symmetric CLIP InfoNCE loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from priorcase.index.vector_index import l2_normalise

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps the learnable temperature from collapsing


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG inside the block without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def projection_head(d_in: int, d_out: int, hidden: int | None) -> nn.Module:
    """A linear map, or a one-hidden-layer MLP when ``hidden`` is given."""
    if not hidden:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def soft_targets(ids: torch.Tensor) -> torch.Tensor:
    """Row-normalised match matrix: pairs with the same report text are all positives."""
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor):
    """Symmetric InfoNCE with soft targets (the match matrix is symmetric, so one serves both)."""
    logits = scale * img @ txt.T
    target = soft_targets(ids)
    loss_i = -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_t = -(target * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


class ContrastiveAligner:
    """Learns a joint space from (image embedding, report text) pairs; a ``JointSpace``.

    ``embed_texts`` is the frozen text tower (list of str -> (n, d_txt) array). Training runs
    ``epochs`` passes (at most ``max_steps`` optimiser steps) of shuffled minibatches with
    AdamW, deterministic given ``random_state``.
    """

    def __init__(
        self,
        embed_texts: Callable[[list[str]], np.ndarray],
        dim: int = 256,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        hidden: int | None = None,
        init_temperature: float = 0.07,
        random_state: int = 0,
        max_steps: int = 1500,
    ) -> None:
        self.embed_texts = embed_texts
        self.dim = dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden = hidden
        self.init_temperature = init_temperature
        self.random_state = random_state
        self.max_steps = max_steps

    def _config(self) -> dict[str, Any]:
        keys = (
            "dim",
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "hidden",
            "init_temperature",
            "max_steps",
        )
        return {k: getattr(self, k) for k in keys} | {"random_state": self.random_state}

    def _build(self, d_img: int, d_txt: int) -> None:
        with seeded(self.random_state):
            self.image_head_ = projection_head(d_img, self.dim, self.hidden)
            self.text_head_ = projection_head(d_txt, self.dim, self.hidden)
        self.logit_scale_ = nn.Parameter(torch.tensor(math.log(1 / self.init_temperature)))
        self.d_img_, self.d_txt_ = d_img, d_txt

    def fit(self, X_img: np.ndarray, reports: Sequence[str]) -> ContrastiveAligner:
        """Train both heads on paired rows: ``X_img[i]`` is described by ``reports[i]``."""
        X = torch.from_numpy(l2_normalise(X_img))
        if len(X) != len(reports):
            raise ValueError(f"{len(X)} images but {len(reports)} reports")
        # Embed each distinct report once; many images share one report.
        unique, inverse = np.unique(np.asarray(reports, dtype=str), return_inverse=True)
        T = torch.from_numpy(l2_normalise(np.asarray(self.embed_texts(list(unique)))))
        ids = torch.from_numpy(inverse.astype(np.int64))
        self._build(X.shape[1], T.shape[1])
        params = [*self.image_head_.parameters(), *self.text_head_.parameters()]
        # Decay the heads only; shrinking the logit scale would fight the loss.
        opt = torch.optim.AdamW(
            [
                {"params": params, "weight_decay": self.weight_decay},
                {"params": [self.logit_scale_], "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        gen = torch.Generator().manual_seed(self.random_state)
        self.history_: list[float] = []
        n, bs = len(X), max(2, min(self.batch_size, len(X)))
        # Large libraries converge in fewer passes: bound the optimiser steps, not the epochs.
        epochs = min(self.epochs, max(1, self.max_steps // max(1, (n - 1) // bs + 1)))
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n - 1, bs):
                batch = order[start : start + bs]
                if len(batch) < 2:  # InfoNCE needs negatives
                    continue
                img = nn.functional.normalize(self.image_head_(X[batch]), dim=1)
                txt = nn.functional.normalize(self.text_head_(T[ids[batch]]), dim=1)
                scale = self.logit_scale_.exp().clamp(max=MAX_LOGIT_SCALE)
                loss = clip_loss(img, txt, ids[batch], scale)
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.history_.append(float(loss.detach()))
        return self

    @torch.no_grad()
    def images(self, X: np.ndarray) -> np.ndarray:
        """Project image embeddings (n, d_img) into the joint space."""
        X = l2_normalise(np.atleast_2d(X))
        if X.shape[1] != self.d_img_:
            raise ValueError(f"aligner expects {self.d_img_}-d images, got {X.shape[1]}-d")
        return l2_normalise(self.image_head_(torch.from_numpy(X)).numpy())

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the frozen tower and project them into the joint space."""
        T = l2_normalise(np.atleast_2d(np.asarray(self.embed_texts(list(texts)))))
        return l2_normalise(self.text_head_(torch.from_numpy(T)).numpy())

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    def state_dict(self) -> dict[str, Any]:
        """Heads, logit scale and config as plain tensors/values (``torch.save``-able)."""
        return {
            "config": self._config(),
            "d_img": self.d_img_,
            "d_txt": self.d_txt_,
            "image_head": self.image_head_.state_dict(),
            "text_head": self.text_head_.state_dict(),
            "logit_scale": self.logit_scale_.detach().clone(),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], embed_texts: Callable[[list[str]], np.ndarray]
    ) -> ContrastiveAligner:
        """Rebuild a fitted aligner from ``state_dict()`` and the same text tower."""
        aligner = cls(embed_texts, **state["config"])
        aligner._build(state["d_img"], state["d_txt"])
        aligner.image_head_.load_state_dict(state["image_head"])
        aligner.text_head_.load_state_dict(state["text_head"])
        with torch.no_grad():
            aligner.logit_scale_.copy_(state["logit_scale"])
        return aligner

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(
        cls, path: str | Path, embed_texts: Callable[[list[str]], np.ndarray]
    ) -> ContrastiveAligner:
        return cls.from_state(torch.load(Path(path), weights_only=True), embed_texts)

    def __sklearn_clone__(self) -> ContrastiveAligner:
        # A fitted space is shared, not refitted: classifiers holding it must keep it fitted.
        return self
