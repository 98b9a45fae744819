"""Abstention figures on the MIAS index: library films classified leave-one-patient-out,
random noise, a non-medical photo, and text queries.

    python benchmarks/bench_trust.py --db priorcase-data/mias-bundled
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import machine, mias_index
from sklearn.datasets import load_sample_image

TEXTS = ("", "asdfgh qwerty", "microcalcifications", "dense glandular breast", "spiculated mass")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("priorcase-data/mias-bundled"))
    args = parser.parse_args()
    pc = mias_index(args.db)
    print(f"machine: {machine()}; index {args.db} ({pc.encoder.spec})")
    snap = pc.store.snapshot("image")
    abstained = 0
    for vector, group in zip(snap.vectors, snap.groups, strict=True):
        reference, _ = pc.classifiers.reference(vector, "image", exclude_group=group)
        abstained += reference.status != "ok"
    n = len(snap.ids)
    print(f"library films abstaining (own patient left out): {abstained}/{n} = {abstained / n:.1%}")
    rng = np.random.default_rng(0)
    images = {
        "random noise": rng.integers(0, 256, (512, 512), dtype=np.uint8),
        "sklearn china.jpg": load_sample_image("china.jpg"),
    }
    for name, pixels in images.items():
        vector = pc.encoder.embed_pixels([pixels])[0]
        reference, _ = pc.classifiers.reference(vector, "image")
        print(f"{name}: top {reference.top_score:.3f}, status {reference.status}")
    for text in TEXTS:
        hits = pc.search(text=text, k=1) if text else []
        top = hits[0].score if hits else None
        reference = pc.reference.assess_text(text, top)
        print(f"text {text!r}: top {top}, status {reference.status}")


if __name__ == "__main__":
    main()
