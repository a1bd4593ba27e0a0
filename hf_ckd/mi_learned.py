"""Learned MI estimators (docs/mi_estimators.md): I(Y;F) from a probe classifier trained on F, and an I(X;F)
proxy from a decoder trained to reconstruct X from F.

These are the estimators of InfoPro (Wang, Ni, Song, Yang, Huang, ICLR 2021, arXiv:2101.10832), from the lab
of the checkpoint-distillation paper (arXiv:2210.06458), which did not release its own: I(Y;F) through the
cross-entropy of a classifier on F, I(X;F) through how well a small decoder reconstructs X from F. Here both
models are linear (scikit-learn's ``LogisticRegression`` and ``RidgeCV`` on standardised F) and
**cross-fitted**: the probe set is cut into ``folds`` folds and every example is predicted by a model trained
on the other folds, so a model that memorises its training examples gains nothing.

- ``probe``: ``I(Y;F) >= H(Y) - CE``, CE the held-out cross-entropy (Barber-Agakov bound), clipped at 0.
- ``reconstruction``: ``I(X;F) ≈ ½ log det Σ_Z - ½ log det Σ_E`` over the top principal components Z of X,
  Σ_E the covariance of the decoder's held-out errors, each direction capped at a signal-to-noise ratio of
  ``max_snr``. A lower bound when X is Gaussian, a proxy otherwise.
- ``infopro``: both terms at once.

Inputs as in :mod:`hf_ckd.mi`: ``features [N, D]`` and ``labels [N]``; ``reconstruction`` and ``infopro`` also
need ``inputs [N, ...]`` (float; flattened to ``[N, P]``). scikit-learn is imported when an estimator runs.
Everything is in nats.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from ._mi_base import (
    MIEstimate,
    _positive,
    _positive_int,
    _prepare,
    _result,
    label_entropy,
    register_estimator,
)

__all__ = [
    "DEFAULT_COMPONENTS",
    "DEFAULT_FOLDS",
    "DEFAULT_MAX_SNR",
    "infopro_mi",
    "probe_mi",
    "reconstruction_mi",
]

DEFAULT_FOLDS = 5
"""Cross-fitting folds of the learned estimators."""
DEFAULT_COMPONENTS = 64
"""Principal components of X the ``reconstruction`` decoder predicts (at most)."""
RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
"""The ridge penalties ``RidgeCV`` chooses from inside each training fold (efficient leave-one-out)."""
DEFAULT_MAX_SNR = 1e4
"""``reconstruction`` credits no direction of X with a signal-to-noise ratio above this (½ log(1 + 10⁴) = 4.6
nats per principal component at most): a decoder that recovers a direction exactly (F contains X, or a
linear projection of it) would otherwise give log 0."""
PROBABILITY_FLOOR = 1e-12
"""Held-out probabilities are clipped here before the log (a single 0 would make CE infinite)."""


def _sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as err:  # pragma: no cover - the test environment has it
        raise ImportError(
            "The probe, reconstruction and infopro estimators need scikit-learn: pip install scikit-learn "
            "(or hf_ckd[experiments])."
        ) from err


def _thread_limit():
    """A context limiting BLAS/OpenMP threads to torch's intra-op thread count during the fits: these are
    small problems, and on a busy machine oversubscribed OpenMP threads made one logistic fit 40x slower
    (0.93 s against 0.02 s, 960 x 384 features, 2 shared cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, torch.get_num_threads()))


def _folds(name: str, folds: Any) -> int:
    folds = _positive_int(name, folds)
    if folds < 2:
        raise ValueError(f"{name} must be at least 2 (cross-fitting needs a held-out fold), got {folds}.")
    return folds


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def _probe(
    f: torch.Tensor, y: torch.Tensor, folds: int, regularization: float, max_iter: int, seed: int
) -> tuple[float, dict[str, Any]]:
    """Cross-fitted multinomial logistic regression of ``y [N]`` on standardised ``f [N, D]``: the held-out
    cross-entropy (nats) and a record of what was fitted."""
    _sklearn()
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, codes, counts = np.unique(y.cpu().numpy(), return_inverse=True, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts.argmin()]
        raise ValueError(
            f"probe needs at least 2 examples of every class to cross-fit; class {rare} has {counts.min()}. "
            "Use a larger probe set."
        )
    splits = int(min(folds, counts.min()))  # every training fold then holds every class
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=max_iter))
    cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings(), _thread_limit():  # an unconverged fit still gives a valid held-out bound
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(model, _as_numpy(f), codes, cv=cv, method="predict_proba")
    true_class = np.clip(proba[np.arange(len(codes)), codes], PROBABILITY_FLOOR, 1.0)
    losses = -np.log(true_class)
    cross_entropy = float(losses.mean())
    record = {
        "folds": splits,
        "regularization": regularization,
        "max_iter": max_iter,
        "seed": seed,
        "cross_entropy": cross_entropy,
        "cross_entropy_se": float(losses.std(ddof=1) / math.sqrt(len(losses))),
        "probe_accuracy": float((proba.argmax(1) == codes).mean()),
    }
    return cross_entropy, record


