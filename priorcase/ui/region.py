"""Draw-a-box region search: two clicks on the uploaded film give the box; region hits are
shown as their parent film with the matched box drawn on it."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from priorcase.api import PriorCase
from priorcase.errors import QueryError
from priorcase.records import LoadedImage, SearchHit
from priorcase.ui.gallery import decode_thumbnail

CANVAS = 512  # longest side of the film shown for drawing
BOX_COLOUR = (255, 200, 0)


@dataclass
class RegionState:
    """The uploaded film (decoded once) and the corners clicked so far, in source pixels."""

    image: LoadedImage | None = None
    corners: list[tuple[int, int]] = field(default_factory=list)

    @property
    def scale(self) -> float:
        assert self.image is not None
        return min(1.0, CANVAS / max(self.image.pixels.shape[:2]))

    def box(self) -> tuple[int, int, int, int] | None:
        if len(self.corners) < 2:
            return None
        (ax, ay), (bx, by) = self.corners[-2:]
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def canvas(state: RegionState) -> Image.Image | None:
    """The film scaled to the canvas, with the clicked corner or box drawn."""
    if state.image is None:
        return None
    pixels = state.image.pixels
    image = Image.fromarray(pixels if pixels.ndim == 2 else pixels[..., :3]).convert("RGB")
    s = state.scale
    image = image.resize((round(image.width * s), round(image.height * s)))
    draw = ImageDraw.Draw(image)
    box = state.box()
    if box is not None:
        draw.rectangle([v * s for v in box], outline=BOX_COLOUR, width=3)
    elif state.corners:
        x, y = state.corners[-1]
        draw.ellipse((x * s - 4, y * s - 4, x * s + 4, y * s + 4), outline=BOX_COLOUR, width=2)
    return image


def click(state: RegionState, x: float, y: float) -> RegionState:
    """A click on the canvas (canvas pixels): a new corner; a third click starts a new box."""
    assert state.image is not None
    height, width = state.image.pixels.shape[:2]
    corner = (
        int(min(max(x / state.scale, 0), width)),
        int(min(max(y / state.scale, 0), height)),
    )
    corners = [corner] if len(state.corners) >= 2 else [*state.corners, corner]
    return RegionState(state.image, corners)


def draw_box(
    parent_thumbnail: bytes | None,
    box: tuple[int, int, int, int],
    parent_metadata: dict[str, str | None],
    colour: tuple[int, int, int] = BOX_COLOUR,
) -> Image.Image:
    """The parent thumbnail with a source-pixel box drawn on it."""
    image = decode_thumbnail(parent_thumbnail)
    try:
        width, height = int(parent_metadata["width"]), int(parent_metadata["height"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        width, height = image.size
    sx, sy = image.width / width, image.height / height
    x0, y0, x1, y1 = box
    line = max(2, round(min(image.size) / 120))
    ImageDraw.Draw(image).rectangle(
        (x0 * sx, y0 * sy, x1 * sx, y1 * sy), outline=colour, width=line
    )
    return image


def in_context(pc: PriorCase, hits: list[SearchHit]) -> list[SearchHit]:
    """Region hits with their thumbnail replaced by the parent film with the hit's box drawn."""
    parents = pc.store.fetch(sorted({h.parent_id for h in hits if h.parent_id and h.box}))
    out = []
    for hit in hits:
        row = parents.get(hit.parent_id or "")
        if row is not None and hit.box is not None:
            parent = pc.store.row_to_hit(row, 0.0)
            buffer = io.BytesIO()
            draw_box(parent.thumbnail, hit.box, parent.metadata).save(buffer, format="JPEG")
            hit.thumbnail = buffer.getvalue()
        out.append(hit)
    return out


class RegionPanel:
    """The draw-a-box components of the Search tab and their handlers."""

    def __init__(self) -> None:
        self.state = gr.State(RegionState())
        with gr.Accordion("Search a region: click two corners on the film", open=True):
            self.canvas = gr.Image(
                label="Uploaded film (click two corners)",
                type="pil",
                interactive=False,
                height=320,
                elem_id="region-canvas",
            )
            self.box_text = gr.Markdown("", elem_id="region-box")
            self.button = gr.Button("Search this region", elem_id="region-search")

    def load(self, query: Any) -> list[Any]:
        """A new query: an upload is shown for drawing from its decoded pixels (the file is
        deleted once read); any other query empties the panel."""
        image = getattr(query, "loaded", None)
        if image is None:
            return [RegionState(), None, ""]
        state = RegionState(image)
        return [state, canvas(state), "_Click two corners of the region to search._"]

    def on_click(self, state: RegionState, evt: gr.SelectData) -> list[Any]:
        if state.image is None:
            return [state, None, "_Upload a film first._"]
        x, y = evt.index
        state = click(state, x, y)
        box = state.box()
        text = f"box `{','.join(map(str, box))}` (source pixels)" if box else "_one more corner_"
        return [state, canvas(state), text]

    def search(
        self, pc: PriorCase, state: RegionState, k: int, kind: str | None, exclude: bool
    ) -> list[SearchHit]:
        box = state.box()
        if state.image is None or box is None:
            raise QueryError("upload a film and click two corners of the region first")
        kind = kind if kind in ("roi", "tile") else None
        hits = pc.search(
            image=state.image, box=box, k=int(k), kind=kind, exclude_same_patient=exclude
        )
        return in_context(pc, hits)
