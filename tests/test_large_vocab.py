"""KD from hidden states and LM heads (large vocabularies): `chunked` equals `full` in value and gradients,
`full` equals the logits-level loss, `sampled` is unbiased where it claims to be and converges to `full`."""

import math
import warnings

import pytest
import torch

from hf_ckd.losses import (
    TeacherSamples,
    cat_samples,
    draw_targets,
    ensemble_kd_loss,
    linear_distillation_loss,
    linear_kd_loss,
    stratified_targets,
)


def problem(
    n=37, vocab=97, hs=12, ht=20, seed=0, ignored=(3, 10, 11), bias=True, teachers=1, dtype=torch.float32
):
    g = torch.Generator().manual_seed(seed)
    student_h = torch.randn(n, hs, generator=g, dtype=dtype, requires_grad=True)
    student_w = (torch.randn(vocab, hs, generator=g, dtype=dtype) / math.sqrt(hs)).requires_grad_()
    student_b = (0.1 * torch.randn(vocab, generator=g, dtype=dtype)).requires_grad_() if bias else None
    # Zipf-like teachers: a few tokens carry most of the mass.
    zipf = -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=dtype))[torch.randperm(vocab, generator=g)]
    teacher_h = [torch.randn(n, ht, generator=g, dtype=dtype) for _ in range(teachers)]
    teacher_w = [torch.randn(vocab, ht, generator=g, dtype=dtype) / math.sqrt(ht) for _ in range(teachers)]
    teacher_b = [zipf.clone() for _ in range(teachers)]
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[list(ignored)] = -100
    return dict(
        student_hidden=student_h,
        student_head_weight=student_w,
        student_head_bias=student_b,
        teacher_hidden=teacher_h if teachers > 1 else teacher_h[0],
        teacher_head_weight=teacher_w if teachers > 1 else teacher_w[0],
        teacher_head_bias=teacher_b if teachers > 1 else teacher_b[0],
        labels=labels,
    )


def grads(loss, p):
    params = [p["student_hidden"], p["student_head_weight"]] + (
        [p["student_head_bias"]] if p["student_head_bias"] is not None else []
    )
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    ("n", "vocab", "chunk_size", "temperature", "alpha"),
    [(37, 97, 8, 2.0, 0.0), (37, 97, 1, 1.0, 0.3), (64, 500, 64, 4.0, 0.5), (12, 1000, 3, 0.7, 0.0)],
)
def test_chunked_equals_full(n, vocab, chunk_size, temperature, alpha):
    p = problem(n=n, vocab=vocab)
    kwargs = dict(temperature=temperature, alpha=alpha, chunk_size=chunk_size)
    full, full_parts = linear_distillation_loss(**p, mode="full", **kwargs)
    chunked, chunked_parts = linear_distillation_loss(**p, mode="chunked", **kwargs)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_parts["kd"], full_parts["kd"], rtol=1e-5, atol=1e-6)
    for g_chunked, g_full in zip(grads(chunked, p), grads(full, p)):
        torch.testing.assert_close(g_chunked, g_full, rtol=1e-5, atol=1e-6)


def test_chunked_value_does_not_drift_with_the_chunk_size():
    """At a realistic vocabulary the chunked KD value equals the float64 one to 1e-5 (relative) at every chunk
    size, 1 to more than the positions: one dot product over a chunk's [n * V] values, added up by BLAS in a
    few float32 sums, was off by 1e-3 at 512 x 32,768 (T = 1; docs/large_vocab.md, "Precision")."""
    temperature = 1.0
    n, vocab, hidden = 512, 32768, 64
    g = torch.Generator().manual_seed(0)
    student_h = torch.randn(n, hidden, generator=g)
    student_w = torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)
    teacher_h = torch.randn(n, hidden, generator=g)
    teacher_w = torch.randn(vocab, hidden, generator=g) / math.sqrt(hidden)
    teacher_b = (
        -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))[torch.randperm(vocab, generator=g)]
    )
    labels = torch.randint(0, vocab, (n,), generator=g)
    tensors = [student_h, student_w, teacher_h, teacher_w, teacher_b]

    def value(tensors, chunk_size):
        sh, sw, th, tw, tb = tensors
        loss = linear_kd_loss(
            sh, sw, th, tw, labels, temperature, "chunked", chunk_size, teacher_head_bias=tb
        )
        return loss.item()

    reference = value([t.double() for t in tensors], 128)  # the same float32 numbers, in float64
    for chunk_size in (1, 7, 64, 512, 1024):
        assert abs(value(tensors, chunk_size) - reference) <= 1e-5 * reference, chunk_size


