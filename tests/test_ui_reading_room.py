"""The reading room in headless Chromium: side-by-side viewer at full resolution, synchronised
zoom and window/level, search with a result, clean state, privacy of uploads, export, keys.

One small MIAS library (films, lesion ROIs, full-resolution previews) for the module.
Screenshots land in ``test-artifacts/ui/``.
"""

from __future__ import annotations

import csv
import re
import urllib.request

import numpy as np
import pytest
from fixtures import write_mias_labels
from PIL import Image
from test_ui_browser import _launch, _shot, _wait_status, browser  # noqa: F401

pytestmark = pytest.mark.browser

FILMS = ("mdb001", "mdb002", "mdb003", "mdb004", "mdb007", "mdb008")
QUERY = "mdb003"


@pytest.fixture(scope="module")
def room(tmp_path_factory, mias, bundled):
    import priorcase
    from priorcase.index.vocabulary import MIAS_VOCABULARY, record_vocabulary

    tmp = tmp_path_factory.mktemp("ui-room")
    labels = tmp / "labels.csv"
    write_mias_labels(mias, set(FILMS), labels)
    pc = priorcase.open(tmp / "db", encoder=bundled)
    files = [mias.images / f"{f}.png" for f in FILMS]
    report = pc.ingest(files, labels=labels, findings=mias.findings, progress=False, workers=0)
    assert report.stored_images == len(FILMS), report.summary()
    record_vocabulary(pc.store.db_dir, MIAS_VOCABULARY)
    demo, url = _launch(pc)
    yield url, tmp, files
    demo.close()


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def _by_id(page, url, case=QUERY):
    page.goto(url)
    page.locator("#case-id input").fill(case)
    page.locator("#id-search").click()
    _wait_status(page, f"Query: {case}")
    page.locator(".pc-pane[data-side='case'] img.pc-img").wait_for()


def _transforms(page):
    return page.eval_on_selector_all(".pc-stage", "els => els.map(e => e.style.transform)")


def test_side_by_side_full_resolution_synchronised(page, room):
    url, *_ = room
    _by_id(page, url)
    sizes = page.eval_on_selector_all(
        "img.pc-img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])"
    )
    assert sizes == [[1024, 1024], [1024, 1024]]  # MIAS films are 1024 px: full resolution
    assert "thumbnail resolution" not in page.locator("#viewer").inner_text()
    markers = page.locator(".pc-marker").all_inner_texts()
    assert all(m.split()[0] in "LR" for m in markers), markers  # laterality from the labels
    # zoom one pane with the wheel: both panes carry the same transform
    query_pane = page.locator(".pc-pane[data-side='query'] .pc-stage")
    query_pane.hover()
    page.mouse.wheel(0, -300)
    page.wait_for_function(
        "[...document.querySelectorAll('.pc-stage')].every(e => e.style.transform.includes"
        "('scale(1.2'))"
    )
    first, second = _transforms(page)
    assert first == second and "scale(1)" not in first
    # pan by dragging the other pane
    box = page.locator(".pc-pane[data-side='case'] .pc-stage").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 160, box["y"] + 130)
    page.mouse.up()
    first, second = _transforms(page)
    assert first == second
    # window/level: one filter for both images; a preset changes it
    page.locator(".pc-preset").select_option("dense")
    slope = page.eval_on_selector("#pc-wl feFuncR", "e => e.getAttribute('slope')")
    assert abs(float(slope) - 255 / 130) < 1e-3
    filters = page.eval_on_selector_all(
        "img.pc-img", "els => els.map(e => getComputedStyle(e).filter)"
    )
    assert len(set(filters)) == 1 and "pc-wl" in filters[0]
    _shot(page, "reading-room-side-by-side")
    page.locator("[data-act='reset']").click()
    assert _transforms(page)[0] == "translate(0px, 0px) scale(1)"


def test_search_with_this_case_and_keyboard(page, room):
    url, *_ = room
    _by_id(page, url)
    second = page.locator(".pc-search-with").nth(1)
    target = second.get_attribute("data-id")
    second.click()
    _wait_status(page, f"Query: {target}")
    assert target in page.locator(".pc-pane[data-side='query'] figcaption").inner_text()
    _shot(page, "search-with-this-case")
    # keyboard: next case, overlays off, focus reaches a result's button
    page.locator("body").click(position={"x": 5, "y": 5})
    before = page.locator(".pc-pane[data-side='case'] figcaption").inner_text()
    assert before.startswith("#1 ")
    page.keyboard.press("]")
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("#2 ").wait_for()
    page.keyboard.press("[")
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("#1 ").wait_for()
    page.keyboard.press("o")
    assert page.locator(".pc-viewer.pc-hide-ov").count() == 1
    page.locator(".pc-search-with").first.focus()
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.className")
    assert "pc-open" in focused, focused  # the next card's open button
    page.keyboard.press("Enter")
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("#2 ").wait_for()
    _shot(page, "keyboard-navigation")


