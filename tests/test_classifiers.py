"""Classifiers on synthetic embeddings: accuracy above chance, API contracts, edge cases."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score

from priorcase.classifiers import (
    ClipSpace,
    ContrastiveAligner,
    JointSpace,
    KNNVoteClassifier,
    LogisticHead,
    ProbabilityEnsemble,
    SimilarityGuidedHead,
    SVMHead,
    ZeroShotClassifier,
    class_prompts,
    make_classifier,
    report_from_labels,
)
from priorcase.index.vector_index import l2_normalise

D_TXT = 48


def word_vector(word: str, dim: int = D_TXT) -> np.ndarray:
    """A fixed pseudo-random unit vector per word (seeded by a stable hash)."""
    v = np.random.default_rng(zlib.crc32(word.encode())).standard_normal(dim)
    return v / np.linalg.norm(v)


def embed_texts(texts: list[str]) -> np.ndarray:
    """Bag-of-words text encoder: random projection of one-hot word counts, L2-normalised."""
    rows = [
        np.sum([word_vector(w) for w in re.findall(r"[a-z]+", t.lower())] or [np.zeros(D_TXT)], 0)
        for t in texts
    ]
    return l2_normalise(np.asarray(rows))


def clusters(n_per_class=60, d=64, n_classes=3, spread=3.0, seed=0):
    """Class-conditional Gaussian clusters on the sphere; each group (patient) holds 2 views."""
    rng = np.random.default_rng(seed)
    means = l2_normalise(rng.standard_normal((n_classes, d)))
    y = np.repeat(np.array(["benign", "malignant", "normal"][:n_classes]), n_per_class)
    groups = np.arange(len(y)) // 2
    patient = l2_normalise(
        means[np.arange(len(y)) // n_per_class]
        + spread * l2_normalise(rng.standard_normal((groups[-1] + 1, d)))[groups]
    )
    X = l2_normalise(patient + 0.3 * l2_normalise(rng.standard_normal((len(y), d))))
    return X, y, groups


def group_split(X, y, groups, test_every=4):
    test = groups % test_every == 0
    return X[~test], y[~test], groups[~test], X[test], y[test], groups[test]


@pytest.fixture(scope="module")
def data():
    return group_split(*clusters())


def check_proba(clf, X, n_classes):
    p = clf.predict_proba(X)
    assert p.shape == (len(X), n_classes)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(p >= 0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[p.argmax(axis=1)])
    return p


@pytest.mark.parametrize(
    "clf",
    [
        KNNVoteClassifier(k=10),
        KNNVoteClassifier(k=10, weights="similarity", exclude_same_group=True),
        LogisticHead(),
        LogisticHead(multi_class="ovr"),
        SVMHead(cv=3),
        SVMHead(kind="svc_rbf", cv=3),
        SVMHead(kind="svc_linear", calibrate=False, cv=3),
    ],
    ids=["knn", "knn-sim", "logreg", "logreg-ovr", "linear_svc", "svc_rbf", "svc-uncal"],
)
def test_beats_chance(data, clf):
    Xtr, ytr, gtr, Xte, yte, _ = data
    clf = clone(clf).fit(Xtr, ytr, groups=gtr)
    check_proba(clf, Xte, 3)
    assert list(clf.classes_) == ["benign", "malignant", "normal"]
    assert balanced_accuracy_score(yte, clf.predict(Xte)) > 0.7


# --- kNN ---------------------------------------------------------------------------------


def test_knn_exclude_same_group_really_excludes():
    rng = np.random.default_rng(0)
    q = l2_normalise(rng.standard_normal((1, 16)))
    far = l2_normalise(rng.standard_normal((6, 16)))
    # The only near neighbours are two copies of the query in the query's own group.
    X = np.vstack([q, q, far])
    y = np.array(["malignant", "malignant"] + ["benign"] * 6)
    groups = np.array(["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"])
    plain = KNNVoteClassifier(k=2).fit(X, y, groups)
    excl = KNNVoteClassifier(k=2, exclude_same_group=True).fit(X, y, groups)
    assert plain.predict(q, groups=["p1"])[0] == "malignant"
    positions, scores = excl.kneighbors(q, groups=["p1"])
    assert set(positions[0]) <= set(range(2, 8))
    assert np.all(scores[0] < 0.99)
    assert excl.predict(q, groups=["p1"])[0] == "benign"
    # A query from another group still sees p1's rows; no groups means no exclusion.
    assert excl.predict(q, groups=["p9"])[0] == "malignant"
    assert excl.predict(q)[0] == "malignant"


def test_knn_no_usable_neighbour_falls_back_to_prior():
    X = l2_normalise(np.eye(4, dtype=np.float32))
    clf = KNNVoteClassifier(k=3, exclude_same_group=True).fit(X, ["a", "a", "a", "b"], [1] * 4)
    p = clf.predict_proba(X[:1], groups=[1])
    np.testing.assert_allclose(p[0], [0.75, 0.25], atol=1e-2)
    assert clf.explain(X[:1], groups=[1]) == ["no comparable prior cases"]


def test_knn_similarity_weights_change_probabilities(data):
    Xtr, ytr, _, Xte, _, _ = data
    uni = KNNVoteClassifier(k=15).fit(Xtr, ytr).predict_proba(Xte)
    sim = KNNVoteClassifier(k=15, weights="similarity", temperature=0.02).fit(Xtr, ytr)
    assert not np.allclose(uni, check_proba(sim, Xte, 3))


def test_knn_prior_correction_raises_minority_probability(data):
    Xtr, ytr, _, Xte, _, _ = data
    keep = (ytr != "malignant") | (np.cumsum(ytr == "malignant") <= 8)  # 8 malignant vs ~45
    plain = KNNVoteClassifier(k=15).fit(Xtr[keep], ytr[keep])
    fixed = KNNVoteClassifier(k=15, prior_correction=True).fit(Xtr[keep], ytr[keep])
    col = list(plain.classes_).index("malignant")
    p_plain, p_fixed = plain.predict_proba(Xte)[:, col], check_proba(fixed, Xte, 3)[:, col]
    assert np.all(p_fixed >= p_plain - 1e-9) and p_fixed.mean() > p_plain.mean() + 0.05
    is_mal = data[4] == "malignant"  # minority-class recall does not drop
    assert (fixed.predict(Xte[is_mal]) == "malignant").mean() >= (
        plain.predict(Xte[is_mal]) == "malignant"
    ).mean()


def test_knn_explain_and_padding(data):
    Xtr, ytr, _, Xte, _, _ = data
    clf = KNNVoteClassifier(k=10).fit(Xtr, ytr)
    lines = clf.explain(Xte[:3])
    assert all(
        re.fullmatch(r"\d+ of 10 nearest cases are (benign|malignant|normal)", s) for s in lines
    )
    small = KNNVoteClassifier(k=50).fit(Xtr[:5], ytr[:5])
    positions, _ = small.kneighbors(Xte[:2])
    assert positions.shape == (2, 50) and (positions[:, 5:] == -1).all()
    check_proba(small, Xte, len(small.classes_))


# --- linear heads ------------------------------------------------------------------------


@pytest.mark.parametrize("clf", [LogisticHead(Cs=(0.1, 1, 10)), SVMHead(Cs=(0.01, 0.1, 1))])
def test_linear_heads_pick_c_from_grid_with_groups(data, clf):
    Xtr, ytr, gtr, _, _, _ = data
    clf = clone(clf).fit(Xtr, ytr, groups=gtr)
    assert clf.best_params_["C"] in clf.Cs
    assert clf.scoring_ == "roc_auc_ovr"
    no_groups = clone(clf).fit(Xtr, ytr)
    assert no_groups.best_params_["C"] in clf.Cs


@pytest.mark.parametrize("clf", [LogisticHead(), SVMHead(), SVMHead(kind="svc_rbf")])
def test_linear_heads_survive_tiny_data(clf):
    X, y, groups = clusters(n_per_class=3, seed=1)
    fitted = clone(clf).fit(X[:7], y[:7], groups=groups[:7])  # 3 + 3 + 1 members
    check_proba(fitted, X, 3)
    assert fitted.best_params_["C"] in clf.Cs
    with pytest.raises(ValueError, match="two classes"):
        clone(clf).fit(X[:3], y[:3])


@pytest.mark.parametrize("clf", [LogisticHead(), SVMHead(), SVMHead(calibrate=False)])
def test_multilabel(data, clf):
    Xtr, ytr, gtr, Xte, yte, _ = data

    def indicator(y):
        return np.column_stack([y == "malignant", y != "normal"]).astype(int)

    fitted = clone(clf).fit(Xtr, indicator(ytr), groups=gtr)
    p = fitted.predict_proba(Xte)
    assert p.shape == (len(Xte), 2) and list(fitted.classes_) == [0, 1]
    pred = fitted.predict(Xte)
    assert pred.shape == (len(Xte), 2)
    for j in range(2):
        assert balanced_accuracy_score(indicator(yte)[:, j], pred[:, j]) > 0.7


# --- joint space, alignment, prompts ---------------------------------------------------

TISSUE, ABNORMALITY, SEVERITY = ["F", "G", "D"], ["CALC", "CIRC", "SPIC", "NORM"], ["B", "M"]


def mias_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        abn = str(rng.choice(ABNORMALITY))
        sev = None if abn == "NORM" else str(rng.choice(SEVERITY))
        rows.append({"tissue": str(rng.choice(TISSUE)), "abnormality": abn, "severity": sev})
    return rows


def test_report_from_labels():
    assert (
        report_from_labels({"tissue": "D", "abnormality": "SPIC", "severity": "M"})
        == "dense glandular breast, spiculated mass, malignant"
    )
    assert (
        report_from_labels({"background_tissue": "F", "class": "NORM", "severity": None})
        == "fatty breast, no abnormality"
    )
    assert report_from_labels({"laterality": "L", "abnormality": "calc"}) == "left, calcification"
    assert report_from_labels({"dx": "mel", "site": "back", "age": ""}) == "dx: mel, site: back"
    assert report_from_labels({"tissue": "X"}) == "tissue: X"
    custom = {"dx": {"mel": "melanoma"}}
    assert report_from_labels({"dx": "mel"}, vocabulary=custom) == "melanoma"


def test_class_prompts_use_vocabulary():
    prompts = class_prompts(["D", "F"], column="tissue", templates=["a mammogram showing {}."])
    assert prompts == {
        "D": ["a mammogram showing dense glandular breast tissue."],
        "F": ["a mammogram showing fatty breast tissue."],
    }
    assert class_prompts(["basal_cell"], templates=["{}"]) == {"basal_cell": ["basal cell"]}


def unaligned_pairs(n=300, d_img=40, seed=0):
    """Image embeddings that are a noisy random linear view of their report's text embedding."""
    reports = [report_from_labels(r) for r in mias_rows(n, seed)]
    rng = np.random.default_rng(seed + 1)
    A = rng.standard_normal((d_img, D_TXT))
    X = l2_normalise(embed_texts(reports) @ A.T + 0.5 * rng.standard_normal((n, d_img)))
    return X, reports


