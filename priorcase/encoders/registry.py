"""Encoder factory and registry, in the manner of open_clip's ``create_model``.

Spec strings:
- ``bundled``: offline EfficientNet-Lite0 + all-MiniLM-L6-v2 (no download).
- ``openclip:<arch>/<pretrained-tag>``, e.g. ``openclip:ViT-B-32/openai``.
- ``openclip:<arch>`` with no tag: random weights (seed 0), for speed tests.
- ``openclip:<arch>@<checkpoint path>``: weights from a local file.
- ``openclip:hf-hub:<org>/<repo>`` and ``openclip:local-dir:<folder>``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
import torch

from priorcase.encoders.base import Encoder
from priorcase.encoders.device import pick_device
from priorcase.errors import EncoderSpecError

DEFAULT_SPEC = "openclip:ViT-B-32/openai"
FALLBACK_SPEC = "bundled"

EncoderFactory = Callable[[str, torch.device], Encoder]
_REGISTRY: dict[str, EncoderFactory] = {}


def register_encoder(scheme: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Register a factory for specs ``<scheme>`` or ``<scheme>:<rest>``."""

    def wrap(factory: EncoderFactory) -> EncoderFactory:
        _REGISTRY[scheme] = factory
        return factory

    return wrap


def list_encoders() -> list[str]:
    """Registered schemes."""
    return sorted(_REGISTRY)


def create_encoder(spec: str, device: str | torch.device | None = None) -> Encoder:
    """Build the encoder named by ``spec`` on ``device`` (auto: cuda, mps, cpu)."""
    spec = spec.strip()
    scheme, _, rest = spec.partition(":")
    factory = _REGISTRY.get(scheme)
    if factory is None:
        raise EncoderSpecError(
            f"unknown encoder spec {spec!r}: use one of "
            "'bundled', 'openclip:<arch>/<tag>', 'openclip:<arch>@<checkpoint>', "
            "'openclip:hf-hub:<id>'"
        )
    dev = device if isinstance(device, torch.device) else pick_device(device)
    return factory(rest, dev)


def create_default_encoder(
    device: str | torch.device | None = None, notify: Callable[[str], None] = print
) -> Encoder:
    """The default CLIP model, or the bundled encoder (with one line saying why) if unavailable."""
    try:
        return create_encoder(DEFAULT_SPEC, device)
    except EncoderSpecError as err:
        notify(f"default encoder {DEFAULT_SPEC} unavailable ({err}); using {FALLBACK_SPEC!r}")
        return create_encoder(FALLBACK_SPEC, device)


@register_encoder("bundled")
def _bundled(rest: str, device: torch.device) -> Encoder:
    from priorcase.encoders.bundled import BundledEncoder

    if rest:
        raise EncoderSpecError(f"'bundled' takes no options, got 'bundled:{rest}'")
    return BundledEncoder(device)


@register_encoder("openclip")
def _openclip(rest: str, device: torch.device) -> Encoder:
    from priorcase.encoders.openclip import OpenClipEncoder

    spec = f"openclip:{rest}"
    if not rest:
        raise EncoderSpecError("openclip spec needs an architecture, e.g. openclip:ViT-B-32/openai")
    if rest.startswith(("hf-hub:", "local-dir:")):
        return OpenClipEncoder(spec, rest, None, device)
    if "@" in rest:
        arch, _, checkpoint = rest.partition("@")
        if not Path(checkpoint).is_file():
            raise EncoderSpecError(f"checkpoint file not found: {checkpoint}")
        _check_arch(arch)
        return OpenClipEncoder(spec, arch, checkpoint, device)
    arch, _, tag = rest.partition("/")
    _check_arch(arch)
    if tag and tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise EncoderSpecError(
            f"unknown pretrained tag {tag!r} for {arch}; known: "
            + ", ".join(open_clip.list_pretrained_tags_by_model(arch))
        )
    return OpenClipEncoder(spec, arch, tag or None, device)


def _check_arch(arch: str) -> None:
    if arch not in open_clip.list_models():
        raise EncoderSpecError(
            f"unknown open_clip architecture {arch!r} (see open_clip.list_models(); "
            "custom configs can be added with open_clip.add_model_config)"
        )
