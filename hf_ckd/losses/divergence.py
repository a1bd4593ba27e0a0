"""The divergence between the teachers' target and the student: the generalized Jensen-Shannon family.

With P the (tempered, ensemble) target, q the student's tempered distribution and beta in [0, 1] (TRL's
``beta``, after Agarwal et al. 2024, "On-Policy Distillation of Language Models", arXiv:2306.13649):

* ``beta = 0``: forward KL, KL(P || q) = sum_v P (log P - log q) (Hinton et al. 2015, arXiv:1503.02531; the
  default: mass-covering);
* ``beta = 1``: reverse KL, KL(q || P) = sum_v q (log q - log P) (mode-seeking);
* ``0 < beta < 1``: D_beta = beta KL(P || M) + (1 - beta) KL(q || M), with the mixture M = beta P + (1 - beta) q
  (``beta = 0.5`` is the Jensen-Shannon divergence). As in TRL, the two ends are the KLs themselves, not the
  limits of D_beta (which vanish).

Entries where P has no mass (``log P = -inf``, e.g. a top-k soft-target cache) add 0 to KL(P || .); reverse KL
is then infinite wherever q has mass, which :func:`check_beta_with_target` refuses up front. Per-row values and
the gradient w.r.t. the student's tempered logits s = z / tau (used by the chunked kernel, which forms its
gradients in the forward pass) are here; docs/losses.md gives the derivation.
"""

from __future__ import annotations

import math

import torch

from .._options import check_beta


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row, ``[...]``, from log-probabilities ``[..., V]``; entries where ``a`` has no mass add 0."""
    return torch.where(torch.isfinite(log_a), log_a.exp() * (log_a - log_b), 0.0).sum(dim=-1)


def mixture_log_probs(log_target: torch.Tensor, log_student: torch.Tensor, beta: float) -> torch.Tensor:
    """log M for M = beta P + (1 - beta) q, ``[..., V]`` (0 < beta < 1)."""
    return torch.logaddexp(log_target + math.log(beta), log_student + math.log1p(-beta))


def divergence_rows(log_target: torch.Tensor, log_student: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """D_beta(P, q) per row, ``[...]`` in nats, from ``log P`` and ``log q`` shaped ``[..., V]``.

    Differentiable w.r.t. ``log_student`` (``log_target`` is the teachers' and should be detached).
    """
    check_beta(beta)
    if beta == 0:
        return _kl_rows(log_target, log_student)
    if beta == 1:
        return _kl_rows(log_student, log_target)
    log_mixture = mixture_log_probs(log_target, log_student, beta)
    return beta * _kl_rows(log_target, log_mixture) + (1 - beta) * _kl_rows(log_student, log_mixture)


def divergence_rows_and_grad(
    log_target: torch.Tensor, log_student: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D_beta per row [n], dD_beta/ds [n, V])`` for q = softmax(s), without autograd.

    With g = dD/dq: dD/ds_j = q_j (g_j - sum_k q_k g_k), which gives
    ``q - P`` (beta = 0), ``q (log q - log P - KL(q || P))`` (beta = 1) and
    ``(1 - beta) q (log(q / M) - KL(q || M))`` (0 < beta < 1; the P-terms of g cancel against the mixture).
    """
    check_beta(beta)
    q = log_student.exp()
    if beta == 0:
        return _kl_rows(log_target, log_student), q - log_target.exp()
    if beta == 1:
        log_ratio = log_student - log_target
        value = (q * log_ratio).sum(dim=-1)
        return value, q * (log_ratio - value[:, None])
    log_mixture = mixture_log_probs(log_target, log_student, beta)
    log_ratio = log_student - log_mixture
    kl_student = (q * log_ratio).sum(dim=-1)
    value = beta * _kl_rows(log_target, log_mixture) + (1 - beta) * kl_student
    return value, (1 - beta) * q * (log_ratio - kl_student[:, None])