def test_full_equals_the_logits_level_loss():
    """The linear loss is ensemble_kd_loss on hidden @ W.T + b, teacher ensembles included."""
    p = problem(teachers=3)
    weights = [0.2, 0.3, 0.5]
    for average in ("probs", "logits"):
        linear, parts = linear_distillation_loss(
            **p, temperature=2.0, alpha=0.4, mode="chunked", chunk_size=5, weights=weights, average=average
        )
        student = p["student_hidden"] @ p["student_head_weight"].T + p["student_head_bias"]
        teachers = [
            h @ w.T + b
            for h, w, b in zip(p["teacher_hidden"], p["teacher_head_weight"], p["teacher_head_bias"])
        ]
        reference, ref_parts = ensemble_kd_loss(
            student, teachers, p["labels"], temperature=2.0, alpha=0.4, weights=weights, average=average
        )
        torch.testing.assert_close(linear, reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parts["ce"], ref_parts["ce"], rtol=1e-5, atol=1e-6)
        assert int(parts["num_items"]) == 37 - 3


def test_num_items_in_batch_divides_the_sums():
    p = problem()
    mean, parts = linear_distillation_loss(**p, temperature=2.0, mode="chunked")
    summed, _ = linear_distillation_loss(**p, temperature=2.0, mode="chunked", num_items_in_batch=1)
    torch.testing.assert_close(summed, mean * parts["num_items"])


def test_teacher_is_never_differentiated():
    p = problem()
    p["teacher_hidden"].requires_grad_(True)
    p["teacher_head_weight"].requires_grad_(True)
    for mode, extra in (("full", {}), ("chunked", {}), ("sampled", {"num_samples": 16})):
        loss = linear_kd_loss(**p, temperature=2.0, mode=mode, **extra)
        loss.backward()
        assert p["teacher_hidden"].grad is None and p["teacher_head_weight"].grad is None
        assert p["student_head_weight"].grad is not None


def sampled(p, k, seed, normalizer="importance", temperature=2.0):
    g = torch.Generator().manual_seed(seed)
    return linear_kd_loss(
        **p,
        temperature=temperature,
        mode="sampled",
        num_samples=k,
        generator=g,
        sampled_normalizer=normalizer,
    )


def test_sampled_with_exact_normaliser_is_unbiased():
    """With the exact log-normaliser only the teacher expectation is sampled: its mean over draws is the
    full loss, and so is the mean gradient."""
    p = problem(n=16, vocab=60, ignored=())
    full = linear_kd_loss(**p, temperature=2.0, mode="full")
    full_grad = grads(full, p)[1]
    losses, weight_grads = [], []
    for seed in range(300):
        loss = sampled(p, 4, seed, "exact")
        losses.append(loss.detach())
        weight_grads.append(grads(loss, p)[1])
    losses = torch.stack(losses)
    stderr = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean() - full) < 4 * stderr + 1e-6, (losses.mean(), full, stderr)
    stacked = torch.stack(weight_grads)
    z = (stacked.mean(0) - full_grad) / (stacked.std(0) / math.sqrt(len(stacked)) + 1e-12)
    assert z.pow(2).mean() < 2.0, z.pow(2).mean()  # E[z^2] = 1 for an unbiased estimate


