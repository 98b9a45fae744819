"""Library tab: what is in the index (counts per label, encoder, dates) and an interactive
2-D PCA map (SVG: hover, click, box or lasso selection, arrow keys and Enter)."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pandas as pd
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


_SHAPES = {"image": "circle", "roi": "square", "tile": "triangle"}


def _marker(shape: str, x: float, y: float, r: float, attrs: str, inner: str) -> str:
    """One SVG point: circle (image), square (ROI) or triangle (tile), with ``inner`` inside."""
    if shape == "square":
        geometry = f"rect x='{x - r:.1f}' y='{y - r:.1f}' width='{2 * r:.1f}' height='{2 * r:.1f}'"
    elif shape == "triangle":
        top, left, right = f"{x:.1f},{y - r * 1.2:.1f}", f"{x - r * 1.1:.1f},{y + r:.1f}", ""
        right = f"{x + r * 1.1:.1f},{y + r:.1f}"
        geometry = f"polygon points='{top} {left} {right}'"
    else:
        geometry = f"circle cx='{x:.1f}' cy='{y:.1f}' r='{r:.1f}'"
    tag = geometry.split(" ", 1)[0]
    return f"<{geometry} {attrs}>{inner}</{tag}>"


def map_svg(
    library: LibraryMap,
    column: str | None,
    kind: str | None = "image",
    query: np.ndarray | None = None,
    query_name: str = "query",
    vocabulary: dict | None = None,
    size: tuple[int, int] = (760, 520),
) -> str:
    """The PCA map as interactive SVG: hover names a point (id and labels), a click opens the
    case, a dragged box or lasso selects cases (see the page's map script). From the keyboard
    the map is one tab stop: arrow keys move to the nearest point that way, Enter opens it.
    Image, ROI and tile rows are circles, squares and triangles; labels are coloured and named
    in the legend."""
    import html

    from priorcase.index.vocabulary import expand

    pc = library.pc
    if pc.store.count(kind) < 2:
        return "<p>Not enough cases for a map.</p>"
    pca, coords, ids = library.projection(kind)
    snapshot = pc.store.snapshot(kind)
    kinds = dict(zip(snapshot.ids.tolist(), snapshot.kinds.tolist(), strict=True))
    values = pc.store.column_values(column, kind) if column else {}
    vocabulary = vocabulary or {}
    labels = [values.get(i) or UNLABELLED for i in ids]
    order = [v for v, _ in Counter(labels).most_common(MAX_CATEGORIES - 1)]
    colour = {v: COLOURS[n % len(COLOURS)] for n, v in enumerate(sorted(order))}
    width, height = size
    pad = 24
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)

    def place(p: np.ndarray) -> tuple[float, float]:
        x = pad + (p[0] - lo[0]) / span[0] * (width - 2 * pad)
        y = height - pad - (p[1] - lo[1]) / span[1] * (height - 2 * pad)
        return float(x), float(y)

    r = 3.0 if len(coords) > 2000 else 5.0
    points = []
    for n, (case_id, p, value) in enumerate(zip(ids.tolist(), coords, labels, strict=True)):
        x, y = place(p)
        row_kind = kinds.get(case_id, "image")
        fill = colour.get(value, "#9a9a9a")
        words = expand(vocabulary, column or "", value) if value != UNLABELLED else value
        title = html.escape(f"{case_id} · {row_kind} · {column}: {words}")
        # one tab stop for the whole map (a roving tabindex): arrow keys move between points
        attrs = (
            f"class='pc-pt' data-id='{html.escape(case_id)}' data-x='{x:.1f}' data-y='{y:.1f}' "
            f"fill='{fill}' stroke='#111' role='button' tabindex='{0 if n == 0 else -1}' "
            f"aria-label='{title}'"
        )
        inner = f"<title>{title}</title>"
        points.append(_marker(_SHAPES.get(row_kind, "circle"), x, y, r, attrs, inner))
    star = ""
    if query is not None:
        q = pca.transform(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
        x, y = place(q)
        x, y = min(max(x, 8), width - 8), min(max(y, 8), height - 8)
        star = (
            f"<text class='pc-star' x='{x:.1f}' y='{y + 7:.1f}' text-anchor='middle' "
            f"font-size='22' fill='#ffd700' stroke='#000' stroke-width='1'>★<title>"
            f"{html.escape(query_name)}</title></text>"
        )
    legend = "".join(
        f"<li><span style='color:{colour[v]}'>●</span> "
        f"{html.escape(expand(vocabulary, column or '', v) if v != UNLABELLED else v)}</li>"
        for v in sorted(order)
    )
    shapes = "● whole image · ■ region of interest · ▲ tile · ★ current query"
    ratio = pca.explained_variance_ratio_
    modes = "".join(
        f"<button type='button' class='pc-mode' data-mode='{mode}' "
        f"aria-pressed='{'true' if mode == 'box' else 'false'}'>{words}</button>"
        for mode, words in (("box", "▭ Box select"), ("lasso", "◌ Lasso select"))
    )
    return (
        f"<div class='pc-map'><div class='pc-modes' role='group' aria-label='selection tool'>"
        f"{modes}</div><svg viewBox='0 0 {width} {height}' role='group' "
        f"aria-label='map of {len(coords)} cases by {html.escape(str(column))}: arrow keys "
        "move between cases, Enter opens one'>"
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='#161616'/>"
        f"{''.join(points)}{star}<rect class='pc-sel' x='0' y='0' width='0' height='0' "
        "fill='rgba(255,216,77,.15)' stroke='#ffd84d' stroke-dasharray='4 3'/>"
        "<polygon class='pc-lasso' points='' fill='rgba(255,216,77,.15)' stroke='#ffd84d' "
        "stroke-dasharray='4 3'/></svg>"
        f"<p class='pc-map-note'>{shapes}. PC 1 {ratio[0]:.0%}, PC 2 {ratio[1]:.0%} of variance. "
        "Hover a point for its id and labels, click it to open the case, drag a box (or draw "
        "a lasso) to show those cases in the results. Keyboard: Tab to the map, arrow keys "
        f"to move between cases, Enter to open one.</p><ul class='pc-legend'>{legend}</ul></div>"
    )