def _flat_inputs(inputs: Any, n: int) -> torch.Tensor:
    """``inputs [N, ...]`` checked and flattened to ``[N, P]`` float64 on the CPU."""
    if inputs is None:
        raise ValueError(
            "reconstruction needs the probe examples X: pass inputs=[N, ...] (the selection API does this)."
        )
    x = torch.as_tensor(inputs)
    if x.dim() < 1 or x.shape[0] != n:
        raise ValueError(f"inputs must have one row per example ({n}), got shape {tuple(x.shape)}.")
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"reconstruction needs continuous inputs (pixels, signals), got dtype {x.dtype}: token ids have no "
            "Gaussian channel to measure. Use kde or probe for this model."
        )
    x = x.detach().to("cpu", torch.float64).reshape(n, -1)
    if x.shape[1] == 0 or not bool(torch.isfinite(x).all()):
        raise ValueError("inputs must be finite and have at least one value per example.")
    return x


def _reconstruction(
    f: torch.Tensor,
    x: torch.Tensor,
    folds: int,
    ridge: float | None,
    components: int,
    max_snr: float,
    seed: int,
) -> tuple[float, float, dict[str, Any]]:
    """The Gaussian-channel proxy ``-½ log det Σ_E`` (nats, clipped at 0) of a cross-fitted ridge decoder from
    standardised ``f [N, D]`` to the whitened top principal components of ``x [N, P]``, Σ_E the covariance
    of its held-out errors with eigenvalues floored at ``1 / (1 + max_snr)``; its ceiling
    ``½ K log(1 + max_snr)``; and its record."""
    _sklearn()
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = x.shape[0]
    centred = x - x.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variances = singular**2 / n  # λ_k, the variance of principal component k (1/N, as Σ_E below)
    total = float(variances.sum())
    if total <= 0:
        raise ValueError("inputs are constant over the probe set: there is nothing to reconstruct.")
    keep = int(min(components, int((variances > 1e-10 * variances[0]).sum())))
    lam = variances[:keep]
    whitened = (centred @ vh[:keep].T / lam.sqrt()).numpy()  # W [N, K]: uncorrelated, unit variance
    decoder = Ridge(alpha=ridge) if ridge is not None else RidgeCV(alphas=RIDGE_ALPHAS)
    cv = KFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    with _thread_limit():
        predicted = cross_val_predict(make_pipeline(StandardScaler(), decoder), _as_numpy(f), whitened, cv=cv)
    errors = whitened - predicted  # [N, K], held out
    eigenvalues = np.linalg.eigvalsh(errors.T @ errors / n)
    floor = 1.0 / (1.0 + max_snr)  # no direction is recovered with a signal-to-noise ratio above max_snr
    value = max(0.0, -0.5 * float(np.log(np.maximum(eigenvalues, floor)).sum()))
    lam = lam.numpy()
    record = {
        "folds": int(cv.get_n_splits()),
        "ridge": ridge if ridge is not None else "RidgeCV" + str(list(RIDGE_ALPHAS)),
        "components": keep,
        "max_snr": max_snr,
        "seed": seed,
        "explained_variance": float(lam.sum() / total),
        "relative_mse": float(((errors**2).mean(axis=0) * lam).sum() / lam.sum()),
        "capped_directions": int((eigenvalues < floor).sum()),
    }
    return value, 0.5 * keep * math.log1p(max_snr), record


def _check_common(folds: Any, regularization: Any, max_iter: Any, seed: Any) -> tuple[int, float, int, int]:
    return (
        _folds("folds", folds),
        _positive("regularization", regularization),
        _positive_int("max_iter", max_iter),
        int(seed),
    )