def precision_at_1(space: JointSpace, X, reports) -> float:
    queries = sorted(set(reports))
    nearest = (space.texts(queries) @ space.images(X).T).argmax(axis=1)
    return float(np.mean([reports[j] == q for j, q in zip(nearest, queries, strict=True)]))


def test_contrastive_aligner_aligns_and_round_trips(tmp_path):
    X, reports = unaligned_pairs()
    before = ContrastiveAligner(embed_texts, dim=32, epochs=0).fit(X, reports)
    after = ContrastiveAligner(embed_texts, dim=32, epochs=40, random_state=3).fit(X, reports)
    assert isinstance(after, JointSpace)
    p_before, p_after = precision_at_1(before, X, reports), precision_at_1(after, X, reports)
    assert p_after >= 0.8 and p_after > p_before + 0.5
    assert after.history_[-1] < after.history_[0]
    assert after.images(X).shape == (len(X), 32)
    np.testing.assert_allclose(np.linalg.norm(after.texts(["fatty breast"]), axis=1), 1, atol=1e-5)
    again = ContrastiveAligner(embed_texts, dim=32, epochs=40, random_state=3).fit(X, reports)
    np.testing.assert_array_equal(again.images(X), after.images(X))  # deterministic
    after.save(tmp_path / "aligner.pt")
    loaded = ContrastiveAligner.load(tmp_path / "aligner.pt", embed_texts)
    np.testing.assert_allclose(loaded.images(X), after.images(X), atol=1e-6)
    np.testing.assert_allclose(loaded.texts(reports[:5]), after.texts(reports[:5]), atol=1e-6)
    with pytest.raises(ValueError, match="40-d"):
        after.images(X[:, :10])