def test_clean_state_after_error_and_switching_query(page, room):
    url, *_ = room
    _by_id(page, url)
    page.locator("#where textarea").fill("pathology = = 'x'")
    page.locator("#rerun").click()
    _wait_status(page, "The filter could not be read")
    assert page.locator(".pc-card").count() == 0
    assert page.locator("img.pc-img").count() == 0  # the viewer is empty too
    content = page.content()
    assert "Traceback" not in content and "invalid --where" not in content
    _shot(page, "clean-state-after-error")
    # a valid id query, then a text query: nothing of the film query stays
    page.locator("#where textarea").fill("")
    _by_id(page, url)
    page.locator("#text-query textarea").fill("dense glandular breast")
    page.locator("#text-search").click()
    _wait_status(page, "Query: dense glandular breast")
    page.locator(".pc-card").first.wait_for()
    assert page.locator(".pc-pane[data-side='query'] img").count() == 0
    assert page.locator("#query-meta").inner_text().strip() == ""
    page.get_by_role("tab", name="Classification").click()
    page.locator("#classify-headline").get_by_text("the panel is empty").wait_for()
    page.get_by_role("tab", name="Library").click()
    assert page.locator("#library-map .pc-star").count() == 0  # no star for a text query
    _shot(page, "clean-state-after-switch")


def test_uploaded_file_name_is_never_shown(page, room, tmp_path):
    from fixtures import write_dicom

    url, *_ = room
    film = np.asarray(Image.open(room[2][0]).convert("L")).astype(np.uint16) * 16
    dicom = write_dicom(
        tmp_path / "patient_Doe.dcm", film, PatientName="Doe^John", PatientID="DOE-77",
        ViewPosition="MLO", ImageLaterality="L",
    )  # fmt: skip
    page.goto(url)
    page.locator("#query-upload input[type=file]").set_input_files(str(dicom))
    _wait_status(page, "Query: uploaded image (MG · MLO · L)")
    page.locator(".pc-pane[data-side='query'] img.pc-img").wait_for()
    page.get_by_role("tab", name="Library").click()
    page.locator("#library-map .pc-star").wait_for()
    page.get_by_role("tab", name="Classification").click()
    page.get_by_role("tab", name="Search").click()
    # the page's HTML without inlined image bytes (base64 may spell anything)
    content = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page.content())
    for name in ("Doe", "DOE"):
        at = content.find(name)
        assert at < 0, content[max(0, at - 300) : at + 60]
    assert "no patient identity" not in page.locator("#status-box").inner_text()
    _shot(page, "upload-without-file-name")


def test_export_summary(page, room):
    url, tmp, _ = room
    _by_id(page, url)
    page.get_by_role("tab", name="Classification").click()
    page.locator("#classify-headline").get_by_text(QUERY).first.wait_for()
    page.get_by_role("tab", name="Search").click()
    page.locator("#export").click()
    link = page.locator("#export-files a").first
    link.wait_for()
    hrefs = page.eval_on_selector_all("#export-files a", "els => els.map(e => e.href)")
    pages = {h.rsplit("/", 1)[-1]: urllib.request.urlopen(h, timeout=10).read() for h in hrefs}
    summary = pages["case-summary.html"].decode()
    table = pages["case-summary.csv"].decode()
    assert "Decision support only" in summary and "bundled" in summary
    assert QUERY in summary and "similarity" in summary and "accuracy" in summary
    with open(tmp / "labels.csv", newline="") as fh:
        patients = {row["patient_id"] for row in csv.DictReader(fh)}
    assert not any(p in summary or p in table for p in patients)
    assert len(table.splitlines()) > 2
    (tmp / "summary.html").write_text(summary)
    page.goto(f"file://{tmp / 'summary.html'}")
    _shot(page, "export-summary")


