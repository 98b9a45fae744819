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
from priorcase.errors import PriorcaseError
from priorcase.records import SearchHit
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
from priorcase.ui.gallery import decode_thumbnail, detail_markdown, enlarge, gallery_items
from priorcase.ui.library_view import label_counts, summary_markdown
from priorcase.ui.overlays import draw_roi
from priorcase.ui.region import RegionPanel, draw_box
from priorcase.ui.security import (
    check_exposure,
    discard_upload,
    is_loopback,
    parse_auth,
    private_upload_dir,
    rate_limited_login,
    shared_gradio_dirs,
)

log = logging.getLogger(__name__)

CONCURRENCY_LIMIT = 4
DELETE_CACHE = (300, 300)  # every 5 minutes, delete Gradio's files older than 5 minutes
MAX_ID_CHOICES = 5000
CSS = """
#status-box p { font-size: 1.02rem; }
.pc-error { color: #b00020; font-weight: 600; }
#results-gallery .grid-wrap { height: auto !important; max-height: none !important; }
#results-gallery .grid-container { grid-template-rows: none; grid-auto-rows: auto; }
#results-gallery .thumbnail-item { aspect-ratio: auto; display: flex; flex-direction: column;
  height: auto; }
#results-gallery .thumbnail-item > img { height: 170px; width: 100%; object-fit: contain;
  background: #000; }
#results-gallery .caption-label { position: static; max-width: 100%; width: 100%;
  white-space: pre-line; opacity: 1; border: none; border-top: 1px solid
  var(--border-color-primary); border-radius: 0; font-size: 0.78rem; line-height: 1.3;
  text-align: left; box-sizing: border-box; }
.pc-method h4 { margin-bottom: 0.2rem; }
"""


