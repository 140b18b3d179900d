"""Linear probe: multinomial logistic regression on frozen CLIP image features, the evaluation of
CLIP's §3.2 / Appendix A.3 (Radford et al., 2021).

The image tower stays fixed; only a linear head ``logits = features · Wᵀ + b`` is trained.  Its
objective is scikit-learn's ``LogisticRegression(C=C)`` (L2 penalty, lbfgs, multinomial), so a
user can carry a C between the two:

    minimise over W [Nc, E], b [Nc]:   ½ ‖W‖²  +  C · Σᵢ CE(softmax(W xᵢ + b), yᵢ)

The intercept b is not penalised (as in scikit-learn).  The optimiser minimises the same
objective divided by C·B, ``mean CE + ‖W‖² / (2 C B)``, whose value is of order log Nc whatever C
and B are, so the gradient tolerance need not follow them.  Adding a constant to every intercept
changes no probability; starting from zero, L-BFGS keeps Σ b = 0 (the intercept's gradient sums
to zero over classes), and the fit re-centres it so the solution is unique.

Choosing C (``C=None``) follows the paper (Appendix A.3): "we determine the L2 regularization
strength λ using a hyperparameter sweep on the validation sets over the range between 10^-6 and
10^6, with 96 logarithmically spaced steps", run as a parametric binary search that starts from
every second decade and halves the interval around the best value until it reaches 8 steps per
decade.  :func:`search_C` is that search over scikit-learn's C, 7 starting points, then 4
halvings that each try the two neighbours of the best point so far: at most 15 fits.  (The paper
does not say how its λ is scaled; with λ = 1/C the range is the same.)  A stratified, seeded
validation split of the training set scores each C by accuracy, ties broken by the lower
validation cross-entropy, then by the smaller C; the probe is then refitted on the whole
training set with the chosen C.

Glossary (beyond CLIP's): B images (rows of the feature matrix), E feature width, Nc classes.
"""
from __future__ import annotations

import json
import math
import numbers
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from ... import io
from ..common import check_bool, check_int, check_number, describe
from .model import l2_normalize

__all__ = ["LinearProbe", "embed_images", "stratified_split", "search_C", "C_RANGE"]

C_RANGE = (1e-6, 1e6)          # the paper's sweep range
_SEARCH_START_STEP = 2.0       # decades between the starting points: 1e-6, 1e-4, ..., 1e6
_SEARCH_FINAL_STEP = 1 / 8     # 8 steps per decade
_FORMAT = "pyworkloads.clip.LinearProbe"


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------
def embed_images(model, images, batch_size: int = 32, normalize: bool = False) -> np.ndarray:
    """Image features of a CLIP model for a list of images (paths, PIL images, uint8 arrays),
    ``batch_size`` at a time: preprocess, image tower, projection (``model.get_image_features``).
    -> float32 [B, E].  ``normalize=True`` scales each row to unit length (the zero-shot space);
    the default keeps them as the projection gives them, as openai/CLIP's linear-probe example
    does with ``model.encode_image``."""
    if isinstance(images, (str, Path)) or not isinstance(images, (list, tuple)) or not images:
        raise TypeError("embed_images: images must be a non-empty list of images (paths, PIL "
                        f"images or uint8 arrays), got {describe(images)}")
    batch_size = check_int(batch_size, "embed_images: batch_size")
    normalize = check_bool(normalize, "embed_images: normalize")
    batches = []
    for start in range(0, len(images), batch_size):
        pixels = model.preprocess(list(images[start:start + batch_size]))    # [b, 3, R, R]
        batches.append(model.get_image_features(pixels))                      # [b, E]
    features = np.concatenate(batches)                                        # [B, E]
    return l2_normalize(features) if normalize else features


