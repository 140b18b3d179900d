"""CLIP linear probe (pyworkloads/models/clip/probe.py) and the folder modes of ``run clip``.

The reference for the fit is an independent solver written here: damped Newton on
scikit-learn's objective ½‖W‖² + C·Σ CE (intercept unpenalised), run to machine precision in
float64, without SciPy.  scikit-learn itself is not a dependency."""
from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
from conftest import FIXTURES
from PIL import Image

import pyworkloads as pw
from pyworkloads import cli
from pyworkloads.models import clip
from pyworkloads.models.clip.probe import C_RANGE, search_C, stratified_split

FIXTURE = FIXTURES / "clip"
# L-BFGS at the default tol (1e-6 on the gradient of the objective / (C·B)) lands within ~1e-5
# of the Newton solution, relative to the largest coefficient, on these problems
RTOL = 1e-4


def newton_reference(x, y, n_classes, C):
    """argmin ½‖W‖² + C Σᵢ CE(softmax(W xᵢ + b), yᵢ) by Newton's method with backtracking.
    The Hessian is singular along "add one constant to every intercept"; the least-squares
    step has no component there, so Σ b stays 0.  -> (W [Nc, E], b [Nc])."""
    B, E = x.shape
    xt = np.hstack([x, np.ones((B, 1))])                                     # [B, E+1]
    Y = np.eye(n_classes)[y]                                                 # [B, Nc]
    penalised = np.ones((n_classes, E + 1))
    penalised[:, E] = 0
    penalised = penalised.ravel()

    def value_and_probs(theta):
        z = xt @ theta.reshape(n_classes, E + 1).T                           # [B, Nc]
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return 0.5 * (penalised * theta**2).sum() - C * (Y * log_p).sum(), np.exp(log_p)

    theta = np.zeros(n_classes * (E + 1))
    for _ in range(200):
        value, P = value_and_probs(theta)
        grad = penalised * theta + C * ((P - Y).T @ xt).ravel()
        S = np.einsum("ik,kl->ikl", P, np.eye(n_classes)) - np.einsum("ik,il->ikl", P, P)
        H = C * np.einsum("ikl,ij,im->kjlm", S, xt, xt).reshape(theta.size, theta.size)
        step = np.linalg.lstsq(H + np.diag(penalised), -grad, rcond=None)[0]
        t = 1.0
        while value_and_probs(theta + t * step)[0] > value + 1e-4 * t * (grad @ step) \
                and t > 1e-12:
            t /= 2
        theta = theta + t * step
        if np.abs(t * step).max() <= 1e-14 * max(1.0, np.abs(theta).max()):
            break
    wb = theta.reshape(n_classes, E + 1)
    return wb[:, :E], wb[:, E]


def blobs(seed=0, B=90, E=4, n_classes=3, spread=1.0, offset=0.0):
    """Overlapping Gaussian classes (not separable): features [B, E], labels int [B]."""
    rng = np.random.default_rng(seed)
    y = np.arange(B) % n_classes
    x = rng.normal(0, spread, (n_classes, E))[y] + rng.normal(0, 1, (B, E)) + offset
    return x, y


def assert_close_to(probe, W, b):
    scale = max(np.abs(W).max(), np.abs(b).max())
    np.testing.assert_allclose(probe.coef_, W, rtol=0, atol=RTOL * scale)
    np.testing.assert_allclose(probe.intercept_, b, rtol=0, atol=RTOL * scale)


# ---------------------------------------------------------------------------------------------
# the fit against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0, 1e3])
def test_fit_matches_newton(C):
    x, y = blobs(offset=2.0)                   # off-centre features: the intercept matters
    y[:5] = 1                                  # unbalanced classes
    W, b = newton_reference(x, y, 3, C)
    probe = clip.LinearProbe(C=C).fit(x, y)
    assert_close_to(probe, W, b)
    assert probe.coef_.shape == (3, 4) and probe.intercept_.shape == (3,)
    assert probe.C_ == C and probe.search_ is None
    z = x @ W.T + b
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(probe.predict_proba(x), expected, rtol=0, atol=1e-5)
    assert abs(probe.intercept_.sum()) < 1e-12                  # the centred intercept
    # non-trivial: the classes are told apart, not perfectly
    assert 0.5 < probe.score(x, y) < 1.0


