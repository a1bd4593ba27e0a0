"""The autograd Functions and sparse/gathered helpers under the linear (hidden states + LM head) KD losses.

Both :mod:`hf_ckd.losses.linear` (exact, chunked) and :mod:`hf_ckd.losses.sampled` (estimated from sampled
vocabulary ids) use them; docs/large_vocab.md describes what each computes and why.

* :func:`_chunk_grads` runs a loss over chunks of positions and accumulates the gradients w.r.t. the
  hidden states and the head, never holding ``[N, V]`` (:class:`_ChunkedLogSumExp`, and
  ``_ChunkedLinearKD`` in :mod:`hf_ckd.losses.linear`);
* :class:`_GatheredLogits` gives the student's logits at per-position id lists, with one dense weight
  gradient (sparse CSR kernels on CPU, :func:`_sparse_pattern` and :func:`_scatter_matmul`).
"""

from __future__ import annotations

import warnings

import torch

from .logit import _upcast


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the softmax/KL maths run in: float64 when any of the floating-point ``tensors`` is float64,
    float32 otherwise (half precision is upcast)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of ``hidden @ weight.T``: the two promoted (bf16 @ bf16 stays bf16; fp32 @ bf16 is fp32)."""
    return torch.promote_types(hidden.dtype, weight.dtype)


def _linear_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``hidden @ weight.T + bias`` in the inputs' (promoted) dtype, returned as ``dtype`` (default: at least
    float32): ``[n, V]``. Differentiable (the casts are autograd's)."""
    mm = _matmul_dtype(hidden, weight)
    logits = hidden.to(mm) @ weight.to(mm).T
    if bias is not None:
        logits = logits + bias
    return _upcast(logits) if dtype is None else logits.to(dtype)


