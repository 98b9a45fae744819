"""Shared bits of the benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def mias_or_exit():
    from priorcase.datasets.mias import find_mias

    folder = find_mias()
    if folder is None:
        raise SystemExit(
            "MIAS not found (../shared/data/mias or $PRIORCASE_DATA): nothing to measure"
        )
    return folder


def mias_index(db: Path, encoder: str = "bundled"):
    """Open (building once) a MIAS index with lesion ROIs and one normal ROI per normal film."""
    import priorcase

    folder = mias_or_exit()
    pc = priorcase.open(db, encoder=encoder)
    pc.ingest(folder.images, labels=folder.labels, findings=folder.findings, normal_rois=1)
    return pc