def test_binary_string_labels_keep_one_row_per_class():
    x, y = blobs(seed=1, n_classes=2)
    names = np.array(["tabby", "husky"])[y]
    W, b = newton_reference(x, (names == "tabby").astype(int), 2, 1.0)   # classes_ sorted
    probe = clip.LinearProbe(C=1.0).fit(x, list(names))
    assert probe.classes_.tolist() == ["husky", "tabby"]
    assert_close_to(probe, W, b)
    predicted = probe.predict(x)
    assert predicted.dtype.kind == "U" and set(predicted) == {"husky", "tabby"}
    np.testing.assert_array_equal(predicted, probe.classes_[probe.predict_proba(x).argmax(1)])
    assert probe.score(x, names) == np.mean(predicted == names)


def test_C_is_scikit_learns_sum_convention():
    # C multiplies a sum over examples: every example twice with C/2 is the same problem
    x, y = blobs(seed=2)
    once = clip.LinearProbe(C=0.5, tol=1e-9).fit(x, y)
    twice = clip.LinearProbe(C=0.25, tol=1e-9).fit(np.concatenate([x, x]), np.concatenate([y, y]))
    np.testing.assert_allclose(twice.coef_, once.coef_, rtol=0, atol=1e-6)
    # ... and not the mean: the same C on doubled data is a different (less regularised) fit
    doubled = clip.LinearProbe(C=0.5).fit(np.concatenate([x, x]), np.concatenate([y, y]))
    assert np.abs(doubled.coef_).max() > 1.05 * np.abs(once.coef_).max()


def test_standardize_fits_standardized_features_and_folds_back():
    x, y = blobs(seed=3, E=5)
    x = x * np.array([1.0, 100.0, 0.01, 5.0, 1.0]) + 7.0
    x[:, 4] = 3.0                                               # a constant feature
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 0, std, 1.0)
    W, b = newton_reference((x - mean) / scale, y, 3, 0.3)
    probe = clip.LinearProbe(C=0.3, standardize=True).fit(x, y)
    np.testing.assert_allclose(probe.mean_, mean, rtol=1e-12)
    np.testing.assert_allclose(probe.scale_, scale, rtol=1e-12)
    assert probe.scale_[4] == 1.0
    assert_close_to(probe, W / scale, b - (W / scale) @ mean)
    np.testing.assert_allclose(probe.decision_function(x), ((x - mean) / scale) @ W.T + b,
                               rtol=0, atol=1e-4)


def test_hitting_max_iter_warns():
    x, y = blobs(seed=4)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        clip.LinearProbe(C=1.0, max_iter=2).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip.LinearProbe(C=1.0).fit(x, y)


# ---------------------------------------------------------------------------------------------
# choosing C
# ---------------------------------------------------------------------------------------------
def test_search_C_is_the_papers_binary_search():
    calls = []

    def peaked(C):                              # best at 10^1.375, a point of the 1/8 grid
        calls.append(C)
        return -(math.log10(C) - 1.375) ** 2

    best, tried = search_C(peaked)
    assert best == pytest.approx(10 ** 1.375, rel=1e-12)
    assert len(calls) == len(set(calls)) == len(tried) <= 15
    exponents = np.log10(calls)
    np.testing.assert_allclose(exponents[:7], [-6, -4, -2, 0, 2, 4, 6], atol=1e-12)
    np.testing.assert_allclose(exponents * 8, np.round(exponents * 8), atol=1e-9)   # 1/8 grid
    # a score that keeps rising ends at the top of the range
    best, _ = search_C(lambda C: C)
    assert best == pytest.approx(C_RANGE[1])


def test_separable_data_chooses_weak_regularisation():
    rng = np.random.default_rng(5)
    y = np.arange(80) % 2
    x = rng.normal(0, 1, (80, 5))
    x[:, 0] += np.where(y == 1, 4.0, -4.0)       # a margin of several standard deviations
    probe = clip.LinearProbe().fit(x, y)
    assert probe.C_ >= 1e2
    assert set(probe.search_) >= {10.0 ** e for e in (-6, -4, -2, 0, 2, 4, 6)}
    assert len(probe.search_) <= 15 and probe.n_validation_ == 16
    # validation cross-entropy falls as the regularisation weakens: the tie on accuracy (all
    # 100%) is broken by it
    assert probe.search_[1e-6][0] == probe.search_[probe.C_][0] == 1.0
    assert probe.search_[probe.C_][1] < probe.search_[1.0][1] < probe.search_[1e-4][1]
    # the final probe is refitted on all the data with the chosen C
    refit = clip.LinearProbe(C=probe.C_).fit(x, y)
    np.testing.assert_array_equal(probe.coef_, refit.coef_)