@register_estimator("probe")
def probe_mi(
    features: Any,
    labels: Any,
    folds: int = DEFAULT_FOLDS,
    regularization: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> MIEstimate:
    """Barber-Agakov lower bound on I(Y;F) from a cross-fitted probe classifier q(y|f):

        I(Y;F) >= H(Y) - CE,   CE = -(1/N) Σ_i log q_{-k(i)}(y_i | f_i),   reported as max(0, H(Y) - CE),

    where q_{-k} is a multinomial logistic regression (inverse penalty ``regularization``) on standardised F,
    trained on every fold but example i's fold k(i) (stratified, ``folds`` folds, at most the smallest class
    count, shuffled with ``seed``). Held-out, so features that only let a model memorise score 0.

    Args:
        features: ``[N, D]`` float; labels: ``[N]`` integer class ids, each class at least twice.

    Returns:
        :class:`MIEstimate` in nats, ``i_xf`` NaN; ``params`` records the folds used, ``regularization``,
        ``seed``, the held-out ``cross_entropy``, its standard error ``cross_entropy_se`` (SD of the per-example
        losses / √N) and the held-out ``probe_accuracy``.
    """
    f, y = _prepare(features, labels)
    folds, regularization, max_iter, seed = _check_common(folds, regularization, max_iter, seed)
    cross_entropy, record = _probe(f, y, folds, regularization, max_iter, seed)
    return _result("probe", math.nan, max(0.0, label_entropy(y) - cross_entropy), record, y)


@register_estimator("reconstruction")
def reconstruction_mi(
    features: Any,
    labels: Any,
    inputs: Any = None,
    folds: int = DEFAULT_FOLDS,
    ridge: float | None = None,
    components: int = DEFAULT_COMPONENTS,
    max_snr: float = DEFAULT_MAX_SNR,
    seed: int = 0,
) -> MIEstimate:
    """Gaussian-channel proxy for I(X;F) from the held-out errors of a linear decoder F -> X:

        I(X;F) ≈ max(0, -½ Σ_j log max(μ_j, 1 / (1 + max_snr))),   μ_j the eigenvalues of
        Σ_E = (1/N) Σ_i e_i e_iᵀ,   e_i = w_i - ŵ_{-k(i)}(f_i),   w_ik = z_ik / √λ_k,

    over the top ``components`` principal components z_k of X (variances λ_k; PCA of the centred inputs),
    whitened to unit variance; ŵ is a ridge regression on standardised F (penalty ``ridge``, or chosen by
    ``RidgeCV`` inside each training fold) trained on the folds other than example i's, k(i) (``folds``
    folds). Without the floor this is ``½ log det Σ_Z - ½ log det Σ_E^Z``, and if X is Gaussian a lower bound:
    h(Z) = ½ log det(2πe Σ_Z), h(Z|F) <= h(Z - ẑ(F)) <= ½ log det(2πe Σ_E^Z) (a Gaussian has the largest
    entropy for its covariance), and Z is a function of X; the floor only lowers it. It is exact for a linear
    Gaussian channel F = X + noise (the best decoder is linear). For other X (pixels, bits) it is a proxy: in
    how many directions of X, and at what signal-to-noise ratio, F lets a linear decoder recover X, on a log
    scale. The floor caps each direction at ``½ log(1 + max_snr)``, so ``ceiling_x = ½ K log(1 + max_snr)``
    (K the components kept): a deterministic F from which a direction of X is recovered exactly would
    otherwise score infinity.

    Args:
        features: ``[N, D]`` float; labels: ``[N]`` (not used but checked, for the registry's signature).
        inputs: ``[N, ...]`` float, the probe examples X (flattened).

    Returns:
        :class:`MIEstimate` in nats, ``i_yf`` NaN; ``params`` records the folds, ``ridge``, the number of
        ``components`` kept (at most ``components``, fewer if X has fewer non-constant directions),
        ``max_snr``, ``seed``, the ``explained_variance`` of X they carry, the ``relative_mse``
        Σ_k MSE_k / Σ_k λ_k (0 = perfect, 1 = no better than the mean) and the number of
        ``capped_directions`` (error eigenvalues at the floor).
    """
    f, y = _prepare(features, labels)
    folds = _folds("folds", folds)
    components = _positive_int("components", components)
    max_snr = _positive("max_snr", max_snr)
    if ridge is not None:
        ridge = _positive("ridge", ridge)
    x = _flat_inputs(inputs, f.shape[0])
    i_x, ceiling, record = _reconstruction(f, x, folds, ridge, components, max_snr, int(seed))
    return _result("reconstruction", i_x, math.nan, record, y, ceiling_x=ceiling)


@register_estimator("infopro")
def infopro_mi(
    features: Any,
    labels: Any,
    inputs: Any = None,
    folds: int = DEFAULT_FOLDS,
    regularization: float = 1.0,
    max_iter: int = 1000,
    ridge: float | None = None,
    components: int = DEFAULT_COMPONENTS,
    max_snr: float = DEFAULT_MAX_SNR,
    seed: int = 0,
) -> MIEstimate:
    """Both InfoPro terms (arXiv:2101.10832): I(X;F) from :func:`reconstruction_mi` and I(Y;F) from
    :func:`probe_mi`, with the same folds and seed. ``params`` holds both records (``reconstruction``,
    ``probe``); ``ceiling_x`` is the reconstruction's."""
    f, y = _prepare(features, labels)
    folds, regularization, max_iter, seed = _check_common(folds, regularization, max_iter, seed)
    components = _positive_int("components", components)
    max_snr = _positive("max_snr", max_snr)
    if ridge is not None:
        ridge = _positive("ridge", ridge)
    x = _flat_inputs(inputs, f.shape[0])
    i_x, ceiling, x_record = _reconstruction(f, x, folds, ridge, components, max_snr, seed)
    cross_entropy, y_record = _probe(f, y, folds, regularization, max_iter, seed)
    params = {"reconstruction": x_record, "probe": y_record}
    return _result("infopro", i_x, max(0.0, label_entropy(y) - cross_entropy), params, y, ceiling_x=ceiling)