@pytest.fixture(scope="module")
def tissue_data():
    """CLIP-like image embeddings near their report's text embedding, with a domain shift."""
    rows = mias_rows(600, seed=3)
    reports = [report_from_labels(r) for r in rows]
    y = np.array([r["tissue"] for r in rows])
    rng = np.random.default_rng(5)
    M = np.eye(D_TXT) + 0.5 * rng.standard_normal((D_TXT, D_TXT)) / np.sqrt(D_TXT)
    noise = 0.9 * rng.standard_normal((len(y), D_TXT)) / np.sqrt(D_TXT)
    X = l2_normalise(embed_texts(reports) @ M.T + 1.5 * word_vector("scanner") + noise)
    return X[:400], y[:400], X[400:], y[400:]


def test_zeroshot_and_similarity_head(tissue_data):
    Xtr, ytr, Xte, yte = tissue_data
    space = ClipSpace(embed_texts)
    zs = ZeroShotClassifier(space, column="tissue").fit(Xtr, ytr)
    assert zs.prompts_["D"][0] == "a mammogram showing dense glandular breast tissue."
    p_zs = check_proba(zs, Xte, 3)
    assert list(zs.classes_) == ["D", "F", "G"]
    bacc_zs = balanced_accuracy_score(yte, zs.predict(Xte))
    assert bacc_zs > 0.5  # clearly above chance (1/3) without any training
    sg = SimilarityGuidedHead(space, column="tissue").fit(Xtr, ytr)
    check_proba(sg, Xte, 3)
    bacc_sg = balanced_accuracy_score(yte, sg.predict(Xte))
    assert bacc_sg > 0.85 and bacc_sg > bacc_zs + 0.1
    maxed = SimilarityGuidedHead(space, column="tissue", aggregate="max", hidden=32, epochs=50)
    check_proba(maxed.fit(Xtr, ytr), Xte, 3)
    # Explicit prompts replace the templates; classes without prompts are an error.
    given = {"D": ["dense"], "F": ["fatty"], "G": ["glandular fatty"]}
    assert not np.allclose(
        ZeroShotClassifier(space, prompts=given).fit(Xtr, ytr).predict_proba(Xte), p_zs
    )
    with pytest.raises(ValueError, match="no prompts"):
        ZeroShotClassifier(space, prompts={"D": ["dense"]}).fit(Xtr, ytr)


