"""End-to-end UI tests in headless Chromium against a small real MIAS index.

Screenshots of the main views land in ``test-artifacts/ui/`` at the repository root.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_mias_labels
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
# First ten films (benign and normal, fatty to dense, some with lesion ROIs) plus two malignant.
FILMS = [f"mdb{n:03d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)] + ["mdb028", "mdb058"]
QUERY = "mdb003"
TIMEOUT_MS = 30_000
AUTH = "radiologist:s3cret-pass"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def library(tmp_path_factory, mias, bundled):
    """A 12-film index (whole images + lesion ROIs) built with the bundled encoder."""
    import priorcase

    tmp = tmp_path_factory.mktemp("ui-library")
    files = [mias.images / f"{name}.png" for name in FILMS]
    files = [f for f in files if f.exists()]
    if len(files) < 8:
        pytest.skip("too few MIAS films found")
    ids = {f.stem for f in files}
    labels = tmp / "labels.csv"
    write_mias_labels(mias, ids, labels)
    pc = priorcase.open(tmp / "db", encoder=bundled)
    report = pc.ingest(files, labels=labels, findings=mias.findings, progress=False, workers=0)
    assert report.stored_images == len(files), report.summary()
    return pc, {f.stem: f for f in files}


def _launch(pc, auth: str | None = None):
    from priorcase.ui.app import build_app, launch_options

    demo = build_app(pc)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **launch_options(auth),
    )
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def server(library):
    demo, url = _launch(library[0])
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def _open(page, url: str) -> None:
    page.goto(url)
    page.locator("#query-upload").wait_for()


def _captions(page) -> list[str]:
    return page.locator("#results .pc-cap").all_inner_texts()


def _wait_status(page, text: str) -> None:
    page.locator("#status-box").get_by_text(text).first.wait_for()


def test_image_query_finds_the_same_case(page, server, library):
    _, files = library
    _open(page, server)
    page.locator("#query-upload input[type=file]").set_input_files(str(files[QUERY]))
    _wait_status(page, "cases nearest to")
    page.wait_for_function("document.querySelectorAll('#results .pc-cap').length > 0")
    captions = _captions(page)
    assert captions[0].startswith(f"#1 {QUERY}"), captions
    assert "similarity 1.000" in captions[0]  # the same file: cosine 1
    assert "tissue D" in captions[0] and "pathology normal" in captions[0], captions[0]
    assert "already in the library" in page.locator("#status-box").inner_text()
    page.locator(".pc-pane[data-side='query'] img.pc-img").wait_for()  # side by side
    # details of the best hit
    page.locator("#results .pc-open").first.click()
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("#1 ").wait_for()
    _shot(page, "search-results")

    # the classification panel was filled by the same query
    page.get_by_role("tab", name="Classification").click()
    page.locator("#explain-knn").get_by_text("nearest cases are").wait_for()
    assert "same patient excluded" in page.locator("#explain-knn").inner_text()
    page.locator("#explain-zeroshot").get_by_text("closest prompt").wait_for()
    page.locator("#explain-logreg").get_by_text("logistic regression").wait_for()
    _shot(page, "classification")

    # the library tab maps the query
    page.get_by_role("tab", name="Library").click()
    page.get_by_text("About this library").click()
    page.locator("#library-summary").get_by_text("bundled").first.wait_for()
    page.locator("#library-map svg .pc-star").wait_for()
    _shot(page, "library-map")


def test_exclude_same_patient_and_filters(page, server, library):
    _, files = library
    _open(page, server)
    page.locator("#query-upload input[type=file]").set_input_files(str(files[QUERY]))
    _wait_status(page, "cases nearest to")
    page.get_by_label("exclude same patient").check()
    page.locator("#where textarea").fill("pathology = 'benign'")
    page.get_by_role("button", name="Apply to the current query").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#results .pc-cap')]"
        ".every(e => e.innerText.includes('pathology benign'))"
    )
    captions = _captions(page)
    assert captions and not any(c.startswith(f"#1 {QUERY}") for c in captions)
    # lesion ROIs: the crop, plus its place on the parent film
    page.locator("#where textarea").fill("")
    page.get_by_label("roi", exact=True).check()
    page.get_by_role("button", name="Apply to the current query").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#results .pc-cap')]"
        ".some(e => e.innerText.includes('region of interest'))"
    )
    page.locator("#results .pc-open").first.click()
    page.locator(".pc-pane[data-side='case'] figcaption").get_by_text("on film").wait_for()
    _shot(page, "roi-detail")
    # a broken SQL filter is a readable message, not a traceback
    page.locator("#where textarea").fill("pathology = = 'x'")
    page.get_by_role("button", name="Apply to the current query").click()
    _wait_status(page, "The filter could not be read")
    assert "Traceback" not in page.content()


def test_text_query(page, server):
    _open(page, server)
    page.locator("#text-query textarea").fill("dense glandular breast")
    page.locator("#text-search").click()
    _wait_status(page, "matching the description")
    page.wait_for_function("document.querySelectorAll('#results .pc-cap').length > 0")
    captions = _captions(page)
    assert captions[0].startswith("#1 mdb") and "similarity " in captions[0]
    _shot(page, "text-search")


def test_bad_uploads_show_a_clear_error(page, server, library, tmp_path):
    _, files = library
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(files[QUERY].read_bytes()[:3000])
    _open(page, server)
    page.locator("#query-upload input[type=file]").set_input_files(str(truncated))
    _wait_status(page, "Could not read the uploaded image")
    status = page.locator("#status-box").inner_text()
    assert "truncated or corrupt" in status, status
    assert "Traceback" not in page.content()
    assert str(tmp_path) not in status  # server paths stay private
    _shot(page, "error-corrupt-upload")

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.locator("#query-upload input[type=file]").set_input_files(str(notes))
    page.get_by_text("Invalid file type").or_(
        page.get_by_text("not a supported image type")
    ).first.wait_for()
    assert "Traceback" not in page.content()


def test_basic_auth(page, library):
    demo, url = _launch(library[0], auth=AUTH)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "config", timeout=10)
        assert refused.value.code == 401
        page.goto(url)
        page.locator("input[type=password]").wait_for()
        assert page.locator("#query-upload").count() == 0
        user, password = AUTH.split(":", 1)
        page.locator("input:not([type=password])").first.fill(user)
        page.locator("input[type=password]").fill(password + "-wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").first.wait_for()
        page.locator("input:not([type=password])").first.fill(user)
        page.locator("input[type=password]").fill(password)
        page.get_by_role("button", name="Login").click()
        page.locator("#query-upload").wait_for()
    finally:
        demo.close()


# ---------------------------------------------------------------- security (no MIAS needed)

SECRET_NAME = "DOE^JANE^SECRETPATIENT"


@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory, tiny_clip):
    """Eight labelled tiny-CLIP images in a folder whose name a user must never see."""
    from fixtures import write_csv, write_pngs

    import priorcase

    root = tmp_path_factory.mktemp("ui-security") / "PACS_EXPORT_DOE_JANE"
    files = write_pngs(root / "images", 8, size=32)
    labels = write_csv(
        root / "labels.csv",
        ["image_id", "patient_id", "tissue"],
        [[f.stem, f"P{i // 2}", "GF"[i % 2]] for i, f in enumerate(files)],
    )
    pc = priorcase.open(root / "db", encoder=tiny_clip)
    pc.ingest(root / "images", labels=labels, workers=0, progress=False)
    return pc, root


def _files_containing(folder: Path, needle: bytes) -> list[Path]:
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _status_code(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_uploaded_dicom_leaves_no_identifiable_file_and_is_not_served(
    page, tiny_library, tmp_path, monkeypatch
):
    """Uploads once stayed in the shared Gradio folder, downloadable by other servers' users."""
    import tempfile

    import numpy as np
    from fixtures import pattern, write_dicom

    from priorcase.ui.security import private_upload_dir

    pc, root = tiny_library
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # restored after the test
    private = private_upload_dir()
    assert private.stat().st_mode & 0o777 == 0o700
    # a file another Gradio server left in the shared folder, with the same identifiers
    shared = Path(tempfile.gettempdir()) / "gradio" / "priorcase-test-other-server"
    shared.mkdir(parents=True, exist_ok=True)
    planted = shared / "other.dcm"
    dicom = write_dicom(
        tmp_path / "upload.dcm",
        pattern(3, 32).astype(np.uint16) * 16,
        PatientName=SECRET_NAME,
        PatientID="MRN-0042",
        PatientBirthDate="19700101",
    )
    planted.write_bytes(dicom.read_bytes())
    demo, url = _launch(pc)
    uploaded: list[str] = []
    page.on(
        "response",
        lambda r: (
            uploaded.extend(r.json())
            if "/gradio_api/upload" in r.url and r.request.method == "POST"
            else None
        ),
    )
    try:
        _open(page, url)
        page.locator("#query-upload input[type=file]").set_input_files(str(dicom))
        _wait_status(page, "cases nearest to")
        assert uploaded, "the upload request was not seen"
        needle = SECRET_NAME.encode()
        assert _files_containing(private, needle) == []
        assert _files_containing(Path(tempfile.gettempdir()) / "gradio", needle) == [planted]
        for path in [*uploaded, str(planted)]:
            assert _status_code(f"{url}gradio_api/file={path}") in (403, 404), path
        # source paths (here holding a patient's name) are never shown
        page.locator("#results .pc-open").first.click()
        page.locator(".pc-pane[data-side='case'] img.pc-img").wait_for()
        content = page.content()
        assert str(root) not in content and "DOE_JANE" not in content
        assert SECRET_NAME not in content
    finally:
        demo.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_login_is_rate_limited_over_http(tiny_library):
    """100 wrong passwords in 1.25 s, then the right one, once logged in."""
    import time

    from priorcase.ui.security import MAX_FAILURES

    pc, _ = tiny_library
    demo, url = _launch(pc, auth=AUTH)
    user, password = AUTH.split(":", 1)

    def login(pw: str) -> int:
        data = urllib.parse.urlencode({"username": user, "password": pw}).encode()
        return _status_code_post(url + "login", data)

    try:
        start = time.monotonic()
        assert [login("wrong") for _ in range(MAX_FAILURES)] == [400] * MAX_FAILURES
        assert time.monotonic() - start >= 0.4 * MAX_FAILURES  # each failure is slowed
        assert login(password) == 400, "the right password got in during the lockout"
    finally:
        demo.close()
    demo, url = _launch(pc, auth=AUTH)  # a fresh server: no lockout yet
    try:
        assert login(password) == 200
    finally:
        demo.close()


