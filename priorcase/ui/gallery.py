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
DETAIL_SIZE = 320


def decode_thumbnail(data: bytes | None) -> Image.Image:
    """The stored JPEG thumbnail as an RGB image (a grey square when missing or unreadable)."""
    if data:
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            pass
    return Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), (60, 60, 60))


def enlarge(image: Image.Image, size: int = DETAIL_SIZE) -> Image.Image:
    """Upscale a small thumbnail (ROI crops are 128 px) so its longer side is ``size``."""
    scale = size / max(image.size)
    if scale <= 1:
        return image
    new = (round(image.width * scale), round(image.height * scale))
    return image.resize(new, Image.Resampling.LANCZOS)


def label_text(labels: dict[str, str | None], skip: frozenset[str] = HIDDEN_LABELS) -> str:
    """``tissue G · abnormality CIRC · pathology benign`` (empty values left out)."""
    parts = [f"{k} {v}" for k, v in labels.items() if v not in (None, "") and k not in skip]
    return " · ".join(parts) if parts else "no labels"


def metadata_text(metadata: dict[str, str | None]) -> str:
    """Key metadata and the film size, e.g. ``MG · CC · 1024×1024``."""
    parts = [str(metadata[k]) for k in KEY_METADATA if metadata.get(k)]
    if metadata.get("width") and metadata.get("height"):
        parts.append(f"{metadata['width']}×{metadata['height']}")
    return " · ".join(parts)


def caption(hit: SearchHit, rank: int) -> str:
    """One gallery caption: rank, id, similarity, kind, labels, key metadata."""
    head = f"#{rank} {hit.id} · sim {hit.score:.3f}"
    if hit.kind == "roi":
        head += " · ROI"
    lines = [head, label_text(hit.labels)]
    meta = metadata_text(hit.metadata)
    if hit.kind == "roi":  # the size is the parent film's: say where the crop lies instead
        meta = metadata_text(
            {k: v for k, v in hit.metadata.items() if k not in ("width", "height")}
        )
        if hit.roi:
            meta = " · ".join(filter(None, [meta, f"r {hit.roi[2]} px on {hit.parent_id}"]))
    if meta:
        lines.append(meta)
    return "\n".join(lines)


def gallery_items(hits: list[SearchHit]) -> list[tuple[Image.Image, str]]:
    """(image, caption) pairs for ``gr.Gallery``, best first."""
    return [(decode_thumbnail(hit.thumbnail), caption(hit, n)) for n, hit in enumerate(hits, 1)]


def detail_markdown(hit: SearchHit, rank: int) -> str:
    """Everything known about one hit (labels and metadata), as a Markdown table."""
    rows = [("rank", str(rank)), ("case id", hit.id), ("similarity (cosine)", f"{hit.score:.4f}")]
    rows.append(("kind", "region of interest" if hit.kind == "roi" else "whole image"))
    if hit.parent_id:
        rows.append(("parent film", hit.parent_id))
    if hit.roi:
        x, y, r = hit.roi
        rows.append(("ROI centre / radius (px)", f"({x}, {y}) / {r}"))
    rows += [(f"label: {k}", v) for k, v in hit.labels.items() if v not in (None, "")]
    rows += [(f"{k}", v) for k, v in hit.metadata.items() if v not in (None, "")]
    table = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)
    return f"### {_cell(hit.id)}\n\n| field | value |\n|---|---|\n{table}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