def test_sampled_error_shrinks_with_num_samples():
    p = problem(n=32, vocab=400, ignored=())
    full = linear_kd_loss(**p, temperature=2.0, mode="full").item()

    def rms_error(k):
        return math.sqrt(sum((sampled(p, k, seed).item() - full) ** 2 for seed in range(20)) / 20)

    errors = [rms_error(k) for k in (4, 32, 256)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05 * full, (errors, full)


def test_sampled_at_full_vocabulary_equals_full():
    p = problem(n=24, vocab=80, ignored=())
    full = linear_kd_loss(**p, temperature=1.0, mode="full").item()
    values = [sampled(p, 80, seed, "exact", temperature=1.0).item() for seed in range(5)]
    spread = max(values) - min(values)
    assert all(abs(v - full) < max(3 * spread, 0.02 * full) for v in values), (values, full)


def test_sampled_normaliser_is_unbiased_given_the_draws():
    """Fixed teacher draws D_i: exp of the estimated log-normaliser, mean over uniform draws, is the exact
    Z_i = sum_v exp(z_iv / tau) (balance-heuristic weights with P_T replaced by the draw counts). Read back
    from the loss:
    KD_i / tau^2 = log Z_hat_i - cross_i - H_i, with cross_i and H_i computed by hand."""
    tau, vocab = 2.0, 300
    p = problem(n=1, vocab=vocab, ignored=())
    with torch.no_grad():
        teacher_logits = p["teacher_hidden"] @ p["teacher_head_weight"].T + p["teacher_head_bias"]
        log_target = torch.log_softmax(teacher_logits / tau, -1)
        z = (p["student_hidden"] @ p["student_head_weight"].T + p["student_head_bias"]) / tau
    ids, counts, entropy = draw_targets(log_target, 20, torch.Generator().manual_seed(0))
    cross = (counts / 20 * z.gather(1, ids.clamp(max=vocab - 1)) * (counts > 0)).sum()
    student = {k: p[k] for k in ("student_hidden", "student_head_weight", "student_head_bias", "labels")}
    z_hats = []
    for seed in range(400):
        loss = linear_kd_loss(
            **student, teacher_hidden=None, teacher_head_weight=None,
            teacher_samples=TeacherSamples(ids, counts, entropy=entropy), temperature=tau, mode="sampled", num_samples=8,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        z_hats.append(torch.exp(loss.detach() / tau**2 + cross + entropy.sum()))
    z_hats = torch.stack(z_hats)
    exact = torch.exp(z).sum()
    stderr = z_hats.std() / math.sqrt(len(z_hats))
    assert abs(z_hats.mean() - exact) < 4 * stderr, (z_hats.mean(), exact, stderr)
    assert z_hats.std() > 0  # an estimate, not the exact sum


def test_precomputed_teacher_samples_converge_to_full():
    """teacher_samples from draw_targets (what a sampled cache stores) with many draws: the loss and the
    student's gradients approach full KD; an explicit count layout in any order gives the same loss."""
    tau = 2.0
    p = problem(n=20, vocab=120, ignored=(4,))
    full = linear_kd_loss(**p, temperature=tau, mode="full")
    with torch.no_grad():
        logits = p["teacher_hidden"] @ p["teacher_head_weight"].T + p["teacher_head_bias"]
        ids, counts, entropy = draw_targets(
            torch.log_softmax(logits / tau, -1), 20000, torch.Generator().manual_seed(1)
        )
    student = {k: p[k] for k in ("student_hidden", "student_head_weight", "student_head_bias", "labels")}
    kwargs = dict(
        teacher_hidden=None, teacher_head_weight=None, temperature=tau, mode="sampled", num_samples=120,
        sampled_normalizer="exact",
    )  # fmt: skip
    loss = linear_kd_loss(**student, teacher_samples=TeacherSamples(ids, counts, entropy=entropy), **kwargs)
    assert loss.item() == pytest.approx(full.item(), rel=0.02)
    cosine = torch.nn.functional.cosine_similarity(
        grads(loss, p)[1].flatten(), grads(full, p)[1].flatten(), dim=0
    )
    assert cosine > 0.99, cosine
    order = torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(2))
    shuffled = TeacherSamples(ids[:, order], counts[:, order], entropy=entropy)
    assert linear_kd_loss(**student, teacher_samples=shuffled, **kwargs).item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"teacher_samples .* must all have shape"):
        linear_kd_loss(**student, teacher_samples=TeacherSamples(ids[:5], counts[:5]), **kwargs)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        linear_kd_loss(**student, teacher_samples=TeacherSamples(ids + 500, counts), **kwargs)
    with pytest.raises(ValueError, match="not both"):
        linear_kd_loss(
            **p, teacher_samples=TeacherSamples(ids, counts), temperature=tau, mode="sampled", num_samples=4
        )
    with pytest.raises(ValueError, match="teacher_samples are for mode='sampled'"):
        linear_kd_loss(
            **student, **{**kwargs, "mode": "chunked"}, teacher_samples=TeacherSamples(ids, counts)
        )


