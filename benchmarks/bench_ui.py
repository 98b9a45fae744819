"""Latency of what the web UI does per click, on a synthetic 10k-case library.

    python benchmarks/bench_ui.py [--cases 10000] [--repeats 20] [--seeds 12]

A few real MIAS films (or synthetic PNGs when MIAS is absent) are ingested with the bundled
encoder, then their vectors are replicated with noise (and their labels and thumbnails,
shrunk) straight through ``CaseStore.add`` up to ``--cases`` rows. Each UI action is then
timed over ``--repeats`` runs (median and p95, warm caches) against a baseline measured in
the same run: brute-force NumPy kNN over the same matrix. One-off costs (first logistic fit,
text aligner training, PCA fit) are reported separately as "cold".
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine
from PIL import Image

from priorcase.records import CaseRecord


def seed_images(folder: Path, n: int) -> tuple[list[Path], Path]:
    """``n`` labelled films: MIAS when found, else synthetic PNGs; returns (files, labels CSV)."""
    from priorcase.datasets.mias import find_mias

    labels = folder / "labels.csv"
    mias = find_mias()
    rows: list[dict[str, str]] = []
    if mias is not None:
        with open(mias.labels, newline="") as fh:
            for row in csv.DictReader(fh):
                path = mias.root / row["file"]
                if path.exists():
                    rows.append({**row, "file": str(path)})
                if len(rows) == n:
                    break
    else:
        rng = np.random.default_rng(0)
        for i in range(n):
            path = folder / f"synth{i:03d}.png"
            img = rng.normal(100 + 10 * i, 30, (256, 256)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(path)
            rows.append(
                {"image_id": path.stem, "file": str(path), "patient_id": f"P{i}",
                 "tissue": "FGD"[i % 3], "pathology": ("normal", "benign", "malignant")[i % 3]}
            )  # fmt: skip
    with open(labels, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [Path(r["file"]) for r in rows], labels


def tiny_jpeg(data: bytes, size: int = 48) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L")
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=70)
        return out.getvalue()


def build_library(db: Path, n_cases: int, n_seeds: int):
    import priorcase

    files, labels = seed_images(db.parent, n_seeds)
    pc = priorcase.open(db, encoder="bundled", device="cpu")
    report = pc.ingest(files, labels=labels, progress=False, workers=0)
    seeds = pc.store.fetch([f.stem for f in files], with_vectors=True)
    seeds = [seeds[k] for k in sorted(seeds)]
    manifest = pc.store.manifest
    columns = manifest.label_columns + manifest.metadata_columns
    thumbs = [tiny_jpeg(s["thumbnail"]) for s in seeds]
    rng = np.random.default_rng(0)
    batch: list[CaseRecord] = []
    for i in range(n_cases - len(seeds)):
        j = i % len(seeds)
        base = np.asarray(seeds[j]["vector"], dtype=np.float32)
        vector = base + rng.normal(0, 0.35 / np.sqrt(len(base)), len(base)).astype(np.float32)
        vector /= np.linalg.norm(vector)
        values = {c: seeds[j].get(c) for c in columns}
        batch.append(
            CaseRecord(
                id=f"syn{i:06d}", kind="image", vector=vector, key=f"syn-{i}",
                content_hash=f"syn-{i}",
                labels={c: values[c] for c in manifest.label_columns},
                metadata={c: values[c] for c in manifest.metadata_columns},
                patient=f"anon-syn{i // 2}", group=f"anon-syn{i // 2}", thumbnail=thumbs[j],
            )
        )  # fmt: skip
        if len(batch) == 5000:
            pc.store.add(batch)
            batch = []
    pc.store.add(batch)
    return pc, files, report


def timed(fn, repeats: int) -> np.ndarray:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()

    from priorcase.ui.actions import Actions
    from priorcase.ui.gallery import cards_html
    from priorcase.ui.library_view import label_counts

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pc, files, _ = build_library(Path(tmp) / "db", args.cases, args.seeds)
        built = time.perf_counter() - start
        actions = Actions(pc)
        n = pc.store.count("image")
        print(f"machine: {machine()}")
        print(f"library: {n} image rows, dim {pc.store.manifest.encoder['dim']}, "
              f"built in {built:.1f} s; k={args.k}; {args.repeats} repeats")  # fmt: skip

        snapshot = pc.store.snapshot("image")
        X = snapshot.vectors
        query = actions.query_from_upload(files[0])
        qid = str(snapshot.ids[len(snapshot.ids) // 2])
        column = "pathology" if "pathology" in actions.classifier.columns() else None
        column = column or actions.classifier.columns()[0]

        def numpy_knn():
            scores = X @ query.vector
            top = np.argpartition(-scores, args.k)[: args.k]
            return top[np.argsort(-scores[top])]

        def render(page: str) -> int:
            return len(page)  # the map is SVG markup, drawn by the browser

        cold = {}
        for name, fn in (
            ("first image search (kNN index)", lambda: actions.search_vector(query, args.k)),
            ("first text search (aligner fit)", lambda: actions.search_text("dense breast")),
            ("first classification (logistic fit)", lambda: actions.classify(query, column)),
            ("first library map (PCA fit)", lambda: render(actions.library_map(column, "image", query))),
        ):  # fmt: skip
            cold[name] = timed(fn, 1)[0]

        cases = [
            ("baseline: numpy brute-force kNN", numpy_knn),
            ("image search (vector -> hits)", lambda: actions.search_vector(query, args.k)),
            ("  + result cards (inline thumbs)",
             lambda: cards_html(actions.search_vector(query, args.k))),
            ("filtered search (label + SQL)",
             lambda: actions.search_vector(
                 query, args.k, "image",
                 actions.where_clause({"pathology": "benign"}, "tissue != 'X'"))),
            ("upload: decode + embed + search",
             lambda: actions.search_vector(actions.query_from_upload(files[1]), args.k)),
            ("id search (fetch + search)",
             lambda: actions.search_vector(actions.query_from_id(qid), args.k)),
            ("text search", lambda: actions.search_text("dense glandular breast", args.k)),
            (f"classification panel ({column})", lambda: actions.classify(query, column)),
            ("library map (SVG)",
             lambda: render(actions.library_map(column, "image", query))),
            ("library counts table", lambda: label_counts(pc)),
        ]  # fmt: skip
        results = [(name, timed(fn, args.repeats)) for name, fn in cases]
        base = np.median(results[0][1])
        print(f"\n{'action':<38}{'median ms':>11}{'p95 ms':>10}{'x baseline':>12}")
        for name, t in results:
            med, p95 = np.median(t), np.percentile(t, 95)
            print(f"{name:<38}{med:>11.1f}{p95:>10.1f}{med / base:>12.1f}")
        print(f"\n{'one-off (cold) cost':<38}{'ms':>11}")
        for name, ms in cold.items():
            print(f"{name:<38}{ms:>11.0f}")


if __name__ == "__main__":
    main()
