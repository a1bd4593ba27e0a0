"""Mutual-information estimators for teacher selection (docs/mi_estimators.md).

Pure functions of tensors. Everything is in nats. Inputs:

- ``features``: ``[N, D]`` float tensor or array, one row per probe example (the representation F);
- ``labels``: ``[N]`` integer class ids;
- for ``reconstruction`` / ``infopro`` also ``inputs``: ``[N, ...]`` float, the probe examples X themselves.

Each estimator returns an :class:`MIEstimate` with I(X;F), I(Y;F), the parameters it actually used and
the two ceilings the terms saturate at: ``log N`` for I(X;F) (a deterministic F on N distinct samples
carries at most log N nats about which sample it came from) and the empirical ``H(Y)`` for I(Y;F).
An estimate close to its ceiling for every candidate cannot rank them; :meth:`MIEstimate.saturation`
says how close it is.

Estimators (registered in :data:`ESTIMATORS`, chosen by name in :func:`estimate_mi`):

- ``kde`` (default): Monte-Carlo entropy of the Gaussian mixture T = F + ε, ε ~ N(0, sigma²I);
- ``kde_upper`` / ``kde_lower``: Kolchinsky & Tracey's pairwise-distance bounds on the same quantity;
- ``binning``: Shwartz-Ziv & Tishby's per-unit equal-width binning, plug-in entropies;
- ``variational``: I(Y;F) >= H(Y) - CE(y, softmax(logits)) from the teacher's own predictions;
- ``probe``, ``reconstruction``, ``infopro`` (in :mod:`hf_ckd.mi_learned`, registered on import of this
  module): I(Y;F) from a cross-fitted linear probe, an I(X;F) proxy from a cross-fitted linear decoder
  F -> X, and both (the estimators of InfoPro, arXiv:2101.10832).

Pairwise work is chunked: at most ``chunk_size x N`` distances exist at a time, computed with matmuls
on the features' device (CUDA tensors are estimated on the GPU), in float64 unless told otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._mi_base import (
    ESTIMATORS,
    MIN_SAMPLES,
    MIEstimate,
    _positive,
    _positive_int,
    _prepare,
    _result,
    estimate_mi,
    estimator_accepts,
    label_entropy,
    register_estimator,
)
from ._mi_base import _entropy_from_counts as _entropy_from_counts
from .mi_learned import infopro_mi, probe_mi, reconstruction_mi

__all__ = [
    "DEFAULT_NOISE_STD_RELATIVE",
    "ESTIMATORS",
    "MIN_SAMPLES",
    "MIEstimate",
    "binning_mi",
    "estimate_mi",
    "estimator_accepts",
    "infopro_mi",
    "kde_lower_mi",
    "kde_mi",
    "kde_upper_mi",
    "label_entropy",
    "median_pairwise_distance",
    "probe_mi",
    "reconstruction_mi",
    "register_estimator",
    "variational_mi",
]

DEFAULT_NOISE_STD_RELATIVE = 0.5
"""Default sigma of the kde estimators, as a fraction of the median pairwise distance of the features."""
MEDIAN_MAX_SAMPLES = 2000
"""The median pairwise distance is taken over at most this many examples (a fixed random subset)."""
BLOCK_ELEMENTS = 2**22
"""Default chunking: each block of pairwise terms has at most this many entries (32 MiB in float64)."""


# ---- shared pairwise machinery ---------------------------------------------------------------------


def _standardize(features: torch.Tensor, standardize: bool) -> torch.Tensor:
    """Centre (always; the estimators are translation invariant) and, if asked, divide each dimension by
    its standard deviation over the probe set (constant dimensions are left at 0)."""
    centred = features - features.mean(dim=0, keepdim=True)
    if standardize:
        std = centred.std(dim=0, unbiased=False, keepdim=True)
        centred = centred / torch.where(std > 0, std, torch.ones_like(std))
    return centred


def _chunk(n: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, min(n, BLOCK_ELEMENTS // n))
    return _positive_int("chunk_size", chunk_size)


def _squared_distances(queries: torch.Tensor, keys: torch.Tensor, key_sq: torch.Tensor) -> torch.Tensor:
    """``[M, N]`` squared Euclidean distances via ``|q|^2 + |k|^2 - 2 q.k`` (clamped at 0)."""
    sq = (queries * queries).sum(dim=1, keepdim=True) + key_sq[None, :] - 2.0 * (queries @ keys.T)
    return sq.clamp_(min=0.0)


def median_pairwise_distance(features: Any, max_samples: int = MEDIAN_MAX_SAMPLES) -> float:
    """Median Euclidean distance ``||h_i - h_j||`` over pairs ``i < j`` of the rows of ``features [N, D]``.

    With more than ``max_samples`` rows, a fixed random subset (seed 0) of ``max_samples`` rows is used, so
    the result is deterministic and costs at most ``max_samples²`` distances. Units: those of the features.
    """
    h = torch.as_tensor(features)
    if h.dim() != 2 or h.shape[0] < 2:
        raise ValueError(f"median_pairwise_distance needs [N >= 2, D] features, got {tuple(h.shape)}.")
    if h.shape[0] > max_samples:
        index = torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(0))[:max_samples]
        h = h[index.to(h.device)]
    h = h - h.mean(dim=0, keepdim=True)
    sq = _squared_distances(h, h, (h * h).sum(dim=1))
    upper = torch.triu_indices(h.shape[0], h.shape[0], offset=1, device=h.device)
    return float(sq[upper[0], upper[1]].median().sqrt())


def _pairwise_log_means(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    chunk_size: int | None,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i (query i belongs to the same example, and class, as key i), with
    ``a_ij = -scale * ||q_i - k_j||² + offsets_i`` and ``a_ii = 0`` (true for both callers: queries equal
    to keys, or ``q_i = k_i + ε_i`` with ``offsets_i = scale * ||ε_i||²``; set exactly, not computed):

        all_i   = log (1/N)   Σ_j            exp(a_ij)
        class_i = log (1/N_c) Σ_{j: y_j=y_i} exp(a_ij)

    Never more than ``chunk x N`` terms exist at once; log-sum-exp keeps it stable. Returns two ``[N]``.
    """
    n = keys.shape[0]
    step = _chunk(n, chunk_size)
    key_sq = (keys * keys).sum(dim=1)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    log_all = torch.empty(n, dtype=keys.dtype, device=keys.device)
    log_class = torch.empty_like(log_all)
    for start in range(0, n, step):
        stop = min(start + step, n)
        exponent = _squared_distances(queries[start:stop], keys, key_sq).mul_(-scale)
        if offsets is not None:
            exponent.add_(offsets[start:stop, None])
        exponent.diagonal(offset=start).zero_()  # own term: exactly 0 (the matmul form leaves ~1e-16 |h|²)
        log_all[start:stop] = torch.logsumexp(exponent, dim=1)
        exponent.masked_fill_(inverse[start:stop, None] != inverse[None, :], float("-inf"))
        log_class[start:stop] = torch.logsumexp(exponent, dim=1)
    log_all -= math.log(n)
    log_class -= counts.to(keys.dtype).log()[inverse]
    return log_all, log_class