def test_stratified_teacher_samples():
    """stratified_targets: exact top ids plus systematic draws from the rest give an unbiased estimate of P_T
    with less error than plain draws; every stored id carries its exact probability; as teacher_samples the
    loss converges to full."""
    tau, vocab = 2.0, 150
    p = problem(n=12, vocab=vocab, ignored=())
    with torch.no_grad():
        logits = p["teacher_hidden"] @ p["teacher_head_weight"].T + p["teacher_head_bias"]
        log_target = torch.log_softmax(logits / tau, -1)
    s = stratified_targets(log_target, 10, 400, torch.Generator().manual_seed(0), num_uniform=30)
    valid = s.ids < vocab
    top = valid & (s.counts == 0) & (s.uniform_counts == 0)
    assert torch.all(top.sum(1) == 10) and torch.all(s.counts.sum(1) == 400)
    assert torch.all(s.uniform_counts.sum(1) <= 30) and torch.all(s.uniform_counts <= 1)  # distinct strata
    assert torch.all(s.ids[:, 1:] > s.ids[:, :-1] - (~valid[:, 1:]).long() * vocab)  # ascending, padding last
    exact = log_target.exp()
    torch.testing.assert_close(s.probs[valid], exact.gather(1, s.ids.clamp(max=vocab - 1))[valid])
    torch.testing.assert_close(
        torch.where(top, s.probs, 0.0).sort(1, descending=True).values[:, :10], exact.topk(10, dim=-1).values
    )
    torch.testing.assert_close(s.entropy, -(exact * log_target).sum(-1))
    rest = 1 - torch.where(top, s.probs, 0.0).sum(1, keepdim=True)
    estimate = torch.zeros_like(log_target).scatter_add_(
        1, s.ids.clamp(max=vocab - 1), torch.where(top, s.probs, rest * s.counts / 400)
    )
    l1 = (estimate - exact).abs().sum(1)
    plain_ids, plain_counts, _ = draw_targets(log_target, 410, torch.Generator().manual_seed(0))
    plain = torch.zeros_like(log_target).scatter_add_(1, plain_ids.clamp(max=vocab - 1), plain_counts / 410)
    plain_l1 = (plain - exact).abs().sum(1)
    assert l1.max() < 0.2 and l1.mean() < plain_l1.mean(), (l1, plain_l1)  # the top ids carry no variance
    # Unbiased: the mean of the estimate over seeds is P_T.
    estimates = []
    for seed in range(400):
        s2 = stratified_targets(log_target, 3, 5, torch.Generator().manual_seed(seed))
        top2 = (s2.ids < vocab) & (s2.counts == 0)
        rest2 = 1 - torch.where(top2, s2.probs, 0.0).sum(1, keepdim=True)
        estimates.append(
            torch.zeros_like(log_target).scatter_add_(
                1, s2.ids.clamp(max=vocab - 1), torch.where(top2, s2.probs, rest2 * s2.counts / 5)
            )
        )
    # Systematic draws: id v's count is floor or ceil of K p_v / r, so its estimate has standard deviation
    # r / K * sqrt(f (1 - f)), f the fractional part of K p_v / r (0 for the top ids).
    top_p, top_ids = exact.topk(3, dim=-1)
    rest_exact = 1 - top_p.sum(1, keepdim=True)
    expected = (5 * exact / rest_exact).scatter_(1, top_ids, 0.0)
    frac = expected - expected.floor()
    stderr = rest_exact / 5 * (frac * (1 - frac)).sqrt() / math.sqrt(len(estimates))
    z_scores = (torch.stack(estimates).mean(0) - exact).abs() / (stderr + 1e-6)
    assert z_scores.max() < 5, z_scores.max()
    full = linear_kd_loss(**p, temperature=tau, mode="full")
    student = {k: p[k] for k in ("student_hidden", "student_head_weight", "student_head_bias", "labels")}
    loss = linear_kd_loss(
        **student, teacher_hidden=None, teacher_head_weight=None, teacher_samples=s,
        temperature=tau, mode="sampled", num_samples=30, sampled_normalizer="exact",
    )  # fmt: skip
    assert loss.item() == pytest.approx(full.item(), rel=0.01)


