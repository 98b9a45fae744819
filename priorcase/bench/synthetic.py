"""Synthetic vectors shaped like real embeddings: a Gaussian mixture fitted to bundled-encoder
embeddings of MIAS films and crops (``embedding_model.json``, written by
``benchmarks/fit_embedding_model.py``).

The model keeps what decides how hard a kNN search is: the common mean direction (real
embeddings share one, so cosines are high), the cluster weights, the spectrum of the cluster
centres and the within-cluster eigen-spectrum. Axes are a seeded random rotation, since kNN by
inner product does not depend on the basis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

MODEL_PATH = Path(__file__).with_name("embedding_model.json")


@dataclass(frozen=True)
class EmbeddingModel:
    """Fitted parameters (a few KB)."""

    dim: int
    mean_norm: float
    weights: list[float]  # cluster weights, sum 1
    between_eigs: list[float]  # variance of the cluster centres along their principal axes
    within_eigs: list[float]  # within-cluster eigen-spectrum, descending, length dim
    reference: dict  # statistics of the real sample, to compare a synthetic sample with

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> EmbeddingModel:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path = MODEL_PATH) -> None:
        path.write_text(json.dumps(self.__dict__) + "\n")


def fit_model(vectors: np.ndarray, n_clusters: int = 12, seed: int = 0) -> EmbeddingModel:
    """Fit the mixture to real (L2-normalised) embeddings."""
    from sklearn.cluster import KMeans

    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    km = KMeans(n_clusters, n_init=4, random_state=seed).fit(centred)
    weights = np.bincount(km.labels_, minlength=n_clusters) / len(x)
    centres = km.cluster_centers_
    between = np.linalg.eigvalsh((centres * weights[:, None]).T @ centres)[::-1][: n_clusters - 1]
    residual = centred - centres[km.labels_]
    within = np.linalg.eigvalsh(residual.T @ residual / (len(x) - n_clusters))[::-1]
    return EmbeddingModel(
        dim=x.shape[1],
        mean_norm=_round(np.linalg.norm(mean)),
        weights=[_round(w) for w in weights],
        between_eigs=[_round(e) for e in np.maximum(between, 0)],
        within_eigs=[_round(e) for e in np.maximum(within, 0)],
        reference={"n": len(x), **neighbour_stats(x.astype(np.float32))},
    )


def sample(
    model: EmbeddingModel, n: int, seed: int = 0, dim: int = 512, chunk: int = 100_000
) -> np.ndarray:
    """``n`` unit vectors of ``dim`` dimensions drawn from the model (float32, deterministic
    in ``seed``). Fewer dimensions than the encoder's keep the leading eigenvalues: for the
    bundled encoder (1280-d) the first 511 hold 99.5% of the within-cluster variance."""
    dim = min(dim, model.dim)
    basis_rng = np.random.default_rng(12345)  # the same axes for every draw of a model
    rotation = _rotation(dim)
    basis_rng.standard_normal((dim, dim))  # keep the centre draws below as they were
    mean = rotation[:, 0] * model.mean_norm
    # cluster centres spread along the strongest within-cluster axes (after the mean axis)
    n_clusters = len(model.weights)
    b = np.sqrt(np.asarray(model.between_eigs))
    axes = rotation[:, 1 : 1 + len(b)]
    centre_coords = basis_rng.standard_normal((n_clusters, len(b)))
    centre_coords /= np.maximum(centre_coords.std(axis=0, keepdims=True), 1e-12)
    centres = mean + (centre_coords * b) @ axes.T
    scale = np.sqrt(np.asarray(model.within_eigs))
    within_axes = (rotation[:, 1:] if dim > 1 else rotation).T
    scale = scale[: within_axes.shape[0]]
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    weights = np.asarray(model.weights) / np.sum(model.weights)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.choice(n_clusters, size=m, p=weights)
        z = rng.standard_normal((m, len(scale)), dtype=np.float32) * scale.astype(np.float32)
        block = centres[labels].astype(np.float32) + z @ within_axes.astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


@lru_cache(maxsize=2)
def _rotation(dim: int) -> np.ndarray:
    """A seeded random orthogonal basis (QR once per process: it is slow on a busy BLAS)."""
    rotation, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))
    return rotation


def neighbour_stats(x: np.ndarray, k: int = 10) -> dict:
    """Mean pairwise cosine and mean cosine of the 1st / 10th neighbour of unit vectors."""
    x = np.asarray(x, dtype=np.float32)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = -np.sort(-sims, axis=1)[:, :k]
    off = sims[np.isfinite(sims)]
    return {
        "mean_cos": _round(off.mean()),
        "nn1_cos": _round(top[:, 0].mean()),
        f"nn{k}_cos": _round(top[:, k - 1].mean()),
    }


def _round(v: float) -> float:
    return float(f"{float(v):.4g}")