def test_noisy_data_chooses_strong_regularisation():
    # 40 dimensions, 80 examples, a weak shift on every dimension and 20% of the labels flipped:
    # an unregularised fit memorises the flips, a strongly regularised one (close to comparing
    # with the class means, the Bayes rule here) does not
    def sample(n, seed, flip):
        rng = np.random.default_rng(seed)
        y = np.arange(n) % 2
        x = rng.normal(0, 1, (n, 40)) + 0.3 * (2 * y[:, None] - 1)
        return x, np.where(rng.random(n) < flip, 1 - y, y)

    x, y = sample(80, 0, flip=0.2)
    probe = clip.LinearProbe().fit(x, y)
    assert probe.C_ <= 0.1
    x_test, y_test = sample(2000, 1, flip=0.0)
    weak = clip.LinearProbe(C=1e4).fit(x, y)
    assert probe.score(x_test, y_test) > weak.score(x_test, y_test) + 0.05


def test_stratified_split():
    y = np.repeat([0, 1, 2], [10, 4, 2])
    kept, held = stratified_split(y, 0.25, seed=3)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(16))
    assert np.bincount(y[held]).tolist() == [2, 1, 1]          # round(0.25 n), at least 1
    assert np.bincount(y[kept]).tolist() == [8, 3, 1]
    again, _ = stratified_split(y, 0.25, seed=3)
    other, _ = stratified_split(y, 0.25, seed=4)
    np.testing.assert_array_equal(kept, again)
    assert not np.array_equal(kept, other)
    with pytest.raises(ValueError, match="class 'b' has 1 example"):
        stratified_split(np.array([0, 0, 1]), 0.5, names=["a", "b"])


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, standardize", [("int", False), ("str", True)])
def test_save_load_round_trip(tmp_path, labels, standardize):
    x, y = blobs(seed=6)
    y = y * 7 - 3 if labels == "int" else np.array(["cat", "dog", "émigré"])[y]
    probe = clip.LinearProbe(C=0.7, standardize=standardize).fit(x, y)
    path = tmp_path / "probe.safetensors"
    probe.save(path)
    loaded = clip.LinearProbe.load(path)
    for name in ("coef_", "intercept_") + (("mean_", "scale_") if standardize else ()):
        a, b = getattr(probe, name), getattr(loaded, name)
        assert a.dtype == b.dtype == np.float64
        assert a.tobytes() == b.tobytes()                      # bit-equal
    assert loaded.mean_ is None if not standardize else loaded.standardize
    assert loaded.classes_.tolist() == probe.classes_.tolist()
    assert loaded.classes_.dtype.kind == probe.classes_.dtype.kind
    assert loaded.C_ == probe.C_ == 0.7
    np.testing.assert_array_equal(loaded.predict_proba(x), probe.predict_proba(x))
    np.testing.assert_array_equal(loaded.predict(x), probe.predict(x))
    assert pw.io.load_safetensors(path).metadata["linear_probe"]        # no pickle: JSON


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(ValueError, match="not a LinearProbe"):
        clip.LinearProbe.load(FIXTURE / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        clip.LinearProbe.load(tmp_path / "missing.safetensors")
    meta = {"format": "pyworkloads.clip.LinearProbe", "classes": [0, 1, 2], "C": 1.0,
            "standardize": False}
    bad = tmp_path / "bad.safetensors"
    for coef, intercept, classes in [(np.zeros((2, 4)), np.zeros(3), [0, 1, 2]),
                                     (np.zeros((3, 4)), np.zeros(3), [0, 1, 1]),
                                     (np.full((3, 4), np.nan), np.zeros(3), [0, 1, 2]),
                                     (np.zeros((3, 4), np.float32), np.zeros(3), [0, 1, 2])]:
        pw.io.save_safetensors(bad, {"coef": coef, "intercept": intercept}, metadata={
            "linear_probe": json.dumps({**meta, "classes": classes})})
        with pytest.raises(ValueError, match="inconsistent LinearProbe"):
            clip.LinearProbe.load(bad)
    pw.io.save_safetensors(bad, {"coef": np.zeros((3, 4)), "intercept": np.zeros(3)},
                           metadata={"linear_probe": json.dumps({**meta, "C": -1})})
    with pytest.raises(ValueError, match="not a LinearProbe file.*C must"):
        clip.LinearProbe.load(bad)


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------
X3, Y3 = blobs(seed=7)


@pytest.mark.parametrize("features, labels, exc, match", [
    (X3, Y3[:-1], ValueError, "one label per row"),
    (X3[:, 0], Y3, ValueError, "2-D"),
    (X3[None], Y3, ValueError, "2-D"),
    (X3[:0], Y3[:0], ValueError, "B, E >= 1"),
    (np.where(np.arange(90)[:, None] == 5, np.nan, X3), Y3, ValueError, "NaN or infinity"),
    (np.where(np.arange(90)[:, None] == 5, np.inf, X3), Y3, ValueError, "NaN or infinity"),
    (X3.astype(str), Y3, TypeError, "numeric"),
    (X3, np.zeros(90, int), ValueError, "one class only"),
    (X3, Y3.astype(float), TypeError, "integers or strings"),
    (X3, Y3[:, None], ValueError, "1-D"),
])
def test_fit_errors(features, labels, exc, match):
    with pytest.raises(exc, match=match):
        clip.LinearProbe(C=1.0).fit(features, labels)


@pytest.mark.parametrize("kwargs, match", [
    ({"C": 0}, "C must be a finite number > 0"), ({"C": -1.0}, "C must"),
    ({"C": float("nan")}, "C must"), ({"C": float("inf")}, "C must"), ({"C": True}, "C must"),
    ({"C": "1"}, "C must"), ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"validation_fraction": 0}, "validation_fraction"), ({"max_iter": 0}, "max_iter"),
    ({"tol": 0.0}, "tol"), ({"standardize": "yes"}, "standardize"),
])
def test_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        clip.LinearProbe(**kwargs)
    probe = clip.LinearProbe(C=1.0)
    for k, v in kwargs.items():                  # set after construction: fit checks again
        setattr(probe, k, v)
    with pytest.raises(ValueError, match=match):
        probe.fit(X3, Y3)


