"""Trustworthy answers: salt-free folds, grouped calibration, conformal sets, honest operating
points, the explicit positive class, fair normal ROIs and the "no close reference" check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_classify_eval_cli import CLASSES, textured

import priorcase
from priorcase.classifiers.calibration import GroupCalibrated, conformal_quantile
from priorcase.classifiers.linear import LogisticHead
from priorcase.cli import main
from priorcase.evaluation.metrics import (
    brier_score,
    default_positive,
    expected_calibration_error,
    nested_threshold_table,
)
from priorcase.evaluation.splits import content_group_keys, grouped_folds
from priorcase.ingest.roi import background_fraction, breast_mask, sample_normal_rois
from priorcase.retrieval.reference import leave_one_group_out_top


def blobs(n: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in 8-d, two rows per patient."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(0, 1, (n, 8)) + shift * y[:, None] * np.eye(8)[0]
    return X + 3.0 * np.eye(8)[1], np.where(y, "lesion", "normal"), np.arange(n) // 2


def test_default_positive_is_never_normal() -> None:
    assert default_positive(["lesion", "normal"]) == "lesion"
    assert default_positive(["normal", "zebra"]) == "zebra"
    assert default_positive(["benign", "malignant"], counts=[47, 35]) == "malignant"
    assert default_positive(["not benign", "benign"]) == "benign"


def test_folds_do_not_depend_on_salt_or_order() -> None:
    rng = np.random.default_rng(0)
    keys = np.array([f"{h:064x}" for h in rng.integers(0, 2**62, 60)])
    patient = np.arange(60) // 2
    y = np.array(["a", "b", "c"])[np.arange(60) % 3]

    def folds(salt: str, order: np.ndarray) -> list[set[str]]:
        groups = np.array([f"{salt}-{p * 7919 % 101}" for p in patient])[order]
        k, yy = keys[order], y[order]
        rows = np.argsort(k)  # labelled_set orders rows by content key
        named = content_group_keys(groups[rows], k[rows])
        return [set(k[rows][te]) for _, te in grouped_folds(yy[rows], named, 5)]

    first = folds("salt-one", np.arange(60))
    again = folds("another", rng.permutation(60))
    assert first == again
    # the pseudonyms alone would have given other folds
    raw = [set(keys[te]) for _, te in grouped_folds(y, np.array([f"x{p}" for p in patient]), 5)]
    assert len(first) == len(raw) == 5


def test_grouped_calibration_fixes_an_overconfident_head_and_covers() -> None:
    X, y, groups = blobs(600, 0)
    Xt, yt, _ = blobs(2000, 1)
    sharp = LogisticHead(Cs=(1000.0,))  # nearly unregularised on few features: overconfident
    raw = sharp.fit(X[:300], y[:300], groups=groups[:300]).predict_proba(Xt)
    cal = GroupCalibrated(LogisticHead(Cs=(1000.0,)), alpha=0.1).fit(
        X[:300], y[:300], groups=groups[:300]
    )
    proba = cal.predict_proba(Xt)
    assert cal.calibrated_
    ece_raw, _ = expected_calibration_error(yt, raw, cal.classes_)
    ece_cal, table = expected_calibration_error(yt, proba, cal.classes_)
    assert ece_cal < ece_raw
    assert sum(table["count"]) == len(yt)
    assert brier_score(yt, proba, cal.classes_) <= brier_score(yt, raw, cal.classes_) + 1e-3
    sets = cal.sets_from_proba(proba)
    covered = sets[np.arange(len(yt)), np.searchsorted(cal.classes_, yt)].mean()
    assert covered == pytest.approx(0.9, abs=0.05)
    # the out-of-fold rows are grouped: a patient's two rows sit in the same inner test fold
    assert set(cal.oof_rows_) == set(range(300))


def test_conformal_quantile_is_finite_sample_valid() -> None:
    scores = np.linspace(0, 1, 19)
    assert conformal_quantile(scores, 0.1) == scores[17]  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores[:5], 0.1) == 1.0  # too few rows: every class


def test_operating_points_are_chosen_on_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    train_pos = rng.random(200) < 0.4
    train_score = np.where(train_pos, 0.7, 0.3) + rng.normal(0, 0.1, 200)
    test_pos = rng.random(100) < 0.4
    test_score = np.where(test_pos, 0.7, 0.3) + rng.normal(0, 0.1, 100) - 0.2  # shifted
    rows = nested_threshold_table([(train_pos, train_score, test_pos, test_score)])
    sens80 = next(r for r in rows if r["target"] == "sensitivity >= 0.8")
    # the threshold reaches 0.8 on the training rows, so on shifted test rows it falls short
    assert sens80["sensitivity"] < 0.8
    assert sens80["TP"] + sens80["FN"] == int(test_pos.sum())
    assert sens80["chosen_on"].startswith("training folds")


def test_normal_rois_may_reach_the_skin_line() -> None:
    size = 400
    yy, xx = np.mgrid[0:size, 0:size]
    film = np.where((xx - 0) ** 2 + (yy - 200) ** 2 < 180**2, 160, 5).astype(np.uint8)
    rois = sample_normal_rois(film, 40, 20, seed=1)
    assert len(rois) >= 10
    mask = breast_mask(film)
    for x, y, r in rois:  # the circle itself lies in the breast, as a lesion does
        assert mask[y, x] and mask[y - r // 2 : y + r // 2, x : x + r // 2].mean() > 0.9
    fractions = [background_fraction(film, *roi) for roi in rois]
    assert max(fractions) > 0.05  # crops near the skin line show background, as lesion crops do


def test_leave_one_group_out_skips_the_own_patient() -> None:
    v = np.array([[1, 0], [1, 0.01], [0, 1], [0.1, 1]], dtype=np.float32)
    top = leave_one_group_out_top(v, np.array(["a", "a", "b", "c"]))
    assert top[0] < 0.2 and top[2] > 0.99  # row 0's twin is its own patient


@pytest.fixture(scope="module")
def twin_indexes(tmp_path_factory, bundled, monkeypatch_module) -> tuple[Path, Path]:
    """The same textured films ingested twice: another salt, another file order."""
    from test_classify_eval_cli import write_set

    root = tmp_path_factory.mktemp("twins")
    labels = write_set(root / "films", 8, 0)
    files = sorted((root / "films").glob("*.png"))
    dbs = []
    for salt, order in (("salt-one", files), ("salt-two", files[::-1])):
        monkeypatch_module.setenv("PRIORCASE_SALT", salt)
        db = root / f"db-{salt}"
        priorcase.open(db, encoder=bundled).ingest(order, labels=labels, workers=0, progress=False)
        dbs.append(db)
    return dbs[0], dbs[1]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _use_salt(db: Path) -> None:
    """Each twin library answers only to its own salt (a query with another is refused); the
    module's monkeypatch restores the variable after the module."""
    os.environ["PRIORCASE_SALT"] = db.name.removeprefix("db-")


