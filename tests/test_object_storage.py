"""A library on object storage: a real S3 server (moto's server mode, over HTTP on a random
port), MIAS films ingested into ``s3://bucket/lib`` by the CLI, searched, classified and
served from there; the salt key stays local and no credential is written anywhere."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import pytest
from fixtures import write_mias_labels

from priorcase.cli import main

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

BUCKET = "priorcase-test"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-9f3a"
ACCESS = "AKIAPRIORCASETEST01"
# 12 films of 6 patients (left and right), with masses, calcifications and normals
FILMS = [f"mdb{n:03d}" for n in (1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in a thread on 127.0.0.1 and a free port; yields its endpoint."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
    )
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def s3_env(s3_server, tmp_path_factory):
    """The standard AWS variables, a local cache and config folder (module-wide)."""
    endpoint, client = s3_server
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("home")
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "PRIORCASE_CACHE_DIR": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }.items():
        mp.setenv(name, value)
    for name in ("PRIORCASE_KEY_FILE", "PRIORCASE_SALT", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        mp.delenv(name, raising=False)
    yield client, home
    mp.undo()


@pytest.fixture(scope="module")
def remote_library(s3_env, mias, bundled, tmp_path_factory):
    """12 MIAS films (6 patients) with labels and lesion ROIs, ingested by the CLI into S3."""
    client, home = s3_env
    tmp = tmp_path_factory.mktemp("s3-films")
    files = [mias.images / f"{name}.png" for name in FILMS]
    files = [f for f in files if f.exists()]
    if len(files) < 8:
        pytest.skip("too few MIAS films found")
    labels = tmp / "labels.csv"
    ids = {f.stem for f in files}
    write_mias_labels(mias, ids, labels)
    folder = tmp / "films"
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    db = f"s3://{BUCKET}/lib"
    code = main(["ingest", str(folder), "--labels", str(labels), "--findings",
                 str(mias.findings), "--db", db, "--encoder", "bundled", "--quiet",
                 "--workers", "0"])  # fmt: skip
    assert code == 0
    return db, files, client, home


def _keys(client, prefix: str = "lib/") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.mias
def test_ingest_lands_in_the_bucket_and_the_key_stays_local(remote_library) -> None:
    import priorcase
    from priorcase.index.location import LibraryLocation, uri_digest

    db, files, client, home = remote_library
    keys = _keys(client)
    assert "lib/priorcase-manifest.json" in keys
    assert any(k.startswith("lib/cases.lance/_versions/") for k in keys)
    assert any(k.startswith("lib/cases.lance/data/") for k in keys)
    assert not any(k.endswith("salt.key") or k.endswith(".lock") for k in keys), keys
    # the salt lives in the local config folder, named by the URI's digest
    key = home / "config" / "priorcase" / "keys" / f"{uri_digest(db)}.key"
    assert key.is_file() and len(key.read_bytes()) == 32
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key="lib/priorcase-manifest.json")["Body"].read()
    )
    assert manifest["encoder"]["spec"] == "bundled"
    assert {"tissue", "pathology"} <= set(manifest["label_columns"])
    pc = priorcase.open(db)
    assert pc.store.location == LibraryLocation(db)
    assert pc.store.count("image") == len(files)
    assert pc.store.count("roi") > 0


@pytest.mark.mias
def test_search_uses_lancedb_and_finds_the_same_film(remote_library, bundled) -> None:
    import priorcase

    db, files, client, _ = remote_library
    said: list[str] = []
    pc = priorcase.open(db, encoder=bundled, notify=said.append)
    query = files[0]
    hits = pc.search(image=query, k=3, kind="image")
    # a small remote library is read once per version and searched in memory, and says so
    assert any("exact (" in m and "on object storage, read once" in m for m in said), said
    assert hits[0].id == query.stem
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    exact = pc.search(image=query, k=5, where="tissue = 'G'", kind="image")
    # LanceDB's path, which a larger remote library takes: the filter pushed down to LanceDB
    pc = priorcase.open(db, encoder=bundled, backend="lance", notify=said.append)
    hits = pc.search(image=query, k=5, where="tissue = 'G'", kind="image")
    assert hits and all(h.labels["tissue"] == "G" for h in hits)
    assert [h.id for h in hits] == [h.id for h in exact]
    # the library's reference scores were computed once and stored beside the table
    pc.reference.assess_image(hits[0].score)
    assert [k for k in _keys(client, "lib/reference/") if k.endswith(".npy")]
    # `priorcase index`: LanceDB's scalar indexes built in the bucket, the tuned plan beside
    summary = pc.build_indexes()
    assert "search path: lance (asked for)" in summary
    assert any(k.startswith("lib/cases.lance/_indices/") for k in _keys(client))
    assert "lib/ann/lance-ann.json" in _keys(client)
    assert pc.search(image=query, k=1, kind="image")[0].id == query.stem


@pytest.mark.mias
def test_classify_saves_its_head_in_the_bucket(remote_library, bundled) -> None:
    import priorcase

    db, files, client, home = remote_library
    pc = priorcase.open(db, encoder=bundled)
    result = pc.classify(files[1], "tissue", methods=("knn", "logreg"), exclude_same_patient=True)
    out = result.to_json()
    methods = {p["method"]: p for p in out["predictions"]}
    assert set(methods) == {"knn", "logreg"}
    for p in methods.values():
        assert p["error"] is None, p
        assert set(p["probabilities"]) <= {"F", "G", "D"}, p
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    heads = [k for k in _keys(client, "lib/classifiers/") if k.endswith(".joblib")]
    assert any("-logreg-" in k for k in heads), heads
    # the local copy is in the cache folder, under the URI's digest
    cached = list((home / "cache").rglob("*-logreg-*.joblib"))
    assert cached


@pytest.mark.mias
def test_no_credential_anywhere(remote_library, capsys) -> None:
    db, _, client, home = remote_library
    # a command that works (the CLI on the bucket) prints no credential either
    assert main(["search", "--db", db, "--id", "mdb001", "-k", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["results"]
    assert SECRET not in captured.err + captured.out
    for key in _keys(client, ""):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert SECRET.encode() not in body, key
        assert ACCESS.encode() not in body, key
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # a failing command (no such bucket) says so in one line, without the secret
    code = main(["search", "--db", "s3://no-such-bucket/lib", "--id", "mdb001"])
    captured = capsys.readouterr()
    assert code != 0
    assert "s3://no-such-bucket/lib: cannot open: NoSuchBucket" in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert SECRET not in captured.err + captured.out
    assert ACCESS not in captured.err + captured.out


@pytest.mark.mias
def test_a_remote_library_with_a_salt_needs_its_key(remote_library, bundled, monkeypatch) -> None:
    """Another machine without the key gets one line saying where to put it, not a new salt."""
    import priorcase
    from priorcase.errors import SaltMismatchError

    db, files, _, home = remote_library
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "elsewhere"))
    pc = priorcase.open(db, encoder=bundled)
    with pytest.raises(SaltMismatchError, match="the key is never kept on object storage") as err:
        pc.ingest(files[0], progress=False, workers=0)
    assert len(str(err.value).splitlines()) == 1
    assert str(home / "elsewhere" / "priorcase" / "keys") in str(err.value)
    assert not (home / "elsewhere").exists()


@pytest.mark.mias
def test_serve_the_ui_from_the_bucket(remote_library) -> None:
    """The Gradio app opens on the remote library, answers over HTTP on 127.0.0.1, and its
    search action (what the Search button runs) finds an uploaded film."""
    import priorcase
    from priorcase.ui.actions import Actions
    from priorcase.ui.app import build_app

    db, files, _, _ = remote_library
    pc = priorcase.open(db)
    demo = build_app(pc)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200
        with urllib.request.urlopen(url + "config", timeout=30) as response:
            config = json.loads(response.read())
        assert f"{len(files)} cases" in json.dumps(config)
        actions = Actions(pc)
        hits = actions.search_vector(actions.query_from_upload(files[2]), k=3)
        assert hits[0].id == files[2].stem
        reference, *_ = actions.search_reference(hits, None, "image")
        assert reference is not None
    finally:
        demo.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.mias
def test_ui_in_a_browser_searches_the_bucket(remote_library) -> None:
    """Headless Chromium uploads a film to the UI served from S3 and sees it ranked first."""
    sync_api = pytest.importorskip("playwright.sync_api")
    import test_ui_browser as ui

    import priorcase
    from priorcase.ui.app import build_app

    if not ui.CHROMIUM.exists():
        pytest.skip(f"no Chromium at {ui.CHROMIUM}")
    db, files, _, _ = remote_library
    demo = build_app(priorcase.open(db))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(ui.CHROMIUM), headless=True, args=ui.CHROMIUM_ARGS
            )
            page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
            page.set_default_timeout(ui.TIMEOUT_MS)
            ui._open(page, f"http://127.0.0.1:{port}/")
            page.locator("#query-upload input[type=file]").set_input_files(str(files[2]))
            ui._wait_status(page, "cases nearest to")
            page.wait_for_function("document.querySelectorAll('#results .pc-cap').length > 0")
            captions = ui._captions(page)
            assert captions[0].startswith(f"#1 {files[2].stem}"), captions
            browser.close()
    finally:
        demo.close()


@pytest.mark.mias
def test_delete_erases_derived_files_in_the_bucket_and_the_cache(remote_library, bundled) -> None:
    import priorcase

    db, files, client, home = remote_library
    assert _keys(client, "lib/classifiers/")  # saved by the classify test
    pc = priorcase.open(db, encoder=bundled)
    before = pc.store.count("image")
    images, _ = pc.delete(ids=[files[-1].stem])
    assert images == 1 and pc.store.count("image") == before - 1
    assert not _keys(client, "lib/classifiers/")
    assert not list((home / "cache").rglob("*.joblib"))
    assert pc.search(image=files[-1], k=1, kind="image")[0].id != files[-1].stem


def test_library_files_and_manifest_on_s3(s3_env) -> None:
    """The file layer beside the table: whole-object writes, listing, deletion, and manifest
    commits that union columns (object storage has no lock: merge, write, read back)."""
    from priorcase.index.location import LibraryLocation
    from priorcase.index.manifest import Manifest

    client, _ = s3_env
    location = LibraryLocation.parse(f"s3://{BUCKET}/unit/")
    file = location.file("figures", "a.json")
    assert file.read_bytes() is None and not file.fetch()
    file.write_bytes(b'{"auc": 0.5}')
    location.file("figures", "b.json").write_bytes(b"{}")
    assert file.read_bytes() == b'{"auc": 0.5}'
    assert location.file("figures").listing() == ["a.json", "b.json"]
    assert [f.name for f in file.siblings()] == ["b.json"]
    assert file.fetch() and file.local.read_bytes() == b'{"auc": 0.5}'  # cached copy
    file.delete()
    assert file.read_bytes() is None and not file.local.exists()
    # (pyarrow may leave an empty "unit/figures/" folder marker)
    assert [k for k in _keys(client, "unit/") if not k.endswith("/")] == ["unit/figures/b.json"]
    encoder = {"spec": "x", "weights_sha256": "0" * 64, "preprocess": {}}
    Manifest(encoder=encoder, label_columns=["tissue"]).commit(location)
    Manifest(encoder=encoder, label_columns=["pathology"], metadata_columns=["site"]).commit(
        location
    )
    stored = Manifest.load(location)
    assert stored is not None
    assert stored.label_columns == ["tissue", "pathology"] and stored.metadata_columns == ["site"]


def test_location_parsing_and_options(monkeypatch, tmp_path: Path) -> None:
    from priorcase.index.location import LibraryLocation

    local = LibraryLocation.parse(tmp_path / "lib")
    assert not local.is_remote and local.path == tmp_path / "lib"
    assert str(local) == str(tmp_path / "lib")
    remote = LibraryLocation.parse("s3://bucket/some/prefix/")
    assert remote.is_remote and str(remote) == "s3://bucket/some/prefix"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    options = remote.storage_options()
    assert options["aws_secret_access_key"] == SECRET
    assert SECRET not in repr(remote) and SECRET not in str(remote)
    for scheme in ("gs", "az"):
        assert LibraryLocation.parse(f"{scheme}://b/p").is_remote
    from priorcase.errors import StorageError

    with pytest.raises(StorageError, match="AWS_ALLOW_HTTP=true"):
        remote.filesystem()
