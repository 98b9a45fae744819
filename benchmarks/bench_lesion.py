"""Lesion-aware retrieval on MIAS: tiles against whole films, case level, region queries.

Needs two indexes of the same films built with the bundled encoder:

    priorcase ingest DATA/images --db MG --encoder bundled --labels DATA/images.csv \\
        --findings DATA/findings.csv --normal-rois 1 --modality MG
    priorcase ingest DATA/images --db PLAIN --encoder bundled --labels DATA/images.csv \\
        --findings DATA/findings.csv --normal-rois 1
    python benchmarks/bench_lesion.py --mg MG --plain PLAIN

Every figure is patient-grouped 5-fold CV (grouped_folds, seed 0: the folds of
``priorcase eval``), or, for region queries, leave-patient-out retrieval.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import priorcase
from priorcase.evaluation.experiment import cross_validate
from priorcase.index.vector_index import VectorIndex

ABNORMAL = ("benign", "malignant")


def auc_of(evaluation) -> dict[str, float | None]:
    return {r.method: r.auc for r in evaluation.results}


def acc_of(evaluation) -> dict[str, float]:
    return {r.method: r.accuracy for r in evaluation.results}


def film_and_case(pc, boot: int) -> dict:
    """Normal vs abnormal per film and per case (patient): whole-film logreg vs tiles, each
    alone and fused with the other breast (``priorcase eval --case-fusion``)."""
    evaluation = cross_validate(
        pc,
        "pathology",
        ["logreg", "tiles"],
        positive=ABNORMAL,
        n_boot=boot,
        progress=False,
        case_fusion=True,
    )
    return {
        "film_auc": auc_of(evaluation),
        "case_auc": {r.method: r.auc for r in evaluation.cases},
        "n_films": evaluation.n,
        "n_cases": evaluation.cases[0].n,
    }


def region_precision(pc, k: int = 5) -> dict:
    """Each lesion ROI as a query (the crop a box query around the finding embeds), searched
    among other patients' ROIs and tiles: share of the top k that are lesions / same class."""
    table = pc.store.table
    arrow = (
        table.search()
        .where("kind != 'image'")
        .select(["kind", "group", "roi_type", "abnormality", "vector"])
        .limit(None)
        .to_arrow()
        .to_pydict()
    )
    kinds = np.array(arrow["kind"], dtype=object)
    groups = np.array(arrow["group"], dtype=object)
    rtype = np.array(arrow["roi_type"], dtype=object)
    abn = np.array(arrow["abnormality"], dtype=object)
    vectors = np.asarray(arrow["vector"], np.float32)
    queries = np.flatnonzero((kinds == "roi") & (rtype == "lesion"))
    out = {"n_queries": len(queries)}
    for kind in ("roi", "tile"):
        pool = np.flatnonzero(kinds == kind)
        if not len(pool):
            continue
        index = VectorIndex(vectors[pool])
        lesion, same = [], []
        for q in queries:
            allowed = groups[pool] != groups[q]
            found = index.search(vectors[q], k, allowed=allowed)
            hits = pool[[p for p in found.positions[0] if p >= 0]]
            lesion.append(np.mean(rtype[hits] == "lesion"))
            same.append(np.mean((rtype[hits] == "lesion") & (abn[hits] == abn[q])))
        out[kind] = {"lesion_p@5": float(np.mean(lesion)), "same_class_p@5": float(np.mean(same))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mg", required=True, help="index built with --modality MG (tiles)")
    parser.add_argument("--plain", required=True, help="same films, no breast crop, no tiles")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    mg = priorcase.open(args.mg, device=args.device)
    plain = priorcase.open(args.plain, device=args.device)
    common = {"n_boot": args.bootstrap, "progress": False}
    results = {
        "normal_vs_abnormal": {
            "cropped": auc_of(
                cross_validate(mg, "pathology", ["logreg"], positive=ABNORMAL, **common)
            ),
            "uncropped": auc_of(
                cross_validate(plain, "pathology", ["logreg"], positive=ABNORMAL, **common)
            ),
        },
        "benign_vs_malignant": auc_of(
            cross_validate(
                mg,
                "pathology",
                ["logreg", "tiles"],
                where="pathology != 'normal'",
                positive=("malignant",),
                **common,
            )
        ),
        "tissue_accuracy": {
            "cropped": acc_of(cross_validate(mg, "tissue", ["logreg", "knn"], **common)),
            "uncropped": acc_of(cross_validate(plain, "tissue", ["logreg", "knn"], **common)),
        },
        "roi_lesion_vs_normal_auc": {
            "cropped": auc_of(cross_validate(mg, "roi_type", ["logreg"], kind="roi", **common)),
            "uncropped": auc_of(
                cross_validate(plain, "roi_type", ["logreg"], kind="roi", **common)
            ),
        },
        "film_and_case": film_and_case(mg, args.bootstrap),
        "region_queries": {
            "cropped": region_precision(mg),
            "uncropped": region_precision(plain),
        },
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