def test_predict_errors(tmp_path):
    probe = clip.LinearProbe(C=1.0)
    for call in (lambda: probe.predict(X3), lambda: probe.predict_proba(X3),
                 lambda: probe.score(X3, Y3), lambda: probe.save(tmp_path / "p.safetensors")):
        with pytest.raises(RuntimeError, match="not fitted"):
            call()
    probe.fit(X3, Y3)
    with pytest.raises(ValueError, match="3 dimensions per row; this probe was fitted on 4"):
        probe.predict(X3[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        probe.predict_proba(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="one label per row"):
        probe.score(X3, Y3[:3])


def test_choosing_C_needs_two_examples_per_class():
    with pytest.raises(ValueError, match="class 2 has 1 example"):
        clip.LinearProbe().fit(X3[:7], np.array([0, 0, 0, 1, 1, 1, 2]))


# ---------------------------------------------------------------------------------------------
# image features
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixture_model():
    return clip.from_pretrained(FIXTURE)


def _random_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (36 + i, 44, 3), dtype=np.uint8) for i in range(n)]


def test_embed_images_batches_like_one_call(fixture_model):
    m = fixture_model
    images = _random_images(5)
    whole = m.get_image_features(m.preprocess(images))                       # [5, 24]
    for batch_size in (1, 2, 5, 64):
        np.testing.assert_allclose(clip.embed_images(m, images, batch_size=batch_size), whole,
                                   rtol=0, atol=1e-5)
    unit = clip.embed_images(m, images, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, whole / np.linalg.norm(whole, axis=1, keepdims=True),
                               atol=1e-5)
    with pytest.raises(TypeError, match="non-empty list"):
        clip.embed_images(m, [])
    with pytest.raises(TypeError, match="non-empty list"):
        clip.embed_images(m, "cat.png")
    with pytest.raises(ValueError, match="batch_size"):
        clip.embed_images(m, images, batch_size=0)


# ---------------------------------------------------------------------------------------------
# the command line: --folder
# ---------------------------------------------------------------------------------------------
CLASS_COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200), "sea_lion": (40, 200, 40)}


