"""Teacher sampling and the sampled linear KD estimator (``mode="sampled"`` of
:func:`hf_ckd.losses.linear_distillation_loss`).

The KD term of a position is ``-H(P_T) - sum_v P_T(v) z(v) / tau + log Z``; both student-dependent parts are
estimated from a few vocabulary ids per position, drawn from the teacher (its most likely ids exactly plus
systematic draws from the rest, Li et al. 2018, "Accelerating Large Scale Knowledge Distillation via Dynamic
Importance Sampling"; Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in
LLMs", arXiv:2503.16870) and uniformly. :class:`TeacherSamples` is what the loss takes of the teacher, drawn
online from its heads or precomputed (a soft-target cache with ``storage="sampled"``). The estimator, its bias
and its variance: docs/large_vocab.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._kernels import _ChunkedLogSumExp, _GatheredLogits


class TeacherSamples(NamedTuple):
    """A teacher's distribution P (tempered, P_T^tau) at each of the positions, sampled: what
    :func:`hf_ckd.losses.linear_distillation_loss` takes as ``teacher_samples`` in ``mode="sampled"``.

    ``ids``, ``counts``, ``probs`` and ``uniform_counts`` have one shape, ``positions + (D,)`` (``[n, D]`` from
    :func:`stratified_targets`, ``[B, T, D]`` from a soft-target cache; the positions are those of the loss's
    ``labels``); ``entropy`` has the positions' shape. Ids ascend per position, padding (id ``V``, zeros) last,
    as :func:`stratified_targets` returns them (other orders are sorted by the loss).

    * ``ids`` (int64): the distinct vocabulary ids stored for the position;
    * ``counts`` (float32): how often each id was drawn from the teacher (from the rest of P, without the top
      ids, when ``probs`` is given); 0 for a top id;
    * ``probs`` (float32, optional): P(id), exact;
    * ``uniform_counts`` (float32, optional): how often each id was one of the uniform ids (top ids never are);
    * ``entropy`` (float32, optional): the entropy of P per position, in nats, exact.

    Which fields are given decides the estimator (docs/large_vocab.md):

    * all of ``ids, counts, probs, uniform_counts`` (:func:`stratified_targets`, a cache): the top ids (both
      counts 0) with their exact probabilities, draws from the rest and uniform ids, ``probs`` at every stored
      id. The online estimator; pass as ``num_samples`` the number of uniform ids per position they were drawn
      with.
    * ``ids, counts, probs`` (``uniform_counts=None``): ``probs`` is P at the top ids (count 0) and 0 at the
      drawn ids; the student's normaliser importance-samples ``num_samples`` uniform ids drawn in the loss,
      with the draw counts in place of P (unbiased given the draws, more variance).
    * ``ids, counts`` (``probs=None``, ``uniform_counts=None``; :func:`draw_targets`): plain draws from P, an id
      with count 0 is padding; the normaliser as above.

    ``entropy`` is optional in all three: with it the loss reports the KL, without it the cross-entropy (the
    gradients are the same).
    """

    ids: torch.Tensor
    counts: torch.Tensor
    probs: torch.Tensor | None = None
    uniform_counts: torch.Tensor | None = None
    entropy: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TeacherSamples:
        """The same samples on ``device`` (fields that are ``None`` stay ``None``)."""
        return TeacherSamples(
            *(t.to(device, non_blocking=non_blocking) if t is not None else None for t in self)
        )


def _as_teacher_samples(samples, entropy: torch.Tensor | None = None) -> TeacherSamples | None:
    """``teacher_samples`` (and the deprecated ``teacher_entropy``) of :func:`linear_distillation_loss` as one
    :class:`TeacherSamples`: the one place where the old tuples are read.

    The tuples ``(ids, counts)``, ``(ids, counts, probs)`` and ``(ids, counts, probs, uniform_counts)`` are
    the first fields of :class:`TeacherSamples`; ``teacher_entropy`` is its ``entropy``. Both still work, with
    a ``DeprecationWarning``.
    """
    if samples is None:
        return None  # (a teacher_entropy without samples was always ignored: the online draws have their own)
    old = []
    if not isinstance(samples, TeacherSamples):
        if not isinstance(samples, tuple | list) or len(samples) not in (2, 3, 4):
            what = f"a {len(samples)}-tuple" if isinstance(samples, tuple | list) else type(samples).__name__
            raise ValueError(
                "teacher_samples must be a TeacherSamples(ids, counts, probs, uniform_counts, entropy) "
                f"(stratified_targets; probs and uniform_counts may be None, see TeacherSamples), got {what}."
            )
        old.append(f"a {len(samples)}-tuple as teacher_samples")
        samples = TeacherSamples(*samples)
    if entropy is not None:
        if samples.entropy is not None:
            raise ValueError(
                "Got the teacher's entropy twice, as TeacherSamples.entropy and as teacher_entropy; give it once, "
                "as TeacherSamples.entropy."
            )
        old.append("teacher_entropy=")
        samples = samples._replace(entropy=entropy)
    if old:
        warnings.warn(
            f"linear_distillation_loss: {' and '.join(old)} is deprecated; pass "
            "teacher_samples=TeacherSamples(ids, counts, probs, uniform_counts, entropy) (hf_ckd.losses; "
            "probs/uniform_counts None for samples without them).",
            DeprecationWarning,
            stacklevel=3,
        )
    return samples


def _kept_samples(samples: TeacherSamples, labels: torch.Tensor, vocab: int, keep) -> TeacherSamples:
    """Check precomputed ``samples`` against the loss's ``labels`` and the vocabulary; their kept positions as
    ``[n, D]`` (``[n]`` the entropy)."""
    if samples.probs is None and samples.uniform_counts is not None:
        raise ValueError(
            "teacher_samples have uniform_counts but no probs; the estimator with uniform ids needs the teacher's "
            "probability at every stored id (stratified_targets)."
        )
    ids, counts, probs, uniform_counts, entropy = samples
    fields = [t for t in (ids, counts, probs, uniform_counts) if t is not None]
    shapes = [tuple(t.shape) for t in fields]
    if len(set(shapes)) != 1 or ids.shape[:-1] != labels.shape:
        raise ValueError(
            f"teacher_samples (shapes {shapes}) must all have shape labels.shape + (D,) = "
            f"{tuple(labels.shape)} + (D,)."
        )
    if entropy is not None and entropy.numel() != labels.numel():
        raise ValueError(
            f"TeacherSamples.entropy has shape {tuple(entropy.shape)}; expected one value per position, "
            f"labels.shape = {tuple(labels.shape)}."
        )
    if uniform_counts is not None:
        used = ids < vocab
    elif probs is not None:
        used = (counts > 0) | (probs > 0)
    else:
        used = counts > 0
    if bool((ids[used] >= vocab).any()) or bool((ids[used] < 0).any()):
        raise ValueError(f"teacher_samples holds ids outside the vocabulary [0, {vocab}).")
    width = ids.shape[-1]
    return TeacherSamples(
        *(
            t.reshape(-1, width)[keep] if t is not None else None
            for t in (ids, counts, probs, uniform_counts)
        ),
        entropy.reshape(-1)[keep] if entropy is not None else None,
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
    # (0, 1]: the first point is past 0, so never an id of weight 0. Drawn as float32 whatever the dtype of
    # ``weights``, so that one generator gives the same draws from float32 and float64 distributions.
    offset = 1.0 - torch.rand(
        weights.shape[0], 1, generator=generator, device=weights.device, dtype=torch.float32
    )
    offset = offset.to(weights.dtype)
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
    of ``num_draws * p``): ``teacher_samples=TeacherSamples(ids, counts, entropy=entropy)`` of
    :func:`linear_distillation_loss`.
    """
    probs = log_target.exp()
    entropy = _row_dots(probs, log_target).neg_()
    ids, counts = _distinct_draws(_systematic_draws(probs, num_draws, generator), log_target.shape[-1])
    return ids, counts, entropy


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
    """Stack :class:`TeacherSamples` of consecutive positions (``[n_j, D_j]`` each), padded to the widest with id
    ``vocab`` and 0. A field that is ``None`` in every part is ``None`` in the result."""
    width = max((p.ids.shape[1] for p in parts), default=0)

    def stack(field: int, value) -> torch.Tensor | None:
        if all(p[field] is None for p in parts):
            return None
        return torch.cat([F.pad(p[field], (0, width - p.ids.shape[1]), value=value) for p in parts])

    entropy = None if all(p.entropy is None for p in parts) else torch.cat([p.entropy for p in parts])
    return TeacherSamples(stack(0, vocab), stack(1, 0.0), stack(2, 0.0), stack(3, 0.0), entropy)


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` rows, in blocks of rows (no ``[n, V]`` temporary).

    Not ``bmm``/``dot``: BLAS dot products add up a row in a few running float32 sums, off by 2e-5 (relative)
    at V = 32,768 and 1.5e-4 at V = 131,072; ``sum`` adds pairwise (1e-7)."""
    out = torch.empty(a.shape[0], dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    block = max(1, (1 << 20) // max(1, a.shape[1]))  # rows per product (4 MB of float32)
    for start in range(0, a.shape[0], block):
        rows = slice(start, start + block)
        out[rows] = (a[rows] * b[rows]).sum(-1)
    return out


def _sorted_samples(
    samples: TeacherSamples, vocab: int, dtype: torch.dtype = torch.float32
) -> TeacherSamples:
    """``[n, D]`` samples in any order (id ``>= V`` or, without probabilities, count 0 = padding) to ascending
    ids, padding (id ``V``) last, as :func:`draw_targets` and :func:`stratified_targets` return them; ids as
    int64, the rest as ``dtype`` (the compute dtype)."""
    ids, counts, probs, uniform_counts, entropy = samples
    counts, probs, uniform_counts, entropy = (v.to(dtype) if v is not None else None for v in samples[1:])
    ids = ids.long()
    empty = ids >= vocab
    if probs is None:  # (ids, counts): an id with count 0 is padding
        empty = empty | (counts <= 0)
    elif uniform_counts is None:  # (ids, counts, probs): count and probability 0 is padding
        empty = empty | ((counts <= 0) & (probs <= 0))
    canonical = bool((empty == (ids >= vocab)).all()) and bool((ids[:, 1:] >= ids[:, :-1]).all())
    if not canonical:  # as the sampling functions return them (and a sampled cache stores them): no copies
        ids = ids.masked_fill(empty, vocab)
        ids, order = ids.sort(dim=1)
        counts, probs, uniform_counts = (
            v.gather(1, order) if v is not None else None for v in (counts, probs, uniform_counts)
        )
    if bool(((ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] < vocab)).any()):
        raise ValueError(
            "teacher_samples lists an id twice at one position; give distinct ids with their counts."
        )
    return TeacherSamples(ids, counts, probs, uniform_counts, entropy)


def _sample_plan(num_samples: int, teacher_mass: float, use_importance: bool) -> tuple[int, int, int]:
    """Split ``num_samples`` ids per position into (top ids, draws from the rest, uniform ids)."""
    k_teacher = max(1, round(teacher_mass * num_samples)) if use_importance else num_samples
    k_uniform = num_samples - k_teacher
    if use_importance and k_uniform == 0 and num_samples > 1:
        k_teacher, k_uniform = num_samples - 1, 1
    return k_teacher // 2, k_teacher - k_teacher // 2, k_uniform


def _sampled_linear_kd(
    hidden, weight, bias, labels, teachers, temperature, chunk_size, num_samples, generator, normalizer,
    teacher_mass, with_kd, with_ce, samples=None, dtype=torch.float32,
):  # fmt: skip
    """Sampled estimate of the KD and CE sums (see :func:`linear_distillation_loss` and docs/large_vocab.md).

    Every position i gets ids ``s`` with a cross-term weight ``w_is`` (so that ``sum_s w_is z_is`` estimates
    ``sum_v P_T,i(v) z_iv`` without bias) and a normaliser log-weight ``l_is`` (so that
    ``sum_s exp(z_is / tau + l_is)`` estimates ``Z_i`` without bias).

    * :class:`TeacherSamples` (drawn here from the teachers' heads, chunk by chunk, or precomputed): the top
      ids with ``w = p``, ``l = 0`` (summed exactly); the Kt draws from the rest mass ``r_i`` with
      ``w = r_i c / Kt``; the rest of ``Z_i`` importance-sampled from the draws and the K2 uniform ids by the
      balance heuristic, ``l = log(c + u) - log(Kt p / r_i + K2 / V)`` (c, u: draw and uniform counts).
    * Precomputed samples without the teacher's probability at every id (``uniform_counts=None``): ``w = c / K1`` (or
      stratified as above) and the balance heuristic with ``Kt p / r`` replaced by the counts, with K2 uniform
      ids drawn here: unbiased for ``Z_i`` given the draws, with more variance.

    Computed in ``dtype`` (float32, or float64 when an input is float64), the values returned as ``dtype``.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    zero = hidden.new_zeros((), dtype=dtype)
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
        samples = cat_samples(parts, vocab)
    else:
        num_uniform = num_samples if use_importance else 0
    ids, counts, probs, uniform_counts, entropy = _sorted_samples(samples, vocab, dtype)
    entropy_sum = entropy.sum() if entropy is not None and with_kd else zero
    valid = ids < vocab
    if uniform_counts is not None:  # P_T at every id
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
        top_p = probs if probs is not None else torch.zeros_like(counts)
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
    logits = _GatheredLogits.apply(hidden, weight, bias, per_position, dtype)
    sample_logits = logits[:, :width]

    def log_normalizer_sum(scale: float) -> torch.Tensor:
        """sum_i log Z_i at temperature ``scale``: importance-sampled, or exact in chunks."""
        if not use_importance:
            return _ChunkedLogSumExp.apply(hidden, weight, bias, scale, chunk_size, dtype)
        return torch.logsumexp(torch.where(valid, sample_logits / scale + log_w, -math.inf), dim=-1).sum()

    kd_sum = ce_sum = zero
    if with_kd:
        cross = (cross_weight * torch.where(valid, sample_logits, 0.0)).sum() / temperature
        kd_sum = temperature**2 * (log_normalizer_sum(temperature) - cross - entropy_sum)
    if with_ce:
        ce_sum = log_normalizer_sum(1.0) - logits[:, width].sum()
    return kd_sum, ce_sum