def _noise_std(
    h: torch.Tensor, noise_std: float | None, noise_std_relative: float | None
) -> tuple[float, dict[str, Any]]:
    """sigma and its record: ``noise_std`` if given, else ``noise_std_relative`` x the median pairwise distance."""
    if noise_std is not None and noise_std_relative is not None:
        raise ValueError("Pass either noise_std (absolute) or noise_std_relative, not both.")
    median = median_pairwise_distance(h)
    if noise_std is not None:
        sigma = _positive("noise_std", noise_std)
        relative = sigma / median if median > 0 else None
    else:
        relative = _positive(
            "noise_std_relative",
            DEFAULT_NOISE_STD_RELATIVE if noise_std_relative is None else noise_std_relative,
        )
        if median > 0:
            sigma = relative * median
        else:  # more than half the pairs coincide: fall back to the mean distance, then to 1
            mean = float(torch.pdist(h[:MEDIAN_MAX_SAMPLES]).mean()) if h.shape[0] > 1 else 0.0
            sigma = relative * (mean if mean > 0 else 1.0)
    return sigma, {"noise_std": sigma, "noise_std_relative": relative, "median_distance": median}


# ---- kde (Monte Carlo) -----------------------------------------------------------------------------


def _noise_seed(seed: int) -> int:
    """The torch seed of the noise stream for ``seed``: mixed with a fixed odd constant, so the noise is not
    the stream ``torch.manual_seed(seed)`` gives (data drawn from that stream would be correlated with it)."""
    return (seed * 0x9E3779B97F4A7C15 + 0x5851F42D4C957F2D) % 2**63