def _json(capsys, args: list[str]) -> dict:
    if "--db" in args:
        _use_salt(Path(args[args.index("--db") + 1]))
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_two_indexes_give_identical_figures(twin_indexes, capsys) -> None:
    a, b = twin_indexes
    args = ["--label", "texture", "--method", "knn,logreg", "--bootstrap", "50", "--json"]
    first = _json(capsys, ["eval", "--db", str(a), *args])
    second = _json(capsys, ["eval", "--db", str(b), *args])
    meta_a, meta_b = first.pop("meta"), second.pop("meta")
    assert first == second
    for meta in (meta_a, meta_b):
        assert {
            "table_version",
            "encoder_weights_sha256",
            "fold_seed",
            "priorcase",
            "command",
        } <= set(meta)
    for m in first["methods"]:
        assert 0 <= m["ece"] <= 1 and 0 <= m["brier"] <= 2
        assert 0 <= m["coverage"] <= 1 and 1 <= m["mean_set_size"] <= len(CLASSES)
        assert m["calibrated"] is True


@pytest.mark.slow
def test_unlike_queries_abstain_and_search_says_so(twin_indexes, capsys, tmp_path) -> None:
    db = twin_indexes[0]
    noise = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(noise)
    out = _json(
        capsys,
        ["classify", "--db", str(db), "--image", str(noise), "--label", "texture", "--json"],
    )
    assert out["abstain"] is True and out["reference"]["status"] == "no close reference"
    assert "no close reference" in out["abstain_reason"]
    assert all(p["probabilities"] == {} for p in out["predictions"])
    like = tmp_path / "disc.png"
    Image.fromarray(textured("disc", 4242)).save(like)
    out = _json(
        capsys,
        ["classify", "--db", str(db), "--image", str(like), "--label", "texture", "--json"],
    )
    assert out["abstain"] is False and out["reference"]["percentile"] > 0
    found = _json(capsys, ["search", "--db", str(db), "--image", str(noise), "-k", "3", "--json"])
    assert found["reference"]["status"] == "no close reference" and found["warning"]
    assert set(found["library"]) == {"version", "encoder", "weights_sha256", "priorcase"}
    assert all(0 <= r["percentile"] <= 100 for r in found["results"])


@pytest.mark.slow
def test_search_as_of_answers_from_an_earlier_version(twin_indexes, capsys, tmp_path) -> None:
    db = twin_indexes[1]
    _use_salt(db)
    pc = priorcase.open(db)
    before = pc.store.version
    extra = tmp_path / "late"
    extra.mkdir()
    Image.fromarray(textured("disc", 9999)).save(extra / "late.png")
    pc.ingest(extra, workers=0, progress=False)
    assert pc.store.version > before
    query = ["search", "--db", str(db), "--image", str(extra / "late.png"), "-k", "1", "--json"]
    assert _json(capsys, query)["results"][0]["id"] == "late"
    old = _json(capsys, [*query, "--as-of", str(before)])
    assert old["library"]["version"] == before and old["results"][0]["id"] != "late"


@pytest.mark.slow
def test_every_method_classifies_calibrated(twin_indexes, capsys, tmp_path) -> None:
    like = tmp_path / "disc.png"
    Image.fromarray(textured("disc", 4343)).save(like)
    out = _json(
        capsys,
        [
            "classify",
            "--db",
            str(twin_indexes[0]),
            "--image",
            str(like),
            "--label",
            "texture",
            "--method",
            "all",
            "--json",
        ],
    )
    by_method = {p["method"]: p for p in out["predictions"]}
    assert set(by_method) == {"knn", "logreg", "svm", "zeroshot", "similarity", "ensemble"}
    for p in by_method.values():
        assert p["error"] is None and p["calibrated"] is True, p
        assert set(p["probabilities"]) == set(CLASSES) and p["prediction_set"]
