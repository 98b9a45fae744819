"""Pick the torch device: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` wins when given ("cuda", "cuda:1", "mps", "cpu"); else the best available."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
