"""The Gradio app: find similar prior cases, classify by retrieval, browse the library.

``build_app(pc)`` makes the Blocks; ``serve(db, ...)`` opens an index and launches it on
127.0.0.1 unless told otherwise. Launch with :func:`launch_options` (upload limit, theme,
CSS, login); thumbnails come from the index bytes, so no ``allowed_paths`` is ever needed.
Uploads are deleted once decoded (see :mod:`priorcase.ui.security`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from priorcase.api import PriorCase
from priorcase.errors import PriorcaseError, QueryError
from priorcase.index.previews import Previews
from priorcase.index.vocabulary import expand, load_vocabulary
from priorcase.ui.actions import (
    ALL_KINDS,
    ANY,
    MAX_UPLOAD_MB,
    UPLOAD_SUFFIXES,
    Actions,
    Query,
    UploadError,
)
from priorcase.ui.classify_panel import DEFAULT_METHODS, METHOD_TITLES, panel_outputs
from priorcase.ui.export import DISCLAIMER, write_summary
from priorcase.ui.gallery import cards_html
from priorcase.ui.library_view import label_counts, map_svg, summary_markdown
from priorcase.ui.region import RegionPanel
from priorcase.ui.security import (
    check_exposure,
    discard_upload,
    is_loopback,
    parse_auth,
    private_upload_dir,
    rate_limited_login,
    shared_gradio_dirs,
)
from priorcase.ui.viewer import VIEWER_CSS, VIEWER_JS, case_pane, query_pane, viewer_html

log = logging.getLogger(__name__)

CONCURRENCY_LIMIT = 4
DELETE_CACHE = (300, 300)  # every 5 minutes, delete Gradio's files older than 5 minutes
MAX_ID_CHOICES = 5000
MAX_PAGE = 50  # results per page; "next page" goes beyond
REFRESH_S = 2.0  # how often the classification panel looks for heads fitted in the background
CSS = (
    VIEWER_CSS
    + """
