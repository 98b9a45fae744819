"""One-click case summary: a self-contained HTML page and a CSV of the neighbours.

It holds the query as the model saw it, the neighbours with scores and labels (in words),
the predictions with their cross-validated accuracy, the library version and encoder, and the
disclaimer. It holds no patient identifiers: no file names (the query is "uploaded image" or
a case id), no patient or group pseudonyms, no dates from headers.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from priorcase.api import PriorCase
from priorcase.library import Classification
from priorcase.records import SearchHit
from priorcase.ui.gallery import HIDDEN_LABELS, plain_labels

DISCLAIMER = (
    "Decision support only: similar prior cases and scores are not a diagnosis. The "
    "reading clinician is responsible for every decision."
)


def _img(image: Image.Image | None, size: int = 256) -> str:
    if image is None:
        return ""
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='query' src='data:image/png;base64,{data}'>"


def _thumb(hit: SearchHit) -> str:
    if not hit.thumbnail:
        return ""
    data = base64.b64encode(hit.thumbnail).decode()
    return f"<img alt='case {html.escape(hit.id)}' src='data:image/jpeg;base64,{data}'>"


def summary_html(
    pc: PriorCase,
    query_name: str,
    query_view: Image.Image | None,
    hits: list[SearchHit],
    percentiles: list[float | None],
    classification: Classification | None,
    vocabulary: dict,
) -> str:
    """The summary page (self-contained: images are inlined)."""
    manifest = pc.store.manifest
    encoder = manifest.encoder_spec if manifest else "none"
    updated = manifest.updated if manifest else ""
    rows = []
    for n, (hit, pct) in enumerate(zip(hits, percentiles, strict=False), 1):
        rows.append(
            f"<tr><td>{n}</td><td>{_thumb(hit)}</td><td>{html.escape(hit.id)}</td>"
            f"<td>{html.escape(hit.kind)}</td><td>{hit.score:.3f}</td>"
            f"<td>{'' if pct is None else f'{pct:.0f}'}</td>"
            f"<td>{html.escape(plain_labels(hit.labels, vocabulary))}</td></tr>"
        )
    predictions = "<p>No classification for this query.</p>"
    if classification is not None:
        items = []
        for p in classification.predictions:
            if p.error:
                items.append(f"<li>{html.escape(p.method)}: {html.escape(p.error)}</li>")
                continue
            probs = ", ".join(f"{html.escape(c)} {v:.0%}" for c, v in p.probabilities.items())
            e = p.evaluated or {}
            auc = "n/a" if e.get("auc") is None else f"{e['auc']:.3f}"
            sample = (
                f", a stratified, patient-grouped sample of the library's {e['of']} cases"
                if e.get("of")
                else ""
            )
            acc = (
                f"cross-validated accuracy {e['accuracy']:.3f}, AUC {auc} (n={e['n']}{sample})"
                if e
                else "accuracy on this library not yet evaluated"
            )
            members = ", ".join(html.escape(c) for c in p.prediction_set) or "-"
            items.append(
                f"<li><b>{html.escape(p.method)}</b>: {probs}; prediction set {{{members}}}; "
                f"{acc}</li>"
            )
        predictions = (
            f"<p>{html.escape(classification.label)}: <b>"
            f"{html.escape(classification.headline())}</b></p><ul>{''.join(items)}</ul>"
        )
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>priorcase case summary</title><style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #111; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #999; padding: 4px 8px; }}
td img {{ height: 96px; }} .disclaimer {{ border: 2px solid #b00020; padding: 8px; }}
</style></head><body>
<h1>Similar prior cases: summary</h1>
<p class="disclaimer">{html.escape(DISCLAIMER)}</p>
<h2>Query</h2><p>{html.escape(query_name)}</p>{_img(query_view)}
<h2>Nearest prior cases</h2>
<table><tr><th>rank</th><th>image</th><th>case</th><th>kind</th><th>similarity</th>
<th>percentile</th><th>labels</th></tr>{"".join(rows)}</table>
<h2>Predictions</h2>{predictions}
<h2>Library</h2><ul><li>cases: {pc.store.count("image")}</li>
<li>library version: {pc.store.version} (updated {html.escape(updated)})</li>
<li>encoder: {html.escape(str(encoder))}</li><li>summary made: {made}</li></ul>
</body></html>
"""


def write_summary(
    pc: PriorCase,
    query_name: str,
    query_view: Image.Image | None,
    hits: list[SearchHit],
    percentiles: list[float | None],
    classification: Classification | None,
    vocabulary: dict,
    folder: Path | None = None,
) -> tuple[Path, Path]:
    """Write ``case-summary.html`` and ``case-summary.csv`` into a fresh private folder."""
    folder = Path(folder or tempfile.mkdtemp(prefix="priorcase-export-"))
    page = folder / "case-summary.html"
    page.write_text(
        summary_html(pc, query_name, query_view, hits, percentiles, classification, vocabulary)
    )
    table = folder / "case-summary.csv"
    columns = sorted({c for h in hits for c in h.labels} - HIDDEN_LABELS)
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "case", "kind", "similarity", "percentile", *columns])
        for n, (hit, pct) in enumerate(zip(hits, percentiles, strict=False), 1):
            writer.writerow(
                [n, hit.id, hit.kind, f"{hit.score:.4f}", "" if pct is None else f"{pct:.0f}"]
                + [hit.labels.get(c) or "" for c in columns]
            )
    return page, table
