"""Variants tried on a mammography index (issue 9), outside the product: tissue from tile-
embedding statistics, and tile-probability poolings scored on the outer folds (for information
only: nothing is chosen on them). Same folds as ``priorcase eval``.

    python benchmarks/lesion_variants.py MG_INDEX
"""

import json
import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

import priorcase
from priorcase.classifiers.labelled import labelled_set
from priorcase.classifiers.tiles import TileData, TileMILClassifier
from priorcase.evaluation.runner import cross_val_proba
from priorcase.evaluation.splits import FOLD_SEED, grouped_folds
from priorcase.library import build_classifier

db = sys.argv[1]
pc = priorcase.open(db, device="cpu")
tiles = TileData.from_library(pc.core)
out = {}
t0 = time.time()
# ---- tissue from tile statistics
data = labelled_set(pc.store, "tissue", "image")
groups = data.fold_groups
folds = grouped_folds(data.y, groups, n_splits=5, random_state=FOLD_SEED)


def stats(i):
    v = tiles.tiles[str(i)][0]
    return np.concatenate([v.mean(0), v.std(0)])


def l2(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


feats = {
    "film": data.X,
    "tile_mean": l2(np.stack([tiles.tiles[str(i)][0].mean(0) for i in data.ids])),
    "tile_mean_std": l2(np.stack([stats(i) for i in data.ids])),
}
feats["film+tile_mean"] = l2(np.concatenate([data.X, feats["tile_mean"]], 1))
acc = {}
for name, X in feats.items():
    proba, classes = cross_val_proba(
        lambda tr: build_classifier("logreg", data, None), X, data.y, groups, folds, progress=False
    )
    acc[name] = float((classes[proba.argmax(1)] == data.y).mean())
    print("tissue", name, acc[name], time.time() - t0, flush=True)
out["tissue_acc_logreg"] = acc
# ---- pooling variants, normal vs abnormal
data = labelled_set(pc.store, "pathology", "image", positive=("benign", "malignant"))
groups = data.fold_groups
folds = grouped_folds(data.y, groups, n_splits=5, random_state=FOLD_SEED)
pos = (data.y == "benign+malignant").astype(int)
poolings = {"max": lambda p: p.max(), "mean": lambda p: p.mean()}
for m in (2, 3, 5, 10):
    poolings[f"top{m}"] = lambda p, m=m: np.sort(p)[-m:].mean()
scores = {k: np.zeros(len(data.y)) for k in poolings}
sizes = sorted({int(b[2] - b[0]) for v in tiles.tiles.values() for b in v[1]})
per_scale = {s: np.zeros(len(data.y)) for s in sizes}
for tr, te in folds:
    model = TileMILClassifier(tiles).fit(data.ids[tr], data.y[tr], groups[tr])
    for n in te:
        film = str(data.ids[n])
        probs = model.film_tiles(film)[0]
        side = tiles.tiles[film][1][:, 2] - tiles.tiles[film][1][:, 0]
        for k, f in poolings.items():
            scores[k][n] = f(probs)
        for s in sizes:
            sel = probs[side == s]
            per_scale[s][n] = np.sort(sel)[-3:].mean() if len(sel) else 0
    print("fold", time.time() - t0, flush=True)
out["pooling_auc"] = {k: float(roc_auc_score(pos, v)) for k, v in scores.items()}
out["per_scale_top3_auc"] = {str(s): float(roc_auc_score(pos, v)) for s, v in per_scale.items()}
print(json.dumps(out, indent=1))