# ---------------------------------------------------------------------------------------------
# the objective and one fit
# ---------------------------------------------------------------------------------------------
def _objective(theta, x, onehot, C):
    """scikit-learn's objective / (C·B) and its gradient.  theta: W and b flattened, [Nc·(E+1)];
    x [B, E]; onehot [B, Nc] -> (value, gradient [Nc·(E+1)])."""
    B, E = x.shape
    Nc = onehot.shape[1]
    wb = theta.reshape(Nc, E + 1)
    W, b = wb[:, :E], wb[:, E]                                                # [Nc, E], [Nc]
    log_p = log_softmax(x @ W.T + b, axis=1)                                  # [B, Nc]
    value = -(onehot * log_p).sum() / B + (W * W).sum() / (2 * C * B)
    dlogits = (np.exp(log_p) - onehot) / B                                    # [B, Nc]
    grad_W = dlogits.T @ x + W / (C * B)                                      # [Nc, E]
    grad_b = dlogits.sum(axis=0)                                              # [Nc]
    return value, np.concatenate([grad_W, grad_b[:, None]], axis=1).ravel()


def _fit_once(x, y, n_classes, C, max_iter, tol):
    """Minimise the objective for one C with SciPy's L-BFGS-B, from zero.  x float64 [B, E],
    y int [B] (class indices) -> (W [Nc, E], b [Nc], scipy's result).

    It stops when no gradient entry exceeds ``tol``.  The relative-reduction test is off
    (ftol=0): at small C the objective is log Nc plus changes of order C·B, which fall below any
    fixed fraction of it while W is still far from the solution."""
    B, E = x.shape
    onehot = np.eye(n_classes)[y]                                             # [B, Nc]
    res = minimize(_objective, np.zeros(n_classes * (E + 1)), args=(x, onehot, C),
                   method="L-BFGS-B", jac=True,
                   options={"maxiter": max_iter, "gtol": tol, "ftol": 0.0})
    if not res.success:
        warnings.warn(f"LinearProbe: L-BFGS did not converge for C={C:g} ({res.message}; "
                      f"{res.nit} iterations, max_iter={max_iter}, tol={tol}); raise max_iter or "
                      "tol, or standardize the features", RuntimeWarning, stacklevel=3)
    wb = res.x.reshape(n_classes, E + 1)
    return wb[:, :E], wb[:, E] - wb[:, E].mean(), res


# ---------------------------------------------------------------------------------------------
# splitting and the search over C
# ---------------------------------------------------------------------------------------------
def stratified_split(y, fraction: float, seed: int = 0, names=None):
    """Hold out about ``fraction`` of each class, drawn with ``seed``: at least one example of
    each class on both sides.  y int [B]: class indices 0 .. Nc-1, each present -> (kept, held)
    sorted index arrays.
    ``names`` (one per class) only make the error message readable."""
    fraction = check_number(fraction, "fraction", 0, 1, exclusive_minimum=True)
    if fraction >= 1:
        raise ValueError(f"fraction must be < 1, got {fraction}")
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for k in range(int(y.max()) + 1):
        members = rng.permutation(np.flatnonzero(y == k))
        if len(members) < 2:
            name = names[k] if names is not None else k
            raise ValueError(f"class {name!r} has {len(members)} example(s); a split needs at "
                             "least 2 per class (one on each side)")
        n_held = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def search_C(score, lo: float = C_RANGE[0], hi: float = C_RANGE[1]):
    """The paper's parametric binary search for the best C in [lo, hi] on a log scale.
    ``score(C)`` returns something comparable, larger is better.  Starts at every second decade,
    then halves the step four times, each time trying the two neighbours of the best point so
    far, down to 8 steps per decade.  -> (best C, {C: score} of every C tried)."""
    e_lo, e_hi = math.log10(lo), math.log10(hi)
    step = _SEARCH_START_STEP
    tried = {}                                                 # log10 C -> score
    for e in np.arange(e_lo, e_hi + step / 2, step):
        tried[float(e)] = score(10.0 ** e)
    while step > _SEARCH_FINAL_STEP:
        step /= 2
        best = max(tried, key=tried.get)
        for e in (best - step, best + step):
            if e_lo <= e <= e_hi and e not in tried:
                tried[e] = score(10.0 ** e)
    best = max(tried, key=tried.get)
    return 10.0 ** best, {10.0 ** e: s for e, s in sorted(tried.items())}


# ---------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------
def _check_features(features, name: str = "features") -> np.ndarray:
    x = np.asarray(features)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array [B, E], got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array [B, E] with B, E >= 1, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def _check_labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype.kind == "O" and all(isinstance(v, str) for v in y.ravel()):
        y = y.astype(str)
    if y.dtype.kind not in "iuU":
        raise TypeError(f"labels must be integers or strings, got dtype {y.dtype} (convert "
                        "float class ids with .astype(int))")
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be 1-D with one label per row of features ({n}), got "
                         f"shape {y.shape}")
    return y


