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
import warnings
from collections.abc import Sequence
from typing import NamedTuple

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
        log_target: a precomputed target log P^tau shaped like ``student_logits`` (e.g. from a soft-target
            cache), used instead of ``teacher_logits``; ``-inf`` entries are ids without mass.

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
    if log_target is not None:
        target = _upcast(log_target.reshape(-1, num_classes)[mask]).detach()
        log_student = F.log_softmax(student / temperature, dim=-1)
        # Ids without target mass (-inf) contribute 0 * (-inf - log p_S) = 0.
        kl = torch.where(torch.isfinite(target), target.exp() * (target - log_student), 0.0).sum(dim=-1)
        kd_sum = temperature**2 * kl.sum()
    elif len(teacher_logits) > 0:
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


# ---- large vocabularies: KD from hidden states and LM-head weights ---------------------------------

KD_LOSS_MODES = ("full", "chunked", "sampled")


def _linear_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``hidden @ weight.T + bias`` in the inputs' dtype, returned as (at least) float32: ``[n, V]``."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    return _upcast(logits)


def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax(x, -1)`` written into ``x`` (chunked losses hold a few ``[n, V]`` buffers, not more)."""
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


class _TeacherHeads:
    """M teachers as hidden states and LM heads; gives the tempered ensemble target for a range of rows."""

    def __init__(self, hidden, weight, bias, temperature, weights, average):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.temperature, self.weights, self.average = temperature, weights, average

    @torch.no_grad()
    def log_target(self, rows: slice) -> torch.Tensor:
        """log P_ens^tau for ``rows``, ``[n, V]`` float32."""
        if len(self.hidden) == 1:  # one teacher: log-softmax in place (one [n, V] buffer, not three)
            logits = _linear_logits(self.hidden[0][rows], self.weight[0], self.bias[0])  # a fresh tensor
            return _log_softmax_(logits.div_(self.temperature))
        logits = [_linear_logits(h[rows], w, b) for h, w, b in zip(self.hidden, self.weight, self.bias)]
        return ensemble_log_probs(logits, self.temperature, self.weights, self.average)

    def check_finite(self, value: torch.Tensor) -> None:
        """Raise, naming the teacher, when a sum over the target is not finite (cheaper than checking every
        logit: a NaN/Inf logit always makes the sum NaN)."""
        if bool(torch.isfinite(value)):
            return
        for i, (h, w, b) in enumerate(zip(self.hidden, self.weight, self.bias)):
            if not bool(torch.isfinite(_linear_logits(h, w, b)).all()):
                raise ValueError(
                    f"Teacher {i} has NaN/Inf logits; check its hidden states and LM head (try fp32)."
                )
        raise ValueError("The distillation loss is not finite; check the student's hidden states and head.")


def _chunk_grads(hidden, weight, bias, grad_logits_fn, chunk_size, grads_needed):
    """Run ``grad_logits_fn(rows, logits) -> (loss_sum, grad_logits)`` over chunks of rows and accumulate
    the gradients of the summed loss w.r.t. ``hidden``, ``weight`` and ``bias`` (``None`` when not needed).

    Returns ``(loss_sum, grad_hidden, grad_weight, grad_bias)``; memory is ``O(chunk_size * V)`` plus the
    gradients themselves.
    """
    need_hidden, need_weight, need_bias = grads_needed
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
    grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        logits = _linear_logits(hidden[rows], weight, bias)
        loss_sum, grad_logits = grad_logits_fn(rows, logits)
        total += loss_sum
        if grad_logits is None:
            continue
        if grad_hidden is not None:
            grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
        if grad_weight is not None:
            grad_weight.addmm_(grad_logits.T, _upcast(hidden[rows]))
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return total, grad_hidden, grad_weight, grad_bias


class _ChunkedLinearKD(torch.autograd.Function):
    """Exact ``kd_weight * tau^2 * sum_i KL(P_T^tau || p_S^tau) + ce_weight * sum_i CE(y_i, p_S)`` over
    positions in chunks, never holding ``[N, V]``.

    Like Liger-Kernel's fused linear losses, each chunk's gradients w.r.t. the student's hidden states, head
    weight and bias are computed in the forward pass, right after the chunk's logits (one pass over the
    vocabulary instead of a recomputation in backward); backward scales them by the incoming gradient.
    Outputs ``(loss, kd_sum, ce_sum)``; the two sums are for logging and carry no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, teachers, temperature, chunk_size, kd_weight, ce_weight):
        tau = temperature
        kd_sum = hidden.new_zeros((), dtype=torch.float32)
        ce_sum = hidden.new_zeros((), dtype=torch.float32)
        grads_needed = tuple(ctx.needs_input_grad[:3])
        if bias is None:
            grads_needed = (grads_needed[0], grads_needed[1], False)
        with_grad = any(grads_needed)

        def chunk(rows, logits):
            # ``logits`` is this chunk's fresh float32 [n, V] buffer: it is turned into the gradient in place,
            # so a chunk holds three [n, V] buffers at most (logits, log P_T, P_T).
            nonlocal kd_sum, ce_sum
            loss = logits.new_zeros(())
            grad_logits = None
            if ce_weight:
                label_logits = logits.gather(1, labels[rows, None]).sum()
                log_norm = torch.logsumexp(logits, dim=-1)
                ce = log_norm.sum() - label_logits
                ce_sum = ce_sum + ce
                loss = loss + ce_weight * ce
                if with_grad:  # d CE / dz = softmax(z) - onehot(y)
                    grad_logits = (logits - log_norm[:, None]).exp_()
                    grad_logits[torch.arange(grad_logits.shape[0], device=logits.device), labels[rows]] -= 1
                    grad_logits.mul_(ce_weight)
            if kd_weight:
                log_target = teachers.log_target(rows)
                log_student = _log_softmax_(logits.div_(tau))  # logits is not needed again
                target = log_target.exp()
                # KL = sum P (log P - log q); the difference is formed in log P's buffer (no temporary).
                kl = torch.dot(target.view(-1), log_target.sub_(log_student).view(-1))
                del log_target
                kd_sum = kd_sum + kl
                loss = loss + kd_weight * tau**2 * kl
                if with_grad:
                    # d/dz of tau^2 * KL(P || softmax(z / tau)) = tau * (softmax(z / tau) - P)
                    kd_grad = log_student.exp_().sub_(target).mul_(kd_weight * tau)
                    grad_logits = kd_grad if grad_logits is None else grad_logits.add_(kd_grad)
            return loss, grad_logits

        with torch.no_grad():
            loss, grad_hidden, grad_weight, grad_bias = _chunk_grads(
                hidden, weight, bias, chunk, chunk_size, grads_needed
            )
        if kd_weight:
            teachers.check_finite(kd_sum)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return loss, tau**2 * kd_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        # The stored gradients are not needed again: scale them in place (no second copy of dL/dW).
        grads = [g.mul_(grad_loss.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None, None, None, None)


def _as_list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


def _check_linear_inputs(
    student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias
):
    """Flatten and check the shapes; returns ``[N, Hs]`` student hidden and M ``[N, Ht]`` teacher hidden."""
    if student_weight.dim() != 2 or student_hidden.shape[-1] != student_weight.shape[1]:
        raise ValueError(
            f"Student hidden states end in {student_hidden.shape[-1]} features but the student head weight has "
            f"shape {tuple(student_weight.shape)}; expected [V, {student_hidden.shape[-1]}]."
        )
    vocab = student_weight.shape[0]
    if student_bias is not None and student_bias.shape != (vocab,):
        raise ValueError(f"Student head bias has shape {tuple(student_bias.shape)}, expected ({vocab},).")
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    teachers = []
    for i, (h, w, b) in enumerate(zip(teacher_hidden, teacher_weight, teacher_bias)):
        if w.dim() != 2 or h.shape[-1] != w.shape[1]:
            raise ValueError(
                f"Teacher {i} hidden states end in {h.shape[-1]} features but its head weight has shape "
                f"{tuple(w.shape)}; expected [V, {h.shape[-1]}]."
            )
        if w.shape[0] != vocab:
            raise ValueError(
                f"Teacher {i} predicts over a vocabulary of {w.shape[0]} tokens but the student over {vocab}; "
                "teacher and student must share the vocabulary (same tokenizer and vocab_size)."
            )
        if b is not None and b.shape != (vocab,):
            raise ValueError(f"Teacher {i} head bias has shape {tuple(b.shape)}, expected ({vocab},).")
        h = h.reshape(-1, h.shape[-1])
        if h.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"Teacher {i} has {h.shape[0]} positions but the student {hidden.shape[0]}; pass hidden states of "
                "the same batch."
            )
        teachers.append(h.detach())
    return hidden, teachers


