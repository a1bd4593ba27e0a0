"""The core the MI estimators share (docs/mi_estimators.md): :class:`MIEstimate`, the registry
:data:`ESTIMATORS` with :func:`register_estimator` and :func:`estimate_mi`, input checks and the plug-in label
entropy. The estimators themselves live in :mod:`hf_ckd.mi` (kde family, binning, variational) and
:mod:`hf_ckd.mi_learned` (probe, reconstruction, infopro); import :mod:`hf_ckd.mi`, which registers both.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MIN_SAMPLES = 10
"""Fewest probe examples any estimator accepts."""


@dataclass(frozen=True)
class MIEstimate:
    """One estimate of the two terms of the selection score, in nats.

    Attributes:
        i_xf: I(X;F) (for the kde estimators I(X;T) with T = F + ε); NaN where the estimator has none.
        i_yf: I(Y;F) (for the kde estimators I(T;Y)).
        estimator: the registry name that produced it.
        params: the parameters actually used (defaults filled in, sigma resolved), JSON-serialisable.
        ceiling_x: ``log N``, what I(X;F) saturates at for a deterministic F on N distinct samples (for
            ``reconstruction``: ``½ K log(1 + max_snr)``, every one of K directions of X recovered at the
            largest signal-to-noise ratio it credits).
        ceiling_y: ``H(Y)`` of the empirical labels, what I(Y;F) saturates at.
    """

    i_xf: float
    i_yf: float
    estimator: str
    params: dict
    ceiling_x: float
    ceiling_y: float

    def saturation(self) -> tuple[float, float]:
        """``(i_xf / ceiling_x, i_yf / ceiling_y)``: 1.0 means the term sits at its ceiling."""
        return self.i_xf / self.ceiling_x, self.i_yf / self.ceiling_y


# ---- registry --------------------------------------------------------------------------------------

ESTIMATORS: dict[str, Callable[..., MIEstimate]] = {}
"""Name -> estimator function ``fn(features, labels, **params) -> MIEstimate``."""


def register_estimator(name: str) -> Callable[[Callable[..., MIEstimate]], Callable[..., MIEstimate]]:
    """Decorator adding an estimator to :data:`ESTIMATORS` under ``name`` (names are unique)."""

    def decorator(fn: Callable[..., MIEstimate]) -> Callable[..., MIEstimate]:
        if name in ESTIMATORS:
            raise ValueError(f"An MI estimator named {name!r} is already registered.")
        ESTIMATORS[name] = fn
        return fn

    return decorator


def estimate_mi(features: Any, labels: Any, estimator: str = "kde", **params: Any) -> MIEstimate:
    """Estimate I(X;F) and I(Y;F) with the estimator named ``estimator``.

    Args:
        features: ``[N, D]`` float tensor or array (for ``variational``: the logits ``[N, C]``, or ``None``
            with ``logits=`` among ``params``).
        labels: ``[N]`` integer class ids.
        estimator: a name in :data:`ESTIMATORS`.
        **params: the estimator's keyword parameters (see each function); unknown names are an error.

    Raises:
        ValueError: unknown estimator or parameter, or unusable input (the message names the problem).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown MI estimator {estimator!r}; registered: {sorted(ESTIMATORS)}.")
    fn = ESTIMATORS[estimator]
    accepted = list(inspect.signature(fn).parameters)[2:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"Estimator {estimator!r} got unknown parameter(s) {unknown}; it accepts {accepted}."
        )
    return fn(features, labels, **params)


def estimator_accepts(estimator: str, parameter: str) -> bool:
    """Whether the estimator named ``estimator`` takes the keyword ``parameter`` (e.g. ``"inputs"``: it reads
    the probe examples X; ``"logits"``: the teacher's predictions; ``"noise_std_relative"``: a kde sigma)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown MI estimator {estimator!r}; registered: {sorted(ESTIMATORS)}.")
    return parameter in list(inspect.signature(ESTIMATORS[estimator]).parameters)[2:]


# ---- input checks ----------------------------------------------------------------------------------


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}.")
    return dtype


def _prepare(features: Any, labels: Any, dtype: Any = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and convert to ``(features [N, D] float on its device, labels [N] int64 on the same device)``."""
    dtype = _resolve_dtype(dtype)
    if features is None:
        raise ValueError("features are missing (None).")
    features = torch.as_tensor(features)
    labels = torch.as_tensor(labels)
    if features.dim() != 2:
        raise ValueError(
            f"features must be a 2-d [N, D] array, got shape {tuple(features.shape)} "
            "(reshape 1-d features with .reshape(-1, 1), flatten the rest with .reshape(N, -1))."
        )
    if labels.dim() != 1:
        raise ValueError(f"labels must be a 1-d [N] array of class ids, got shape {tuple(labels.shape)}.")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"features have {features.shape[0]} rows but labels have {labels.shape[0]}; they must match."
        )
    if features.shape[1] == 0:
        raise ValueError("features have 0 dimensions (shape [N, 0]).")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}.")
    if features.dtype.is_complex:
        raise ValueError(f"features must be real, got dtype {features.dtype}.")
    n = features.shape[0]
    if n < MIN_SAMPLES:
        raise ValueError(f"MI estimates need at least {MIN_SAMPLES} samples, got {n}.")
    features = features.to(dtype)
    if not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise ValueError(f"features contain NaN or Inf (in {bad} of {n} rows).")
    labels = labels.to(device=features.device, dtype=torch.int64)
    classes = int(torch.unique(labels).numel())
    if classes < 2:
        raise ValueError(f"labels have {classes} distinct class(es); I(Y;F) needs at least 2.")
    return features, labels


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def label_entropy(labels: Any) -> float:
    """Plug-in entropy H(Y) of integer labels ``[N]``, in nats: ``-Σ_c p_c log p_c`` with ``p_c = N_c / N``."""
    _, counts = torch.unique(torch.as_tensor(labels), return_counts=True)
    return _entropy_from_counts(counts)


def _entropy_from_counts(counts: torch.Tensor) -> float:
    p = counts.to(torch.float64) / counts.sum()
    return float(-(p * p.log()).sum())


def _result(
    estimator: str,
    i_xf: float,
    i_yf: float,
    params: dict[str, Any],
    labels: torch.Tensor,
    ceiling_x: float | None = None,
) -> MIEstimate:
    """The estimate, with the ceilings ``log N`` (or ``ceiling_x``) and ``H(Y)`` of ``labels [N]``."""
    return MIEstimate(
        i_xf=float(i_xf),
        i_yf=float(i_yf),
        estimator=estimator,
        params=params,
        ceiling_x=math.log(labels.shape[0]) if ceiling_x is None else float(ceiling_x),
        ceiling_y=label_entropy(labels),
    )
