"""Fit ``priorcase/bench/embedding_model.json`` from bundled-encoder embeddings of MIAS.

    python benchmarks/fit_embedding_model.py

Embeds every film, every lesion crop and four normal-tissue crops per film, then saves only
the mixture's parameters (a few KB); the vectors themselves are not kept.
"""

from __future__ import annotations

import csv

import numpy as np
from _common import mias_or_exit

from priorcase.bench.synthetic import fit_model
from priorcase.encoders import create_encoder
from priorcase.ingest.labels import read_findings
from priorcase.ingest.readers import _read_pil
from priorcase.ingest.roi import crop_roi, sample_normal_rois


def main() -> None:
    folder = mias_or_exit()
    encoder = create_encoder("bundled", "cpu")
    findings = read_findings(folder.findings)
    with open(folder.labels) as fh:
        rows = list(csv.DictReader(fh))
    vectors = []
    for n, row in enumerate(rows):
        pixels = _read_pil(folder.root / row["file"])
        crops = [pixels]
        for f in findings.get(row["image_id"], []):
            if f.x is not None and f.radius:
                crops.append(crop_roi(pixels, f.x, f.y, f.radius))
        for x, y, r in sample_normal_rois(pixels, 4, 48, seed=n):
            crops.append(crop_roi(pixels, x, y, r))
        vectors.append(encoder.embed_pixels(crops))
    x = np.concatenate(vectors)
    model = fit_model(x)
    model.save()
    print(f"fitted on {len(x)} vectors: {model.reference}")


if __name__ == "__main__":
    main()
