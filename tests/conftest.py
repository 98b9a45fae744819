"""Session fixtures: the bundled encoder (loaded once), a tiny random open_clip model, MIAS."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an open_clip download attempt would hang

from pathlib import Path

import pytest
import torch
from fixtures import TINY_SPEC, register_tiny_clip


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", help="also run the slow integration tests (marker 'slow')"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow integration test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bundled():
    """The bundled EfficientNet-Lite0 + MiniLM encoder on CPU, created once (~4 s)."""
    from priorcase.encoders import create_encoder

    return create_encoder("bundled", "cpu")


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Name of a tiny open_clip architecture registered for this session."""
    return register_tiny_clip(tmp_path_factory.mktemp("openclip-config"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_arch: str):
    """The tiny open_clip model with random (seed 0) weights: spec ``openclip:<tiny>``."""
    from priorcase.encoders import create_encoder

    return create_encoder(TINY_SPEC, "cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict checkpoint of the tiny model."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def mias():
    """The local MIAS folder, or skip."""
    from priorcase.datasets.mias import find_mias

    folder = find_mias()
    if folder is None:
        pytest.skip("MIAS data not found (../shared/data/mias)")
    return folder