def test_sampled_normaliser_is_unbiased():
    """TeacherSamples with uniform ids: exp of the estimated log-normaliser is the exact Z = sum_v exp(z_v / tau)
    in the mean over the samples (top ids exact, draws from the rest and uniform ids by the balance heuristic),
    read back from the loss: KD / tau^2 = log Z_hat - cross - H, with cross and H computed by hand."""
    tau, vocab = 2.0, 300
    p = problem(n=1, vocab=vocab, ignored=())
    with torch.no_grad():
        teacher_logits = p["teacher_hidden"] @ p["teacher_head_weight"].T + p["teacher_head_bias"]
        log_target = torch.log_softmax(teacher_logits / tau, -1)
        z = (p["student_hidden"] @ p["student_head_weight"].T + p["student_head_bias"]) / tau
    student = {k: p[k] for k in ("student_hidden", "student_head_weight", "student_head_bias", "labels")}
    z_hats = []
    for seed in range(400):
        s = stratified_targets(log_target, 4, 6, torch.Generator().manual_seed(seed), num_uniform=6)
        top = (s.ids < vocab) & (s.counts == 0) & (s.uniform_counts == 0)
        rest = 1 - torch.where(top, s.probs, 0.0).sum()
        cross = (
            torch.where(top, s.probs, rest * s.counts / 6) * z.gather(1, s.ids.clamp(max=vocab - 1))
        ).sum()
        loss = linear_kd_loss(
            **student, teacher_hidden=None, teacher_head_weight=None, teacher_samples=s,
            temperature=tau, mode="sampled", num_samples=6,
        )  # fmt: skip
        z_hats.append(torch.exp(loss.detach() / tau**2 + cross + s.entropy.sum()))
    z_hats = torch.stack(z_hats)
    stderr = z_hats.std() / math.sqrt(len(z_hats))
    assert abs(z_hats.mean() - torch.exp(z).sum()) < 4 * stderr, (z_hats.mean(), torch.exp(z).sum(), stderr)
    assert z_hats.std() > 0  # an estimate, not the exact sum
    with pytest.raises(ValueError, match="more uniform ids at a position than num_samples=2"):
        linear_kd_loss(
            **student, teacher_hidden=None, teacher_head_weight=None, teacher_samples=s._replace(entropy=None),
            temperature=tau, mode="sampled", num_samples=2,
        )  # fmt: skip


