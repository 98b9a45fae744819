"""Ingest throughput on the MIAS folder: DataLoader workers vs a single-process baseline.

    python benchmarks/bench_ingest.py [--encoder bundled] [--workers 2] [--device cuda]

Both runs ingest the same 216 films (plus their ROIs) into fresh indexes in one process, after
one warm-up, so the ratio compares like with like on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine, mias_or_exit

import priorcase
from priorcase.encoders import create_encoder


def timed_ingest(encoder, folder, workers: int, batch_size: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        pc = priorcase.open(Path(tmp) / "db", encoder=encoder)
        start = time.perf_counter()
        report = pc.ingest(
            folder.images,
            labels=folder.labels,
            findings=folder.findings,
            workers=workers,
            batch_size=batch_size,
            progress=False,
        )
        return time.perf_counter() - start, report.stored_images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--encoder", default="bundled")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device")
    args = parser.parse_args()
    folder = mias_or_exit()
    encoder = create_encoder(args.encoder, args.device)
    print(f"machine: {machine()}; encoder {encoder.spec} on {encoder.device}")
    timed_ingest(encoder, folder, 0, args.batch_size)  # warm-up: file cache, kernels
    base_s, n = timed_ingest(encoder, folder, 0, args.batch_size)
    par_s, _ = timed_ingest(encoder, folder, args.workers, args.batch_size)
    print(f"{'setting':<28}{'seconds':>10}{'images/s':>10}")
    print(f"{'baseline: workers=0':<28}{base_s:>10.1f}{n / base_s:>10.1f}")
    print(f"{f'workers={args.workers}':<28}{par_s:>10.1f}{n / par_s:>10.1f}")
    print(f"speed-up over baseline: {base_s / par_s:.2f}x ({n} films + ROIs each run)")


if __name__ == "__main__":
    main()
