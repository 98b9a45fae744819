"""Distributed ingest against one process, on the same films and machine: the Ray engine's
overhead as a ratio of images per second (``python -m priorcase.bench.distributed [N]``)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

RAY_WORKERS = 2


def _films(root: Path, count: int | None) -> tuple[list[Path], str, Path | None]:
    """MIAS films read in place (and its findings), or synthetic 1024x1024 PNGs where MIAS
    is absent."""
    from priorcase.datasets.mias import find_mias

    mias = find_mias()
    if mias is not None:
        films = sorted(mias.images.glob("*.png"))
        return films[:count] if count else films, f"MIAS {mias.images}", mias.findings
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "src").mkdir(parents=True, exist_ok=True)
    films = [root / "src" / f"{i}.png" for i in range(count or 64)]
    for path in films:
        Image.fromarray(rng.integers(0, 255, (1024, 1024), np.uint8)).save(path)
    return films, "synthetic 1024x1024 PNGs", None


def bench_distributed(root: Path, count: int | None = None) -> dict:
    """Films/s of ``ingest --engine ray`` with 2 embedding workers on a local cluster of this
    machine's CPUs against single-process ingest (default workers), bundled encoder on CPU.

    Cluster start-up is timed apart: a long-running cluster pays it once.
    """
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'priorcase[ray]')"}
    import priorcase
    from priorcase.encoders import create_encoder
    from priorcase.ingest.ray_engine import RayEngine

    films, source, findings = _films(root, count)
    encoder = create_encoder("bundled", "cpu")

    t0 = time.perf_counter()
    single = priorcase.open(root / "single", encoder=encoder, notify=lambda m: None).ingest(
        films, progress=False
    )
    single_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    start_s = time.perf_counter() - t0
    try:
        engine = RayEngine(workers=RAY_WORKERS)
        t0 = time.perf_counter()
        distributed = priorcase.open(root / "ray", encoder=encoder, notify=lambda m: None).ingest(
            films, progress=False, engine=engine
        )
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    if distributed.stored_images != single.stored_images:
        raise RuntimeError(
            f"ray stored {distributed.stored_images} films, one process {single.stored_images}"
        )
    single_rate = single.stored_images / single_s
    ray_rate = distributed.stored_images / ray_s
    return {
        "films": single.stored_images,
        "source": source,
        "encoder": "bundled (cpu)",
        "cpus": os.cpu_count(),
        "single_images_per_s": round(single_rate, 2),
        "ray_workers": RAY_WORKERS,
        "ray_images_per_s": round(ray_rate, 2),
        "ray_cluster_start_s": round(start_s, 1),
        "ratio": round(ray_rate / single_rate, 3),  # < 1: the engine's overhead here
        "decode_mg_tiles": decode_cost(films, findings),
    }


def decode_cost(films: list[Path], findings: Path | None, count: int = 8) -> dict:
    """CPU seconds (process time, one thread: robust to a loaded machine) to decode and
    preprocess one film with its mammography tiles, as a Ray decode task does."""
    from functools import partial

    import torch

    from priorcase.encoders import create_encoder
    from priorcase.encoders.preprocess import preprocess_pixels
    from priorcase.ingest.breast import BreastConfig
    from priorcase.ingest.labels import read_findings
    from priorcase.ingest.pipeline import _Task, _Views, hash_file, load_item
    from priorcase.ingest.pseudonym import Pseudonymizer
    from priorcase.ingest.tiles import TileConfig, sizes_from_radii

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = read_findings(findings, (), []) if findings else {}
    sizes = sizes_from_radii([f.radius for r in rows.values() for f in r if f.radius])
    views = _Views(BreastConfig(policy="on"), TileConfig(sizes=tuple(sizes)), findings is not None)
    preprocess = partial(preprocess_pixels, cfg=create_encoder("bundled", "cpu").preprocess_cfg)
    chosen = films[:: max(1, len(films) // count)][:count]
    tiles = 0
    t0 = time.process_time()
    for film in chosen:
        task = _Task(film, film.stem, str(hash_file(film)), {}, None, rows.get(film.stem, []))
        tiles += len(load_item(task, preprocess, Pseudonymizer(b"bench"), views)["tiles"])
    cpu_s = time.process_time() - t0
    torch.set_num_threads(threads)
    return {
        "films": len(chosen),
        "tile_sizes": list(sizes),
        "tiles_per_film": round(tiles / len(chosen), 1),
        "cpu_s_per_film": round(cpu_s / len(chosen), 3),
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="priorcase-bench-ray-") as tmp:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else None
        print(json.dumps(bench_distributed(Path(tmp), n)))
