"""ROI overlays: where a lesion crop sits on its parent film, drawn on the parent thumbnail."""

from __future__ import annotations

from PIL import Image, ImageDraw

from priorcase.ui.gallery import decode_thumbnail

ROI_COLOUR = (255, 64, 64)


def _size(metadata: dict[str, str | None]) -> tuple[int, int] | None:
    try:
        return int(metadata["width"]), int(metadata["height"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return None


def draw_roi(
    parent_thumbnail: bytes | None,
    roi: tuple[int, int, int],
    parent_metadata: dict[str, str | None],
) -> Image.Image:
    """The parent thumbnail with the ROI circle, scaled from film pixels to thumbnail pixels.

    Film size comes from the parent's ``width``/``height`` metadata; without it the thumbnail
    is assumed to be the whole film at its own aspect ratio (scale from the longer side).
    """
    image = decode_thumbnail(parent_thumbnail)
    size = _size(parent_metadata)
    tw, th = image.size
    if size is not None:
        sx, sy = tw / size[0], th / size[1]
    else:
        sx = sy = 1.0
    x, y, r = roi
    cx, cy = x * sx, y * sy
    rx, ry = max(r * sx, 3.0), max(r * sy, 3.0)
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(tw, th) / 120))
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=ROI_COLOUR, width=width)
    draw.line((cx - 4, cy, cx + 4, cy), fill=ROI_COLOUR, width=1)
    draw.line((cx, cy - 4, cx, cy + 4), fill=ROI_COLOUR, width=1)
    return image
