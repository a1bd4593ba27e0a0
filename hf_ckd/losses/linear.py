"""KD from hidden states and LM heads, without the ``[N, V]`` logits: :func:`linear_distillation_loss`.

The loss of :func:`hf_ckd.losses.ensemble_kd_loss` on the logits ``hidden @ head_weight.T + bias``, in three
modes: ``"full"`` (the reference, ``[N, V]`` logits), ``"chunked"`` (exact, :class:`_ChunkedLinearKD`, here)
and ``"sampled"`` (an estimate from sampled vocabulary ids, :mod:`hf_ckd.losses.sampled`). docs/large_vocab.md
describes the modes, their memory and their accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._options import (
    KD_LOSS_MODES,
    check_alpha,
    check_beta,
    check_choice,
    check_temperature,
    resolve_chunk_size,
)
from ._kernels import _chunk_grads, _compute_dtype, _linear_logits, _log_softmax_, _matmul_dtype
from .divergence import divergence_rows, divergence_rows_and_grad
from .logit import ensemble_log_probs
from .sampled import TeacherSamples, _as_teacher_samples, _kept_samples, _sampled_linear_kd


class _TeacherHeads:
    """M teachers as hidden states and LM heads; gives the tempered ensemble target for a range of rows, as
    ``dtype`` (the loss's compute dtype, :func:`~hf_ckd.losses._kernels._compute_dtype`)."""

    def __init__(self, hidden, weight, bias, temperature, weights, average, dtype=torch.float32):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.temperature, self.weights, self.average = temperature, weights, average
        self.dtype = dtype
        self._heads = None

    def heads(self) -> list[torch.Tensor]:
        """The head weights in the dtype of their matmul with the hidden states (cast once, not per chunk, when
        a head has a lower precision than its hidden states)."""
        if self._heads is None:
            self._heads = [w.to(_matmul_dtype(h, w)) for h, w in zip(self.hidden, self.weight)]
        return self._heads

    @torch.no_grad()
    def log_target(self, rows: slice) -> torch.Tensor:
        """log P_ens^tau for ``rows``, ``[n, V]`` as ``self.dtype``."""
        heads = self.heads()
        if len(self.hidden) == 1:  # one teacher: log-softmax in place (one [n, V] buffer, not three)
            # (a fresh tensor: the matmul's, or the bias's sum)
            logits = _linear_logits(self.hidden[0][rows], heads[0], self.bias[0], self.dtype)
            return _log_softmax_(logits.div_(self.temperature))
        logits = [_linear_logits(h[rows], w, b, self.dtype) for h, w, b in zip(self.hidden, heads, self.bias)]
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


class _ChunkedLinearKD(torch.autograd.Function):
    """Exact ``kd_weight * tau^2 * sum_i D_beta(P_T^tau, p_S^tau) + ce_weight * sum_i CE(y_i, p_S)`` over
    positions in chunks, never holding ``[N, V]`` (D_0 = KL(P_T^tau || p_S^tau), :mod:`~hf_ckd.losses.divergence`).

    Like Liger-Kernel's fused linear losses, each chunk's gradients w.r.t. the student's hidden states, head
    weight and bias are computed in the forward pass, right after the chunk's logits (one pass over the
    vocabulary instead of a recomputation in backward); backward scales them by the incoming gradient.
    Outputs ``(loss, kd_sum, ce_sum)``; the two sums are for logging and carry no gradient.
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        labels,
        teachers,
        temperature,
        chunk_size,
        kd_weight,
        ce_weight,
        dtype,
        beta,
    ):
        tau = temperature
        # The sums over positions are added up in float64 ([positions]-sized, so cheap): in float32 they would
        # depend on the chunk size (docs/large_vocab.md, "Precision").
        kd_sum = hidden.new_zeros((), dtype=torch.float64)
        ce_sum = hidden.new_zeros((), dtype=torch.float64)
        grads_needed = tuple(ctx.needs_input_grad[:3])
        if bias is None:
            grads_needed = (grads_needed[0], grads_needed[1], False)
        with_grad = any(grads_needed)

        def chunk(rows, logits):
            # ``logits`` is this chunk's fresh [n, V] buffer (in ``dtype``): it is turned into the gradient in
            # place, so a chunk holds three [n, V] buffers at most (logits, log P_T, P_T).
            nonlocal kd_sum, ce_sum
            loss = logits.new_zeros((), dtype=torch.float64)
            grad_logits = None
            if ce_weight:
                label_logits = logits.gather(1, labels[rows, None]).squeeze(1)
                log_norm = torch.logsumexp(logits, dim=-1)
                ce = (log_norm - label_logits).sum(dtype=torch.float64)
                ce_sum = ce_sum + ce
                loss = loss + ce_weight * ce
                if with_grad:  # d CE / dz = softmax(z) - onehot(y)
                    grad_logits = (logits - log_norm[:, None]).exp_()
                    grad_logits[torch.arange(grad_logits.shape[0], device=logits.device), labels[rows]] -= 1
                    grad_logits.mul_(ce_weight)
            if kd_weight:
                log_target = teachers.log_target(rows)
                log_student = _log_softmax_(logits.div_(tau))  # logits is not needed again
                if beta:  # reverse KL / generalized JSD: a few more [n, V] buffers than forward KL's three
                    rows_value, grad_s = divergence_rows_and_grad(log_target, log_student, beta)
                    del log_target, log_student
                    kl = rows_value.sum(dtype=torch.float64)
                    kd_sum = kd_sum + kl
                    loss = loss + kd_weight * tau**2 * kl
                    if with_grad:  # d/dz = (1 / tau) d/ds, times tau^2
                        kd_grad = grad_s.mul_(kd_weight * tau)
                        grad_logits = kd_grad if grad_logits is None else grad_logits.add_(kd_grad)
                    return loss, grad_logits
                target = log_target.exp()
                # KL_i = sum_v P (log P - log q), formed in log P's buffer (no temporary) and summed per row:
                # not one dot product over the chunk's [n * V] values, which BLAS adds up in a few running
                # float32 sums (relative error 1e-4 to 1e-3 at 1024 x 32768), the rows then added in float64.
                kl = log_target.sub_(log_student).mul_(target).sum(dim=-1).sum(dtype=torch.float64)
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
                hidden, weight, bias, chunk, chunk_size, grads_needed, dtype
            )
        if kd_weight:
            teachers.check_finite(kd_sum)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        loss, kd_sum, ce_sum = loss.to(dtype), (tau**2 * kd_sum).to(dtype), ce_sum.to(dtype)
        ctx.mark_non_differentiable(kd_sum, ce_sum)
        return loss, kd_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        # The stored gradients are not needed again: scale them in place (no second copy of dL/dW).
        grads = [g.mul_(grad_loss.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None, None, None, None, None, None)


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
    chunk_size: int | None = None,
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
    teacher_samples: TeacherSamples | None = None,
    teacher_entropy: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha * CE + (1 - alpha) * tau^2 * D_beta(P_T^tau, p_S^tau)`` from hidden states and LM heads.

    The same loss as :func:`ensemble_kd_loss` on the logits ``hidden @ head_weight.T + bias``, computed in
    one of three modes (docs/large_vocab.md):

    * ``"full"`` materialises ``[N, V]`` logits (the reference);
    * ``"chunked"`` is exact: positions in chunks of ``chunk_size`` (``None``: sized by memory,
      :func:`hf_ckd._options.default_chunk_size` of the student head's ``[V, H]``), a custom ``autograd.Function`` that
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

    Hidden states, heads and biases may be float64, float32, bfloat16 or float16, in any mix: the maths run in
    float64 when any input is float64, else in float32 (the loss comes back in that dtype), the matmuls in
    the promoted dtype of each hidden state and its head, and every gradient comes back in its input's dtype
    (docs/large_vocab.md, "Precision and dtypes").

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
        teacher_samples: ``mode="sampled"`` only: a :class:`~hf_ckd.losses.TeacherSamples`, ``[..., D]`` each
            (positions as ``labels``) but the entropy (``[...]``). With all its fields
            (:func:`stratified_targets`, a cache) it gives the online estimator, with ``num_samples`` = the
            uniform ids per position they were drawn with; with ``uniform_counts=None`` (``probs`` at the top
            ids only) or ``probs=uniform_counts=None`` (:func:`draw_targets`) the normaliser's uniform ids are
            drawn here (more variance). ``entropy`` (optional) makes the reported value the KL; without it the
            value is the cross-entropy (same gradients). Id ``V`` pads. Replaces
            ``teacher_hidden``/``teacher_head_weight`` (pass ``None``). Deprecated, with a
            ``DeprecationWarning``: the tuples ``(ids, counts[, probs[, uniform_counts]])``, read as the first
            fields of :class:`~hf_ckd.losses.TeacherSamples`.
        teacher_entropy: deprecated: the entropy per position, ``[...]``, now ``TeacherSamples.entropy``; still
            taken (with a ``DeprecationWarning``) when the samples have none.
        beta: the divergence, as in :func:`ensemble_kd_loss` (0 forward KL, 1 reverse KL, in between the
            generalized JSD), in the ``full`` and ``chunked`` modes; ``sampled`` estimates forward KL only.

    Returns:
        ``(loss, parts)`` as :func:`ensemble_kd_loss`: ``parts = {"ce", "kd", "divergence", "num_items"}``
        (detached).
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_beta(beta)
    check_choice(mode, KD_LOSS_MODES, "mode")
    chunk_size = resolve_chunk_size(
        chunk_size, student_head_weight.shape[0], "chunk_size", hidden=student_head_weight.shape[1]
    )
    teacher_samples = _as_teacher_samples(teacher_samples, teacher_entropy)
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
    if mode == "sampled" and beta != 0 and alpha < 1:
        raise ValueError(
            f"mode='sampled' estimates the forward KL (beta=0) only: reverse KL and the generalized JSD need the "
            f"student's whole distribution at every id. Got beta={beta}; use mode='chunked' (exact, as lean)."
        )
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
    samples = _kept_samples(teacher_samples, labels, vocab, keep) if teacher_samples is not None else None
    # The softmax/KL maths run in float32, or float64 when any input is (half precision is upcast); the
    # matmuls in each side's own (promoted) dtype.
    dtype = _compute_dtype(
        hidden, student_head_weight, student_head_bias, *teacher_hidden, *teacher_weight, *teacher_bias,
        *(samples[1:] if samples is not None else ()),
    )  # fmt: skip
    teachers = _TeacherHeads(
        teacher_hidden, teacher_weight, teacher_bias, temperature, weights, average, dtype
    )
    with_kd, with_ce = alpha < 1, alpha > 0

    if mode == "full":
        logits = _linear_logits(hidden, student_head_weight, student_head_bias, dtype)
        log_target = teachers.log_target(slice(0, hidden.shape[0])) if with_kd else None
        kd_sum = (
            temperature**2 * divergence_rows(log_target, F.log_softmax(logits / temperature, -1), beta).sum()
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
            kd_weight, ce_weight, dtype, beta,
        )  # fmt: skip
    else:
        kd_sum, ce_sum = _sampled_linear_kd(
            hidden, student_head_weight, student_head_bias, kept_labels, teachers, temperature, chunk_size,
            num_samples, generator, sampled_normalizer, proposal_teacher_mass, with_kd, with_ce, samples, dtype,
        )  # fmt: skip
        loss_sum = alpha * ce_sum + (1 - alpha) * kd_sum

    denom = num_items_in_batch if num_items_in_batch is not None else num_items.clamp(min=1)
    loss, kd, ce = loss_sum / denom, kd_sum / denom, ce_sum / denom
    if hidden.shape[0] == 0:  # keep the graph connected: a batch of ignored positions gives zero gradients
        loss = loss + 0.0 * student_head_weight.sum()
    parts = {"ce": ce.detach(), "kd": kd.detach(), "divergence": kd.detach() / temperature**2}
    return loss, {**parts, "num_items": num_items.detach()}


def linear_kd_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_head_weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    mode: str = "chunked",
    chunk_size: int | None = None,
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
