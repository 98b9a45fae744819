"""Side-by-side reading-room viewer: the query and one prior case in two equal panes.

The panes are plain HTML (an ``<img>`` at its natural full resolution under an SVG overlay)
rendered by :func:`viewer_html`; :data:`VIEWER_JS` (installed once per page through
``launch(js=...)``) keeps one view state for both panes: zoom and pan (wheel, drag, + - 0),
window/level (an SVG ``feComponentTransfer`` filter shared by both images, presets, reset),
overlays on/off (``o``) and next/previous case (``]``/``n`` and ``[``/``p``, which press the
page's own buttons). Both films are mirrored to one orientation (chest wall on the left) and
carry their laterality and view markers.
"""

from __future__ import annotations

import base64
import html
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from priorcase.api import PriorCase
from priorcase.index.previews import Previews, encode_preview
from priorcase.ingest.breast import BreastConfig, breast_on_right, segment_breast
from priorcase.records import SearchHit

THUMBNAIL_NOTE = "preview at thumbnail resolution"
FULL_NOTE = "full resolution"
# (name, centre, width) on the displayed 8-bit scale; "header" is the DICOM window the reader
# already applied when decoding (its VOI LUT / WindowCenter-Width), so it is the identity here.
PRESETS = (
    ("header", "Default (DICOM window)", 127.5, 255.0),
    ("dense", "Dense tissue", 170.0, 130.0),
    ("fatty", "Fatty tissue", 90.0, 170.0),
    ("contrast", "High contrast", 128.0, 100.0),
)


@dataclass
class Pane:
    """What one pane shows. Coordinates are in the shown image's pixels, after mirroring."""

    title: str
    png: bytes | None
    width: int = 0
    height: int = 0
    resolution: str = FULL_NOTE
    laterality: str | None = None
    view: str | None = None
    mirrored: bool = False
    boxes: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)
    circles: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)


def _png(pixels: np.ndarray) -> tuple[bytes, int, int]:
    return encode_preview(pixels), pixels.shape[1], pixels.shape[0]


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L") if image.mode not in ("L", "RGB") else image)


def _faces_right(pixels: np.ndarray) -> bool:
    """True when the breast lies in the right half (judged on a small copy: it is cheap)."""
    image = Image.fromarray(pixels if pixels.ndim == 2 else pixels[..., :3]).convert("L")
    image.thumbnail((256, 256))
    return breast_on_right(segment_breast(np.asarray(image)))


def _side(labels: dict, metadata: dict) -> tuple[str | None, str | None]:
    lat = metadata.get("laterality") or labels.get("laterality")
    view = metadata.get("view_position") or labels.get("view") or labels.get("view_position")
    return (str(lat).upper() if lat else None), (str(view).upper() if view else None)


_ENCODED: OrderedDict[tuple, tuple[bytes, int, int, bool]] = OrderedDict()
_ENCODED_MAX = 64  # films (a few MB each as PNG): the query and the cases paged through
_ENCODED_LOCK = threading.Lock()


def _orient(pane: Pane, pixels: np.ndarray, mammo: bool, key: tuple | None = None) -> Pane:
    """Mirror a mammogram so the chest wall is on the left; flip the overlays with it.

    The encoded film is cached under ``key`` (case id and table version, or the upload), so
    paging through cases re-encodes only the new one."""
    with _ENCODED_LOCK:
        cached = _ENCODED.get((key, mammo)) if key is not None else None
    if cached is None:
        mirrored = mammo and _faces_right(pixels)
        shown = np.ascontiguousarray(pixels[:, ::-1]) if mirrored else pixels
        cached = (*_png(shown), mirrored)
        if key is not None:
            with _ENCODED_LOCK:
                _ENCODED[(key, mammo)] = cached
                while len(_ENCODED) > _ENCODED_MAX:
                    _ENCODED.popitem(last=False)
    pane.png, pane.width, pane.height, pane.mirrored = cached
    if pane.mirrored:
        w = pane.width
        pane.boxes = [(k, (w - x1, y0, w - x0, y1)) for k, (x0, y0, x1, y1) in pane.boxes]
        pane.circles = [(k, (w - 1 - x, y, r)) for k, (x, y, r) in pane.circles]
    return pane


