"""The linear KD losses in every floating-point dtype: float64, float32, bfloat16 and float16 hidden states and
heads (student and teacher may differ, and so may a hidden state and its head) work in every mode, compute
in max(float32, input dtype) and give each input its gradient in its own dtype.

The reference is always float64, on the same (already rounded) inputs: ``full`` for ``full`` and
``chunked``; for ``sampled`` the same estimator with the same generator seed (the draws do not depend on the
dtype), and ``full`` within the estimator's error."""

import itertools
import math

import pytest
import torch

from hf_ckd.losses import TeacherSamples, linear_distillation_loss, stratified_targets

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
N, V, HS, HT = 37, 97, 12, 20
IGNORED = [3, 10]
TEMPERATURE, ALPHA = 2.0, 0.3


def base_problem(seed=0):
    """float64 inputs: student hidden, weight, bias; teacher hidden, weight, bias (Zipf-like); labels."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    student = [
        torch.randn(N, HS, generator=g, dtype=f64),
        torch.randn(V, HS, generator=g, dtype=f64) / math.sqrt(HS),
        0.1 * torch.randn(V, generator=g, dtype=f64),
    ]
    teacher = [
        torch.randn(N, HT, generator=g, dtype=f64),
        torch.randn(V, HT, generator=g, dtype=f64) / math.sqrt(HT),
        -1.1 * torch.log(torch.arange(1, V + 1, dtype=f64))[torch.randperm(V, generator=g)],
    ]
    labels = torch.randint(0, V, (N,), generator=g)
    labels[IGNORED] = -100
    return student, teacher, labels


BASE = base_problem()


def inputs(student_dtypes, teacher_dtypes):
    """The base problem rounded to the given dtypes (hidden, weight, bias per side), and the same rounded
    values as float64 (the reference's inputs)."""
    student = [t.to(d) for t, d in zip(BASE[0], student_dtypes)]
    teacher = [t.to(d) for t, d in zip(BASE[1], teacher_dtypes)]
    return (student, teacher), ([t.double() for t in student], [t.double() for t in teacher])


def loss_and_grads(student, teacher, mode, seed=1, num_samples=48, **kwargs):
    params = [t.detach().clone().requires_grad_() for t in student]
    if mode == "sampled":
        kwargs = dict(num_samples=num_samples, generator=torch.Generator().manual_seed(seed), **kwargs)
    loss, parts = linear_distillation_loss(
        params[0],
        params[1],
        teacher[0] if teacher else None,
        teacher[1] if teacher else None,
        BASE[2],
        student_head_bias=params[2],
        teacher_head_bias=teacher[2] if teacher else None,
        temperature=TEMPERATURE,
        alpha=ALPHA,
        mode=mode,
        chunk_size=5,
        **kwargs,
    )
    return loss, parts, params, torch.autograd.grad(loss, params)


def lowest(*dtypes):
    """The least precise of ``dtypes`` (bf16 < fp16 < fp32 < fp64)."""
    order = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    return min(dtypes, key=order.index)


# Relative tolerance of the value and of the gradients (norm of the difference / norm) against float64 on the
# same rounded inputs: the float64 computation itself, float32 rounding, half-precision matmuls.
VALUE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 2e-3}
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def compute_dtype(*dtypes):
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check(loss, parts, params, got_grads, ref_loss, ref_grads, value_tol, grad_tol, dtype):
    assert loss.dtype == dtype and parts["kd"].dtype == dtype and parts["ce"].dtype == dtype
    assert torch.isfinite(loss)
    assert abs(loss.item() - ref_loss.item()) <= value_tol * abs(ref_loss.item())
    for g, p, r in zip(got_grads, params, ref_grads):
        assert g.dtype == p.dtype and g.shape == p.shape
        assert torch.isfinite(g).all()
        assert (g.double() - r).norm() <= grad_tol * r.norm()


@pytest.mark.parametrize("mode", ["full", "chunked"])
@pytest.mark.parametrize(
    ("student_dtype", "teacher_dtype"),
    list(itertools.product(DTYPES, DTYPES)),
    ids=lambda d: NAMES[d],
)
def test_exact_modes_in_every_dtype(mode, student_dtype, teacher_dtype):
    (student, teacher), (student64, teacher64) = inputs([student_dtype] * 3, [teacher_dtype] * 3)
    loss, parts, params, got = loss_and_grads(student, teacher, mode)
    ref, _, _, ref_grads = loss_and_grads(student64, teacher64, "full")
    low = lowest(student_dtype, teacher_dtype)
    dtype = compute_dtype(student_dtype, teacher_dtype)
    check(loss, parts, params, got, ref, ref_grads, VALUE_TOL[low], GRAD_TOL[low], dtype)


MIXED = [  # (student hidden, weight, bias), (teacher hidden, weight, bias): a hidden state and its head differ
    ((torch.bfloat16, torch.float32, torch.float16), (torch.float16, torch.float32, torch.bfloat16)),
    ((torch.float32, torch.float64, torch.float32), (torch.float64, torch.float32, torch.float16)),
    ((torch.float64, torch.bfloat16, torch.float64), (torch.bfloat16, torch.bfloat16, torch.float64)),
    ((torch.float16, torch.float16, torch.float64), (torch.float32, torch.float16, torch.float32)),
]


