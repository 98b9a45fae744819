"""Encoders: bundled towers, tiny open_clip models, spec errors, default fallback."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import TINY_SPEC, pattern, row_count
from PIL import Image

from priorcase.encoders import create_default_encoder, create_encoder
from priorcase.encoders.bundled import (
    LITE0_PREPROCESS,
    _lite0_weights_path,
    _minilm_path,
    build_lite0_backbone,
)
from priorcase.encoders.preprocess import preprocess_pixels
from priorcase.errors import EncoderSpecError


def _unit_float32(x: np.ndarray, dim: int) -> None:
    assert x.dtype == np.float32 and x.shape[-1] == dim
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5)


def test_bundled_dimensions_and_normalisation(bundled) -> None:
    images = bundled.embed_pixels([pattern(1), pattern(2, size=80), pattern(1)])
    _unit_float32(images, 1280)
    assert images.shape == (3, 1280) and bundled.dim == 1280
    np.testing.assert_array_equal(images[0], images[2])  # same image, same vector
    assert float(images[0] @ images[1]) < 0.999
    texts = bundled.embed_texts(["dense breast", "fatty breast", "dense breast"])
    _unit_float32(texts, 384)
    assert bundled.text_dim == 384 and not bundled.aligned
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    # the same image in a later call, and in a batch of one, gives the same vector
    np.testing.assert_allclose(bundled.embed_pixels([pattern(1)])[0], images[0], atol=1e-5)
    rgb = np.repeat(pattern(1)[..., None], 3, axis=2)
    np.testing.assert_allclose(bundled.embed_pixels([rgb])[0], images[0], atol=1e-5)


def test_bundled_weights_hash_is_the_files_digest(bundled) -> None:
    digest = hashlib.sha256()
    for path in (_lite0_weights_path(), _minilm_path() / "model.safetensors"):
        digest.update(path.read_bytes())
    assert bundled.weights_hash() == digest.hexdigest()
    described = bundled.describe()
    assert described["spec"] == "bundled" and described["dim"] == 1280
    assert described["weights_sha256"] == digest.hexdigest()
    assert described["preprocess"]["image_size"] == 224


def test_efficientnet_imagenet_weights_are_really_loaded() -> None:
    """The full classifier calls scikit-learn's sample flower a daisy (ImageNet class 985)."""
    from sklearn.datasets import load_sample_image

    flower = Image.fromarray(load_sample_image("flower.jpg"))
    w, h = flower.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = np.asarray(flower.crop((left, top, left + side, top + side)))
    model = build_lite0_backbone(with_classifier=True)
    with torch.inference_mode():
        probs = model(preprocess_pixels(square, LITE0_PREPROCESS)[None]).softmax(-1)[0]
    assert int(probs.argmax()) == 985  # daisy
    assert float(probs.max()) > 0.1  # random weights would give about 1/1000
    backbone = build_lite0_backbone()
    assert backbone.num_classes == 0 and backbone.num_features == 1280


