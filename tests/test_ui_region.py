"""Draw-a-box region search in headless Chromium, on a small mammography (MG) MIAS index."""

from __future__ import annotations

import re

import pytest
from test_ui_browser import _launch, _shot, _wait_status, browser, page  # noqa: F401

pytestmark = pytest.mark.browser

FILMS = ("mdb001", "mdb002", "mdb003", "mdb004")
QUERY = "mdb002"  # left breast, circumscribed mass centred at (522, 744), radius 69
BOX = (432, 654, 612, 834)


@pytest.fixture(scope="module")
def mg_server(tmp_path_factory, mias, bundled):
    import priorcase

    files = [mias.images / f"{name}.png" for name in FILMS]
    pc = priorcase.open(tmp_path_factory.mktemp("ui-region") / "db", encoder=bundled)
    report = pc.ingest(
        files, findings=mias.findings, modality="MG", progress=False, workers=0, normal_rois=1
    )
    assert report.stored_tiles > 0, report.summary()
    demo, url = _launch(pc)
    yield url, mias.images / f"{QUERY}.png"
    demo.close()


def test_draw_a_box_and_search_the_region(page, mg_server):  # noqa: F811
    url, query = mg_server
    page.goto(url)
    page.locator("#query-upload input[type=file]").set_input_files(str(query))
    _wait_status(page, "cases nearest to")
    canvas = page.locator("#region-canvas img")
    canvas.wait_for()
    page.wait_for_function("document.querySelector('#region-canvas img').naturalWidth > 0")
    page.wait_for_timeout(1000)  # let the layout settle (the query view lands above)
    # the canvas shows the whole 1024 x 1024 film: click the box's corners at their fractions;
    # each click waits for its answer (a click while one is pending is dropped)
    answers = ("one more corner", "source pixels")
    for (x, y), answer in zip((BOX[:2], BOX[2:]), answers, strict=True):
        canvas.scroll_into_view_if_needed()
        frame = canvas.bounding_box()  # read each time: the page above may have grown
        # the film is drawn "contain" in the element: letterboxed when their shapes differ
        scale = min(frame["width"], frame["height"])  # the film is square
        left, top = (frame["width"] - scale) / 2, (frame["height"] - scale) / 2
        canvas.click(position={"x": left + scale * x / 1024, "y": top + scale * y / 1024})
        page.locator("#region-box").get_by_text(answer).wait_for()
        page.wait_for_function(  # the redrawn film has loaded before the next click
            "(i => i && i.complete && i.naturalWidth > 0)"
            "(document.querySelector('#region-canvas img'))"
        )
        page.wait_for_timeout(300)
    drawn = [int(v) for v in re.findall(r"\d+", page.locator("#region-box").inner_text())[:4]]
    assert all(abs(a - b) <= 12 for a, b in zip(drawn, BOX, strict=True)), drawn  # 432,652,..
    page.locator("#region-search").click()
    _wait_status(page, "regions nearest to the box")
    page.wait_for_function("document.querySelectorAll('#results .pc-cap').length > 0")
    captions = page.locator("#results .pc-cap").all_inner_texts()
    assert all(re.search(r"-(roi|tile)\d", c) for c in captions), captions  # regions only
    page.locator("#results .pc-open").first.click()  # the hit's box on its parent film
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("on film").wait_for()
    assert page.locator(".pc-pane[data-side='case'] svg.pc-ov rect").count() >= 1
    _shot(page, "region-search")