def linear_distillation_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | Sequence[torch.Tensor] | None,
    teacher_head_weight: torch.Tensor | Sequence[torch.Tensor] | None,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 0.0,
    mode: str = "chunked",
    chunk_size: int = 1024,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    student_head_bias: torch.Tensor | None = None,
    teacher_head_bias: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    weights: Sequence[float] | None = None,
    average: str = "probs",
    sampled_normalizer: str = "importance",
    proposal_teacher_mass: float = 2 / 3,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    teacher_samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacher_entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha * CE + (1 - alpha) * tau^2 * KL(P_T^tau || p_S^tau)`` from hidden states and LM heads.

    The same loss as :func:`ensemble_kd_loss` on the logits ``hidden @ head_weight.T + bias``, computed in
    one of three modes (DESIGN.md §3, docs/large_vocab.md):

    * ``"full"`` materialises ``[N, V]`` logits (the reference);
    * ``"chunked"`` is exact: positions in chunks of ``chunk_size``, a custom ``autograd.Function`` that
      computes each chunk's logits, loss and gradients in one pass, so memory is ``O(chunk_size * V)``, not
      ``O(N * V)``;
    * ``"sampled"`` estimates it from about ``num_samples`` vocabulary ids per position: a share
      ``proposal_teacher_mass`` of them from the teacher (half its most likely ids, with their exact
      probabilities, half systematic draws from the rest of P_T^tau: an unbiased, stratified cross term),
      the rest uniform ids, per position (:func:`stratified_targets`). The student's log-normaliser sums
      the top ids exactly and importance-samples the rest from the draws and the uniform ids (balance
      heuristic, unbiased for the normaliser); ``sampled_normalizer="exact"`` computes it exactly in chunks
      instead (then all ``num_samples`` are teacher ids). The teacher side is a pass over the vocabulary in
      chunks without gradient, or, precomputed, ``teacher_samples`` (e.g. a soft-target cache with
      ``storage="sampled"``): then no teacher is needed and ``num_samples`` is the number of uniform ids per
      position. Only the student's rows at the sampled ids get gradients.

    Args:
        student_hidden: ``[..., Hs]``, flattened to ``[N, Hs]`` (positions already aligned with ``labels``:
            for causal LMs, shift the labels first).
        student_head_weight: ``[V, Hs]``.
        teacher_hidden, teacher_head_weight: ``[..., Ht]`` and ``[V, Ht]``, or lists of M of them (an
            ensemble, combined by ``weights`` and ``average`` as in :func:`ensemble_log_probs`). Never
            differentiated.
        labels: ``[...]`` (N positions); ``ignore_index`` marks positions that are skipped.
        temperature: tau > 0.
        alpha: weight of the hard-label cross-entropy (``0``: the KD term alone).
        num_items_in_batch: divide the sums by this instead of by the kept positions of this batch.
        teacher_samples: ``mode="sampled"`` only, each ``[..., D]`` (positions as ``labels``):
            ``(ids, counts, probs, uniform_counts)`` of :class:`TeacherSamples` (:func:`stratified_targets`; the
            online estimator, with ``num_samples`` = the uniform ids per position they were drawn with);
            or, without P_T at the drawn ids, ``(ids, counts)`` of :func:`draw_targets` or ``(ids, counts,
            probs)`` with probabilities at the top ids only (count 0) and the normaliser's uniform ids drawn
            here (more variance). Id ``V`` pads. Replaces ``teacher_hidden``/``teacher_head_weight`` (pass
            ``None``).
        teacher_entropy: ``[...]`` the entropy of P_T^tau per position (nats), with ``teacher_samples``: it makes
            the reported value the KL; without it the value is the cross-entropy (same gradients).

    Returns:
        ``(loss, parts)`` as :func:`ensemble_kd_loss`: ``parts = {"ce", "kd", "num_items"}`` (detached).
    """
    _check_hyperparameters(temperature, alpha)
    if mode not in KD_LOSS_MODES:
        raise ValueError(f"mode must be one of {KD_LOSS_MODES}, got {mode!r}.")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
    if teacher_samples is not None:
        if mode != "sampled":
            raise ValueError(f"teacher_samples are for mode='sampled', got mode={mode!r}.")
        if teacher_hidden is not None or teacher_head_weight is not None:
            raise ValueError("Give teacher_samples or the teachers' hidden states and heads, not both.")
        teacher_hidden, teacher_head_weight = [], []
    teacher_hidden, teacher_weight = _as_list(teacher_hidden), _as_list(teacher_head_weight)
    teacher_bias = (
        _as_list(teacher_head_bias) if teacher_head_bias is not None else [None] * len(teacher_hidden)
    )
    no_teachers_needed = teacher_samples is not None or alpha >= 1
    if not (len(teacher_hidden) == len(teacher_weight) == len(teacher_bias)) or (
        not teacher_hidden and not no_teachers_needed
    ):
        raise ValueError(
            f"Got {len(teacher_hidden)} teacher hidden states, {len(teacher_weight)} head weights and "
            f"{len(teacher_bias)} biases; give one of each per teacher."
        )
    hidden, teacher_hidden = _check_linear_inputs(
        student_hidden, student_head_weight, student_head_bias, teacher_hidden, teacher_weight, teacher_bias
    )
    vocab = student_head_weight.shape[0]
    flat_labels = labels.reshape(-1)
    if flat_labels.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"labels hold {flat_labels.shape[0]} positions but the hidden states {hidden.shape[0]}."
        )
    mask = flat_labels != ignore_index
    num_items = mask.sum()
    if mode == "sampled":
        if num_samples is None or not isinstance(num_samples, int) or not 1 <= num_samples <= vocab:
            raise ValueError(
                f"mode='sampled' needs num_samples, an integer in [1, V={vocab}], got {num_samples!r} "
                "(e.g. 2% of the vocabulary)."
            )
        if sampled_normalizer not in ("importance", "exact"):
            raise ValueError(
                f"sampled_normalizer must be 'importance' or 'exact', got {sampled_normalizer!r}."
            )
        if not 0.0 < proposal_teacher_mass <= 1.0:
            raise ValueError(f"proposal_teacher_mass must lie in (0, 1], got {proposal_teacher_mass!r}.")
    keep = (
        mask.nonzero().squeeze(-1) if not bool(mask.all()) else slice(None)
    )  # (no copies when all are kept)
    hidden = hidden[keep]
    teacher_hidden = [h[keep] for h in teacher_hidden]
    kept_labels = flat_labels[keep]
    samples = entropy = None
    if teacher_samples is not None:
        if len(teacher_samples) not in (2, 3, 4):
            raise ValueError(
                "teacher_samples must be (ids, counts, probs, uniform_counts) (stratified_targets), (ids, counts, "
                "probs) or (ids, counts) (draw_targets)."
            )
        ids, counts = teacher_samples[:2]
        shapes = [tuple(t.shape) for t in teacher_samples]
        if len(set(shapes)) != 1 or ids.shape[:-1] != labels.shape:
            raise ValueError(
                f"teacher_samples (shapes {shapes}) must all have shape labels.shape + (D,) = "
                f"{tuple(labels.shape)} + (D,)."
            )
        used = (counts > 0) | (teacher_samples[2] > 0) if len(teacher_samples) == 3 else counts > 0
        used = ids < vocab if len(teacher_samples) == 4 else used
        if bool((ids[used] >= vocab).any()) or bool((ids[used] < 0).any()):
            raise ValueError(f"teacher_samples holds ids outside the vocabulary [0, {vocab}).")
        samples = tuple(t.reshape(-1, ids.shape[-1])[keep] for t in teacher_samples)
        if teacher_entropy is not None:
            entropy = teacher_entropy.reshape(-1)[keep]
    teachers = _TeacherHeads(teacher_hidden, teacher_weight, teacher_bias, temperature, weights, average)
    with_kd, with_ce = alpha < 1, alpha > 0

    if mode == "full":
        logits = _linear_logits(hidden, student_head_weight, student_head_bias)
        log_target = teachers.log_target(slice(0, hidden.shape[0])) if with_kd else None
        kd_sum = (
            temperature**2
            * F.kl_div(F.log_softmax(logits / temperature, -1), log_target, reduction="sum", log_target=True)
            if with_kd
            else logits.new_zeros(())
        )
        ce_sum = F.cross_entropy(logits, kept_labels, reduction="sum") if with_ce else logits.new_zeros(())
        if with_kd:
            teachers.check_finite(kd_sum)
        loss_sum = alpha * ce_sum + (1 - alpha) * kd_sum
    elif mode == "chunked":
        kd_weight, ce_weight = (1 - alpha) if with_kd else 0.0, alpha if with_ce else 0.0
        loss_sum, kd_sum, ce_sum = _ChunkedLinearKD.apply(
            hidden, student_head_weight, student_head_bias, kept_labels, teachers, temperature, chunk_size,
            kd_weight, ce_weight,
        )  # fmt: skip
    else:
        kd_sum, ce_sum = _sampled_linear_kd(
            hidden, student_head_weight, student_head_bias, kept_labels, teachers, temperature, chunk_size,
            num_samples, generator, sampled_normalizer, proposal_teacher_mass, with_kd, with_ce, samples, entropy,
        )  # fmt: skip
        loss_sum = alpha * ce_sum + (1 - alpha) * kd_sum

    denom = num_items_in_batch if num_items_in_batch is not None else num_items.clamp(min=1)
    loss, kd, ce = loss_sum / denom, kd_sum / denom, ce_sum / denom
    if hidden.shape[0] == 0:  # keep the graph connected: a batch of ignored positions gives zero gradients
        loss = loss + 0.0 * student_head_weight.sum()
    return loss, {"ce": ce.detach(), "kd": kd.detach(), "num_items": num_items.detach()}


def linear_kd_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    mode: str = "chunked",
    chunk_size: int = 1024,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """The KD term ``tau^2 * KL(P_T^tau || p_S^tau)`` averaged over kept positions, from hidden states
    ``[N, Hs]``/``[N, Ht]`` and head weights ``[V, Hs]``/``[V, Ht]``; see :func:`linear_distillation_loss`
    for the modes and the keyword arguments (``student_head_bias``, ``teacher_head_bias``,
    ``sampled_normalizer``, ...). Gradients reach the student's hidden states, head weight and bias only.

    Raises:
        ValueError: mismatched vocabularies or shapes, ``chunk_size < 1``, ``num_samples`` outside
            ``[1, V]``, every position ignored, non-finite teacher logits.
    """
    if labels is not None and not bool((labels.reshape(-1) != kwargs.get("ignore_index", -100)).any()):
        raise ValueError(
            "Every position of labels is ignored (-100): there is nothing to distil in this batch."
        )
    loss, _ = linear_distillation_loss(
        student_hidden,
        student_head_weight,
        teacher_hidden,
        teacher_head_weight,
        labels,
        temperature=temperature,
        alpha=0.0,
        mode=mode,
        chunk_size=chunk_size,
        num_samples=num_samples,
        generator=generator,
        **kwargs,
    )
    return loss


def _sparse_pattern(ids: torch.Tensor, vocab: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, V]`` CSR matrix with row i's entries at ``ids[i]`` (sorted or not; repeats allowed)."""
    n, k = ids.shape
    crow = torch.arange(0, n * k + 1, k, device=ids.device, dtype=torch.long)
    if values is None:
        values = torch.zeros(n * k, dtype=torch.float32, device=ids.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, ids.reshape(-1), values.reshape(-1), (n, vocab))