def _log_softmax_(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax(x, -1)`` written into ``x`` (chunked losses hold a few ``[n, V]`` buffers, not more)."""
    return x.sub_(torch.logsumexp(x, dim=-1, keepdim=True))


def _chunk_grads(hidden, weight, bias, grad_logits_fn, chunk_size, grads_needed, dtype=torch.float32):
    """Run ``grad_logits_fn(rows, logits) -> (loss_sum, grad_logits)`` over chunks of rows and accumulate
    the gradients of the summed loss w.r.t. ``hidden``, ``weight`` and ``bias`` (``None`` when not needed).

    ``logits`` are computed as ``dtype`` (the compute dtype, :func:`_compute_dtype`) from the matmul in the
    promoted dtype of ``hidden`` and ``weight``; the gradients come back in each input's own dtype, the weight
    and bias gradients accumulated in at least float32. Returns ``(loss_sum, grad_hidden, grad_weight,
    grad_bias)``, ``loss_sum`` as float64 (the chunks' sums are added up in float64, so the value does not
    depend on the chunk size); memory is ``O(chunk_size * V)`` plus the gradients themselves.
    """
    need_hidden, need_weight, need_bias = grads_needed
    mm = _matmul_dtype(hidden, weight)
    h, w = hidden.to(mm), weight.to(mm)  # (no copies when the dtypes agree; once, not per chunk, otherwise)
    acc = torch.promote_types(mm, torch.float32)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=acc) if need_weight else None
    grad_bias = (
        torch.zeros_like(bias, dtype=torch.promote_types(bias.dtype, torch.float32)) if need_bias else None
    )
    total = hidden.new_zeros((), dtype=torch.float64)
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        logits = _linear_logits(h[rows], w, bias, dtype)
        loss_sum, grad_logits = grad_logits_fn(rows, logits)
        total += loss_sum
        if grad_logits is None:
            continue
        if grad_hidden is not None:
            grad_hidden[rows] = (grad_logits.to(mm) @ w).to(hidden.dtype)
        if grad_weight is not None:
            grad_weight.addmm_(grad_logits.T.to(acc), h[rows].to(acc))
        if grad_bias is not None:
            grad_bias += grad_logits.sum(0).to(grad_bias.dtype)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return total, grad_hidden, grad_weight, grad_bias


class _ChunkedLogSumExp(torch.autograd.Function):
    """``sum_i logsumexp_v((hidden @ weight.T + bias)[i, v] / scale)``, exact, in chunks of rows, computed in
    ``dtype`` (returned as ``dtype``); gradients are computed in the forward pass as in
    ``hf_ckd.losses.linear._ChunkedLinearKD``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, scale, chunk_size, dtype=torch.float32):
        grads_needed = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )

        def chunk(rows, logits):
            log_norm = torch.logsumexp(logits / scale, dim=-1)
            grad = (logits / scale - log_norm[:, None]).exp_() / scale if any(grads_needed) else None
            return log_norm.sum(dtype=torch.float64), grad

        with torch.no_grad():
            total, *grads = _chunk_grads(hidden, weight, bias, chunk, chunk_size, grads_needed, dtype)
        ctx.save_for_backward(*grads)
        return total.to(dtype)

    @staticmethod
    def backward(ctx, grad_total):
        grads = [g.mul_(grad_total.to(g.dtype)) if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None)


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
    ids ``>= V`` are padding, computed as ``V - 1`` and given no gradient by the caller): ``[n, K]`` as ``dtype``
    (the compute dtype, float32 or float64; the products are in the promoted dtype of ``hidden`` and
    ``weight``, the gradients come back in each input's own dtype).

    One function for both so that the weight gets one dense gradient buffer (autograd would otherwise add up
    one ``[V, H]`` gradient per use of the weight). On CPU in float32/float64 the per-position products are
    sparse kernels over the ``[n, V]`` pattern of ``ids`` (``torch.sparse.sampled_addmm`` forward, CSR @ dense
    backward), which never copy the K selected weight rows per position: about 3x faster than gathering them
    at K ~ 1,000. Elsewhere (GPUs, half precision) the rows are gathered in chunks of positions and the weight
    gradient is added with ``index_add_``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, dtype=torch.float32):
        mm = _matmul_dtype(hidden, weight)
        h, w = hidden.to(mm), weight.to(mm)
        sparse = hidden.device.type == "cpu" and mm in (torch.float32, torch.float64)
        # (sampled_addmm fails on rows with more entries than columns: only repeats make those)
        sparse = sparse and 0 < ids.shape[1] <= weight.shape[0]
        chunk = max(1, (1 << 22) // max(1, ids.shape[1] * weight.shape[1]))  # about 16 MB of gathered rows
        with torch.no_grad():
            if sparse:
                pattern = _sparse_pattern(ids.clamp(max=weight.shape[0] - 1), weight.shape[0]).to(mm)
                out = torch.sparse.sampled_addmm(pattern, h, w.T, beta=0.0).values().view(ids.shape).to(dtype)
                if bias is not None:
                    out = out + bias[ids.clamp(max=weight.shape[0] - 1)].to(dtype)
            else:
                ids = ids.clamp(max=weight.shape[0] - 1)
                out = torch.empty(ids.shape, dtype=dtype, device=hidden.device)
                for start in range(0, ids.shape[0], chunk):
                    rows = slice(start, start + chunk)
                    rows_w = w[ids[rows]]  # [c, K, H]
                    z = (rows_w @ h[rows].unsqueeze(-1)).squeeze(-1)
                    out[rows] = z + bias[ids[rows]] if bias is not None else z
        ctx.save_for_backward(
            hidden, weight, bias, ids
        )  # (the originals: a cast copy is made again if needed)
        ctx.chunk, ctx.sparse = chunk, sparse
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, ids = ctx.saved_tensors
        mm = _matmul_dtype(hidden, weight)
        acc = torch.promote_types(mm, torch.float32)
        if not ctx.sparse or bias is not None:
            ids = ids.clamp(max=weight.shape[0] - 1)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_ids = grad_out
        grad_hidden = grad_weight = grad_bias = None
        if need_bias:
            grad_bias = torch.zeros_like(bias, dtype=torch.promote_types(bias.dtype, torch.float32))
            grad_bias.index_add_(0, ids.reshape(-1), grad_ids.reshape(-1).to(grad_bias.dtype))
        h, w = hidden.to(mm), weight.to(mm)
        if ctx.sparse:
            if need_hidden:
                grads = _sparse_pattern(
                    ids.clamp(max=weight.shape[0] - 1),
                    weight.shape[0],
                    grad_ids.to(mm).contiguous(),
                )
                grad_hidden = grads @ w
                del grads  # before the [V, H] weight gradient: it is the peak
            grad_weight = _scatter_matmul(ids, grad_ids, h, weight.shape[0]) if need_weight else None
        else:
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros_like(weight, dtype=acc) if need_weight else None
            for start in range(0, ids.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                g = grad_ids[rows]  # [c, K]
                if grad_hidden is not None:
                    grad_hidden[rows] = (g.unsqueeze(1).to(mm) @ w[ids[rows]]).squeeze(1).to(hidden.dtype)
                if grad_weight is not None:
                    outer = g.unsqueeze(-1).to(acc) * h[rows].to(acc).unsqueeze(1)  # [c, K, H]
                    grad_weight.index_add_(0, ids[rows].reshape(-1), outer.reshape(-1, outer.shape[-1]))
        return (
            grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None,
            None,
        )
