"""open_clip models: any architecture, pretrained tag, hf-hub id or local checkpoint."""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch

from priorcase.encoders.base import Encoder, state_dict_sha256
from priorcase.encoders.preprocess import PreprocessConfig
from priorcase.errors import EncoderSpecError


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model; ``pretrained`` is a tag, a checkpoint path, or None (random)."""

    aligned = True

    def __init__(self, spec: str, model_name: str, pretrained: str | None, device: torch.device):
        self.spec = spec
        self.device = device
        try:
            if pretrained is None:
                torch.manual_seed(0)  # random weights must hash the same on every run
            model, _, _ = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device
            )
        except Exception as err:  # open_clip raises RuntimeError, OSError, HF errors...
            raise EncoderSpecError(
                f"cannot load open_clip model {model_name!r} "
                f"(pretrained={pretrained!r}): {_first_line(err)}"
            ) from err
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.preprocess_cfg = PreprocessConfig(
            image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
            mean=tuple(float(m) for m in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(float(s) for s in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        )
        with torch.inference_mode():
            probe = torch.zeros(
                1, 3, self.preprocess_cfg.image_size, self.preprocess_cfg.image_size
            )
            self.dim = int(self.model.encode_image(probe.to(device)).shape[-1])
        self.text_dim = self.dim
        self._hash: str | None = None

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)

    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = state_dict_sha256(self.model)
        return self._hash


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__