def test_library_map_hover_click_box_lasso_and_keys(page, room):
    url, *_ = room
    _by_id(page, url)
    page.get_by_role("tab", name="Library").click()
    points = page.locator("#library-map .pc-pt")
    points.first.wait_for()
    assert points.count() == len(FILMS)
    title = points.first.locator("title").text_content()
    assert title.startswith("mdb") and "pathology" in title  # hover text: id and labels
    # shapes, not colour alone: whole images are circles, and the legend names the shapes
    assert page.locator("#library-map circle.pc-pt").count() == len(FILMS)
    assert "■ region of interest" in page.locator("#library-map").inner_text()
    page.locator("#library-map .pc-star").wait_for()
    _shot(page, "library-map-interactive")
    # a box over the whole map selects every case into the results
    svg = page.locator("#library-map svg").bounding_box()
    page.mouse.move(svg["x"] + 2, svg["y"] + 2)
    page.mouse.down()
    page.mouse.move(svg["x"] + svg["width"] / 2, svg["y"] + svg["height"] / 2)
    page.mouse.move(svg["x"] + svg["width"] - 2, svg["y"] + svg["height"] - 2)
    page.mouse.up()
    _wait_status(page, f"{len(FILMS)} cases selected on the map")
    # a click on one point opens that case beside the query
    page.get_by_role("tab", name="Library").click()
    target = points.nth(2).get_attribute("data-id")
    points.nth(2).dispatch_event("click")
    _wait_status(page, f"Opened case {target}")
    page.get_by_role("tab", name="Search").click()
    caption = page.locator(".pc-pane[data-side='case'] figcaption").inner_text()
    assert target in caption
    # keyboard: the map is one tab stop, arrow keys move between points, Enter opens one
    page.get_by_role("tab", name="Library").click()
    stop = page.locator("#library-map .pc-pt[tabindex='0']")
    assert stop.count() == 1
    first = stop.get_attribute("data-id")
    stop.focus()
    for key in ("ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"):
        page.keyboard.press(key)
        moved = page.evaluate("document.activeElement.dataset.id")
        if moved != first:
            break
    assert moved != first and stop.get_attribute("data-id") == moved  # the tab stop moved too
    _shot(page, "library-map-keyboard-focus")
    page.keyboard.press("Enter")
    _wait_status(page, f"Opened case {moved}")
    # lasso: a polygon round the left half of the map selects the points inside it only
    page.get_by_role("tab", name="Library").click()
    page.get_by_role("button", name="Lasso select").click()
    assert page.get_by_role("button", name="Lasso select").get_attribute("aria-pressed") == "true"
    xs = [float(points.nth(i).get_attribute("data-x")) for i in range(points.count())]
    left = sum(x < 380 for x in xs)  # the SVG is 760 wide
    svg = page.locator("#library-map svg").bounding_box()
    mid = svg["x"] + svg["width"] / 2
    page.mouse.move(svg["x"] + 2, svg["y"] + 2)
    page.mouse.down()
    for x, y in ((mid, svg["y"] + 2), (mid, svg["y"] + svg["height"] - 2)):
        page.mouse.move(x, y)
    page.mouse.move(svg["x"] + 2, svg["y"] + svg["height"] - 2)
    page.mouse.up()
    _wait_status(page, f"{left} cases selected on the map")


@pytest.mark.parametrize("size", [(1280, 800), (768, 1024)])
def test_responsive_without_sideways_overflow(browser, room, size):  # noqa: F811
    url, *_ = room
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    try:
        _by_id(page, url)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= size[0], f"page is {width} px wide in a {size[0]} px window"
        _shot(page, f"responsive-{size[0]}x{size[1]}")
    finally:
        context.close()


CONTRAST_JS = """els => els.map(e => {
  const rgb = s => s.match(/[0-9.]+/g).slice(0, 3).map(Number);
  const lum = c => { const [r, g, b] = c.map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let n = e, bg = 'rgba(0, 0, 0, 0)';
  while (n && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) {
    bg = getComputedStyle(n).backgroundColor; n = n.parentElement; }
  const a = lum(rgb(getComputedStyle(e).color)), b = lum(rgb(bg));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
})"""


def test_contrast_and_labels(page, room):
    """WCAG AA (4.5:1) for the reading room's own text; every control has a name."""
    url, *_ = room
    _by_id(page, url)
    selectors = ".pc-cap, .pc-score, .pc-meta, .pc-marker, .pc-pane figcaption, .pc-keys, " \
        ".pc-search-with, .pc-tools button, #status-box p"  # fmt: skip
    ratios = page.eval_on_selector_all(selectors, CONTRAST_JS)
    assert ratios and min(ratios) >= 4.5, sorted(ratios)[:5]
    unnamed = page.eval_on_selector_all(
        ".pc-viewer button, .pc-viewer select, .pc-viewer input, .pc-card button",
        "els => els.filter(e => !(e.getAttribute('aria-label') || e.innerText.trim() ||"
        " e.closest('label'))).length",
    )
    assert unnamed == 0


@pytest.mark.slow  # three searches and an upload: 45 s on a loaded 2-core machine
def test_exclusion_count_and_paging(page, room, tmp_path):
    url, _, files = room
    page.goto(url)
    page.get_by_label("exclude same patient").check()
    page.locator("#case-id input").fill("mdb001")  # mdb002 is the other breast of P001
    page.locator("#id-search").click()
    _wait_status(page, "hid 1 case(s) of this patient")
    ids = page.eval_on_selector_all(".pc-search-with", "els => els.map(e => e.dataset.id)")
    assert "mdb002" not in ids and "mdb001" not in ids
    # a PNG carries no patient identity: say so rather than silently doing nothing
    png = tmp_path / "film.png"
    pixels = np.asarray(Image.open(files[3]).convert("L")).copy()
    pixels[:8, :8] = 0  # not byte-identical to the stored film (which has a patient)
    Image.fromarray(pixels).save(png)
    page.locator("#query-upload input[type=file]").set_input_files(str(png))
    _wait_status(page, "This query has no patient identity")
    # pages of 2: the second page starts at rank 3
    page.get_by_label("exclude same patient").uncheck()
    page.locator("#case-id input").fill(QUERY)
    page.locator("#id-search").click()
    _wait_status(page, f"Query: {QUERY}")
    slider = page.locator("input[type=number]").first
    slider.fill("2")
    slider.press("Enter")
    page.locator("#rerun").click()
    page.wait_for_function("document.querySelectorAll('.pc-card').length === 2")
    page.locator("#next-page").click()
    _wait_status(page, "(page 2)")
    assert page.locator(".pc-cap b").first.inner_text().startswith("#3 ")
