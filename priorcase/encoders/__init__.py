"""Encoders: ``create_encoder(spec)`` returns an :class:`Encoder`."""

from priorcase.encoders.base import Encoder
from priorcase.encoders.preprocess import PreprocessConfig, model_view, preprocess_pixels
from priorcase.encoders.registry import (
    DEFAULT_SPEC,
    FALLBACK_SPEC,
    create_default_encoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = [
    "DEFAULT_SPEC",
    "FALLBACK_SPEC",
    "Encoder",
    "PreprocessConfig",
    "create_default_encoder",
    "create_encoder",
    "list_encoders",
    "model_view",
    "preprocess_pixels",
    "register_encoder",
]
