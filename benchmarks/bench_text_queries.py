"""Text-query precision@10 on MIAS with the bundled encoder's learned alignment.

    python benchmarks/bench_text_queries.py --db priorcase-data/mias-bundled

Two settings, each against the chance baseline (the relevant share of the searched rows):
- library: the product's behaviour, the aligner fitted on the whole library, search over it;
- held-out: patient-grouped 5-fold; the aligner is fitted on four folds' reports and the query
  searches only the fifth fold's images, none of which shaped the alignment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import machine, mias_index

from priorcase.classifiers.alignment import ContrastiveAligner
from priorcase.evaluation.splits import grouped_folds
from priorcase.index.vector_index import VectorIndex

QUERIES = {
    "dense glandular breast": ("tissue", "D"),
    "fatty breast": ("tissue", "F"),
    "spiculated mass": ("abnormality", "SPIC"),
    "calcification": ("abnormality", "CALC"),
    "circumscribed mass": ("abnormality", "CIRC"),
}


def precision_at(space, vectors, relevant, text, k=10) -> float:
    found = VectorIndex(space.images(vectors)).search(space.texts([text]), k).positions[0]
    return float(np.mean(relevant[found[found >= 0]]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("priorcase-data/mias-bundled"))
    args = parser.parse_args()
    pc = mias_index(args.db)
    print(f"machine: {machine()}; index {args.db} ({pc.encoder.spec})")
    vectors, reports, ids = pc.reports_by_id()
    snapshot = pc.store.snapshot()
    position = {i: n for n, i in enumerate(snapshot.ids)}
    groups = np.array([snapshot.groups[position[i]] for i in ids], dtype=object).astype(str)
    columns = {c: pc.store.column_values(c) for c in ("tissue", "abnormality")}
    space = pc.joint_space()
    tissue = np.array([str(columns["tissue"].get(i)) for i in ids])
    folds = grouped_folds(tissue, groups, n_splits=5)
    fold_spaces = [
        ContrastiveAligner(pc.encoder.embed_texts).fit(vectors[tr], [reports[n] for n in tr])
        for tr, _ in folds
    ]
    print(
        f"{'query':<26}{'P@10 library':>13}{'P@10 held-out':>15}{'chance':>8}{'held-out/chance':>17}"
    )
    for text, (column, value) in QUERIES.items():
        relevant = np.array([columns[column].get(i) == value for i in ids])
        library = precision_at(space, vectors, relevant, text)
        held = np.mean(
            [
                precision_at(s, vectors[te], relevant[te], text)
                for s, (_, te) in zip(fold_spaces, folds, strict=True)
            ]
        )
        chance = relevant.mean()
        print(f"{text:<26}{library:>13.2f}{held:>15.2f}{chance:>8.2f}{held / chance:>17.2f}")


if __name__ == "__main__":
    main()