class LinearProbe:
    """Multinomial L2-regularised logistic regression, scikit-learn's estimator convention.

    ``C``: inverse regularisation strength as in scikit-learn (see the module docstring for the
    objective); ``None`` chooses it by the paper's search on a held-out ``validation_fraction``
    of the training set, split with ``random_state``.  ``standardize``: fit on features shifted
    and scaled to zero mean and unit variance per dimension (training statistics; constant
    dimensions are left unscaled), so C penalises every dimension alike whatever its scale; the
    learned weights are folded back, so ``coef_`` and ``intercept_`` apply to raw features.  Off
    by default, as in the paper and scikit-learn.  ``max_iter`` and ``tol`` (the largest gradient
    entry of the objective / (C·B)) stop L-BFGS.

    After ``fit``: ``classes_`` [Nc] (sorted labels, ints or strings), ``coef_`` [Nc, E] and
    ``intercept_`` [Nc] (float64; two rows for two classes, unlike scikit-learn's one),
    ``C_`` (the C used), ``search_`` ({C: (validation accuracy, validation cross-entropy)} when
    C was chosen, else None) and ``n_validation_`` (the validation split's size, or None),
    ``mean_`` / ``scale_`` [E] (with standardize, else None) and ``n_iter_`` (L-BFGS iterations
    of the final fit).
    """

    def __init__(self, C=None, *, standardize: bool = False, validation_fraction: float = 0.2,
                 random_state: int = 0, max_iter: int = 1000, tol: float = 1e-6):
        self.C = C
        self.standardize = standardize
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol
        self._check_params()

    def _check_params(self) -> None:
        if self.C is not None:
            if isinstance(self.C, bool) or not isinstance(self.C, numbers.Real) \
                    or not math.isfinite(self.C) or self.C <= 0:
                raise ValueError(f"C must be a finite number > 0 (or None to choose it by "
                                 f"validation), got {describe(self.C)}")
        check_bool(self.standardize, "standardize")
        check_number(self.validation_fraction, "validation_fraction", 0, 1,
                     exclusive_minimum=True)
        if self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be < 1, got {self.validation_fraction}")
        check_int(self.random_state, "random_state", minimum=0)
        check_int(self.max_iter, "max_iter")
        check_number(self.tol, "tol", 0, exclusive_minimum=True)

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, features, labels) -> LinearProbe:
        """Train on features [B, E] and labels [B] (ints or strings, at least two classes).
        The fitted attributes are set together at the end, so a failed fit changes none."""
        self._check_params()
        x = _check_features(features)                                         # [B, E]
        labels = _check_labels(labels, x.shape[0])
        classes, y = np.unique(labels, return_inverse=True)                   # [Nc], [B]
        if len(classes) < 2:
            raise ValueError(f"labels hold one class only ({classes[0].item()!r}); a classifier "
                             "needs at least two")
        mean = scale = None
        if self.standardize:
            mean, std = x.mean(axis=0), x.std(axis=0)                         # [E], [E]
            scale = np.where(std > 0, std, 1.0)                               # [E]
            x = (x - mean) / scale                                            # [B, E]
        search, n_validation, C = None, None, self.C
        if C is None:
            C, search, n_validation = self._choose_C(x, y, classes.tolist())
        W, b, res = _fit_once(x, y, len(classes), float(C), self.max_iter, self.tol)
        if self.standardize:          # W (x - mean) / scale + b == (W / scale) x + (b - ...)
            W = W / scale                                                     # [Nc, E]
            b = b - W @ mean                                                  # [Nc]
        self.classes_, self.coef_, self.intercept_, self.C_ = classes, W, b, float(C)
        self.mean_, self.scale_, self.search_ = mean, scale, search
        self.n_validation_, self.n_iter_ = n_validation, res.nit
        return self

    def _choose_C(self, x, y, names):
        """The search over C on a stratified validation split of (x, y) -> (best C,
        {C: (validation accuracy, validation cross-entropy)}, validation size)."""
        train, val = stratified_split(y, self.validation_fraction, self.random_state, names)

        def score(C):
            W, b, _ = _fit_once(x[train], y[train], len(names), C, self.max_iter, self.tol)
            log_p = log_softmax(x[val] @ W.T + b, axis=1)                     # [Bv, Nc]
            accuracy = float((log_p.argmax(axis=1) == y[val]).mean())
            cross_entropy = float(-log_p[np.arange(len(val)), y[val]].mean())
            return accuracy, -cross_entropy, -C                # larger is better

        best, tried = search_C(score)
        return best, {C: (s[0], -s[1]) for C, s in tried.items()}, len(val)

    # -- prediction -----------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("this LinearProbe is not fitted yet: call fit(features, labels) "
                               "or LinearProbe.load(path) first")

    def _logits(self, features) -> np.ndarray:
        """Checked features [B, E] -> logits float64 [B, Nc]."""
        self._require_fitted()
        x = _check_features(features)                                         # [B, E]
        if x.shape[1] != self.coef_.shape[1]:
            raise ValueError(f"features have {x.shape[1]} dimensions per row; this probe was "
                             f"fitted on {self.coef_.shape[1]}")
        return x @ self.coef_.T + self.intercept_                             # [B, Nc]

    def decision_function(self, features) -> np.ndarray:
        """features [B, E] -> logits float64 [B, Nc]."""
        return self._logits(features)

    def predict_proba(self, features) -> np.ndarray:
        """features [B, E] -> class probabilities float64 [B, Nc] (columns in classes_ order)."""
        return np.exp(log_softmax(self._logits(features), axis=1))              # [B, Nc]

    def predict(self, features) -> np.ndarray:
        """features [B, E] -> the most probable label per row [B]."""
        best = self._logits(features).argmax(axis=1)                          # [B]
        return self.classes_[best]

    def score(self, features, labels) -> float:
        """Accuracy of predict(features) against labels [B]."""
        predicted = self.predict(features)                                    # [B]
        return float((predicted == _check_labels(labels, len(predicted))).mean())

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted probe to one safetensors file: coef_, intercept_ (float64, exact),
        mean_ / scale_ when standardized, and JSON metadata (classes, C, standardize)."""
        self._require_fitted()
        tensors = {"coef": self.coef_, "intercept": self.intercept_}
        if self.mean_ is not None:
            tensors.update(mean=self.mean_, scale=self.scale_)
        meta = {"format": _FORMAT, "classes": self.classes_.tolist(), "C": self.C_,
                "standardize": self.mean_ is not None}
        io.save_safetensors(path, tensors, metadata={"linear_probe": json.dumps(meta)})

    @classmethod
    def load(cls, path) -> LinearProbe:
        """A probe written by ``save``; a file that is not one raises ValueError naming it."""
        st = io.load_safetensors(path)
        try:
            meta = json.loads(st.metadata["linear_probe"])
            if meta["format"] != _FORMAT:
                raise ValueError(f"format {meta['format']!r}")
            coef, intercept = st.raw("coef").copy(), st.raw("intercept").copy()
            classes = np.asarray(meta["classes"])
            probe = cls(C=meta["C"], standardize=meta["standardize"])
            if meta["standardize"]:
                probe.mean_, probe.scale_ = st.raw("mean").copy(), st.raw("scale").copy()
            else:
                probe.mean_ = probe.scale_ = None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a LinearProbe file ({type(exc).__name__}: "
                             f"{exc})") from None
        Nc, arrays = len(classes), [coef, intercept] + ([probe.mean_, probe.scale_]
                                                         if meta["standardize"] else [])
        if coef.ndim != 2 or coef.shape[0] != Nc or intercept.shape != (Nc,) or Nc < 2 \
                or classes.dtype.kind not in "iU" or len(np.unique(classes)) != Nc \
                or any(a.dtype != np.float64 or not np.isfinite(a).all() for a in arrays) \
                or any(a.shape != (coef.shape[1],) for a in arrays[2:]):
            raise ValueError(f"{path}: inconsistent LinearProbe: coef {coef.shape}, intercept "
                             f"{intercept.shape}, {Nc} classes (float64, finite, one row and "
                             "one intercept per distinct class expected)")
        probe.classes_, probe.coef_, probe.intercept_ = classes, coef, intercept
        probe.C_ = float(meta["C"])
        probe.search_ = probe.n_validation_ = probe.n_iter_ = None
        return probe