def make_folder(root, per_class=8, seed=0):
    """Noisy images of one colour per class; a text file to skip; files directly in root."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        (root / name / "more").mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(np.array(colour) + rng.normal(0, 60, (40, 48, 3)), 0, 255)
            sub = root / name / ("more" if i % 3 == 0 else "")
            Image.fromarray(px.astype(np.uint8)).save(sub / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1")
    (root / "README.md").write_text("ignored")
    return sorted(root.glob("*/**/*.png"))


def _run(capsys, *argv):
    rc = cli.main(["run", "clip", "--model", str(FIXTURE), *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_zero_shot_folder(tmp_path, capsys, fixture_model):
    make_folder(tmp_path)
    rc, out, err = _run(capsys, "--folder", tmp_path, "--zero-shot")
    assert rc == 0, err
    assert "24 images in 3 classes (1 file(s) without an image extension skipped)" in out
    # the reference: the model's own zero_shot (a different path: full logits and softmax)
    paths = [p for name in sorted(CLASS_COLOURS) for p in sorted((tmp_path / name).rglob("*.png"))]
    y = np.repeat(np.arange(3), 8)
    probs = fixture_model.zero_shot([str(p) for p in paths], ["cat", "dog", "sea lion"],
                                    template="a photo of a {}.")
    predicted = probs.argmax(axis=1)
    correct = int((predicted == y).sum())
    assert f"zero-shot accuracy: {correct / 24:.1%} ({correct}/24 images" in out
    for k, name in enumerate(sorted(CLASS_COLOURS)):
        right = int((predicted[y == k] == k).sum())
        assert re.search(rf"^  {name}\s+8\s+{right}\s+{right / 8:.1%}$", out, re.M), out


def test_cli_probe_folder_saves_a_loadable_probe(tmp_path, capsys, fixture_model):
    data = tmp_path / "data"
    make_folder(data)
    saved = tmp_path / "probe.safetensors"
    rc, out, err = _run(capsys, "--folder", data, "--probe", "--seed", 1, "--test-fraction",
                        "0.25", "--save-probe", saved)
    assert rc == 0, err
    assert "18 training / 6 test images (seed 1, test fraction 0.25), 24 features" in out
    chosen = float(re.search(r"^chosen C = (\S+) \(validation accuracy", out, re.M).group(1))
    accuracy = re.search(r"^test accuracy: (\S+)% \((\d+)/6 images\)", out, re.M)
    probe = clip.LinearProbe.load(saved)
    assert probe.classes_.tolist() == ["cat", "dog", "sea_lion"]
    assert probe.coef_.shape == (3, 24)
    assert f"{probe.C_:.4g}" == f"{chosen:.4g}"
    # the saved probe on the test images (the split the command printed) gives its accuracy
    paths = [p for name in sorted(CLASS_COLOURS) for p in sorted((data / name).rglob("*.png"))]
    names = np.repeat(sorted(CLASS_COLOURS), 8)
    _, test = stratified_split(np.repeat(np.arange(3), 8), 0.25, seed=1)
    features = clip.embed_images(fixture_model, [str(paths[i]) for i in test])
    correct = int((probe.predict(features) == names[test]).sum())
    assert int(accuracy.group(2)) == correct and correct >= 5      # the colours are learnable
    assert f"saved the probe to {saved}" in out

    rc, out, err = _run(capsys, "--folder", data, "--probe", "--C", "0.5", "--standardize")
    assert rc == 0, err
    assert "C = 0.5 (given)" in out and ", standardized" in out


@pytest.mark.parametrize("setup, extra, match", [
    (lambda d: None, ("--zero-shot",), "at least two classes, found none"),
    (lambda d: (d / "cat").mkdir(), ("--zero-shot",), "found only 'cat'"),
    (lambda d: make_folder(d) and (d / "owl").mkdir(), ("--zero-shot",),
     "class folder .*owl' has no images"),
    (lambda d: make_folder(d) and (d / "cat" / "bad.png").write_bytes(b"\x89PNG junk"),
     ("--zero-shot",), "bad.png"),
    (lambda d: make_folder(d, per_class=2), ("--probe",), "each class needs at least 3"),
    (lambda d: make_folder(d), ("--probe", "--test-fraction", "1.5"), "--test-fraction"),
    (lambda d: make_folder(d, per_class=3), ("--probe", "--test-fraction", "0.9"),
     "leaves class 'cat' one training image"),
    (lambda d: make_folder(d), ("--probe", "--C", "-1"), "C must be a finite number > 0"),
    (lambda d: make_folder(d), ("--zero-shot", "--C", "1"), "--C: only with --probe"),
    (lambda d: make_folder(d), ("--probe", "--template", "{}"), "--template: only with"),
    (lambda d: make_folder(d), (), "needs --zero-shot or --probe"),
    (lambda d: make_folder(d), ("--zero-shot", "--labels", "a,b"), "--labels is for --image"),
    (lambda d: make_folder(d), ("--zero-shot", "--template", "a photo"), "--template must"),
])
def test_cli_folder_errors(tmp_path, capsys, setup, extra, match):
    setup(tmp_path)
    rc, out, err = _run(capsys, "--folder", tmp_path, *extra)
    assert rc == 2 and re.search(match, err), err


def test_cli_image_mode_flags(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(_random_images(1)[0]).save(img)
    rc, _, err = _run(capsys, "--image", img)
    assert rc == 2 and "--image needs --labels" in err
    rc, _, err = _run(capsys, "--image", img, "--labels", "a,b", "--probe")
    assert rc == 2 and "--probe: only with --folder" in err
    with pytest.raises(SystemExit):                              # argparse: one source only
        cli.main(["run", "clip", "--model", str(FIXTURE), "--image", str(img), "--folder",
                  str(tmp_path)])
    capsys.readouterr()