def test_tiny_openclip_random_and_checkpoint(tiny_clip, tiny_checkpoint: Path) -> None:
    assert tiny_clip.spec == TINY_SPEC and tiny_clip.aligned
    assert tiny_clip.dim == tiny_clip.text_dim == 32
    images = tiny_clip.embed_pixels([pattern(3), pattern(4)])
    _unit_float32(images, 32)
    texts = tiny_clip.embed_texts(["benign mass", "normal"])
    _unit_float32(texts, 32)
    # random weights are seeded: a second model hashes and embeds the same
    again = create_encoder(TINY_SPEC, "cpu")
    assert again.weights_hash() == tiny_clip.weights_hash()
    np.testing.assert_allclose(again.embed_pixels([pattern(3)])[0], images[0], atol=1e-6)

    loaded = create_encoder(f"{TINY_SPEC}@{tiny_checkpoint}", "cpu")
    assert loaded.spec == f"{TINY_SPEC}@{tiny_checkpoint}"
    assert loaded.weights_hash() == tiny_clip.weights_hash()
    np.testing.assert_allclose(loaded.embed_pixels([pattern(3)])[0], images[0], atol=1e-6)

    # a checkpoint with other weights is another encoder
    state = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    state["visual.proj"] = state["visual.proj"] * -1.0
    other_path = tiny_checkpoint.parent / "other.pt"
    torch.save(state, other_path)
    other = create_encoder(f"{TINY_SPEC}@{other_path}", "cpu")
    assert other.weights_hash() != tiny_clip.weights_hash()
    np.testing.assert_allclose(other.embed_pixels([pattern(3)])[0], -images[0], atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openclip:NoSuchNet-B-99", "unknown open_clip architecture 'NoSuchNet-B-99'"),
        (f"{TINY_SPEC}/laion9000", "unknown pretrained tag 'laion9000'"),
        ("openclip:ViT-B-32/not-a-tag", "known: openai"),
        (f"{TINY_SPEC}@/nonexistent/weights.pt", "checkpoint file not found"),
        ("openclip:", "needs an architecture"),
        ("bundled:large", "takes no options"),
        ("clip-vit", "unknown encoder spec 'clip-vit'"),
    ],
)
def test_bad_specs_are_encoder_spec_errors(tiny_arch: str, spec: str, message: str) -> None:
    with pytest.raises(EncoderSpecError) as err:
        create_encoder(spec, "cpu")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_corrupt_checkpoint_is_an_encoder_spec_error(tiny_arch: str, tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch checkpoint")
    with pytest.raises(EncoderSpecError, match="cannot load open_clip model"):
        create_encoder(f"{TINY_SPEC}@{bad}", "cpu")


def test_default_encoder_falls_back_to_bundled_offline(bundled) -> None:
    notes: list[str] = []
    started = time.perf_counter()
    encoder = create_default_encoder("cpu", notify=notes.append)
    seconds = time.perf_counter() - started
    if encoder.spec != "bundled":
        pytest.skip("the default open_clip weights are cached here: nothing to fall back from")
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "openclip:ViT-B-32/openai unavailable" in notes[0] and "'bundled'" in notes[0]
    assert seconds < 30, f"fallback took {seconds:.1f} s (a download attempt hung?)"
    assert encoder.weights_hash() == bundled.weights_hash()


# ---------------------------------------------------------------- precision and the probe image


def _library(tmp_path: Path, encoder) -> Path:
    from fixtures import write_pngs

    import priorcase

    write_pngs(tmp_path / "images", 4, size=32)
    db = tmp_path / "db"
    priorcase.open(db, encoder=encoder).ingest(tmp_path / "images", workers=0, progress=False)
    return db


def _tamper(db: Path, **fields) -> None:
    import json

    from priorcase.index.manifest import MANIFEST_NAME

    path = db / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["encoder"].update(fields)
    path.write_text(json.dumps(manifest))


def test_manifest_records_precision_and_probe(tiny_clip, tmp_path: Path) -> None:
    from priorcase.encoders.base import PROBE_MIN_COSINE, probe_image
    from priorcase.index.manifest import Manifest

    db = _library(tmp_path, tiny_clip)
    recorded = Manifest.load(db).encoder
    assert recorded["precision"] == "fp32" and recorded["device_type"] == "cpu"
    assert recorded["probe_min_cosine"] == PROBE_MIN_COSINE
    probe = np.asarray(recorded["probe"])
    assert probe.shape == (32,) and abs(np.linalg.norm(probe) - 1) < 1e-4
    np.testing.assert_allclose(probe, tiny_clip.embed_pixels([probe_image()])[0], atol=1e-5)
    assert recorded["preprocess"]["resize"] == "letterbox-bicubic"


def test_other_precision_with_equivalent_probe_is_accepted(tiny_clip, tmp_path: Path) -> None:
    import priorcase

    db = _library(tmp_path, tiny_clip)
    probe = np.asarray(tiny_clip.probe_vector(), dtype=np.float64)
    nudged = probe + 0.004 * np.sin(np.arange(len(probe)))  # fp16-sized rounding: cos > 0.999
    nudged /= np.linalg.norm(nudged)
    assert float(nudged @ probe) > 0.999
    _tamper(db, probe=nudged.tolist(), precision="fp16-autocast", device_type="cuda")
    hits = priorcase.open(db, encoder=tiny_clip).search(image=tmp_path / "images" / "img000.png")
    assert hits[0].id == "img000"


def test_other_precision_with_different_probe_is_refused(tiny_clip, tmp_path: Path, capsys) -> None:
    import priorcase
    from priorcase.cli import main
    from priorcase.errors import EncoderMismatchError

    db = _library(tmp_path, tiny_clip)
    probe = np.asarray(tiny_clip.probe_vector(), dtype=np.float64)
    moved = probe + 0.2 * np.cos(np.arange(len(probe)))  # as far as another preprocessing
    moved /= np.linalg.norm(moved)
    _tamper(db, probe=moved.tolist(), precision="fp16-autocast", device_type="cuda")
    query = tmp_path / "images" / "img001.png"  # a new query vector would be computed
    with pytest.raises(EncoderMismatchError, match="embeds the probe image differently"):
        priorcase.open(db, encoder=tiny_clip).search(image=query, k=2)
    before = row_count(db)
    assert main(["search", "--db", str(db), "--image", str(query)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fp16-autocast on cuda" in err and "fp32 on cpu" in err
    with pytest.raises(EncoderMismatchError):  # nor can it add vectors
        priorcase.open(db, encoder=tiny_clip).ingest(tmp_path / "images", progress=False)
    assert row_count(db) == before


@pytest.mark.parametrize("shape", [(300, 200), (120, 400), (64, 64, 3), (90, 50, 3)])
def test_grey_preprocessing_equals_preprocessing_its_rgb_copy(shape: tuple[int, ...]) -> None:
    """Grey films are resized as one plane: the tensor must equal the RGB-copy route exactly
    (vectors of existing libraries would otherwise change)."""
    from priorcase.encoders.preprocess import PreprocessConfig, letterbox, to_rgb_image

    pixels = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    clip_like = PreprocessConfig(224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))  # unequal channels
    cfg = clip_like if len(shape) == 2 else LITE0_PREPROCESS
    rgb = np.asarray(letterbox(to_rgb_image(pixels), cfg.image_size), np.float32)
    assert letterbox(Image.fromarray(pixels), 20).mode == Image.fromarray(pixels).mode
    want = (rgb - np.float32(255) * np.asarray(cfg.mean, np.float32)) / (
        np.float32(255) * np.asarray(cfg.std, np.float32)
    )
    got = preprocess_pixels(pixels, cfg).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.shape == (cfg.image_size, cfg.image_size, 3)