def is_mammography(pc: PriorCase, metadata: dict | None = None) -> bool:
    """Films are mirrored and R/L-marked when the file (DICOM MG), the collection (declared
    mammography: ``--modality MG``) or its labels (a laterality column) say mammography."""
    manifest = pc.store.manifest
    if manifest is None:
        return False
    if BreastConfig.from_dict(manifest.breast).applies(metadata or {}):
        return True
    return "laterality" in manifest.label_columns


def stored_pixels(pc: PriorCase, case_id: str, thumbnail: bytes) -> tuple[np.ndarray, str]:
    """A stored film at full resolution (its preview), else its thumbnail, and which it is."""
    preview = Previews(pc.store).get(case_id)
    if preview is not None:
        return _decode(preview.png), FULL_NOTE
    return _decode(thumbnail) if thumbnail else np.zeros((64, 64), np.uint8), THUMBNAIL_NOTE


def query_pane(pc: PriorCase, query, boxes: list | None = None) -> Pane:
    """The query film: the decoded upload (full resolution) or a stored case's preview."""
    labels = {}
    if query.loaded is not None:
        pixels, resolution = query.loaded.pixels, FULL_NOTE
    elif query.stored_id:
        row = pc.store.fetch([query.stored_id]).get(query.stored_id)
        hit = pc.store.row_to_hit(row, 1.0) if row else None
        labels = hit.labels if hit else {}
        pixels, resolution = stored_pixels(pc, query.stored_id, hit.thumbnail if hit else b"")
    else:
        return Pane(title="No query", png=None)
    lat, view = _side(labels, query.metadata)
    pane = Pane(f"Query: {query.name}", None, resolution=resolution, laterality=lat, view=view)
    pane.boxes = _scaled_boxes(boxes or [], query.metadata, pixels)
    key = ("upload", id(query.loaded)) if query.loaded is not None else None
    key = key or (str(pc.store.db_dir), query.stored_id, pc.store.version)
    return _orient(pane, pixels, is_mammography(pc, query.metadata), key)


def case_pane(pc: PriorCase, hit: SearchHit, rank: int) -> Pane:
    """A prior case: its film (for a region hit, the parent film) with its boxes drawn."""
    film_id, film = hit.id, hit
    if hit.parent_id and (hit.roi or hit.box):
        row = pc.store.fetch([hit.parent_id]).get(hit.parent_id)
        if row is not None:
            film_id, film = hit.parent_id, pc.store.row_to_hit(row, 0.0)
    pixels, resolution = stored_pixels(pc, film_id, film.thumbnail)
    lat, view = _side(film.labels, film.metadata)
    where = f" (on film {film_id})" if film_id != hit.id else ""
    pane = Pane(
        f"#{rank} case {hit.id}{where}",
        None,
        resolution=resolution,
        laterality=lat,
        view=view,
    )
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []
    if hit.box:
        boxes.append(("region", tuple(hit.box)))
    if hit.match and hit.match.get("hit_box"):
        boxes.append(("matched", tuple(hit.match["hit_box"])))
    pane.boxes = _scaled_boxes(boxes, film.metadata, pixels)
    if hit.roi:
        sx, sy = _scale(film.metadata, pixels)
        x, y, r = hit.roi
        pane.circles = [("ROI", (round(x * sx), round(y * sy), max(3, round(r * sx))))]
    key = (str(pc.store.db_dir), film_id, pc.store.version)
    return _orient(pane, pixels, is_mammography(pc, film.metadata), key)


def _scale(metadata: dict, pixels: np.ndarray) -> tuple[float, float]:
    """Source pixels -> shown pixels (1 at full resolution; < 1 for a thumbnail)."""
    try:
        width, height = int(metadata["width"]), int(metadata["height"])
    except (KeyError, TypeError, ValueError):
        return 1.0, 1.0
    return pixels.shape[1] / width, pixels.shape[0] / height


def _scaled_boxes(boxes, metadata, pixels):
    sx, sy = _scale(metadata, pixels)
    return [
        (k, (round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)))
        for k, b in boxes
    ]