def _scatter_matmul(
    ids: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor, vocab: int
) -> torch.Tensor:
    """``G.T @ hidden``, ``[V, H]``, for the sparse ``G[i, ids[i, k]] = values[i, k]`` (repeats add up).

    ``G.T`` is built as CSR over vocabulary rows and multiplied in blocks of rows written into the result:
    the one-shot sparse product allocates a second ``[V, H]`` buffer.
    """
    n, k = ids.shape
    flat = ids.reshape(-1)  # padding ids (vocab) sort last, after crow[vocab]: they are left out
    order = flat.argsort(stable=True)
    crow = torch.zeros(vocab + 1, dtype=torch.long, device=ids.device)
    crow[1:] = torch.bincount(flat, minlength=vocab + 1)[:vocab].cumsum(0)
    vals = values.reshape(-1).to(hidden.dtype)[order]
    cols = order.div_(k, rounding_mode="floor")  # flat index // k = the position (row of G)
    out = torch.empty(vocab, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    block = max(1, (1 << 20) // hidden.shape[1])  # vocabulary rows per product (4 MB of float32 output)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for v0 in range(0, vocab, block):
            v1 = min(vocab, v0 + block)
            a, b = int(crow[v0]), int(crow[v1])
            rows = torch.sparse_csr_tensor(crow[v0 : v1 + 1] - a, cols[a:b], vals[a:b], (v1 - v0, n))
            out[v0:v1] = rows @ hidden
    return out


class _GatheredLogits(torch.autograd.Function):
    """``z[i, k] = hidden[i] . weight[ids[i, k]] + bias[ids[i, k]]`` for per-position id lists ``ids`` (``[n, K]``;
    ids ``>= V`` are padding, computed as ``V - 1`` and given no gradient by the caller): ``[n, K]`` float32.

    One function for both so that the weight gets one dense gradient buffer (autograd would otherwise add up
    one ``[V, H]`` gradient per use of the weight). On CPU in float32/float64 the per-position products are
    sparse kernels over the ``[n, V]`` pattern of ``ids`` (``torch.sparse.sampled_addmm`` forward, CSR @ dense
    backward), which never copy the K selected weight rows per position: about 3x faster than gathering them
    at K ~ 1,000. Elsewhere (GPUs, half precision) the rows are gathered in chunks of positions and the weight
    gradient is added with ``index_add_``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids):
        sparse = hidden.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
        # (sampled_addmm fails on rows with more entries than columns: only repeats make those)
        sparse = sparse and hidden.dtype == weight.dtype and 0 < ids.shape[1] <= weight.shape[0]
        chunk = max(1, (1 << 22) // max(1, ids.shape[1] * weight.shape[1]))  # about 16 MB of gathered rows
        with torch.no_grad():
            if sparse:
                pattern = _sparse_pattern(ids.clamp(max=weight.shape[0] - 1), weight.shape[0]).to(
                    weight.dtype
                )
                out = torch.sparse.sampled_addmm(pattern, hidden, weight.T, beta=0.0).values().view(ids.shape)
                out = _upcast(out).float() if out.dtype != torch.float64 else out
                if bias is not None:
                    out = out + _upcast(bias[ids.clamp(max=weight.shape[0] - 1)])
            else:
                ids = ids.clamp(max=weight.shape[0] - 1)
                out = torch.empty(ids.shape, dtype=torch.float32, device=hidden.device)
                for start in range(0, ids.shape[0], chunk):
                    rows = slice(start, start + chunk)
                    rows_w = weight[ids[rows]]  # [c, K, H]
                    z = (rows_w @ hidden[rows].unsqueeze(-1)).squeeze(-1)
                    out[rows] = _upcast(z + bias[ids[rows]] if bias is not None else z)
        ctx.save_for_backward(hidden, weight, bias, ids)
        ctx.chunk, ctx.sparse = chunk, sparse
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, ids = ctx.saved_tensors
        if not ctx.sparse or bias is not None:
            ids = ids.clamp(max=weight.shape[0] - 1)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_ids = grad_out
        grad_hidden = grad_weight = grad_bias = None
        if need_bias:
            grad_bias = torch.zeros_like(bias, dtype=torch.float32)
            grad_bias.index_add_(0, ids.reshape(-1), grad_ids.reshape(-1).float())
        if ctx.sparse:
            if need_hidden:
                grads = _sparse_pattern(
                    ids.clamp(max=weight.shape[0] - 1),
                    weight.shape[0],
                    grad_ids.to(weight.dtype).contiguous(),
                )
                grad_hidden = grads @ weight
                del grads  # before the [V, H] weight gradient: it is the peak
            grad_weight = _scatter_matmul(ids, grad_ids, hidden, weight.shape[0]) if need_weight else None
        else:
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
            for start in range(0, ids.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                g = grad_ids[rows]  # [c, K]
                if grad_hidden is not None:
                    grad_hidden[rows] = (
                        (g.unsqueeze(1).to(weight.dtype) @ weight[ids[rows]]).squeeze(1).to(hidden.dtype)
                    )
                if grad_weight is not None:
                    outer = g.unsqueeze(-1) * _upcast(hidden[rows]).unsqueeze(1)  # [c, K, H]
                    grad_weight.index_add_(0, ids[rows].reshape(-1), outer.reshape(-1, outer.shape[-1]))
        return (
            grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None,
        )


def _distinct_draws(draws: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, K]`` drawn ids to ``(ids, counts)``, both ``[n, D]``: each row's distinct ids in ascending order
    with their counts, padded with id ``vocab`` and count 0 (D = the most distinct ids of any row)."""
    ids, (counts,) = _merge_ids(draws, [torch.ones_like(draws, dtype=torch.float32)], vocab)
    return ids, counts


def _merge_ids(
    ids: torch.Tensor, values: Sequence[torch.Tensor], vocab: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``[n, K]`` ids with repeats (``>= vocab`` = nothing) and ``[n, K]`` values per id to each row's distinct ids
    in ascending order with the values summed per id, ``[n, D]``, padded with id ``vocab`` and 0."""
    sorted_ids, order = ids.clamp(max=vocab).sort(dim=1)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    group = new.long().cumsum(1) - 1
    width = int(group[:, -1].max()) + 1 if ids.numel() else 0
    out = torch.full((ids.shape[0], width), vocab, dtype=torch.long, device=ids.device)
    out.scatter_(1, group, sorted_ids)
    padding = out >= vocab
    sums = []
    for v in values:
        total = torch.zeros(out.shape, dtype=torch.float32, device=ids.device)
        total.scatter_add_(1, group, v.gather(1, order).float())
        sums.append(total.masked_fill_(padding, 0.0))
    return out, sums


def _systematic_draws(weights: torch.Tensor, num_draws: int, generator) -> torch.Tensor:
    """``[n, num_draws]`` ids from each row of the non-negative ``[n, V]`` ``weights`` by systematic sampling:
    evenly spaced points, one random offset per row, on the row's cumulative weights. Id v is drawn
    ``floor`` or ``ceil`` of ``K w_v / sum(w)`` times and exactly that in expectation: unbiased like independent
    draws, with less variance. Overwrites ``weights`` (with their cumulative sums)."""
    cdf = torch.cumsum(weights, dim=1, out=weights)
    offset = 1.0 - torch.rand(
        weights.shape[0], 1, generator=generator, device=weights.device, dtype=weights.dtype
    )  # (0, 1]: the first point is past 0, so never an id of weight 0
    points = torch.arange(num_draws, device=weights.device, dtype=weights.dtype) + offset
    return torch.searchsorted(cdf, points.mul_(cdf[:, -1:] / num_draws)).clamp_(max=weights.shape[1] - 1)


def _uniform_grid(n: int, num: int, vocab: int, generator, device) -> torch.Tensor:
    """``[n, num]`` distinct ids per row, one from each of ``num`` equal strata of ``[0, vocab)`` at a random
    offset per row: every id is drawn with probability ``num / vocab``, as with uniform draws."""
    offset = torch.rand(n, 1, generator=generator, device=device, dtype=torch.float64)
    grid = torch.arange(num, device=device, dtype=torch.float64) + offset
    return grid.mul_(vocab / num).long().clamp_(max=vocab - 1)


@torch.no_grad()
def draw_targets(
    log_target: torch.Tensor, num_draws: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num_draws`` ids per row from the distributions ``exp(log_target)`` (``[n, V]``), systematically.

    Returns ``(ids, counts, entropy)``: the distinct ids of each row in ascending order and how often each was
    drawn (``[n, D]``, padded with id ``V`` and count 0), and each row's entropy in nats (``[n]``, exact).
    ``counts / num_draws`` is an unbiased estimate of the distribution (each count is the floor or the ceiling
    of ``num_draws * p``): ``teacher_samples=(ids, counts)`` of :func:`linear_distillation_loss`.
    """
    probs = log_target.exp()
    entropy = _row_dots(probs, log_target).neg_()
    ids, counts = _distinct_draws(_systematic_draws(probs, num_draws, generator), log_target.shape[-1])
    return ids, counts, entropy


class TeacherSamples(NamedTuple):
    """A teacher's distribution P at each of n positions, sampled (:func:`stratified_targets`); ``[n, D]`` each
    but ``entropy``, ids ascending per row, padding (id ``V``, zeros) last.

    * ``ids``: the top ids, the ids drawn from the rest, and the uniform ids, each once;
    * ``counts``: how often each id was drawn from the rest (0 for a top id);
    * ``probs``: P(id), exact, for every stored id;
    * ``uniform_counts``: how often each id was one of the uniform ids (top ids never are);
    * ``entropy``: ``[n]``, the entropy of P in nats, exact.

    A top id is a stored id with both counts 0. :func:`linear_distillation_loss` takes
    ``teacher_samples=(ids, counts, probs, uniform_counts)``, ``teacher_entropy=entropy`` and, as
    ``num_samples``, the number of uniform ids per position they were drawn with.
    """

    ids: torch.Tensor
    counts: torch.Tensor
    probs: torch.Tensor
    uniform_counts: torch.Tensor
    entropy: torch.Tensor


@torch.no_grad()
def stratified_targets(
    log_target: torch.Tensor,
    num_top: int,
    num_draws: int,
    generator: torch.Generator | None = None,
    *,
    num_uniform: int = 0,
) -> TeacherSamples:
    """What the sampled KD loss needs of the distributions ``exp(log_target)`` (``[n, V]``), per row: the
    ``num_top`` most likely ids, ``num_draws`` systematic draws from the rest of the distribution (without the
    top ids), and ``num_uniform`` ids drawn uniformly (one per stratum of the vocabulary), all with their exact
    probabilities: see :class:`TeacherSamples`.

    ``top probs + rest * counts / num_draws`` (``rest`` = 1 - the top ids' mass) is an unbiased estimate of the
    distribution with the variance of the rest only. The uniform ids are what the student's normaliser is
    importance-sampled from besides the draws (docs/large_vocab.md); a uniform id that is a top id is dropped
    (top ids are summed exactly).
    """
    n, vocab = log_target.shape
    num_top = min(num_top, vocab)
    probs = log_target.exp()
    entropy = _row_dots(probs, log_target).neg_()
    top_ids = probs.topk(num_top, dim=-1).indices
    parts, kinds = [top_ids], [torch.zeros_like(top_ids)]
    if num_draws:
        probs.scatter_(1, top_ids, 0.0)
        empty = probs.sum(-1) <= 0
        probs[empty] = 1.0  # no mass left to draw from: these rows' draws are dropped below
        drawn = _systematic_draws(probs, num_draws, generator).masked_fill_(empty[:, None], vocab)
        parts.append(drawn)
        kinds.append(torch.ones_like(drawn))
    del probs
    if num_uniform:
        uniform = _uniform_grid(n, num_uniform, vocab, generator, log_target.device)
        if num_top:
            top_sorted = top_ids.sort(dim=1).values
            where = torch.searchsorted(top_sorted, uniform).clamp_(max=num_top - 1)
            uniform.masked_fill_(top_sorted.gather(1, where) == uniform, vocab)
        parts.append(uniform)
        kinds.append(torch.full_like(uniform, 2))
    kind = torch.cat(kinds, dim=1)
    ids, (counts, uniform_counts) = _merge_ids(torch.cat(parts, dim=1), [kind == 1, kind == 2], vocab)
    probs = log_target.gather(1, ids.clamp(max=vocab - 1)).exp_().masked_fill_(ids >= vocab, 0.0)
    return TeacherSamples(ids, counts, probs, uniform_counts, entropy)


def cat_samples(parts: Sequence[TeacherSamples], vocab: int) -> TeacherSamples:
    """Stack :class:`TeacherSamples` of consecutive positions, padded to the widest with id ``vocab`` and 0."""
    width = max((p.ids.shape[1] for p in parts), default=0)

    def stack(field: int, value) -> torch.Tensor:
        return torch.cat([F.pad(p[field], (0, width - p.ids.shape[1]), value=value) for p in parts])

    return TeacherSamples(stack(0, vocab), stack(1, 0.0), stack(2, 0.0), stack(3, 0.0),
                          torch.cat([p.entropy for p in parts]))  # fmt: skip


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` rows without an ``[n, V]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def pad_samples(
    ids: Sequence[torch.Tensor], counts: Sequence[torch.Tensor], vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[n_j, D_j]`` id/count blocks along rows, padded to the widest with id ``vocab`` and count 0."""
    width = max((i.shape[1] for i in ids), default=0)
    ids = [F.pad(i, (0, width - i.shape[1]), value=vocab) for i in ids]
    counts = [F.pad(c, (0, width - c.shape[1]), value=0.0) for c in counts]
    return torch.cat(ids), torch.cat(counts)


def _sorted_samples(samples: Sequence[torch.Tensor], vocab: int) -> tuple[torch.Tensor, ...]:
    """``teacher_samples`` in any order (id ``>= V`` or, without probabilities, count 0 = padding) to ascending
    ids, padding (id ``V``) last, as :func:`draw_targets` and :func:`stratified_targets` return them."""
    ids, *values = samples
    values = [v.to(torch.float32) for v in values]
    ids = ids.long()
    empty = ids >= vocab
    if len(values) == 1:  # (ids, counts): an id with count 0 is padding
        empty = empty | (values[0] <= 0)
    elif len(values) == 2:  # (ids, counts, probs): count and probability 0 is padding
        empty = empty | ((values[0] <= 0) & (values[1] <= 0))
    canonical = bool((empty == (ids >= vocab)).all()) and bool((ids[:, 1:] >= ids[:, :-1]).all())
    if not canonical:  # as the sampling functions return them (and a sampled cache stores them): no copies
        ids = ids.masked_fill(empty, vocab)
        ids, order = ids.sort(dim=1)
        values = [v.gather(1, order) for v in values]
    if bool(((ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] < vocab)).any()):
        raise ValueError(
            "teacher_samples lists an id twice at one position; give distinct ids with their counts."
        )
    return (ids, *values)


def _sample_plan(num_samples: int, teacher_mass: float, use_importance: bool) -> tuple[int, int, int]:
    """Split ``num_samples`` ids per position into (top ids, draws from the rest, uniform ids)."""
    k_teacher = max(1, round(teacher_mass * num_samples)) if use_importance else num_samples
    k_uniform = num_samples - k_teacher
    if use_importance and k_uniform == 0 and num_samples > 1:
        k_teacher, k_uniform = num_samples - 1, 1
    return k_teacher // 2, k_teacher - k_teacher // 2, k_uniform


def _sampled_linear_kd(
    hidden, weight, bias, labels, teachers, temperature, chunk_size, num_samples, generator, normalizer,
    teacher_mass, with_kd, with_ce, samples=None, entropy=None,
):  # fmt: skip
    """Sampled estimate of the KD and CE sums (see :func:`linear_distillation_loss` and docs/large_vocab.md).

    Every position i gets ids ``s`` with a cross-term weight ``w_is`` (so that ``sum_s w_is z_is`` estimates
    ``sum_v P_T,i(v) z_iv`` without bias) and a normaliser log-weight ``l_is`` (so that
    ``sum_s exp(z_is / tau + l_is)`` estimates ``Z_i`` without bias).

    * :class:`TeacherSamples` (drawn here from the teachers' heads, chunk by chunk, or precomputed): the top
      ids with ``w = p``, ``l = 0`` (summed exactly); the Kt draws from the rest mass ``r_i`` with
      ``w = r_i c / Kt``; the rest of ``Z_i`` importance-sampled from the draws and the K2 uniform ids by the
      balance heuristic, ``l = log(c + u) - log(Kt p / r_i + K2 / V)`` (c, u: draw and uniform counts).
    * Precomputed ``(ids, counts[, probs])`` without the teacher's probability at every id: ``w = c / K1`` (or
      stratified as above) and the balance heuristic with ``Kt p / r`` replaced by the counts, with K2 uniform
      ids drawn here: unbiased for ``Z_i`` given the draws, with more variance.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    zero = hidden.new_zeros((), dtype=torch.float32)
    if n == 0:
        return zero, zero
    use_importance = normalizer == "importance"
    if samples is None:  # the teachers' samples, in chunks of positions, without gradient
        num_top, num_draws, num_uniform = _sample_plan(num_samples, teacher_mass, use_importance)
        parts = []
        for start in range(0, n, chunk_size):
            log_target = teachers.log_target(slice(start, start + chunk_size))
            parts.append(
                stratified_targets(log_target, num_top, num_draws, generator, num_uniform=num_uniform)
            )
            teachers.check_finite(parts[-1].entropy.sum())
            del log_target
        *samples, entropy = cat_samples(parts, vocab)
    else:
        num_uniform = num_samples if use_importance else 0
    ids, counts, *known = _sorted_samples(samples, vocab)
    entropy_sum = entropy.to(torch.float32).sum() if entropy is not None and with_kd else zero
    valid = ids < vocab
    if len(known) == 2:  # TeacherSamples: P_T at every id
        probs, uniform_counts = known
        top = valid & (counts <= 0) & (uniform_counts <= 0)
        rest = (1.0 - torch.where(top, probs, 0.0).sum(dim=1, keepdim=True)).clamp(min=0.0)
        num_drawn = counts.sum(dim=1, keepdim=True)
        if use_importance and bool((uniform_counts.sum(dim=1) > num_uniform).any()):
            raise ValueError(
                f"teacher_samples hold more uniform ids at a position than num_samples={num_samples}; pass the "
                "number of uniform ids per position they were drawn with."
            )
        cross_weight = torch.where(top, probs, rest * counts / num_drawn.clamp(min=1))
        density = num_drawn * probs / rest.clamp(min=1e-30) + num_uniform / vocab  # Kt p / r + K2 / V
        log_w = torch.where(top, 0.0, (counts + uniform_counts).log() - density.log())
    else:
        top_p = known[0] if known else torch.zeros_like(counts)
        top = valid & (counts <= 0) & (top_p > 0)
        rest = (1.0 - top_p.sum(dim=1, keepdim=True)).clamp(min=0.0)
        cross_weight = top_p + rest * counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        if use_importance:
            # The balance heuristic with P_T replaced by the draw counts (unbiased given the draws); top ids
            # are summed exactly, so a uniform id that is one of them is left out.
            uniform = _uniform_grid(n, num_uniform, vocab, generator, hidden.device)
            where = torch.searchsorted(ids, uniform).clamp_(max=max(ids.shape[1] - 1, 0))
            hit = ids.gather(1, where) == uniform
            uniform = uniform.masked_fill_(hit & top.gather(1, where), vocab)
            density = counts + num_uniform / vocab
            log_w = torch.where(top, 0.0, counts.log() - density.log())
            log_w_uniform = -(torch.where(hit, counts.gather(1, where), 0.0) + num_uniform / vocab).log()
            ids = torch.cat([ids, uniform], dim=1)
            valid = torch.cat([valid, uniform < vocab], dim=1)
            log_w = torch.cat([log_w, log_w_uniform], dim=1)
            cross_weight = F.pad(cross_weight, (0, num_uniform))
    # Student logits at the ids ([n, D]; padding ids are clamped inside and masked here), and the label's logit
    # with the same call (one weight gradient buffer).
    width = ids.shape[1]
    per_position = torch.cat([ids, labels[:, None]], dim=1) if with_ce else ids
    logits = _GatheredLogits.apply(hidden, weight, bias, per_position)
    sample_logits = logits[:, :width]

    def log_normalizer_sum(scale: float) -> torch.Tensor:
        """sum_i log Z_i at temperature ``scale``: importance-sampled, or exact in chunks."""
        if not use_importance:
            return _ChunkedLogSumExp.apply(hidden, weight, bias, scale, chunk_size)
        return torch.logsumexp(torch.where(valid, sample_logits / scale + log_w, -math.inf), dim=-1).sum()

    kd_sum = ce_sum = zero
    if with_kd:
        cross = (cross_weight * torch.where(valid, sample_logits, 0.0)).sum() / temperature
        kd_sum = temperature**2 * (log_normalizer_sum(temperature) - cross - entropy_sum)
    if with_ce:
        ce_sum = log_normalizer_sum(1.0) - logits[:, width].sum()
    return kd_sum, ce_sum


class _ChunkedLogSumExp(torch.autograd.Function):
    """``sum_i logsumexp_v((hidden @ weight.T + bias)[i, v] / scale)``, exact, in chunks of rows; gradients are
    computed in the forward pass as in :class:`_ChunkedLinearKD`."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, scale, chunk_size):
        grads_needed = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )

        def chunk(rows, logits):
            log_norm = torch.logsumexp(logits / scale, dim=-1)
            grad = (logits / scale - log_norm[:, None]).exp_() / scale if any(grads_needed) else None
            return log_norm.sum(), grad

        with torch.no_grad():
            total, *grads = _chunk_grads(hidden, weight, bias, chunk, chunk_size, grads_needed)
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grads = [g.mul_(grad_total.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None)