def launch_options(auth: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: upload limit, theme, CSS, optional login.

    The login (``auth``) is Gradio's sign-in form checked by :func:`rate_limited_login`.
    When uploads go to a private folder (:func:`private_upload_dir`), the shared
    ``/tmp/gradio`` of other Gradio servers is blocked from ``/gradio_api/file=``.
    """
    options: dict[str, Any] = {
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "theme": gr.themes.Soft(),
        "css": CSS,
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
    if isinstance(err, (UploadError, PriorcaseError)):
        return str(err)
    log.exception("unexpected error in the UI")
    return f"unexpected error ({type(err).__name__}); see the server log"


def _metadata_markdown(query: Query) -> str:
    if not query.metadata:
        return "_No metadata._"
    rows = "\n".join(f"| {k} | {v} |" for k, v in query.metadata.items())
    note = f"\n\n_{query.note}_" if query.note else ""
    return f"| field | value |\n|---|---|\n{rows}{note}"


def build_app(pc: PriorCase, warm_up: bool = False) -> gr.Blocks:
    """The whole UI for one library; ``warm_up`` builds slow caches in a background thread."""
    actions = Actions(pc)
    filter_values = actions.filter_columns()
    class_columns = actions.classifier.columns("image")
    manifest = pc.store.manifest
    label_cols = [c for c in (manifest.label_columns if manifest else []) if c != "patient_id"]
    ids = sorted((pc.store.column_values(label_cols[0], "image") if label_cols else {}).keys())
    default_colour = next((c for c in ("pathology", "tissue") if c in label_cols), None)
    default_colour = default_colour or (label_cols[0] if label_cols else None)
    default_class = next((c for c in ("pathology", "abnormality") if c in class_columns), None)
    default_class = default_class or (class_columns[0] if class_columns else None)
    n_images = pc.store.count("image")
    encoder = manifest.encoder_spec if manifest else "none"

    # files Gradio writes for outputs (query views, thumbnails) are deleted within minutes
    with gr.Blocks(title="priorcase – similar prior cases", delete_cache=DELETE_CACHE) as demo:
        query_state = gr.State(None)  # Query | None
        hits_state = gr.State([])  # list[SearchHit]
        last_search = gr.State(None)  # ("image", None) | ("text", str)

        gr.Markdown(
            f"## priorcase · similar prior cases\n"
            f"{n_images} cases · encoder `{encoder}` · decision support only: "
            "similar cases and scores are not a diagnosis."
        )
        status = gr.Markdown(
            "Upload an image, pick a case id, or describe a finding.", elem_id="status-box"
        )

        with gr.Tabs():
            # ------------------------------------------------------------ search
            with gr.Tab("Search", id="search"), gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=320):
                    upload = gr.File(
                        label="Query image (PNG, JPEG, TIFF, PGM or DICOM, ≤ 50 MB)",
                        file_types=list(UPLOAD_SUFFIXES),
                        type="filepath",
                        elem_id="query-upload",
                        height=160,
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
                    view = gr.Image(
                        label="Query as the model sees it",
                        type="pil",
                        interactive=False,
                        height=260,
                        elem_id="query-view",
                    )
                    meta = gr.Markdown("", elem_id="query-meta")
                    region = RegionPanel()
                with gr.Column(scale=2, min_width=480):
                    with gr.Accordion("Search options and filters", open=True):
                        with gr.Row():
                            k = gr.Slider(1, 50, value=10, step=1, label="cases to show (k)")
                            kind = gr.Radio(
                                ["image", "roi", "tile", ALL_KINDS], value="image", label="kind"
                            )
                            exclude = gr.Checkbox(value=False, label="exclude same patient")
                        with gr.Row():
                            filters = [
                                gr.Dropdown([ANY, *values], value=ANY, label=column, min_width=110)
                                for column, values in filter_values.items()
                            ]
                        with gr.Row():
                            where = gr.Textbox(
                                label="SQL filter (as --where)",
                                placeholder="e.g. pathology = 'malignant' AND tissue != 'F'",
                                scale=4,
                                elem_id="where",
                            )
                            rerun = gr.Button("Apply to last search", scale=1)
                    gallery = gr.Gallery(
                        label="Nearest prior cases (click one for details)",
                        columns=5,
                        height="auto",
                        object_fit="contain",
                        allow_preview=False,
                        elem_id="results-gallery",
                    )
                    with gr.Row(equal_height=False):
                        detail_image = gr.Image(
                            label="Selected case", type="pil", interactive=False, height=300
                        )
                        parent_image = gr.Image(
                            label="Lesion on the parent film",
                            elem_id="parent-overlay",
                            type="pil",
                            interactive=False,
                            height=300,
                            visible=False,
                        )
                        detail = gr.Markdown("", elem_id="case-detail")

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
                with gr.Column(scale=1):
                    gr.Markdown("### Index")
                    summary = gr.Markdown(summary_markdown(pc), elem_id="library-summary")
                    counts = gr.Dataframe(
                        label_counts(pc), label="cases per label", interactive=False, max_height=420
                    )
                with gr.Column(scale=2):
                    with gr.Row():
                        colour = gr.Dropdown(label_cols, value=default_colour, label="colour by")
                        map_kind = gr.Radio(
                            ["image", "roi", ALL_KINDS], value="image", label="kind"
                        )
                        map_button = gr.Button("Draw map", elem_id="draw-map")
                    gr.Markdown("#### PCA map of the embeddings (★ = current image query)")
                    plot = gr.Plot(show_label=False, elem_id="library-map")

        # ---------------------------------------------------------------- handlers
        search_outputs = [hits_state, gallery, status, detail_image, parent_image, detail]

        def results(hits: list[SearchHit], message: str, warning: str | None = None) -> list[Any]:
            if not hits:
                message += " No case matched: loosen the filters."
            return [
                hits,
                gallery_items(hits),
                _error(f"Unusual query for this library: {warning} {message}")
                if warning
                else _ok(message),
                None,
                gr.update(visible=False, value=None),
                "",
            ]

        def failed(message: str) -> list[Any]:
            return [
                gr.update(),
                gr.update(),
                _error(message),
                gr.update(),
                gr.update(),
                gr.update(),
            ]

        def run_image(query, k_, kind_, exclude_, where_, *fvals):
            where_sql = actions.where_clause(dict(zip(filter_values, fvals, strict=True)), where_)
            hits = actions.search_vector(query, k_, kind_, where_sql, exclude_)
            note = f" {query.note}" if query.note else ""
            reference, where_best = actions.search_reference(hits, None, kind_)
            message = f"{len(hits)} nearest cases to {query.name}.{where_best}{note}"
            return results(hits, message, reference.reason)

        def on_upload(file, k_, kind_, exclude_, where_, *fvals):
            if not file:
                return [gr.update()] * (4 + len(search_outputs))
            try:
                query = actions.query_from_upload(file, Path(file).name)
            except Exception as err:  # clear the bad file so another can be dropped
                return [gr.update(value=None), None, None, "", *failed(_message(err))]
            finally:  # decoded: the upload (DICOM header and all) leaves the disk now
                discard_upload(file)
            try:
                found = run_image(query, k_, kind_, exclude_, where_, *fvals)
            except Exception as err:
                found = failed(_message(err))
            return [gr.update(value=None), query, query.view, _metadata_markdown(query), *found]

        def on_id(case, k_, kind_, exclude_, where_, *fvals):
            try:
                query = actions.query_from_id(case)
                found = run_image(query, k_, kind_, exclude_, where_, *fvals)
            except Exception as err:  # the failed query clears the classification panel
                return [None, gr.update(), gr.update(), *failed(_message(err))]
            return [query, query.view, _metadata_markdown(query), *found]

        def on_text(text_, k_, kind_, where_, *fvals):
            try:
                where_sql = actions.where_clause(
                    dict(zip(filter_values, fvals, strict=True)), where_
                )
                hits = actions.search_text(text_, k_, kind_, where_sql)
                reference, where_best = actions.search_reference(hits, text_, kind_)
            except Exception as err:
                return failed(_message(err))
            message = f"{len(hits)} cases matching the description {text_.strip()!r}.{where_best}"
            return results(hits, message, reference.reason)

        def on_rerun(last, query, text_, k_, kind_, exclude_, where_, *fvals):
            if last == "text":
                return on_text(text_, k_, kind_, where_, *fvals)
            if query is None:
                return failed("no query yet: upload an image, pick a case id or type a text")
            try:
                return run_image(query, k_, kind_, exclude_, where_, *fvals)
            except Exception as err:
                return failed(_message(err))

        def on_select(hits: list[SearchHit], evt: gr.SelectData):
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            if not hits or index >= len(hits):
                return None, gr.update(visible=False), ""
            hit = hits[index]
            image = enlarge(decode_thumbnail(hit.thumbnail))
            parent = actions.parent_of(hit) if hit.roi or hit.box else None
            if parent is not None and (hit.roi or hit.box):
                overlay = (
                    draw_box(parent.thumbnail, hit.box, parent.metadata)
                    if hit.box
                    else draw_roi(parent.thumbnail, hit.roi, parent.metadata)
                )
                return (
                    image,
                    gr.update(visible=True, value=overlay),
                    detail_markdown(hit, index + 1),
                )
            return image, gr.update(visible=False, value=None), detail_markdown(hit, index + 1)

        def on_classify(query, column_, kind_, exclude_):
            if query is None:
                return panel_outputs(None, None, message="_Run an image or id query first._")
            if not column_:
                message = "_This library has no label with two or more classes._"
                return panel_outputs(None, None, message=message)
            try:
                result = actions.classify(query, column_, kind_, exclude_)
            except Exception as err:
                return panel_outputs(None, None, message=_error(_message(err)))
            return panel_outputs(result, query.name)

        def clear_panel():
            message = "_A text search has no image to classify: the panel is empty._"
            return panel_outputs(None, None, message=message)

        def on_map(column_, kind_, query):
            try:
                return actions.library_map(column_, kind_, query)
            except Exception as err:
                raise gr.Error(_message(err)) from None

        controls = [k, kind, exclude, where, *filters]
        query_outputs = [query_state, view, meta, *search_outputs]
        classify_inputs = [query_state, column, kind, exclude]
        map_inputs = [colour, map_kind, query_state]

        def mark(mode):
            return lambda: mode

        region_outputs = [region.state, region.canvas, region.box_text]
        for event, handler, inputs in (
            (upload.upload, on_upload, [upload, *controls]),
            (id_button.click, on_id, [case_id, *controls]),
            (case_id.input, on_id, [case_id, *controls]),
        ):
            outputs = [upload, *query_outputs] if handler is on_upload else query_outputs
            (
                event(handler, inputs, outputs, concurrency_limit=CONCURRENCY_LIMIT)
                .then(region.load, query_state, region_outputs)
                .then(mark("image"), None, last_search)
                .then(on_classify, classify_inputs, method_outputs)
                .then(on_map, map_inputs, plot)
            )
        for event in (text_button.click, text.submit):
            event(
                on_text,
                [text, k, kind, where, *filters],
                search_outputs,
                concurrency_limit=CONCURRENCY_LIMIT,
            ).then(mark("text"), None, last_search).then(clear_panel, None, method_outputs)
        rerun.click(on_rerun, [last_search, query_state, text, *controls], search_outputs)

        def on_region(state, k_, kind_, exclude_):
            try:
                hits = region.search(pc, state, k_, kind_, exclude_)
            except Exception as err:
                return failed(_message(err))
            box = ",".join(map(str, state.box()))
            return results(hits, f"{len(hits)} nearest regions to box {box}, drawn on their films.")

        region.canvas.select(region.on_click, region.state, region_outputs)
        region.button.click(on_region, [region.state, k, kind, exclude], search_outputs)
        where.submit(on_rerun, [last_search, query_state, text, *controls], search_outputs)
        gallery.select(on_select, hits_state, [detail_image, parent_image, detail])
        classify_button.click(on_classify, classify_inputs, method_outputs)
        column.change(on_classify, classify_inputs, method_outputs)
        map_button.click(on_map, map_inputs, plot)
        colour.change(on_map, map_inputs, plot)
        map_kind.change(on_map, map_inputs, plot)
        demo.load(on_map, map_inputs, plot)
        demo.load(lambda: (summary_markdown(pc), label_counts(pc)), None, [summary, counts])

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