@pytest.mark.parametrize("mode", ["full", "chunked", "sampled", "sampled-exact"])
@pytest.mark.parametrize(("student_dtypes", "teacher_dtypes"), MIXED)
def test_mixed_dtypes_within_a_side(mode, student_dtypes, teacher_dtypes):
    (student, teacher), (student64, teacher64) = inputs(student_dtypes, teacher_dtypes)
    kwargs = {"sampled_normalizer": "exact"} if mode == "sampled-exact" else {}
    mode = mode.split("-")[0]
    loss, parts, params, got = loss_and_grads(student, teacher, mode, **kwargs)
    ref, _, _, ref_grads = loss_and_grads(student64, teacher64, mode, **kwargs)
    low = lowest(*student_dtypes, *teacher_dtypes)
    value_tol, grad_tol = VALUE_TOL[low], GRAD_TOL[low]
    if mode == "sampled" and lowest(*teacher_dtypes) in (torch.float16, torch.bfloat16):
        # A half-precision teacher's logits come from a half-precision matmul: its distribution differs from
        # the float64 one by ~1e-3 and a few systematic draws land on other ids.
        value_tol, grad_tol = 1e-2, 0.3
    dtype = compute_dtype(*student_dtypes, *teacher_dtypes)
    check(loss, parts, params, got, ref, ref_grads, value_tol, grad_tol, dtype)


@pytest.mark.parametrize("normalizer", ["importance", "exact"])
@pytest.mark.parametrize(
    ("student_dtype", "teacher_dtype"),
    list(itertools.product(DTYPES, DTYPES)),
    ids=lambda d: NAMES[d],
)
def test_sampled_with_teacher_heads_in_every_dtype(normalizer, student_dtype, teacher_dtype):
    (student, teacher), (student64, teacher64) = inputs([student_dtype] * 3, [teacher_dtype] * 3)
    loss, parts, params, got = loss_and_grads(student, teacher, "sampled", sampled_normalizer=normalizer)
    # The same estimator in float64 with the same generator seed: the same draws (offsets are drawn as
    # float32 whatever the dtype), unless a half-precision teacher's rounded distribution moves some of them.
    ref, _, _, ref_grads = loss_and_grads(student64, teacher64, "sampled", sampled_normalizer=normalizer)
    low = lowest(student_dtype, teacher_dtype)
    value_tol, grad_tol = VALUE_TOL[low], GRAD_TOL[low]
    if teacher_dtype in (torch.float16, torch.bfloat16):
        value_tol, grad_tol = 1e-2, 0.3
    dtype = compute_dtype(student_dtype, teacher_dtype)
    check(loss, parts, params, got, ref, ref_grads, value_tol, grad_tol, dtype)
    # and it estimates full (float64), at 48 of 97 ids per position, within a few percent
    full, _, _, _ = loss_and_grads(student64, teacher64, "full")
    assert abs(loss.item() - full.item()) <= 3e-2 * full.item()


def teacher_samples(kind, dtype):
    """Precomputed samples (as a soft-target cache stores them, float32 fields) of the float64 teacher."""
    h, w, b = BASE[1]
    log_target = torch.log_softmax((h @ w.T + b) / TEMPERATURE, dim=-1)
    s = stratified_targets(log_target, 16, 16, torch.Generator().manual_seed(3), num_uniform=16)
    s = TeacherSamples(*(t.to(dtype) if t.is_floating_point() else t for t in s))
    if kind == "stratified":
        return s, 16
    if kind == "top_probs":
        return s._replace(probs=torch.where(s.counts > 0, 0.0, s.probs), uniform_counts=None), 32
    return TeacherSamples(s.ids, s.counts, entropy=s.entropy), 32  # draws only


@pytest.mark.parametrize("kind", ["stratified", "top_probs", "draws"])
@pytest.mark.parametrize("samples_dtype", [torch.float32, torch.float64], ids=lambda d: NAMES[d])
@pytest.mark.parametrize("student_dtype", DTYPES, ids=lambda d: NAMES[d])
def test_sampled_with_teacher_samples_in_every_dtype(kind, samples_dtype, student_dtype):
    (student, _), (student64, _) = inputs([student_dtype] * 3, [torch.float64] * 3)
    samples, num_uniform = teacher_samples(kind, samples_dtype)
    loss, parts, params, got = loss_and_grads(
        student, None, "sampled", num_samples=num_uniform, teacher_samples=samples
    )
    samples64 = teacher_samples(kind, torch.float64)[0]
    ref, _, _, ref_grads = loss_and_grads(
        student64, None, "sampled", num_samples=num_uniform, teacher_samples=samples64
    )
    low = lowest(student_dtype, samples_dtype)
    dtype = compute_dtype(student_dtype, samples_dtype)
    check(loss, parts, params, got, ref, ref_grads, VALUE_TOL[low], GRAD_TOL[low], dtype)