def test_sampled_touches_only_sampled_rows():
    """The student's head gets gradient only in the rows of drawn ids (plus labels for CE)."""
    p = problem(n=4, vocab=5000, ignored=(), bias=False)
    loss = sampled(p, 8, 0)
    grad_w = grads(loss, p)[1]
    touched = int((grad_w.abs().sum(1) > 0).sum())
    assert 0 < touched <= 4 * 8 + 8


# ---- TeacherSamples: the one container for precomputed teacher samples -------------------------------


def container_problem():
    """A student, the teacher's tempered log-probabilities and samples of the three kinds."""
    tau, vocab = 2.0, 150
    p = problem(n=12, vocab=vocab, ignored=(2, 7), seed=11)
    with torch.no_grad():
        logits = p["teacher_hidden"] @ p["teacher_head_weight"].T + p["teacher_head_bias"]
        log_target = torch.log_softmax(logits / tau, -1)
    stratified = stratified_targets(log_target, 6, 30, torch.Generator().manual_seed(0), num_uniform=20)
    ids, counts, entropy = draw_targets(log_target, 50, torch.Generator().manual_seed(3))
    top = stratified_targets(log_target, 6, 30, torch.Generator().manual_seed(4))
    samples = {
        "stratified": stratified,
        "top_probs": TeacherSamples(
            top.ids, top.counts, torch.where(top.counts == 0, top.probs, 0.0), None, top.entropy
        ),
        "draws": TeacherSamples(ids, counts, entropy=entropy),
    }
    student = {k: p[k] for k in ("student_hidden", "student_head_weight", "student_head_bias", "labels")}
    return student, samples


def sampled_loss(student, **kwargs):
    """Loss, parts and the head-weight gradient of one sampled step with a fixed generator."""
    loss, parts = linear_distillation_loss(
        **student, teacher_hidden=None, teacher_head_weight=None, temperature=2.0, alpha=0.3, mode="sampled",
        num_samples=20, generator=torch.Generator().manual_seed(8), **kwargs,
    )  # fmt: skip
    return loss, parts, torch.autograd.grad(loss, student["student_head_weight"])[0]


# (loss, parts["kd"], parts["ce"], |dL/dW|_1) of the tuple forms before TeacherSamples became the loss's type.
BEFORE_THE_CONTAINER = {
    "stratified": (3.036660671234131, 2.151446580886841, 5.102160453796387, 11.985945701599121),
    "top_probs": (3.2684059143066406, 2.437901258468628, 5.206250190734863, 17.73734474182129),
    "draws": (3.05804181098938, 2.1560089588165283, 5.162784576416016, 16.128475189208984),
}


@pytest.mark.parametrize("kind", sorted(BEFORE_THE_CONTAINER))
def test_teacher_samples_give_the_loss_of_before(kind):
    """Each kind of TeacherSamples gives the values the old tuples gave, and warns about nothing."""
    student, samples = container_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loss, parts, grad_w = sampled_loss(student, teacher_samples=samples[kind])
    expected = BEFORE_THE_CONTAINER[kind]
    got = (loss.item(), parts["kd"].item(), parts["ce"].item(), grad_w.abs().sum().item())
    assert got == pytest.approx(expected, rel=1e-5), (got, expected)