# ---------------------------------------------------------------------------- HTML
_STYLE = {"ROI": ("#ff6b6b", ""), "region": ("#ffb347", "8 4"), "matched": ("#ffe14d", "3 3")}


def _overlay(pane: Pane) -> str:
    line = max(2, round(max(pane.width, pane.height) / 300))
    parts = []
    for kind, (x0, y0, x1, y1) in pane.boxes:
        colour, dash = _STYLE.get(kind, ("#7fd4ff", ""))
        parts.append(
            f"<rect x='{x0}' y='{y0}' width='{x1 - x0}' height='{y1 - y0}' fill='none' "
            f"stroke='{colour}' stroke-width='{line}' stroke-dasharray='{_dash(dash, line)}'/>"
            f"<text x='{x0 + line}' y='{max(y0 - line, 4 * line)}' fill='{colour}' "
            f"font-size='{6 * line}'>{html.escape(kind)}</text>"
        )
    for kind, (x, y, r) in pane.circles:
        colour, _ = _STYLE["ROI"]
        parts.append(
            f"<circle cx='{x}' cy='{y}' r='{r}' fill='none' stroke='{colour}' "
            f"stroke-width='{line}'/><text x='{x - r}' y='{max(y - r - line, 4 * line)}' "
            f"fill='{colour}' font-size='{6 * line}'>{html.escape(kind)}</text>"
        )
    return (
        f"<svg class='pc-ov' viewBox='0 0 {pane.width} {pane.height}' "
        f"preserveAspectRatio='none' aria-hidden='true'>{''.join(parts)}</svg>"
    )


def _dash(dash: str, line: int) -> str:
    return " ".join(str(int(v) * line) for v in dash.split()) if dash else "none"


def _pane_html(pane: Pane, side: str) -> str:
    if pane.png is None:
        body = "<div class='pc-empty'>Select a prior case to compare.</div>"
        return f"<figure class='pc-pane' data-side='{side}'>{body}</figure>"
    src = "data:image/png;base64," + base64.b64encode(pane.png).decode()
    lat = pane.laterality or "?"
    marker = f"{lat} {pane.view or 'view unknown'}" + (" · mirrored" if pane.mirrored else "")
    note = "" if pane.resolution == FULL_NOTE else f" · <b>{THUMBNAIL_NOTE}</b>"
    title = html.escape(pane.title)
    return (
        f"<figure class='pc-pane' data-side='{side}' tabindex='0' "
        f"aria-label='{title}: {html.escape(marker)}'>"
        f"<div class='pc-stage'><img class='pc-img' alt='{title}' src='{src}' "
        f"width='{pane.width}' height='{pane.height}' draggable='false'>{_overlay(pane)}</div>"
        f"<span class='pc-marker' aria-hidden='true'>{html.escape(marker)}</span>"
        f"<figcaption>{title} · {pane.width}×{pane.height} px, "
        f"{html.escape(pane.resolution)}{note}</figcaption></figure>"
    )


def viewer_html(left: Pane | None, right: Pane | None) -> str:
    """Both panes, the toolbar and the shared window/level filter."""
    left = left or Pane("No query", None)
    right = right or Pane("No case selected", None)
    options = "".join(
        f"<option value='{key}' data-c='{c}' data-w='{w}'>{html.escape(name)}</option>"
        for key, name, c, w in PRESETS
    )
    toolbar = (
        "<div class='pc-tools' role='toolbar' aria-label='viewer tools'>"
        "<button type='button' data-act='zoom-in' aria-label='zoom in'>Zoom + </button>"
        "<button type='button' data-act='zoom-out' aria-label='zoom out'>Zoom - </button>"
        "<button type='button' data-act='reset' aria-label='reset zoom, pan and window'>"
        "Reset (0)</button>"
        f"<label>Window <select class='pc-preset' aria-label='window preset'>{options}</select>"
        "</label>"
        "<label>Level <input class='pc-c' type='range' min='0' max='255' value='127.5' "
        "step='0.5' aria-label='window centre (level)'></label>"
        "<label>Width <input class='pc-w' type='range' min='8' max='510' value='255' "
        "aria-label='window width'></label>"
        "<button type='button' data-act='overlays' aria-pressed='true'>Overlays (o)</button>"
        "<span class='pc-keys'>keys: [ ] previous/next case · + - zoom · 0 reset · o overlays"
        "</span></div>"
    )
    svg_filter = (
        "<svg width='0' height='0' style='position:absolute' aria-hidden='true'><filter "
        "id='pc-wl' color-interpolation-filters='sRGB'><feComponentTransfer>"
        + "".join(f"<feFunc{c} type='linear' slope='1' intercept='0'/>" for c in "RGB")
        + "</feComponentTransfer></filter></svg>"
    )
    return (
        f"<div class='pc-viewer'>{svg_filter}{toolbar}<div class='pc-panes'>"
        f"{_pane_html(left, 'query')}{_pane_html(right, 'case')}</div></div>"
    )


