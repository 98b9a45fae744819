"""The joint image-text space that zero-shot and similarity-guided heads work in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from priorcase.index.vector_index import l2_normalise


@runtime_checkable
class JointSpace(Protocol):
    """Maps stored image embeddings and prompt texts to L2-normalised rows in one space."""

    def images(self, X: np.ndarray) -> np.ndarray: ...

    def texts(self, texts: list[str]) -> np.ndarray: ...


class ClipSpace:
    """Joint space of an encoder whose towers are already aligned (CLIP): images pass through."""

    def __init__(self, embed_texts: Callable[[list[str]], np.ndarray]) -> None:
        self.embed_texts = embed_texts

    def images(self, X: np.ndarray) -> np.ndarray:
        return l2_normalise(np.atleast_2d(X))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalise(np.atleast_2d(np.asarray(self.embed_texts(list(texts)))))

    def __sklearn_clone__(self) -> ClipSpace:
        # Shared and stateless: cloning an estimator must not deep-copy the text encoder.
        return self
