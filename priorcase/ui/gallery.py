"""Search hits as gallery items: thumbnails decoded from the index bytes, short captions.

Images come only from the thumbnail bytes stored in the index, never from a hit's source
path, so the UI cannot be made to read arbitrary files on the server.
"""

from __future__ import annotations

import io

from PIL import Image

from priorcase.records import SearchHit

# Metadata worth a place in a caption, in order (DICOM fields from the reader, then size).
KEY_METADATA = ("modality", "view_position", "laterality", "study_date", "manufacturer")
# Label columns that are bookkeeping rather than findings.
HIDDEN_LABELS = frozenset({"patient_id"})
PLACEHOLDER_SIZE = 128


def decode_thumbnail(data: bytes | None) -> Image.Image:
    """The stored JPEG thumbnail as an RGB image (a grey square when missing or unreadable)."""
    if data:
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            pass
    return Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), (60, 60, 60))


def metadata_text(metadata: dict[str, str | None]) -> str:
    """Key metadata and the film size, e.g. ``MG · CC · 1024×1024``."""
    parts = [str(metadata[k]) for k in KEY_METADATA if metadata.get(k)]
    if metadata.get("width") and metadata.get("height"):
        parts.append(f"{metadata['width']}×{metadata['height']}")
    return " · ".join(parts)


def plain_labels(labels: dict[str, str | None], vocabulary: dict) -> str:
    """Labels in words through the library's vocabulary: ``tissue dense-glandular (D)``."""
    from priorcase.index.vocabulary import expand

    parts = [
        f"{k} {expand(vocabulary, k, v)}"
        for k, v in labels.items()
        if v not in (None, "") and k not in HIDDEN_LABELS
    ]
    return " · ".join(parts) if parts else "no labels"


def _data_url(data: bytes | None) -> str:
    import base64

    if not data:
        buffer = io.BytesIO()
        decode_thumbnail(None).save(buffer, format="JPEG")
        data = buffer.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def cards_html(
    hits: list[SearchHit],
    percentiles: list[float | None] | None = None,
    vocabulary: dict | None = None,
    selected: int | None = None,
    first_rank: int = 1,
) -> str:
    """Result cards: thumbnail, id, score (with its percentile), labels in words, and two
    buttons (open side by side; search with this case). Clicks reach the server through
    the page's action box (see ``ACTIONS_JS`` in :mod:`priorcase.ui.app`)."""
    import html

    if not hits:
        return "<p class='pc-none'>No results yet.</p>"
    vocabulary = vocabulary or {}
    percentiles = percentiles or [None] * len(hits)
    cards = []
    for n, (hit, pct) in enumerate(zip(hits, percentiles, strict=False)):
        rank = first_rank + n
        kind = {"roi": " · region of interest", "tile": " · tile"}.get(hit.kind, "")
        marker = {"roi": "■", "tile": "▲"}.get(hit.kind, "●")
        score = f"similarity {hit.score:.3f}"
        if pct is not None:  # what the score means: where it sits among library neighbours
            score += f"\n{_ordinal(pct)} percentile in this library"
        meta = metadata_text(hit.metadata)
        ident = html.escape(hit.id)
        chosen = " pc-selected" if selected == n else ""
        cards.append(
            f"<li class='pc-card{chosen}' data-index='{n}'>"
            f"<button type='button' class='pc-open' data-index='{n}' "
            f"aria-label='open #{rank} {ident} side by side'>"
            f"<img src='{_data_url(hit.thumbnail)}' alt='thumbnail of case {ident}'></button>"
            f"<div class='pc-cap'><b>#{rank} {ident}</b> <span aria-hidden='true'>{marker}</span>"
            f"{html.escape(kind)}<br><span class='pc-score'>"
            f"{html.escape(score).replace(chr(10), '<br>')}</span><br>"
            f"{html.escape(plain_labels(hit.labels, vocabulary))}"
            + (f"<br><span class='pc-meta'>{html.escape(meta)}</span>" if meta else "")
            + "</div>"
            f"<button type='button' class='pc-search-with' data-id='{ident}' "
            f"aria-label='search with case {ident}'>Search with this case</button></li>"
        )
    return f"<ol class='pc-cards' aria-label='nearest prior cases'>{''.join(cards)}</ol>"


def _ordinal(value: float) -> str:
    n = round(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