@pytest.mark.parametrize(("kind", "length"), [("stratified", 4), ("top_probs", 3), ("draws", 2)])
def test_old_tuples_are_deprecated_and_give_identical_results(kind, length):
    """``(ids, counts[, probs[, uniform_counts]])`` with ``teacher_entropy=`` is read as TeacherSamples: the same
    loss, parts and gradients bit for bit, with a DeprecationWarning naming the new form."""
    student, samples = container_problem()
    new = sampled_loss(student, teacher_samples=samples[kind])
    old_tuple = tuple(samples[kind][:length])
    with pytest.warns(DeprecationWarning, match=r"teacher_samples=TeacherSamples\(ids, counts") as record:
        old = sampled_loss(student, teacher_samples=old_tuple, teacher_entropy=samples[kind].entropy)
    assert len(record) == 1 and f"a {length}-tuple" in str(record[0].message)
    assert "teacher_entropy" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller of linear_distillation_loss (stacklevel)
    assert torch.equal(new[0], old[0]) and torch.equal(new[2], old[2])
    assert all(torch.equal(new[1][k], old[1][k]) for k in ("ce", "kd", "num_items"))
    # The entropy alone moves to the container too (the tuple without it reports the cross-entropy).
    with pytest.warns(DeprecationWarning, match="teacher_entropy= is deprecated"):
        folded = sampled_loss(student, teacher_samples=samples[kind]._replace(entropy=None),
                              teacher_entropy=samples[kind].entropy)  # fmt: skip
    assert torch.equal(folded[0], new[0])
    with pytest.warns(DeprecationWarning):
        cross_entropy = sampled_loss(student, teacher_samples=old_tuple)
    assert cross_entropy[1]["kd"] > new[1]["kd"]  # + tau^2 H(P_T) per position: the KL needs the entropy
    assert torch.equal(cross_entropy[2], new[2])  # same gradients


def test_teacher_samples_bad_input():
    student, samples = container_problem()
    s = samples["stratified"]
    with pytest.raises(ValueError, match="entropy twice"):
        sampled_loss(student, teacher_samples=s, teacher_entropy=s.entropy)
    with pytest.raises(ValueError, match=r"must be a TeacherSamples\(ids, counts, .*got a 5-tuple"):
        sampled_loss(student, teacher_samples=tuple(s))
    with pytest.raises(ValueError, match="got Tensor"):
        sampled_loss(student, teacher_samples=s.ids)
    with pytest.raises(ValueError, match="uniform_counts but no probs"):
        sampled_loss(student, teacher_samples=s._replace(probs=None))
    with pytest.raises(ValueError, match=r"entropy has shape \(5,\); expected one value per position"):
        sampled_loss(student, teacher_samples=s._replace(entropy=s.entropy[:5]))
    with pytest.raises(ValueError, match=r"teacher_samples \(shapes .*\) must all have shape"):
        sampled_loss(student, teacher_samples=s._replace(probs=s.probs[:, :3]))


def test_teacher_samples_to_and_cat_keep_missing_fields_missing():
    _, samples = container_problem()
    draws = samples["draws"]
    moved = draws.to("cpu")
    assert isinstance(moved, TeacherSamples) and moved.probs is None and moved.uniform_counts is None
    assert torch.equal(moved.ids, draws.ids) and moved.ids.dtype == torch.long
    s = samples["stratified"]
    assert all(torch.equal(a, b) for a, b in zip(s.to(torch.device("cpu")), s))
    both = cat_samples([draws, draws._replace(ids=draws.ids[:, :3], counts=draws.counts[:, :3])], 150)
    assert both.probs is None and both.uniform_counts is None and both.ids.shape == (24, draws.ids.shape[1])
    assert torch.all(both.ids[12:, 3:] == 150) and torch.all(both.counts[12:, 3:] == 0)
    assert torch.equal(both.entropy, torch.cat([draws.entropy, draws.entropy]))


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_input():
    p = problem()
    with pytest.raises(ValueError, match=r"vocabulary of 50 tokens but the student over 97"):
        linear_kd_loss(**{**p, "teacher_head_weight": torch.randn(50, 20), "teacher_head_bias": None})
    with pytest.raises(ValueError, match=r"Student hidden states end in 12 features.*\[V, 12\]"):
        linear_kd_loss(**{**p, "student_head_weight": torch.randn(97, 13)})
    with pytest.raises(ValueError, match=r"Teacher 0 has 5 positions but the student 37"):
        linear_kd_loss(**{**p, "teacher_hidden": torch.randn(5, 20)})
    with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1"):
        linear_kd_loss(**p, chunk_size=0)
    for k in (0, 98, None):
        with pytest.raises(ValueError, match=r"num_samples, an integer in \[1, V=97\]"):
            linear_kd_loss(**p, mode="sampled", num_samples=k)
    with pytest.raises(ValueError, match=r"Every position of labels is ignored"):
        linear_kd_loss(**{**p, "labels": torch.full((37,), -100)})
    bad = p["teacher_hidden"].clone()
    bad[7, 0] = float("nan")
    with pytest.raises(ValueError, match=r"Teacher 0 has NaN/Inf logits"):
        linear_kd_loss(**{**p, "teacher_hidden": bad}, mode="chunked")
    with pytest.raises(ValueError, match=r"mode must be one of"):
        linear_kd_loss(**p, mode="fast")