VIEWER_CSS = """
.pc-viewer { background:#111; color:#e8e8e8; border-radius:6px; padding:6px; }
.pc-tools { display:flex; flex-wrap:wrap; gap:6px 12px; align-items:center; font-size:.85rem;
  margin-bottom:6px; }
.pc-tools button, .pc-tools select { background:#2a2a2a; color:#f0f0f0; border:1px solid #777;
  border-radius:4px; padding:2px 8px; }
.pc-tools label { display:flex; gap:4px; align-items:center; }
.pc-keys { color:#c8c8c8; }
.pc-panes { display:grid; grid-template-columns:1fr 1fr; gap:6px; }
.pc-pane { position:relative; margin:0; background:#000; overflow:hidden; height:62vh;
  min-height:280px; display:flex; flex-direction:column; }
.pc-stage { position:relative; flex:1; overflow:hidden; cursor:grab; transform-origin:0 0; }
.pc-stage img.pc-img { position:absolute; left:0; top:0; width:100%; height:100%;
  object-fit:contain; filter:url(#pc-wl); user-select:none; max-width:none; }
.pc-stage svg.pc-ov { position:absolute; pointer-events:none; }
.pc-hide-ov svg.pc-ov { display:none; }
.pc-marker { position:absolute; top:6px; right:8px; background:rgba(0,0,0,.75); color:#fff;
  font-weight:700; padding:1px 6px; border:1px solid #bbb; border-radius:3px; }
.pc-pane figcaption { font-size:.8rem; color:#e0e0e0; padding:3px 6px; background:#1b1b1b; }
.pc-empty { color:#cfcfcf; padding:2rem; }
.pc-pane:focus-visible, .pc-tools :focus-visible { outline:3px solid #ffd84d; outline-offset:2px; }
@media (max-width: 900px) { .pc-panes { grid-template-columns:1fr 1fr; }
  .pc-pane { height:42vh; } }
"""

