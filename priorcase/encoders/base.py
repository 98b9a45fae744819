"""The encoder interface: images and texts to L2-normalised float32 vectors."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from priorcase.encoders.preprocess import PreprocessConfig, preprocess_pixels

# fp16 autocast vs fp32 vectors of one model agree to about 0.9999 cosine; below this, the two
# would rank neighbours differently and must not share an index
PROBE_MIN_COSINE = 0.999


class Encoder(ABC):
    """An image tower (and a text tower) behind one spec string.

    ``aligned`` says whether text and image vectors share one space (CLIP); the bundled
    encoder's towers were trained apart, so its text needs a learned aligner first.
    """

    spec: str
    dim: int
    text_dim: int
    aligned: bool
    preprocess_cfg: PreprocessConfig
    device: torch.device

    @abstractmethod
    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features for a preprocessed batch already on ``self.device``."""

    @abstractmethod
    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text features."""

    @abstractmethod
    def weights_hash(self) -> str:
        """A digest of the weights, so an index can refuse vectors from other weights."""

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 pixels -> the tensor this encoder takes (runs in DataLoader workers)."""
        return preprocess_pixels(pixels, self.preprocess_cfg)

    @torch.inference_mode()
    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed batch (fp16 autocast on CUDA)."""
        batch = batch.to(self.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            feats = self._image_features(batch)
        return _normalise(feats)

    def embed_pixels(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Embed decoded images (uint8 arrays) in one batch."""
        if not pixels:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_batch(torch.stack([self.preprocess(p) for p in pixels]))

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text tower (L2-normalised, dim ``text_dim``)."""
        if not texts:
            return np.zeros((0, self.text_dim), np.float32)
        return _normalise(self._text_features(list(texts)))

    @property
    def precision(self) -> str:
        """How image vectors are computed: fp16 autocast on CUDA, else float32."""
        return "fp16-autocast" if self.device.type == "cuda" else "fp32"

    def probe_vector(self) -> np.ndarray:
        """This encoder's vector for :func:`probe_image` (computed once per encoder)."""
        cached = getattr(self, "_probe", None)
        if cached is None:
            cached = self._probe = self.embed_pixels([probe_image()])[0]
        return cached

    def describe(self) -> dict:
        """What the index manifest records about this encoder.

        Besides the weights and preprocessing: the precision and device type the vectors are
        computed with, and the vector of a fixed probe image, so an index opened with another
        precision (fp16 on CUDA vs fp32 on CPU) mixes vectors only when the probe agrees.
        """
        return {
            "spec": self.spec,
            "weights_sha256": self.weights_hash(),
            "dim": self.dim,
            "text_dim": self.text_dim,
            "aligned": self.aligned,
            "preprocess": self.preprocess_cfg.to_dict(),
            "precision": self.precision,
            "device_type": self.device.type,
            "probe": [round(float(v), 6) for v in self.probe_vector()],
            "probe_min_cosine": PROBE_MIN_COSINE,
        }


def probe_image(size: int = 256) -> np.ndarray:
    """A fixed synthetic grey image (gradients, a disc, fine stripes): no RNG, no file."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = 60 + 80 * xx + 40 * np.sin(6 * np.pi * yy)
    img[(xx - 0.6) ** 2 + (yy - 0.4) ** 2 < 0.04] = 230
    img[(np.floor(xx * 32) % 2 == 0) & (yy > 0.75)] = 15
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _normalise(feats: torch.Tensor) -> np.ndarray:
    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Digest of a module's parameters and buffers, in key order (device and dtype independent)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