#status-box p { font-size: 1.02rem; }
.pc-error { color: #ff8a80; font-weight: 600; }
.pc-hidden { display: none !important; }
.pc-cards { list-style: none; padding: 0; margin: 0; display: grid; gap: 8px;
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
.pc-card { background: #1c1c1c; color: #eee; border: 1px solid #555; border-radius: 6px;
  padding: 4px; display: flex; flex-direction: column; gap: 4px; min-width: 0; }
.pc-card.pc-selected { border: 3px solid #ffd84d; }
.pc-card .pc-open { background: #000; border: 0; padding: 0; cursor: pointer; }
.pc-card img { width: 100%; height: 140px; object-fit: contain; display: block; }
.pc-cap { font-size: .8rem; line-height: 1.3; overflow-wrap: anywhere; }
.pc-score { color: #d8e8ff; }
.pc-meta { color: #cfcfcf; }
.pc-search-with { background: #2d4f7c; color: #fff; border: 1px solid #9cc3ff;
  border-radius: 4px; padding: 3px; font-size: .8rem; cursor: pointer; }
.pc-card button:focus-visible, .pc-pt:focus-visible { outline: 3px solid #ffd84d;
  outline-offset: 2px; }
.pc-map svg { width: 100%; height: auto; background: #161616; cursor: crosshair; }
.pc-map .pc-pt { cursor: pointer; }
.pc-map .pc-pt:focus { stroke: #ffd84d; stroke-width: 3; }
.pc-modes { display: flex; gap: 6px; margin-bottom: 4px; }
.pc-mode { background: #2a2a2a; color: #eee; border: 1px solid #777; border-radius: 4px;
  padding: 2px 8px; cursor: pointer; }
.pc-mode[aria-pressed="true"] { background: #2d4f7c; border-color: #9cc3ff; }
.pc-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; list-style: none; padding: 0; }
.gradio-container { max-width: 100% !important; }
.pc-method h4 { margin-bottom: 0.2rem; }
*:focus-visible { outline: 3px solid #ffd84d !important; outline-offset: 2px; }
"""
)

# Result cards and map points talk to the server through two hidden text boxes, #pc-action
# (a new query: classification and map follow) and #pc-open (open or select cases only):
# "<verb>|<argument>|<nonce>", read by ``on_action``.
ACTIONS_JS = r"""
() => {
  if (window.pcActions) return;
  const send = (verb, arg) => {
    // a new query (search) goes to #pc-action; opening or selecting cases to #pc-open
    const id = verb === 'search' ? '#pc-action' : '#pc-open';
    const box = document.querySelector(`${id} textarea, ${id} input`);
    if (!box) return;
    box.value = `${verb}|${arg}|${Date.now()}`;
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  document.addEventListener('click', e => {
    const t = e.target.closest && e.target.closest('.pc-open, .pc-search-with, .pc-pt');
    if (!t) return;
    if (t.classList.contains('pc-open')) send('open', t.dataset.index);
    else if (t.classList.contains('pc-search-with')) send('search', t.dataset.id);
    else if (!window.pcDragged) send('open-id', t.dataset.id);
  });
  // map selection: a dragged box, or a lasso (the tool buttons above the map choose)
  document.addEventListener('click', e => {
    const b = e.target.closest && e.target.closest('.pc-mode'); if (!b) return;
    b.parentElement.querySelectorAll('.pc-mode')
      .forEach(m => m.setAttribute('aria-pressed', String(m === b)));
  });
  let start = null;
  const pt = (svg, e) => { const p = svg.createSVGPoint(); p.x = e.clientX; p.y = e.clientY;
    return p.matrixTransform(svg.getScreenCTM().inverse()); };
  const toolOf = svg => { const b = svg.closest('.pc-map').querySelector(
    '.pc-mode[aria-pressed="true"]'); return b ? b.dataset.mode : 'box'; };
  const inside = (x, y, poly) => { let c = false;  // ray casting
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) c = !c; }
    return c; };
  document.addEventListener('mousedown', e => {
    const svg = e.target.closest && e.target.closest('.pc-map svg'); if (!svg) return;
    const p = pt(svg, e);
    start = {svg, p, tool: toolOf(svg), path: [[p.x, p.y]]}; window.pcDragged = false;
  });
  document.addEventListener('mousemove', e => { if (!start) return;
    const q = pt(start.svg, e);
    if (start.tool === 'lasso') {
      start.path.push([q.x, q.y]);
      const xs = start.path.map(p => p[0]), ys = start.path.map(p => p[1]);
      if (Math.max(...xs) - Math.min(...xs) + Math.max(...ys) - Math.min(...ys) > 6)
        window.pcDragged = true;
      start.svg.querySelector('.pc-lasso').setAttribute('points', start.path.join(' '));
      return;
    }
    const r = start.svg.querySelector('.pc-sel');
    const x = Math.min(q.x, start.p.x), y = Math.min(q.y, start.p.y);
    const w = Math.abs(q.x - start.p.x), h = Math.abs(q.y - start.p.y);
    if (w + h > 6) window.pcDragged = true;
    Object.entries({x, y, width: w, height: h}).forEach(([k, v]) => r.setAttribute(k, v));
  });
  document.addEventListener('mouseup', () => { if (!start) return;
    const {svg, tool, path} = start; start = null; if (!window.pcDragged) return;
    const b = svg.querySelector('.pc-sel').getBBox();
    const picked = tool === 'lasso'
      ? p => inside(+p.dataset.x, +p.dataset.y, path)
      : p => { const x = +p.dataset.x, y = +p.dataset.y;
        return x >= b.x && x <= b.x + b.width && y >= b.y && y <= b.y + b.height; };
    const ids = [...svg.querySelectorAll('.pc-pt')].filter(picked).map(p => p.dataset.id);
    send('select', ids.join(','));
    setTimeout(() => { window.pcDragged = false; }, 0);
  });
  // keyboard: the map is one tab stop; arrows move to the nearest point that way, Enter opens
  document.addEventListener('keydown', e => {
    const t = e.target.closest && e.target.closest('.pc-map .pc-pt'); if (!t) return;
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault(); e.stopPropagation(); send('open-id', t.dataset.id); return; }
    const dir = {ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1],
      ArrowUp: [0, -1]}[e.key];
    if (!dir) return;
    e.preventDefault();
    const x0 = +t.dataset.x, y0 = +t.dataset.y; let best = null, score = Infinity;
    t.ownerSVGElement.querySelectorAll('.pc-pt').forEach(p => {
      const dx = +p.dataset.x - x0, dy = +p.dataset.y - y0;
      const along = dx * dir[0] + dy * dir[1], across = Math.abs(dx * dir[1] - dy * dir[0]);
      if (p === t || along <= 0) return;
      if (along + 2 * across < score) { score = along + 2 * across; best = p; }
    });
    if (!best) return;
    t.setAttribute('tabindex', '-1'); best.setAttribute('tabindex', '0'); best.focus();
  });
  window.pcActions = send;
}
"""
PAGE_JS = (
    "() => { document.body.classList.add('dark'); "
    f"({VIEWER_JS.strip()})(); ({ACTIONS_JS.strip()})(); }}"
)


def launch_options(auth: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: upload limit, theme, CSS, page script, login.

    The login (``auth``) is Gradio's sign-in form checked by :func:`rate_limited_login`.
    When uploads go to a private folder (:func:`private_upload_dir`), the shared
    ``/tmp/gradio`` of other Gradio servers is blocked from ``/gradio_api/file=``.
    """
    options: dict[str, Any] = {
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "theme": gr.themes.Soft(),
        "css": CSS,
        "js": PAGE_JS,
        "show_error": False,
    }
    own = os.environ.get("GRADIO_TEMP_DIR")
    shared = shared_gradio_dirs()
    if own and not any(Path(own).resolve().is_relative_to(d) for d in shared):
        options["blocked_paths"] = shared
    if auth:
        options["auth"] = rate_limited_login(*parse_auth(auth))
        options["auth_message"] = "priorcase: sign in to search the case library."
    return options


def _error(message: str) -> str:
    return f"<span class='pc-error'>⚠ {message}</span>"


def _ok(message: str) -> str:
    return f"✓ {message}"


def _message(err: Exception) -> str:
    """Plain language for the page: a filter the parser refused names the columns to use."""
    if isinstance(err, QueryError) and "invalid --where" in str(err):
        problem = str(err).split(": ", 1)[-1] if ": " in str(err) else str(err)
        return (
            f"The filter could not be read ({problem}). Use the label names shown above as "
            "column names and put values in quotes, e.g. pathology = 'benign'."
        )
    if isinstance(err, (UploadError, PriorcaseError)):
        return str(err)
    log.exception("unexpected error in the UI")
    return f"unexpected error ({type(err).__name__}); see the server log"


def _metadata_markdown(query: Query, vocabulary: dict) -> str:
    keep = {k: v for k, v in query.metadata.items() if not k.startswith("breast_")}
    if not keep:
        return "_No metadata._"
    rows = "\n".join(f"| {k} | {expand(vocabulary, k, v)} |" for k, v in keep.items())
    return f"**{query.name}**\n\n| field | value |\n|---|---|\n{rows}"


def build_app(pc: PriorCase, warm_up: bool = False) -> gr.Blocks:
    """The whole UI for one library; ``warm_up`` builds slow caches in a background thread."""
    actions = Actions(pc)
    vocabulary = load_vocabulary(pc.store.db_dir)
    filter_values = actions.filter_columns()
    # filters that only ROI rows carry (lesion type, severity) are hidden for image searches
    region_only = {c for c in filter_values if not any(pc.store.column_values(c, "image").values())}
    class_columns = actions.classifier.columns("image")
    manifest = pc.store.manifest
    label_cols = [c for c in (manifest.label_columns if manifest else []) if c != "patient_id"]
    ids = sorted((pc.store.column_values(label_cols[0], "image") if label_cols else {}).keys())
    default_colour = next((c for c in ("pathology", "tissue") if c in label_cols), None)
    default_colour = default_colour or (label_cols[0] if label_cols else None)
    default_class = next((c for c in ("pathology", "abnormality") if c in class_columns), None)
    default_class = default_class or (class_columns[0] if class_columns else None)
    n_images = pc.store.count("image")
    empty_viewer = viewer_html(None, None)

    with gr.Blocks(title="priorcase – similar prior cases", delete_cache=DELETE_CACHE) as demo:
        query_state = gr.State(None)  # Query | None
        hits_state = gr.State([])  # list[SearchHit] of the current page
        ctx_state = gr.State(None)  # the current query: {"mode", "text", "box", "page", ...}
        sel_state = gr.State(None)  # index of the case open beside the query
        classify_state = gr.State(None)  # Classification | None, for the export

        gr.Markdown(
            f"## priorcase · similar prior cases\n{n_images} cases in this library · {DISCLAIMER}"
        )
        status = gr.Markdown(
            "No query yet: upload an image, pick a case id, or describe a finding.",
            elem_id="status-box",
        )
        action = gr.Textbox(elem_id="pc-action", elem_classes=["pc-hidden"], container=False)
        opener = gr.Textbox(elem_id="pc-open", elem_classes=["pc-hidden"], container=False)

        with gr.Tabs():
            # ------------------------------------------------------------ search
            with gr.Tab("Search", id="search"), gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    upload = gr.File(
                        label="Query image (PNG, JPEG, TIFF, PGM or DICOM, ≤ 50 MB)",
                        file_types=list(UPLOAD_SUFFIXES),
                        type="filepath",
                        elem_id="query-upload",
                        height=120,
                    )
                    with gr.Row():
                        case_id = gr.Dropdown(
                            choices=ids[:MAX_ID_CHOICES],
                            value=None,
                            allow_custom_value=True,
                            label="…or an indexed case id",
                            elem_id="case-id",
                            scale=3,
                        )
                        id_button = gr.Button("Search by id", scale=1, elem_id="id-search")
                    with gr.Row():
                        text = gr.Textbox(
                            label="…or describe a finding",
                            placeholder="e.g. dense glandular breast",
                            elem_id="text-query",
                            scale=3,
                        )
                        text_button = gr.Button("Search text", scale=1, elem_id="text-search")
                    meta = gr.Markdown("", elem_id="query-meta")
                    with gr.Accordion("Search options and filters", open=True):
                        k = gr.Slider(1, MAX_PAGE, value=10, step=1, label="cases per page")
                        kind = gr.Radio(
                            ["image", "roi", "tile", ALL_KINDS],
                            value="image",
                            label="search among (whole images, regions, tiles, all)",
                        )
                        exclude = gr.Checkbox(value=False, label="exclude same patient")
                        filters = [
                            gr.Dropdown(
                                [ANY, *[(expand(vocabulary, c, v), v) for v in values]],
                                value=ANY,
                                label=c,
                                min_width=110,
                                visible=c not in region_only,
                            )
                            for c, values in filter_values.items()
                        ]
                        where = gr.Textbox(
                            label="Advanced filter on labels",
                            placeholder="e.g. pathology = 'malignant' AND tissue != 'F'",
                            elem_id="where",
                        )
                        rerun = gr.Button("Apply to the current query", elem_id="rerun")
                    region = RegionPanel()
                with gr.Column(scale=3, min_width=340):
                    viewer = gr.HTML(empty_viewer, elem_id="viewer", js_on_load=None)
                    with gr.Row():
                        prev_case = gr.Button("◀ Previous case [", elem_id="pc-prev", size="sm")
                        next_case = gr.Button("Next case ] ▶", elem_id="pc-next", size="sm")
                        export = gr.Button(
                            "Export case summary", elem_id="export", size="sm", variant="primary"
                        )
                    export_files = gr.File(
                        label="Case summary (HTML and CSV)",
                        file_count="multiple",
                        visible=False,
                        elem_id="export-files",
                    )
                    cards = gr.HTML(cards_html([]), elem_id="results", js_on_load=None)
                    with gr.Row():
                        prev_page = gr.Button("◀ Previous page", elem_id="prev-page", size="sm")
                        page_info = gr.Markdown("", elem_id="page-info")
                        next_page = gr.Button("Next page ▶", elem_id="next-page", size="sm")

            # ------------------------------------------------------------ classify
            with gr.Tab("Classification", id="classify"):
                gr.Markdown(
                    "Calibrated probabilities for the current image query from three methods, "
                    "with each method's 90% prediction set. kNN leaves the query's own patient "
                    "out. A query unlike every library case gets no answer."
                )
                with gr.Row():
                    column = gr.Dropdown(
                        class_columns,
                        value=default_class,
                        label="label to predict",
                        elem_id="class-column",
                    )
                    classify_button = gr.Button("Classify current query", elem_id="classify")
                # while heads are fitted or evaluated in the background, the panel refreshes
                refresh = gr.Timer(REFRESH_S, active=False)
                method_outputs: list[Any] = [
                    gr.Markdown(
                        "_No image query: the panel is empty._", elem_id="classify-headline"
                    )
                ]
                with gr.Row():
                    for method in DEFAULT_METHODS:
                        with gr.Column(elem_classes=["pc-method"]):
                            gr.Markdown(f"#### {METHOD_TITLES[method]}")
                            method_outputs.append(gr.HTML("", elem_id=f"bar-{method}"))
                            method_outputs.append(gr.Markdown("", elem_id=f"explain-{method}"))

            # ------------------------------------------------------------ library
            with gr.Tab("Library", id="library"), gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    counts = gr.Dataframe(
                        label_counts(pc), label="cases per label", interactive=False, max_height=420
                    )
                    with gr.Accordion("About this library", open=False):
                        summary = gr.Markdown("", elem_id="library-summary")
                with gr.Column(scale=2, min_width=340):
                    with gr.Row():
                        colour = gr.Dropdown(label_cols, value=default_colour, label="colour by")
                        map_kind = gr.Radio(
                            ["image", "roi", "tile", ALL_KINDS], value="image", label="kind"
                        )
                    plot = gr.HTML("", elem_id="library-map", js_on_load=None)

        # ---------------------------------------------------------------- handlers
        def where_sql(where_, fvals):
            return actions.where_clause(dict(zip(filter_values, fvals, strict=True)), where_)

        def run(ctx, query, k_, kind_, exclude_, where_, fvals):
            """Hits of the current page for the query ``ctx`` describes, and its message."""
            per_page, page = int(k_), int(ctx.get("page", 0))
            want = per_page * (page + 1)
            sql = where_sql(where_, fvals) if ctx["mode"] != "region" else None
            if ctx["mode"] == "text":
                hits = actions.search_text(ctx["text"], want, kind_, sql)
                what = f"cases matching the description {ctx['text']!r}"
            elif ctx["mode"] == "region":
                hits = region.search(pc, ctx["region"], want, kind_, exclude_)
                what = f"regions nearest to the box {ctx['box']} on {query.name}"
                kind_ = hits[0].kind if hits else "roi"  # scored among regions
            else:
                hits = actions.search_vector(query, want, kind_, sql, exclude_)
                what = f"cases nearest to {query.name}"
            reference, best, percentiles = actions.search_reference(hits, ctx.get("text"), kind_)
            start = per_page * page
            hits, percentiles = hits[start:want], percentiles[start:want]
            message = f"Query: {query.name if query else ctx.get('text')} · {len(hits)} {what}"
            message += f" (page {page + 1})." if page else "."
            if exclude_ and query is not None and ctx["mode"] != "text":
                hidden = actions.hidden_by_exclusion(query, kind_)
                message += (
                    " This query has no patient identity, so 'exclude same patient' hid nothing."
                    if hidden is None
                    else f" 'Exclude same patient' hid {hidden} case(s) of this patient."
                )
            message += best + (f" {query.note}" if query is not None and query.note else "")
            if not hits:
                message += " No case matched: loosen the filters."
            text_ = _error(f"Unusual query for this library: {reference.reason} {message}")
            return hits, percentiles, (text_ if reference.reason else _ok(message))

        def shown(query, ctx, hits, percentiles, message, sel=None):
            """Every output a query sets: nothing of the previous query survives."""
            ctx = {**ctx, "percentiles": percentiles}
            boxes = [("region", ctx["box_tuple"])] if ctx.get("box_tuple") else []
            if sel is not None and hits[sel].match:
                boxes.append(("matched", tuple(hits[sel].match["query_box"])))
            left = query_pane(pc, query, boxes) if query is not None else None
            right = case_pane(pc, hits[sel], sel + 1 + _first(ctx) - 1) if sel is not None else None
            info = f"Page {ctx.get('page', 0) + 1}" if hits else ""
            return [
                query,
                hits,
                ctx,
                sel,
                _metadata_markdown(query, vocabulary) if query is not None else "",
                cards_html(hits, percentiles, vocabulary, sel, _first(ctx)),
                viewer_html(left, right),
                message,
                info,
                gr.update(visible=False, value=None),
            ]

        def _first(ctx):
            return int(ctx.get("page", 0)) * int(ctx.get("per_page", 10)) + 1

        def cleared(message):
            return [None, [], None, None, "", cards_html([]), empty_viewer, _error(message), "",
                    gr.update(visible=False, value=None)]  # fmt: skip

        def new_query(query, ctx, k_, kind_, exclude_, where_, fvals):
            ctx = {**ctx, "page": ctx.get("page", 0), "per_page": int(k_)}
            try:
                hits, pct, message = run(ctx, query, k_, kind_, exclude_, where_, fvals)
            except Exception as err:  # an error clears every panel
                return cleared(_message(err))
            return shown(query, ctx, hits, pct, message, 0 if hits else None)

        def on_upload(file, k_, kind_, exclude_, where_, *fvals):
            if not file:
                return [gr.update()] * (1 + len(query_outputs))
            try:
                query = actions.query_from_upload(file)
            except Exception as err:  # clear the bad file so another can be dropped
                return [gr.update(value=None), *cleared(_message(err))]
            finally:  # decoded: the upload (DICOM header and all) leaves the disk now
                discard_upload(file)
            ctx = {"mode": "image"}
            return [
                gr.update(value=None),
                *new_query(query, ctx, k_, kind_, exclude_, where_, fvals),
            ]

        def on_id(case, k_, kind_, exclude_, where_, *fvals):
            try:
                query = actions.query_from_id(case)
            except Exception as err:
                return cleared(_message(err))
            return new_query(query, {"mode": "image"}, k_, kind_, exclude_, where_, fvals)

        def on_text(text_, k_, kind_, where_, *fvals):
            ctx = {"mode": "text", "text": (text_ or "").strip()}
            return new_query(None, ctx, k_, kind_, False, where_, fvals)

        def on_region(query, state, k_, kind_, exclude_):
            box = state.box() if state is not None else None
            if query is None or box is None:
                return cleared("Upload a film and click two corners of the region first.")
            ctx = {"mode": "region", "region": state, "box": ",".join(map(str, box)),
                   "box_tuple": box}  # fmt: skip
            return new_query(query, ctx, k_, kind_, exclude_, None, [])

        def on_rerun(query, ctx, k_, kind_, exclude_, where_, *fvals):
            if ctx is None:
                return cleared("No query yet: upload an image, pick a case id or type a text.")
            return new_query(query, {**ctx, "page": 0}, k_, kind_, exclude_, where_, fvals)

        def on_page(step):
            def turn(query, ctx, k_, kind_, exclude_, where_, *fvals):
                if ctx is None:
                    return cleared("No query yet.")
                page = max(0, int(ctx.get("page", 0)) + step)
                return new_query(query, {**ctx, "page": page}, k_, kind_, exclude_, where_, fvals)

            return turn

        def on_open(query, hits, ctx, sel):
            if not hits or sel is None or ctx is None:
                return [gr.update()] * len(query_outputs)
            sel = min(max(int(sel), 0), len(hits) - 1)
            return shown(query, ctx, hits, ctx.get("percentiles", []), gr.update(), sel)

        def on_step(step):
            def move(query, hits, ctx, sel):
                return on_open(query, hits, ctx, (sel or 0) + step if sel is not None else 0)

            return move

        def on_action(value, query, hits, ctx, sel, k_, kind_, exclude_, where_, *fvals):
            verb, _, rest = (value or "").partition("|")
            arg = rest.rsplit("|", 1)[0]
            if verb == "open" and arg.isdigit():
                return on_open(query, hits, ctx, int(arg))
            if verb in ("search", "open-id"):
                try:
                    new = actions.query_from_id(arg)
                except Exception as err:
                    return cleared(_message(err))
                if verb == "search":
                    return new_query(new, {"mode": "image"}, k_, kind_, exclude_, where_, fvals)
                hit = pc.store.row_to_hit(pc.store.fetch([arg])[arg], 1.0)
                ctx = ctx or {"mode": "image"}
                ctx = {**ctx, "percentiles": [None]}
                out = shown(query, ctx, [hit], [None], _ok(f"Opened case {arg} from the map."), 0)
                return out
            if verb == "select":
                chosen = [i for i in arg.split(",") if i][:MAX_PAGE]
                rows = pc.store.fetch(chosen, with_vectors=query is not None)
                selected = [
                    pc.store.row_to_hit(
                        r,
                        float(r["vector"] @ query.vector) if query is not None else 0.0,
                    )
                    for r in rows.values()
                ]
                selected.sort(key=lambda h: (-h.score, h.id))
                ctx = {**(ctx or {"mode": "image"}), "page": 0}
                what = "by similarity to the query" if query is not None else "by id"
                message = _ok(f"{len(selected)} cases selected on the map, ordered {what}.")
                pct = [None] * len(selected)
                return shown(query, ctx, selected, pct, message, 0 if selected else None)
            return [gr.update()] * len(query_outputs)

        def on_classify(query, column_, kind_, exclude_):
            """The panel at once: heads not yet fitted say so, and the timer polls for them."""
            idle = gr.Timer(active=False)
            if query is None:
                message = "_No image query: the panel is empty._"
                return [*panel_outputs(None, None, message=message), None, idle]
            if not column_:
                message = "_This library has no label with two or more classes._"
                return [*panel_outputs(None, None, message=message), None, idle]
            try:
                result = actions.classify(query, column_, kind_, exclude_, wait=False)
            except Exception as err:
                return [*panel_outputs(None, None, message=_error(_message(err))), None, idle]
            kind_arg = actions.kind_arg(kind_) or "image"
            pending = actions.classifier.pending(column_, kind_arg)
            waiting = bool(pending) or (
                any(p.evaluated is None for p in result.predictions)
                and actions.classifier.busy(column_, kind_arg)
            )
            why = actions.classifier.unavailable(column_, kind_arg)
            out = panel_outputs(result, query.name, pending=pending, unavailable=why)
            return [*out, result, gr.Timer(active=waiting)]

        def on_map(column_, kind_, query):
            try:
                vector = None if query is None else query.vector
                name = query.name if query is not None else "query"
                return map_svg(
                    actions.library, column_, actions.kind_arg(kind_), vector, name, vocabulary
                )
            except Exception as err:
                return _error(_message(err))

        def on_export(query, hits, ctx, classification):
            if ctx is None or not hits:
                return gr.update(visible=False), _error("Nothing to export: run a query first.")
            name = query.name if query is not None else f"description {ctx.get('text')!r}"
            view = query.view if query is not None else None
            files = write_summary(
                pc, name, view, hits, ctx.get("percentiles", []), classification, vocabulary
            )
            return gr.update(visible=True, value=[str(f) for f in files]), gr.update()

        def on_kind(kind_):
            return [
                gr.update(visible=kind_ != "image" or c not in region_only) for c in filter_values
            ]

        def about():
            count, size = Previews(pc.store).stats()
            extra = (
                f"\n\n**Full-resolution previews**: {count} stored, "
                f"{size / max(count, 1) / 1024:.0f} KiB per film ({size / 2**20:.1f} MiB in all)."
                if count
                else "\n\n**No full-resolution previews**: the viewer shows thumbnails."
            )
            return summary_markdown(pc) + extra

        controls = [k, kind, exclude, where, *filters]
        query_outputs = [
            query_state, hits_state, ctx_state, sel_state, meta, cards, viewer, status,
            page_info, export_files,
        ]  # fmt: skip
        classify_inputs = [query_state, column, kind, exclude]
        classify_outputs = [*method_outputs, classify_state, refresh]
        map_inputs = [colour, map_kind, query_state]
        region_outputs = [region.state, region.canvas, region.box_text]

        def chain(event, handler, inputs, outputs, new=True):
            step = event(handler, inputs, outputs, concurrency_limit=CONCURRENCY_LIMIT)
            if new:  # a new query: the region panel, classification and map follow it
                step = step.then(region.load, query_state, region_outputs)
            step.then(on_classify, classify_inputs, classify_outputs).then(on_map, map_inputs, plot)

        chain(upload.upload, on_upload, [upload, *controls], [upload, *query_outputs])
        chain(id_button.click, on_id, [case_id, *controls], query_outputs)
        chain(case_id.input, on_id, [case_id, *controls], query_outputs)
        for event in (text_button.click, text.submit):
            chain(event, on_text, [text, k, kind, where, *filters], query_outputs)
        state_inputs = [query_state, ctx_state, *controls]
        for event in (rerun.click, where.submit):
            chain(event, on_rerun, state_inputs, query_outputs, new=False)
        chain(prev_page.click, on_page(-1), state_inputs, query_outputs, new=False)
        chain(next_page.click, on_page(+1), state_inputs, query_outputs, new=False)
        chain(
            region.button.click,
            on_region,
            [query_state, region.state, k, kind, exclude],
            query_outputs,
            new=False,
        )
        region.canvas.select(region.on_click, region.state, region_outputs)
        open_inputs = [query_state, hits_state, ctx_state, sel_state]
        prev_case.click(on_step(-1), open_inputs, query_outputs)
        next_case.click(on_step(+1), open_inputs, query_outputs)
        chain(action.change, on_action, [action, *open_inputs, *controls], query_outputs)
        opener.change(on_action, [opener, *open_inputs, *controls], query_outputs)
        export.click(on_export, [query_state, hits_state, ctx_state, classify_state],
                     [export_files, status])  # fmt: skip
        kind.change(on_kind, kind, filters)
        classify_button.click(on_classify, classify_inputs, classify_outputs)
        refresh.tick(on_classify, classify_inputs, classify_outputs, show_progress="hidden")
        column.change(on_classify, classify_inputs, classify_outputs)
        colour.change(on_map, map_inputs, plot)
        map_kind.change(on_map, map_inputs, plot)
        demo.load(on_map, map_inputs, plot)

        def counts_in_words():
            table = label_counts(pc)
            table["value"] = [
                expand(vocabulary, c, v)
                for c, v in zip(table["label"], table["value"], strict=True)
            ]
            return table

        demo.load(lambda: (about(), counts_in_words()), None, [summary, counts])

    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=64)
    if warm_up:
        threading.Thread(target=_warm, args=(actions, default_class), daemon=True).start()
    return demo


def _warm(actions: Actions, column: str | None) -> None:
    try:
        actions.warm_up(column)
    except Exception:  # a warm-up failure only means the first request is slower
        log.exception("UI warm-up failed")


def serve(
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | None = None,
    device: str | None = None,
    insecure_no_auth: bool = False,
) -> None:
    """Open the library at ``db`` and serve the UI (blocking) on ``host:port``.

    Beyond loopback a login (``auth``) is required unless ``insecure_no_auth`` says otherwise.
    """
    import priorcase

    check_exposure(host, auth, insecure_no_auth)
    if auth:
        parse_auth(auth)  # a malformed --auth fails before the library is loaded
    pc = priorcase.open(db, device=device)
    if pc.store.manifest is None or pc.store.count() == 0:
        raise PriorcaseError(f"index {db} is empty: run 'priorcase ingest --db {db} ...' first")
    if not is_loopback(host) and not auth:
        print(f"warning: serving on {host} without a login (--insecure-no-auth)")
    private_upload_dir()  # before the components are built: they read GRADIO_TEMP_DIR
    options = launch_options(auth)
    pc.encoder  # noqa: B018 - load the model before the first request, not during it
    build_app(pc, warm_up=True).launch(server_name=host, server_port=port, **options)
