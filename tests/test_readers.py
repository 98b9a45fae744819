"""Image reading: Pillow formats, DICOM decoding, bad inputs and pseudonymisation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_dicom
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    JPEGLSLossless,
)

from priorcase.errors import ImageReadError
from priorcase.ingest.pseudonym import Pseudonymizer
from priorcase.ingest.readers import (
    SUPPORTED_SUFFIXES,
    file_sha256,
    iter_image_files,
    read_image,
)

PSEUDO = Pseudonymizer(b"test-salt")


def _gradient(h: int = 12, w: int = 16, hi: int = 255, dtype: type = np.uint8) -> np.ndarray:
    return np.linspace(0, hi, h * w).reshape(h, w).astype(dtype)


# ---------------------------------------------------------------- Pillow formats


def test_png_8bit_grayscale(tmp_path: Path) -> None:
    arr = _gradient()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", PSEUDO)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (12, 16)
    np.testing.assert_array_equal(img.pixels, arr)
    assert img.patient is None and img.metadata == {}


def test_png_16bit_scaled_minmax(tmp_path: Path) -> None:
    arr = _gradient(hi=4000, dtype=np.uint16) + 1000
    Image.fromarray(arr).save(tmp_path / "b16.png")
    assert Image.open(tmp_path / "b16.png").mode.startswith("I")
    px = read_image(tmp_path / "b16.png", PSEUDO).pixels
    assert px.dtype == np.uint8 and px.shape == arr.shape
    assert px.min() == 0 and px.max() == 255
    assert np.all(np.diff(px.ravel().astype(int)) >= 0)  # order preserved


def test_jpeg_rgb(tmp_path: Path) -> None:
    arr = np.zeros((10, 14, 3), np.uint8)
    arr[..., 0] = 200
    Image.fromarray(arr).save(tmp_path / "c.jpg", quality=95)
    px = read_image(tmp_path / "c.jpg", PSEUDO).pixels
    assert px.shape == (10, 14, 3) and px.dtype == np.uint8
    assert abs(int(px[..., 0].mean()) - 200) < 5 and px[..., 1].mean() < 10


def test_tiff_16bit(tmp_path: Path) -> None:
    arr = _gradient(hi=60000, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.tiff")
    px = read_image(tmp_path / "d.tiff", PSEUDO).pixels
    assert px.shape == arr.shape and px.dtype == np.uint8 and px.max() == 255


def test_pgm(tmp_path: Path) -> None:
    arr = _gradient()
    Image.fromarray(arr).save(tmp_path / "e.pgm")
    np.testing.assert_array_equal(read_image(tmp_path / "e.pgm", PSEUDO).pixels, arr)


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    arr = np.full((8, 9, 4), 50, np.uint8)
    arr[..., 3] = 0
    Image.fromarray(arr).save(tmp_path / "f.png")
    px = read_image(tmp_path / "f.png", PSEUDO).pixels
    assert px.shape == (8, 9, 3)
    assert np.all(px == 50)


# ---------------------------------------------------------------- DICOM


def test_dicom_monochrome2_window(tmp_path: Path) -> None:
    arr = _gradient(hi=4095, dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w.dcm",
        arr,
        BitsStored=12,
        HighBit=11,
        WindowCenter=2048,
        WindowWidth=1024,
        ViewPosition="CC",
        ImageLaterality="L",
        BodyPartExamined="BREAST",
        Manufacturer="ACME",
        StudyDate="20240131",
    )
    img = read_image(path, PSEUDO)
    px = img.pixels
    assert px.dtype == np.uint8 and px.shape == arr.shape
    # Below the window -> black, above -> white, centre -> mid grey.
    assert px[arr < 1500].max() == 0
    assert px[arr > 2600].min() == 255
    mid = px[(arr > 2000) & (arr < 2100)]
    assert 100 < mid.mean() < 155
    # coded tags only: free text (body part, manufacturer) and dates are never read
    assert img.metadata == {"modality": "MG", "view_position": "CC", "laterality": "L"}


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = _gradient(hi=1000, dtype=np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")
    px = read_image(path, PSEUDO).pixels
    assert px.flat[int(arr.argmax())] == 0  # brightest stored value becomes darkest
    assert px.flat[int(arr.argmin())] == 255


def test_dicom_signed_with_rescale(tmp_path: Path) -> None:
    arr = _gradient(hi=2000, dtype=np.int16) - 1000  # -1000..1000 stored
    path = write_dicom(tmp_path / "ct.dcm", arr, RescaleSlope=2, RescaleIntercept=-24)
    px = read_image(path, PSEUDO).pixels
    assert px.dtype == np.uint8
    assert px.flat[int(arr.argmin())] == 0 and px.flat[int(arr.argmax())] == 255
    assert np.all(np.diff(px.ravel().astype(int)) >= 0)


def test_dicom_8bit_and_rgb(tmp_path: Path) -> None:
    gray = write_dicom(tmp_path / "g8.dcm", _gradient(hi=100))
    px = read_image(gray, PSEUDO).pixels
    assert px.shape == (12, 16) and px.max() == 255  # min–max without a window
    rgb_arr = np.zeros((6, 7, 3), np.uint8)
    rgb_arr[..., 2] = 180
    rgb = write_dicom(tmp_path / "rgb.dcm", rgb_arr, photometric="RGB")
    np.testing.assert_array_equal(read_image(rgb, PSEUDO).pixels, rgb_arr)


def test_dicom_multiframe_refused(tmp_path: Path) -> None:
    frames = np.stack([_gradient(), _gradient()])
    path = write_dicom(tmp_path / "mf.dcm", frames[0], NumberOfFrames=2)
    with pytest.raises(ImageReadError, match=r"multi-frame DICOM \(2 frames\) is not supported"):
        read_image(path, PSEUDO)


def test_dicom_without_pixels_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "sr.dcm", None)
    with pytest.raises(ImageReadError, match="DICOM has no pixel data") as err:
        read_image(path, PSEUDO)
    assert "sr.dcm" in str(err.value)


@pytest.mark.parametrize(
    ("syntax", "name"), [(JPEGLSLossless, "JPEG-LS Lossless"), (MPEG2MPML, "MPEG2")]
)
def test_dicom_undecodable_compression(tmp_path: Path, syntax: str, name: str) -> None:
    # A bogus payload: fails whether or not a plugin for the syntax is installed, and the
    # message must say which transfer syntax (and, if unsupported, what to install).
    path = write_dicom(
        tmp_path / "bad.dcm",
        _gradient(dtype=np.uint8),
        transfer_syntax=syntax,
        PixelData=encapsulate([b"\xff\xd8 not really compressed \xff\xd9"]),
    )
    with pytest.raises(ImageReadError) as err:
        read_image(path, PSEUDO)
    msg = str(err.value)
    assert "bad.dcm" in msg and name in msg and syntax in msg
    assert "unsupported compression" in msg or "cannot decode" in msg
    assert "\n" not in msg and "Traceback" not in msg


def test_extensionless_dicom_by_magic(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM000001", _gradient(hi=1000, dtype=np.uint16))
    img = read_image(path, PSEUDO)
    assert img.pixels.shape == (12, 16) and img.metadata["modality"] == "MG"


def test_dicom_patient_identifiers_never_leak(tmp_path: Path) -> None:
    secrets = {
        "PatientName": "Doe^Jane",
        "PatientID": "MRN-778899",
        "PatientBirthDate": "19610203",
    }
    path = write_dicom(tmp_path / "p.dcm", _gradient(), AccessionNumber="ACC123", **secrets)
    img = read_image(path, PSEUDO)
    blob = repr(img.metadata) + repr(img.patient)
    for value in [*secrets.values(), "Doe", "Jane", "778899", "ACC123"]:
        assert value not in blob
    assert img.patient is not None and img.patient.startswith("anon-")
    assert read_image(path, Pseudonymizer(b"test-salt")).patient == img.patient
    assert read_image(path, Pseudonymizer(b"other-salt")).patient != img.patient


def test_dicom_patient_falls_back_to_name(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "n.dcm", _gradient(), PatientName="Roe^Rick")
    assert read_image(path, PSEUDO).patient == PSEUDO("Roe^Rick")
    no_patient = write_dicom(tmp_path / "none.dcm", _gradient())
    assert read_image(no_patient, PSEUDO).patient is None


# ---------------------------------------------------------------- bad inputs


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png", PSEUDO)


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt image") as err:
        read_image(tmp_path / "t.png", PSEUDO)
    assert "t.png" in str(err.value)


def test_text_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not an image: cannot identify image file") as err:
        read_image(tmp_path / "notes.png", PSEUDO)
    assert "notes.png" in str(err.value)


def test_text_named_dcm_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_text("hello")
    with pytest.raises(ImageReadError, match=r"x\.dcm: not a DICOM file"):
        read_image(tmp_path / "x.dcm", PSEUDO)
    with pytest.raises(ImageReadError, match=r"gone\.png: file not found"):
        read_image(tmp_path / "gone.png", PSEUDO)


# ---------------------------------------------------------------- file discovery


def test_iter_image_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(_gradient()).save(tmp_path / "a.jpg")
    Image.fromarray(_gradient()).save(tmp_path / ".hidden" / "h.png")
    Image.fromarray(_gradient()).save(tmp_path / ".dot.png")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "noext").write_text("not dicom")
    write_dicom(tmp_path / "sub" / "IM0001", _gradient())
    found = iter_image_files([tmp_path])
    assert found == [tmp_path / "a.jpg", tmp_path / "sub" / "IM0001", tmp_path / "sub" / "b.PNG"]
    # Explicit files are kept (and reported later if bad); duplicates removed.
    assert iter_image_files([tmp_path / "readme.txt", tmp_path / "a.jpg", tmp_path / "a.jpg"]) == [
        tmp_path / "readme.txt",
        tmp_path / "a.jpg",
    ]
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".dcm"} <= SUPPORTED_SUFFIXES


def test_file_sha256(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * (1 << 20) + 7)
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- pseudonyms


def test_pseudonymizer_basics() -> None:
    p = Pseudonymizer(b"k")
    assert p(None) is None and p("") is None and p("   ") is None
    assert p(" 123 ") == p("123")
    assert p("123").startswith("anon-") and len(p("123")) == len("anon-") + 16
    assert p("123") != Pseudonymizer(b"k2")("123")
    assert "k" not in repr(p).replace("Pseudonymizer", "")


def test_for_index_creates_private_salt_and_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PRIORCASE_SALT", raising=False)
    db = tmp_path / "db"
    first = Pseudonymizer.for_index(db)
    key = db / "salt.key"
    assert key.is_file() and len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    salt = key.read_bytes()
    second = Pseudonymizer.for_index(db)
    assert key.read_bytes() == salt
    assert first("P1") == second("P1")
    assert Pseudonymizer.for_index(tmp_path / "other")("P1") != first("P1")


def test_for_index_env_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIORCASE_SALT", "shared-secret")
    p = Pseudonymizer.for_index(tmp_path / "db")
    assert p("P1") == Pseudonymizer(b"shared-secret")("P1")
    assert not (tmp_path / "db" / "salt.key").exists()
