"""Logit-level KD: classification and token level, one teacher or a weighted ensemble of checkpoints.

Notation: student logits z_S, teacher logits z_i (i = 1..M), weights w_i >= 0 summing to 1, temperature
tau, hard labels y, p^tau = softmax(z / tau).

* ensemble target, ``average="probs"`` (the paper, checkpoint KD: Wang et al. 2022, arXiv:2210.06458):
  P^tau = sum_i w_i p_i^tau
* ensemble target, ``average="logits"`` (the official CheckpointKD code): P^tau = softmax(sum_i w_i z_i / tau)
* loss (Hinton et al. 2015, arXiv:1503.02531): L = alpha * CE(y, p_S) + (1 - alpha) * tau^2 * D_beta(P^tau, p_S^tau),
  D_0 = KL(P^tau || p_S^tau) the default; D_1 the reverse KL; in between the generalized Jensen-Shannon
  divergence (:mod:`hf_ckd.losses.divergence`, TRL's ``beta``)

Both terms are averaged over the kept positions: every row for classification, every token whose
(shifted) label is not ``ignore_index`` for token-level KD. The formulas, exactly as implemented, are in
docs/losses.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._options import (
    AVERAGE_MODES,
    check_alpha,
    check_beta,
    check_choice,
    check_temperature,
    normalize_weights,
)
from .divergence import divergence_rows


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the softmax/KL maths; float32/float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def ensemble_log_probs(
    teacher_logits: Sequence[torch.Tensor],
    temperature: float = 1.0,
    weights: Sequence[float] | None = None,
    average: str = "probs",
) -> torch.Tensor:
    """Log of the tempered ensemble target log P^tau, shape ``[..., V]`` (at least float32).

    Args:
        teacher_logits: M tensors of the same shape ``[..., V]``.
        temperature: tau > 0.
        weights: M non-negative weights (rescaled to sum 1); ``None`` = uniform.
        average: ``"probs"`` mixes tempered probabilities (paper), ``"logits"`` averages logits first.
    """
    check_choice(average, AVERAGE_MODES, "average")
    if len(teacher_logits) == 0:
        raise ValueError("ensemble_log_probs needs at least one teacher's logits.")
    shape = teacher_logits[0].shape
    for i, t in enumerate(teacher_logits):
        if t.shape != shape:
            raise ValueError(f"Teacher {i} logits have shape {tuple(t.shape)}, teacher 0 has {tuple(shape)}.")
    w = normalize_weights(weights, len(teacher_logits))
    if average == "logits":
        mean_logits = sum(wi * _upcast(t) for wi, t in zip(w, teacher_logits))
        return F.log_softmax(mean_logits / temperature, dim=-1)
    kept = [(wi, t) for wi, t in zip(w, teacher_logits) if wi > 0]
    if len(kept) == 1:  # one teacher: its own tempered log-probabilities (no stack, no logsumexp)
        return F.log_softmax(_upcast(kept[0][1]) / temperature, dim=-1)
    stacked = torch.stack([F.log_softmax(_upcast(t) / temperature, dim=-1) + math.log(wi) for wi, t in kept])
    return torch.logsumexp(stacked, dim=0)


def shift_for_causal_lm(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Labels aligned with causal-LM logits: position t is scored against token t+1.

    Same convention as ``transformers.loss.loss_utils.ForCausalLMLoss``: drop the first label, pad the
    end with ``ignore_index``, so the logits keep their shape ``[B, T, V]``.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def ensemble_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor],
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    weights: Sequence[float] | None = None,
    average: str = "probs",
    ignore_index: int = -100,
    shift_labels: bool = False,
    num_items_in_batch: int | torch.Tensor | None = None,
    log_target: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Snapshot-ensemble KD loss ``alpha * CE + (1 - alpha) * tau^2 * D_beta(P_ens^tau, p_S^tau)``.

    Args:
        student_logits: ``[B, V]`` (classification) or ``[B, T, V]`` (token level).
        teacher_logits: M tensors shaped like ``student_logits`` (may be empty when ``alpha == 1``).
        labels: ``[B]`` or ``[B, T]`` class ids, ``ignore_index`` marks positions to skip. May be
            ``None`` when ``alpha == 0`` (pure distillation over every position).
        temperature: tau > 0; the KD term is multiplied by tau^2 so its gradients keep their scale.
        alpha: weight of the hard-label cross-entropy, in ``[0, 1]``.
        weights: M ensemble weights (``None`` = uniform).
        average: ``"probs"`` or ``"logits"``, see :func:`ensemble_log_probs`.
        ignore_index: label value of ignored positions.
        shift_labels: causal LM: score position t against label t+1 (see :func:`shift_for_causal_lm`).
        num_items_in_batch: when given, sums are divided by it instead of by the number of kept
            positions in this batch (exact gradient accumulation / multi-process token averaging).
        log_target: a precomputed target log P^tau shaped like ``student_logits`` (e.g. from a soft-target
            cache), used instead of ``teacher_logits``; ``-inf`` entries are ids without mass.
        beta: the divergence (:func:`hf_ckd.losses.divergence.divergence_rows`): 0 forward KL (default),
            1 reverse KL, in between the generalized Jensen-Shannon divergence with mixture weight ``beta``,
            taken against the ensemble target (as ``average`` defines it).

    Returns:
        ``(loss, parts)`` with ``parts = {"ce", "kd", "divergence", "num_items"}``; ``ce``/``kd`` use the
        same reduction as ``loss`` (``kd`` already includes tau^2; ``divergence`` is the same term without
        it, TRL's number) and are detached; ``num_items`` is the number of kept positions in this batch.
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_beta(beta)
    num_classes = student_logits.shape[-1]
    for i, t in enumerate(teacher_logits):
        if t.shape != student_logits.shape:
            raise ValueError(
                f"Teacher {i} logits have shape {tuple(t.shape)} but the student's are {tuple(student_logits.shape)}; "
                "teacher and student must share the batch layout and the label space / vocabulary."
            )
    if labels is not None:
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}, expected {tuple(student_logits.shape[:-1])} "
                "(the student's logits without the class dimension)."
            )
        if shift_labels:
            labels = shift_for_causal_lm(labels, ignore_index)
        flat_labels = labels.reshape(-1)
        mask = flat_labels != ignore_index
    else:
        if alpha > 0:
            raise ValueError(
                f"alpha={alpha} weights a hard-label term but no labels were given; pass labels or alpha=0."
            )
        flat_labels = None
        mask = torch.ones(student_logits.shape[:-1].numel(), dtype=torch.bool, device=student_logits.device)
        if shift_labels:  # the last position of each sequence predicts nothing
            mask = mask.view(student_logits.shape[:-1])
            mask[..., -1] = False
            mask = mask.reshape(-1)
    if log_target is not None and log_target.shape != student_logits.shape:
        raise ValueError(
            f"log_target has shape {tuple(log_target.shape)} but the student's logits are "
            f"{tuple(student_logits.shape)}."
        )
    if alpha < 1 and len(teacher_logits) == 0 and log_target is None:
        raise ValueError(f"alpha={alpha} < 1 weights a distillation term but no teacher logits were given.")

    student = _upcast(student_logits.reshape(-1, num_classes)[mask])
    num_items = mask.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else num_items.clamp(min=1)

    zero = student.new_zeros(())
    ce_sum = F.cross_entropy(student, flat_labels[mask], reduction="sum") if flat_labels is not None else zero
    if log_target is not None or len(teacher_logits) > 0:
        if log_target is not None:  # ids without target mass (-inf) add nothing to KL(P || .)
            target = _upcast(log_target.reshape(-1, num_classes)[mask]).detach()
        else:
            teachers = [t.reshape(-1, num_classes)[mask] for t in teacher_logits]
            target = ensemble_log_probs(teachers, temperature, weights, average).detach()
        log_student = F.log_softmax(student / temperature, dim=-1)
        kd_sum = temperature**2 * divergence_rows(target, log_student, beta).sum()
    else:
        kd_sum = zero

    ce = ce_sum / denom
    kd = kd_sum / denom
    loss = (alpha * ce if alpha > 0 else zero) + ((1 - alpha) * kd if alpha < 1 else zero)
    parts = {"ce": ce.detach(), "kd": kd.detach(), "divergence": kd.detach() / temperature**2}
    return loss, {**parts, "num_items": num_items.detach()}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Single-teacher KD: :func:`ensemble_kd_loss` with one teacher."""
    return ensemble_kd_loss(student_logits, [teacher_logits], labels, **kwargs)