def test_zeroshot_through_aligner():
    X, reports = unaligned_pairs(n=400, seed=2)
    y = np.array([r.split(",")[0].removesuffix(" breast") for r in reports])
    aligner = ContrastiveAligner(embed_texts, dim=32, epochs=40).fit(X[:300], reports[:300])
    prompts = {c: [f"{c} breast"] for c in np.unique(y)}
    zs = ZeroShotClassifier(aligner, prompts=prompts).fit(X[:300], y[:300])
    assert balanced_accuracy_score(y[300:], zs.predict(X[300:])) > 0.7


# --- ensemble and factory ----------------------------------------------------------------


def test_ensemble_aligns_classes(data):
    Xtr, ytr, gtr, Xte, yte, gte = data
    members = [("knn", KNNVoteClassifier(k=10)), ("logreg", LogisticHead(Cs=(1,)))]
    ens = ProbabilityEnsemble(members, weights=[1, 3]).fit(Xtr, ytr, groups=gtr)
    assert list(ens.classes_) == ["benign", "malignant", "normal"]
    p = check_proba(ens, Xte, 3)
    knn, logreg = (est for _, est in ens.estimators_)
    np.testing.assert_allclose(p, (knn.predict_proba(Xte) + 3 * logreg.predict_proba(Xte)) / 4)
    assert balanced_accuracy_score(yte, ens.predict(Xte, groups=gte)) > 0.7
    # A member that never saw a class contributes 0 to it; columns follow classes_.
    partial = KNNVoteClassifier(k=5).fit(Xtr[ytr != "normal"], ytr[ytr != "normal"])
    ens.estimators_[0] = ("knn", partial)
    q = ens.predict_proba(Xte)
    expected = 3 * logreg.predict_proba(Xte)
    expected[:, :2] += partial.predict_proba(Xte)
    np.testing.assert_allclose(q, expected / 4, rtol=1e-6)


def test_make_classifier(tissue_data):
    space = ClipSpace(embed_texts)
    assert isinstance(make_classifier("knn", k=3), KNNVoteClassifier)
    assert isinstance(make_classifier("logreg"), LogisticHead)
    assert isinstance(make_classifier("svm", kind="svc_rbf"), SVMHead)
    assert isinstance(make_classifier("zeroshot", space, "tissue"), ZeroShotClassifier)
    assert isinstance(make_classifier("similarity", space, "tissue"), SimilarityGuidedHead)
    ens = make_classifier("ensemble", space, "tissue")
    assert [name for name, _ in ens.estimators] == ["knn", "logreg", "svm", "similarity"]
    assert len(make_classifier("ensemble").estimators) == 3
    Xtr, ytr, Xte, yte = tissue_data
    fitted = clone(ens).fit(Xtr, ytr)
    check_proba(fitted, Xte, 3)
    assert fitted.estimators_[3][1].space is space  # cloning shares the joint space
    assert balanced_accuracy_score(yte, fitted.predict(Xte)) > 0.7
    with pytest.raises(ValueError, match="knn, logreg, svm, zeroshot, similarity, ensemble"):
        make_classifier("forest")
    with pytest.raises(ValueError, match="space"):
        make_classifier("zeroshot")
