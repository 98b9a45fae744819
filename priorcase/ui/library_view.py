"""Library tab: what is in the index (counts per label, encoder, dates) and a 2-D PCA map."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from priorcase.api import PriorCase

UNLABELLED = "(none)"
MAX_CATEGORIES = 12  # beyond this, the rarest values share one colour
COLOURS = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939",
)  # fmt: skip


def summary_markdown(pc: PriorCase) -> str:
    """Encoder spec, weights hash prefix, dates and row counts."""
    manifest = pc.store.manifest
    if manifest is None:
        return "**Empty library**: run `priorcase ingest` first."
    enc = manifest.encoder
    pre = enc.get("preprocess", {})
    rows = [
        ("cases (whole images)", str(pc.store.count("image"))),
        ("regions of interest", str(pc.store.count("roi"))),
        ("encoder", f"`{enc.get('spec')}`"),
        ("weights SHA-256", f"`{str(enc.get('weights_sha256', ''))[:12]}…`"),
        ("embedding size", str(enc.get("dim", "?"))),
        ("preprocessing", f"{pre.get('resize', '?')} to {pre.get('image_size', '?')} px"),
        ("text–image space", "CLIP (aligned)" if enc.get("aligned") else "learned aligner"),
        ("label columns", ", ".join(manifest.label_columns) or "none"),
        ("created", manifest.created),
        ("updated", manifest.updated),
        ("table version", str(pc.store.version)),
    ]
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| property | value |\n|---|---|\n{body}"


def label_counts(pc: PriorCase) -> pd.DataFrame:
    """Rows: (label, value, images, ROIs), one per label value."""
    manifest = pc.store.manifest
    columns = ["label", "value", "images", "ROIs"]
    if manifest is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for column in manifest.label_columns:
        if column == manifest.group_column:
            continue
        images = Counter(v or UNLABELLED for v in pc.store.column_values(column, "image").values())
        rois = Counter(v or UNLABELLED for v in pc.store.column_values(column, "roi").values())
        for value in sorted(set(images) | set(rois), key=lambda v: (v == UNLABELLED, v)):
            rows.append([column, value, images.get(value, 0), rois.get(value, 0)])
    return pd.DataFrame(rows, columns=columns)


class LibraryMap:
    """PCA of the stored embeddings (fitted once per table version and kind)."""

    def __init__(self, pc: PriorCase, max_points: int = 20_000) -> None:
        self.pc = pc
        self.max_points = max_points
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str | None], tuple[PCA, np.ndarray, np.ndarray]] = {}

    def projection(self, kind: str | None) -> tuple[PCA, np.ndarray, np.ndarray]:
        """(fitted PCA, 2-D coordinates, ids) for rows of ``kind``."""
        snapshot = self.pc.store.snapshot(kind)
        key = (snapshot.version, kind)
        with self._lock:
            if key not in self._cache:
                X, ids = snapshot.vectors, snapshot.ids
                if len(X) > self.max_points:  # keep the plot readable and the fit quick
                    pick = np.random.default_rng(0).choice(len(X), self.max_points, replace=False)
                    X, ids = X[np.sort(pick)], ids[np.sort(pick)]
                pca = PCA(n_components=2, random_state=0).fit(X)
                self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
                self._cache[key] = (pca, pca.transform(X), ids)
            return self._cache[key]

    def figure(
        self,
        column: str | None,
        kind: str | None = "image",
        query: np.ndarray | None = None,
        query_name: str = "query",
    ) -> Figure:
        """Scatter of the library coloured by ``column``; the query (if any) as a star."""
        fig = Figure(figsize=(7.5, 5.6), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        if self.pc.store.count(kind) < 2:
            ax.text(0.5, 0.5, "not enough cases for a map", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            return fig
        pca, coords, ids = self.projection(kind)
        values = self.pc.store.column_values(column, kind) if column else {}
        labels = np.array([values.get(i) or UNLABELLED for i in ids], dtype=object)
        counts = Counter(labels.tolist())
        keep = [v for v, _ in counts.most_common(MAX_CATEGORIES - 1)]
        if len(counts) > MAX_CATEGORIES - 1:
            labels = np.where(np.isin(labels, keep), labels, "other")
            keep.append("other")
        size = 10 if len(coords) > 2000 else 28
        for n, value in enumerate(sorted(keep, key=lambda v: (v in (UNLABELLED, "other"), v))):
            sel = labels == value
            colour = "#bbbbbb" if value in (UNLABELLED, "other") else COLOURS[n % len(COLOURS)]
            ax.scatter(
                coords[sel, 0],
                coords[sel, 1],
                s=size,
                c=colour,
                alpha=0.75,
                label=f"{value} ({int(sel.sum())})",
                edgecolors="none",
            )
        if query is not None:
            q = pca.transform(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
            ax.scatter(
                [q[0]],
                [q[1]],
                marker="*",
                s=420,
                c="#ffd700",
                edgecolors="black",
                linewidths=1.2,
                label=f"query: {query_name}",
                zorder=5,
            )
        ratio = pca.explained_variance_ratio_
        ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
        ax.set_title(
            f"{len(coords)} {kind or 'stored'} embeddings coloured by {column or 'nothing'}"
        )
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
        ax.grid(alpha=0.25)
        return fig
