"""Knowledge-distillation losses: pure functions of tensors (DESIGN.md §3).

Notation: student logits z_S, teacher logits z_i (i = 1..M), weights w_i >= 0 summing to 1, temperature
tau, hard labels y, p^tau = softmax(z / tau).

* ensemble target, ``average="probs"`` (paper): P^tau = sum_i w_i p_i^tau
* ensemble target, ``average="logits"`` (official CheckpointKD code): P^tau = softmax(sum_i w_i z_i / tau)
* loss: L = alpha * CE(y, p_S) + (1 - alpha) * tau^2 * KL(P^tau || p_S^tau)

Both terms are averaged over the kept positions: every row for classification, every token whose
(shifted) label is not ``ignore_index`` for token-level KD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

AVERAGE_MODES = ("probs", "logits")


def _check_hyperparameters(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}; the paper uses 4.0.")
    if not (isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0):
        raise ValueError(
            f"alpha must lie in [0, 1] (weight of the hard-label cross-entropy), got {alpha!r}; "
            "alpha=1 is plain CE, alpha=0 pure distillation."
        )


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32 for the softmax/KL maths; float32/float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def normalize_weights(weights: Sequence[float] | torch.Tensor | None, num_teachers: int) -> list[float]:
    """Validate ensemble weights and rescale them to sum to 1 (``None`` = uniform)."""
    if num_teachers < 1:
        raise ValueError("At least one teacher is needed for a distillation target.")
    if weights is None:
        return [1.0 / num_teachers] * num_teachers
    values = [float(w) for w in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)]
    if len(values) != num_teachers:
        raise ValueError(
            f"Got {len(values)} ensemble weights for {num_teachers} teacher checkpoints; give one weight per "
            "checkpoint (or none for a uniform ensemble)."
        )
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(f"Ensemble weights must be finite and >= 0, got {values}.")
    total = sum(values)
    if total <= 0:
        raise ValueError(f"Ensemble weights sum to {total}; at least one weight must be > 0.")
    return [w / total for w in values]


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
    if average not in AVERAGE_MODES:
        raise ValueError(f"average must be one of {AVERAGE_MODES}, got {average!r}.")
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Snapshot-ensemble KD loss ``alpha * CE + (1 - alpha) * tau^2 * KL(P_ens^tau || p_S^tau)``.

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

    Returns:
        ``(loss, parts)`` with ``parts = {"ce": ..., "kd": ..., "num_items": ...}``; ``ce``/``kd`` use the
        same reduction as ``loss`` (``kd`` already includes tau^2) and are detached; ``num_items`` is the
        number of kept positions in this batch.
    """
    _check_hyperparameters(temperature, alpha)
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
    if alpha < 1 and len(teacher_logits) == 0:
        raise ValueError(f"alpha={alpha} < 1 weights a distillation term but no teacher logits were given.")

    student = _upcast(student_logits.reshape(-1, num_classes)[mask])
    num_items = mask.sum()
    denom = num_items_in_batch if num_items_in_batch is not None else num_items.clamp(min=1)

    zero = student.new_zeros(())
    ce_sum = F.cross_entropy(student, flat_labels[mask], reduction="sum") if flat_labels is not None else zero
    if len(teacher_logits) > 0:
        teachers = [t.reshape(-1, num_classes)[mask] for t in teacher_logits]
        log_target = ensemble_log_probs(teachers, temperature, weights, average).detach()
        log_student = F.log_softmax(student / temperature, dim=-1)
        kl = F.kl_div(log_student, log_target, reduction="none", log_target=True).sum(dim=-1)
        kd_sum = temperature**2 * kl.sum()
    else:
        kd_sum = zero

    ce = ce_sum / denom
    kd = kd_sum / denom
    loss = (alpha * ce if alpha > 0 else zero) + ((1 - alpha) * kd if alpha < 1 else zero)
    return loss, {"ce": ce.detach(), "kd": kd.detach(), "num_items": num_items.detach()}


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Single-teacher KD: :func:`ensemble_kd_loss` with one teacher."""
    return ensemble_kd_loss(student_logits, [teacher_logits], labels, **kwargs)