@register_estimator("kde")
def kde_mi(
    features: Any,
    labels: Any,
    noise_std: float | None = None,
    noise_std_relative: float | None = None,
    standardize: bool = True,
    mc_draws: int = 4,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    dtype: Any = torch.float64,
) -> MIEstimate:
    """Monte-Carlo mixture-entropy estimate of I(X;T) and I(T;Y) for T = F + ε, ε ~ N(0, sigma²I).

    X is uniform over the N probe examples, so T is the mixture ``p(t) = (1/N) Σ_j N(t; h_j, sigma²I)`` of
    Gaussians centred on the (standardised) features ``h_j``. With ``t_i = h_i + ε_i``:

        Ĥ(T) = -(1/N) Σ_i log p(t_i),    H(T|X) = (D/2) log(2 pi e sigma²),    I(X;T) = Ĥ(T) - H(T|X),
        I(T;Y) = Ĥ(T) - Σ_c p_c Ĥ(T|Y=c),   Ĥ(T|Y=c) from the class-c mixture at the class-c samples.

    H(T|X) is subtracted sample by sample (``log N(t_i; h_i, sigma²I)`` uses the drawn ``||ε_i||²`` instead of its
    mean ``D sigma²``), which has the same expectation and removes the chi-square noise of ``||ε_i||²``. Both
    terms are then exactly bounded: ``I(X;T) <= log N`` and ``I(T;Y) <= H(Y)``.

    Args:
        features: ``[N, D]`` float; labels: ``[N]`` integer class ids.
        noise_std: sigma in the (standardised) feature units. Exclusive with ``noise_std_relative``.
        noise_std_relative: sigma as a fraction of the median pairwise distance of the (standardised) features
            (default :data:`DEFAULT_NOISE_STD_RELATIVE` = 0.5 when neither is given).
        standardize: divide each dimension by its standard deviation over the probe set first.
        mc_draws: noise draws averaged (each costs N² D multiply-adds).
        seed: seed of the noise (default 0); or pass a ``generator`` on the features' device.
        chunk_size: query rows per block of pairwise terms (default: blocks of at most 2^22 entries).
        dtype: ``float64`` (default) or ``float32`` computation.

    Returns:
        :class:`MIEstimate` in nats; ``params`` records sigma, its relative value, the median distance,
        ``standardize``, ``mc_draws``, ``seed`` and ``dtype``.
    """
    f, y = _prepare(features, labels, dtype)
    draws = _positive_int("mc_draws", mc_draws)
    if seed is not None and generator is not None:
        raise ValueError("Pass either seed or generator, not both.")
    h = _standardize(f, bool(standardize))
    sigma, record = _noise_std(h, noise_std, noise_std_relative)
    if generator is None:
        seed = 0 if seed is None else int(seed)
        generator = torch.Generator(device=h.device).manual_seed(_noise_seed(seed))
    scale = 1.0 / (2.0 * sigma**2)
    i_x, i_y = 0.0, 0.0
    for _ in range(draws):
        eps = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype).mul_(sigma)
        # a_ij = -(||t_i - h_j||² - ||ε_i||²) / 2 sigma²  =  log N(t_i; h_j) - log N(t_i; h_i)
        log_all, log_class = _pairwise_log_means(
            h + eps, h, y, scale, chunk_size, offsets=scale * (eps * eps).sum(dim=1)
        )
        i_x += float(-log_all.mean())  # mean_i [log N(t_i; h_i) - log p(t_i)]
        i_y += float((log_class - log_all).mean())  # mean_i [log p(t_i | y_i) - log p(t_i)]
    params = {
        **record,
        "standardize": bool(standardize),
        "mc_draws": draws,
        "seed": seed,
        "dtype": str(h.dtype).removeprefix("torch."),
    }
    return _result("kde", i_x / draws, i_y / draws, params, y)


# ---- kde pairwise bounds (Kolchinsky & Tracey) -----------------------------------------------------


def _pairwise_bound(
    name: str,
    divisor: float,
    features: Any,
    labels: Any,
    noise_std: float | None,
    noise_std_relative: float | None,
    standardize: bool,
    chunk_size: int | None,
    dtype: Any,
) -> MIEstimate:
    f, y = _prepare(features, labels, dtype)
    h = _standardize(f, bool(standardize))
    sigma, record = _noise_std(h, noise_std, noise_std_relative)
    log_all, log_class = _pairwise_log_means(h, h, y, 1.0 / (divisor * sigma**2), chunk_size)
    params = {**record, "standardize": bool(standardize), "dtype": str(h.dtype).removeprefix("torch.")}
    return _result(name, float(-log_all.mean()), float((log_class - log_all).mean()), params, y)


