"""Terminal table and a single self-contained HTML report for evaluation results."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from priorcase.evaluation.metrics import MethodResult

# Figure objects with an explicit Agg canvas: no pyplot global state, no display needed.


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _auc_text(r: MethodResult) -> str:
    if r.auc is None:
        return "-"
    lo, hi = r.auc_ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{r.auc:.3f}"
    return f"{r.auc:.3f} [{lo:.3f}, {hi:.3f}]"


def _k_columns(results: Sequence[MethodResult]) -> list[str]:
    keys = {k for r in results for k in r.precision_at_k}
    return sorted(keys, key=lambda k: int(k.split("@")[1]) if k.startswith("P@") else 0) or [
        "P@1",
        "P@5",
        "P@10",
    ]


def _rows(results: Sequence[MethodResult]) -> tuple[list[str], list[list[str]]]:
    ks = _k_columns(results)
    header = [
        "method",
        "AUC [95% CI]",
        "accuracy",
        "bal. accuracy",
        "ECE",
        "Brier",
        "coverage",
        "set size",
        *ks,
        "mAP",
    ]
    body = [
        [
            r.method,
            _auc_text(r),
            _fmt(r.accuracy),
            _fmt(r.balanced_accuracy),
            _fmt(r.ece),
            _fmt(r.brier),
            _fmt(r.coverage),
            _fmt(r.mean_set_size, 2),
            *[_fmt(r.precision_at_k.get(k)) for k in ks],
            _fmt(r.map),
        ]
        for r in results
    ]
    return header, body


def format_table(results: Sequence[MethodResult]) -> str:
    """Fixed-width text table: AUC with CI, accuracy, balanced accuracy, P@k, mAP."""
    header, body = _rows(results)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _png_data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _diagonal(ax: Any) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")


def roc_figure(results: Sequence[MethodResult]) -> Figure | None:
    """All methods on one axes when binary; otherwise one axes per method (classes + macro)."""
    with_curves = [r for r in results if r.roc.get("curves")]
    if not with_curves:
        return None
    if all(r.roc.get("positive") is not None for r in with_curves):
        fig = Figure(figsize=(5.5, 5))
        ax = fig.add_subplot()
        for r in with_curves:
            c = r.roc["curves"][r.roc["positive"]]
            ax.plot(c["fpr"], c["tpr"], label=f"{r.method} (AUC {_fmt(c['auc'])})")
        _diagonal(ax)
        ax.set_title(f"ROC, positive = {with_curves[0].roc['positive']}")
        ax.legend(loc="lower right", fontsize=8)
        return fig
    n = len(with_curves)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5 * cols, 4.6 * rows))
    for i, r in enumerate(with_curves):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, c in r.roc["curves"].items():
            macro = name == "macro"
            ax.plot(
                c["fpr"],
                c["tpr"],
                label=f"{name} ({_fmt(c['auc'])})",
                linewidth=2.5 if macro else 1,
                color="black" if macro else None,
            )
        _diagonal(ax)
        ax.set_title(f"{r.method}: one-vs-rest ROC")
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(results: Sequence[MethodResult]) -> Figure | None:
    """Top-label reliability: accuracy against mean confidence per 10-bin, one line a method
    (marker area ~ rows in the bin); the diagonal is perfect calibration."""
    with_bins = [r for r in results if r.reliability.get("confidence")]
    if not with_bins:
        return None
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for r in with_bins:
        rel = r.reliability
        sizes = 8 + 120 * np.asarray(rel["count"]) / max(1, r.n)
        line = ax.plot(rel["confidence"], rel["accuracy"], label=f"{r.method} (ECE {_fmt(r.ece)})")
        ax.scatter(rel["confidence"], rel["accuracy"], s=sizes, color=line[0].get_color())
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("mean predicted probability of the top class")
    ax.set_ylabel("fraction correct")
    ax.set_title("Reliability (top label, 10 bins)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def confusion_figure(result: MethodResult) -> Figure:
    """Heat map of counts (colour = row-normalised, so rare classes stay visible)."""
    labels = list(result.confusion)
    counts = np.array([[result.confusion[t].get(p, 0) for p in labels] for t in labels])
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.6 + 0.7 * len(labels)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(result.method)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return fig


def _html_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _dict_rows_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    return _html_table(header, [[row.get(k) for k in header] for row in rows])


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f0f0}
.figs{display:flex;flex-wrap:wrap;gap:1em}
img{max-width:100%}
"""


def write_html_report(
    path: str | Path,
    title: str,
    results: Sequence[MethodResult],
    extra_tables: dict[str, list[dict[str, Any]]] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write one self-contained HTML file (figures inlined as base64 PNG); return its path."""
    path = Path(path)
    meta = {"generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), **(meta or {})}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        _html_table(["setting", "value"], [[k, v] for k, v in meta.items()]),
        "<h2>Metrics</h2>",
        _html_table(*_rows(results)),
    ]
    roc = roc_figure(results)
    if roc is not None:
        parts.append(f"<h2>ROC curves</h2><img alt='ROC curves' src=\"{_png_data_uri(roc)}\">")
    reliability = reliability_figure(results)
    if reliability is not None:
        uri = _png_data_uri(reliability)
        parts.append(f"<h2>Reliability diagram</h2><img alt='reliability diagram' src=\"{uri}\">")
    if results:
        parts.append("<h2>Confusion matrices</h2><div class='figs'>")
        for r in results:
            uri = _png_data_uri(confusion_figure(r))
            parts.append(f"<img alt='confusion matrix {html.escape(r.method)}' src=\"{uri}\">")
        parts.append("</div><h2>Per-class metrics</h2>")
        for r in results:
            body = [
                [c, m["precision"], m["recall"], m["f1"], m["support"]]
                for c, m in r.per_class.items()
            ]
            parts.append(f"<h3>{html.escape(r.method)}</h3>")
            parts.append(_html_table(["class", "precision", "recall", "f1", "support"], body))
    for name, rows in (extra_tables or {}).items():
        parts.append(f"<h2>{html.escape(name)}</h2>{_dict_rows_table(rows)}")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