def _status_code_post(url: str, data: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_unlike_upload_abstains_and_a_new_query_clears_the_panel(page, server, tmp_path):
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)).save(noise)
    _open(page, server)
    page.locator("#query-upload input[type=file]").set_input_files(str(noise))
    _wait_status(page, "Unusual query for this library")
    page.get_by_role("tab", name="Classification").click()
    headline = page.locator("#classify-headline")
    headline.get_by_text("No close reference in the library").wait_for()
    assert "uploaded image" in headline.inner_text()  # the panel names its query
    assert "noise.png" not in page.content()  # never the file name
    assert "nearest cases are" not in page.locator("#explain-knn").inner_text()
    _shot(page, "classification-abstains")
    # a text search has no image: the previous answer must not stay on screen
    page.get_by_role("tab", name="Search").click()
    page.locator("#text-query textarea").fill("dense glandular breast")
    page.locator("#text-search").click()
    _wait_status(page, "matching the description")
    page.get_by_role("tab", name="Classification").click()
    headline.get_by_text("the panel is empty").wait_for()
    assert "noise.png" not in headline.inner_text()
    # a library case answers again, and the panel names the new query
    page.get_by_role("tab", name="Search").click()
    page.locator("#case-id input").fill(QUERY)
    page.locator("#id-search").click()
    _wait_status(page, f"Query: {QUERY}")
    page.get_by_role("tab", name="Classification").click()
    headline.get_by_text(QUERY).first.wait_for()
    assert "noise.png" not in headline.inner_text()
    page.locator("#bar-knn").get_by_text("prediction set").wait_for()
    _shot(page, "classification-calibrated")