# Installed once per page (``launch(js=...)``); events are delegated from ``document`` so the
# panes Gradio re-renders for each case keep working without re-binding.
VIEWER_JS = r"""
() => {
  if (window.pcViewer) return;
  const S = {s: 1, x: 0, y: 0, c: 127.5, w: 255, ov: true};
  const apply = () => {
    document.querySelectorAll('.pc-viewer').forEach(v => {
      v.classList.toggle('pc-hide-ov', !S.ov);
      v.querySelectorAll('.pc-stage').forEach(st => {
        const img = st.querySelector('img'), ov = st.querySelector('svg.pc-ov');
        if (img && ov) {  // the overlay covers exactly the contained image
          const W = st.clientWidth, H = st.clientHeight, r = Math.min(W / img.naturalWidth,
            H / img.naturalHeight) || 1, w = img.naturalWidth * r, h = img.naturalHeight * r;
          Object.assign(ov.style, {left: (W - w) / 2 + 'px', top: (H - h) / 2 + 'px',
            width: w + 'px', height: h + 'px'});
        }
        st.style.transform = `translate(${S.x}px, ${S.y}px) scale(${S.s})`;
      });
      const slope = 255 / S.w, icpt = -(S.c - S.w / 2) / S.w;
      v.querySelectorAll('#pc-wl feFuncR, #pc-wl feFuncG, #pc-wl feFuncB').forEach(f => {
        f.setAttribute('slope', slope.toFixed(4)); f.setAttribute('intercept', icpt.toFixed(4));
      });
      const c = v.querySelector('.pc-c'), w = v.querySelector('.pc-w');
      if (c) c.value = S.c; if (w) w.value = S.w;
      const b = v.querySelector("[data-act='overlays']");
      if (b) b.setAttribute('aria-pressed', String(S.ov));
    });
  };
  const zoom = (f, cx, cy) => {
    const s = Math.min(16, Math.max(1, S.s * f)); const k = s / S.s;
    S.x = cx - (cx - S.x) * k; S.y = cy - (cy - S.y) * k; S.s = s;
    if (S.s === 1) { S.x = 0; S.y = 0; }
    apply();
  };
  const reset = () => { Object.assign(S, {s: 1, x: 0, y: 0, c: 127.5, w: 255}); apply();
    document.querySelectorAll('.pc-preset').forEach(p => p.value = 'header'); };
  const act = (name, pane) => {
    const st = (pane || document).querySelector('.pc-stage');
    const cx = st ? st.clientWidth / 2 : 0, cy = st ? st.clientHeight / 2 : 0;
    if (name === 'zoom-in') zoom(1.25, cx, cy);
    else if (name === 'zoom-out') zoom(0.8, cx, cy);
    else if (name === 'reset') reset();
    else if (name === 'overlays') { S.ov = !S.ov; apply(); }
  };
  document.addEventListener('wheel', e => {
    const st = e.target.closest && e.target.closest('.pc-stage'); if (!st) return;
    e.preventDefault(); const r = st.parentElement.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  let drag = null;
  document.addEventListener('mousedown', e => {
    const st = e.target.closest && e.target.closest('.pc-stage'); if (!st) return;
    drag = {x: e.clientX - S.x, y: e.clientY - S.y}; e.preventDefault();
  });
  document.addEventListener('mousemove', e => { if (!drag) return;
    S.x = e.clientX - drag.x; S.y = e.clientY - drag.y; apply(); });
  document.addEventListener('mouseup', () => { drag = null; });
  document.addEventListener('click', e => {
    const b = e.target.closest && e.target.closest('.pc-tools [data-act]');
    if (b) act(b.dataset.act, b.closest('.pc-viewer'));
  });
  document.addEventListener('input', e => {
    const t = e.target;
    if (t.classList && t.classList.contains('pc-c')) { S.c = +t.value; apply(); }
    if (t.classList && t.classList.contains('pc-w')) { S.w = +t.value; apply(); }
  });
  document.addEventListener('change', e => {
    const t = e.target; if (!(t.classList && t.classList.contains('pc-preset'))) return;
    const o = t.selectedOptions[0]; S.c = +o.dataset.c; S.w = +o.dataset.w; apply();
  });
  const press = id => { const b = document.querySelector('#' + id);
    if (b) (b.tagName === 'BUTTON' ? b : b.querySelector('button') || b).click(); };
  document.addEventListener('keydown', e => {
    const t = e.target, tag = (t.tagName || '').toLowerCase();
    if (['input', 'textarea', 'select'].includes(tag) || t.isContentEditable) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const pane = document.activeElement && document.activeElement.closest &&
      document.activeElement.closest('.pc-viewer');
    if (e.key === ']' || e.key === 'n') press('pc-next');
    else if (e.key === '[' || e.key === 'p') press('pc-prev');
    else if (e.key === 'o') act('overlays');
    else if (e.key === '+' || e.key === '=') act('zoom-in', pane);
    else if (e.key === '-') act('zoom-out', pane);
    else if (e.key === '0') act('reset');
    else return;
    e.preventDefault();
  });
  new MutationObserver(() => {
    document.querySelectorAll('.pc-viewer:not([data-bound])').forEach(v => {
      v.dataset.bound = '1'; v.querySelectorAll('img.pc-img').forEach(i =>
        i.addEventListener('load', apply)); apply(); });
  }).observe(document.body, {childList: true, subtree: true});
  window.addEventListener('resize', apply);
  window.pcViewer = {state: S, apply};
}
"""