def test_all_ignored_inside_the_trainer_path_gives_zero_gradients():
    """A micro-batch with no kept position (possible under gradient accumulation) is a zero, not an error."""
    p = problem()
    p["labels"] = torch.full((37,), -100)
    loss, parts = linear_distillation_loss(**p, mode="chunked", temperature=2.0)
    assert loss.item() == 0.0 and int(parts["num_items"]) == 0
    assert all(float(g.abs().sum()) == 0.0 for g in grads(loss, p)[1:])


# ---- in the trainer --------------------------------------------------------------------------------


def test_trainer_chunked_kd_reaches_the_weights_of_full_kd(lm_teacher, tmp_path):
    """A causal-LM student distilled with kd_loss='chunked' (hidden states + LM heads, no [tokens, V] logits)
    ends at the weights of kd_loss='full', with padding and gradient accumulation."""
    from conftest import tiny_gpt2, trainer_args
    from test_trainer import assert_same_weights, padded_lm_dataset, weights

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    train = padded_lm_dataset(48, 4)
    results = {}
    for mode in ("full", "chunked"):
        student = tiny_gpt2(hidden=16, layers=1, seed=3)
        args = CheckpointDistillConfig(
            **trainer_args(
                tmp_path / mode, teacher=lm_teacher, teacher_checkpoints="0.5,last", temperature=2.0, alpha=0.3,
                kd_loss=mode, kd_chunk_size=7, max_steps=3, per_device_train_batch_size=4,
                gradient_accumulation_steps=2, optim="sgd", learning_rate=0.5, save_strategy="no", logging_steps=1,
            )
        )  # fmt: skip
        trainer = CheckpointDistillTrainer(model=student, args=args, train_dataset=train)
        trainer.train()
        results[mode] = (weights(student), [e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert_same_weights(results["full"][0], results["chunked"][0], atol=1e-5)
    assert results["full"][1] == pytest.approx(results["chunked"][1], rel=1e-4)


def test_trainer_sampled_kd_learns(lm_teacher, lm_data, tmp_path):
    from conftest import tiny_gpt2, trainer_args

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    train, _ = lm_data
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "s", teacher=lm_teacher, temperature=1.0, alpha=0.0, kd_loss="sampled", kd_num_samples=4,
            max_steps=60, save_strategy="no", logging_steps=10,
        )
    )  # fmt: skip
    trainer = CheckpointDistillTrainer(
        model=tiny_gpt2(hidden=16, layers=1, seed=1), args=args, train_dataset=train
    )
    trainer.train()
    kd = [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e]
    assert kd[-1] < 0.7 * kd[0], kd
    with pytest.raises(ValueError, match=r"kd_num_samples=99 exceeds the vocabulary \(16\)"):
        bad = CheckpointDistillConfig(
            **trainer_args(
                tmp_path / "b", teacher=lm_teacher, kd_loss="sampled", kd_num_samples=99, max_steps=1
            )
        )
        CheckpointDistillTrainer(model=tiny_gpt2(hidden=16, layers=1), args=bad, train_dataset=train)
    with pytest.raises(ValueError, match=r"kd_loss='sampled' needs kd_num_samples >= 1"):
        CheckpointDistillConfig(**trainer_args(tmp_path / "c", kd_loss="sampled"))