@register_estimator("kde_upper")
def kde_upper_mi(
    features: Any,
    labels: Any,
    noise_std: float | None = None,
    noise_std_relative: float | None = None,
    standardize: bool = True,
    chunk_size: int | None = None,
    dtype: Any = torch.float64,
) -> MIEstimate:
    """Kolchinsky & Tracey's KL-based pairwise *upper* bound on I(X;T), T = F + ε, ε ~ N(0, sigma²I):

        Î(X;T) = -(1/N) Σ_i log[(1/N) Σ_j exp(-||h_i - h_j||² / 2 sigma²)],
        Î(T;Y) = Î(X;T) - Σ_c p_c Î_c(X;T)   (Î_c: the same over the class-c examples only).

    Î(T;Y) is a difference of two upper bounds, so it is not itself a bound. Deterministic (no sampling).
    Parameters as :func:`kde_mi` (sigma rule, standardisation, chunking, dtype).
    """
    return _pairwise_bound(
        "kde_upper", 2.0, features, labels, noise_std, noise_std_relative, standardize, chunk_size, dtype
    )


@register_estimator("kde_lower")
def kde_lower_mi(
    features: Any,
    labels: Any,
    noise_std: float | None = None,
    noise_std_relative: float | None = None,
    standardize: bool = True,
    chunk_size: int | None = None,
    dtype: Any = torch.float64,
) -> MIEstimate:
    """Kolchinsky & Tracey's Bhattacharyya-based pairwise *lower* bound on I(X;T):

        Î(X;T) = -(1/N) Σ_i log[(1/N) Σ_j exp(-||h_i - h_j||² / 8 sigma²)],   Î(T;Y) as in :func:`kde_upper_mi`.

    Parameters as :func:`kde_mi`.
    """
    return _pairwise_bound(
        "kde_lower", 8.0, features, labels, noise_std, noise_std_relative, standardize, chunk_size, dtype
    )


# ---- binning (Shwartz-Ziv & Tishby) ----------------------------------------------------------------


@register_estimator("binning")
def binning_mi(features: Any, labels: Any, bins: int = 30) -> MIEstimate:
    """Discretise each unit into ``bins`` equal-width bins over its range on the probe set, treat each
    binned row as a symbol T and use plug-in entropies:

        I(X;T) = H(T),    I(T;Y) = H(T) - H(T|Y) = H(T) + H(Y) - H(T, Y).

    Unit d of example i goes to bin ``min(floor((f_id - min_d) / w_d), bins - 1)``, ``w_d = (max_d - min_d)
    / bins``; a constant unit is one bin. With many units every row is its own symbol and I(X;T) = log N,
    I(T;Y) = H(Y) whatever the features are: check :meth:`MIEstimate.saturation`.
    """
    f, y = _prepare(features, labels)
    n_bins = _positive_int("bins", bins)
    lo = f.min(dim=0, keepdim=True).values
    width = (f.max(dim=0, keepdim=True).values - lo) / n_bins
    codes = torch.where(width > 0, torch.floor((f - lo) / torch.where(width > 0, width, 1.0)), 0.0)
    codes = codes.clamp_(0, n_bins - 1).to(torch.int64)
    _, symbols, symbol_counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    _, joint_counts = torch.unique(torch.stack([symbols, y], dim=1), dim=0, return_counts=True)
    h_t = _entropy_from_counts(symbol_counts)
    i_y = h_t + label_entropy(y) - _entropy_from_counts(joint_counts)
    return _result("binning", h_t, i_y, {"bins": n_bins}, y)


# ---- variational (teacher's predictions) -----------------------------------------------------------


@register_estimator("variational")
def variational_mi(features: Any, labels: Any, logits: Any = None, temperature: float = 1.0) -> MIEstimate:
    """Barber-Agakov lower bound on I(Y;F) from the teacher's own classifier q(y|f) = softmax(logits / τ):

        I(Y;F) >= H(Y) - CE,   CE = -(1/N) Σ_i log softmax(z_i / τ)[y_i],   clipped at 0.

    ``features`` are the logits ``[N, C]`` (or pass them as ``logits=``, which wins); labels must be in
    ``[0, C)``. Any classifier gives a valid bound; a calibrated one gives the tightest.

    I(X;F) is returned as NaN: the predictions carry no estimate of it (use a kde estimator on F for that).
    ``params`` records ``temperature`` and the measured ``cross_entropy``.
    """
    z, y = _prepare(features if logits is None else logits, labels)
    tau = _positive("temperature", temperature)
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise ValueError(
            f"variational needs labels in [0, {z.shape[1]}) to index the {z.shape[1]} logit columns, got "
            f"labels in [{int(y.min())}, {int(y.max())}]."
        )
    cross_entropy = float(torch.nn.functional.cross_entropy(z / tau, y))
    i_y = max(0.0, label_entropy(y) - cross_entropy)
    return _result("variational", math.nan, i_y, {"temperature": tau, "cross_entropy": cross_entropy}, y)
