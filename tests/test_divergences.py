"""The KD divergence (``beta``): forward KL, reverse KL and the generalized Jensen-Shannon divergence, checked
against hand computations, autograd, every loss mode and TRL's ``generalized_jsd_loss`` (docs/losses.md)."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_gpt2, trainer_args

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, OptionError, ensemble_kd_loss
from hf_ckd.losses import linear_distillation_loss
from hf_ckd.losses.divergence import divergence_rows, divergence_rows_and_grad

BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


def hand_divergence(p: list[float], q: list[float], beta: float) -> float:
    """D_beta written out term by term, in Python floats."""

    def kl(a, b):
        return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)

    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


@pytest.mark.parametrize("beta", BETAS)
def test_divergence_equals_the_hand_computation(beta):
    p, q = [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]
    value = divergence_rows(
        torch.tensor([p], dtype=torch.float64).log(), torch.tensor([q], dtype=torch.float64).log(), beta
    )
    assert value.item() == pytest.approx(hand_divergence(p, q, beta), rel=1e-12)
    same = divergence_rows(torch.tensor([p]).log(), torch.tensor([p]).log(), beta)
    assert abs(same.item()) < 1e-7  # zero between equal distributions


def test_the_ends_and_the_middle():
    """beta=0.5 is the Jensen-Shannon divergence (symmetric, at most log 2); the ends are the two KLs."""
    log_p, log_q = (
        torch.randn(4, 9, dtype=torch.float64).log_softmax(-1),
        torch.randn(4, 9).double().log_softmax(-1),
    )
    jsd = divergence_rows(log_p, log_q, 0.5)
    torch.testing.assert_close(jsd, divergence_rows(log_q, log_p, 0.5))
    assert bool((jsd <= math.log(2)).all())
    torch.testing.assert_close(divergence_rows(log_p, log_q, 1.0), divergence_rows(log_q, log_p, 0.0))


@pytest.mark.parametrize("beta", BETAS)
def test_the_closed_form_gradient_equals_autograd(beta):
    torch.manual_seed(0)
    log_p = torch.randn(5, 11, dtype=torch.float64).log_softmax(-1)
    s = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    divergence_rows(log_p, s.log_softmax(-1), beta).sum().backward()
    value, grad = divergence_rows_and_grad(log_p, s.detach().log_softmax(-1), beta)
    torch.testing.assert_close(value, divergence_rows(log_p, s.detach().log_softmax(-1), beta))
    torch.testing.assert_close(grad, s.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_ensemble_loss_takes_the_divergence_against_the_ensemble_target(beta):
    """tau^2 * mean over kept positions of D_beta(P_ens, q), P_ens the weighted mixture of tempered
    teachers; ``divergence`` is the same without tau^2."""
    torch.manual_seed(1)
    tau, alpha = 2.0, 0.25
    student, t1, t2 = (torch.randn(2, 3, 6, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(0, 6, (2, 3))
    labels[1, 2] = -100
    loss, parts = ensemble_kd_loss(
        student, [t1, t2], labels, temperature=tau, alpha=alpha, weights=[1, 3], beta=beta
    )
    kept = labels != -100
    p_ens = 0.25 * F.softmax(t1 / tau, -1) + 0.75 * F.softmax(t2 / tau, -1)
    q = F.softmax(student / tau, -1)
    hand = [
        hand_divergence(p_ens[i].tolist(), q[i].tolist(), beta) for i in zip(*kept.nonzero(as_tuple=True))
    ]
    kd = tau**2 * sum(hand) / len(hand)
    ce = F.cross_entropy(student[kept], labels[kept]).item()
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-10)
    assert parts["divergence"].item() == pytest.approx(kd / tau**2, rel=1e-10)
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * kd, rel=1e-10)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_equals_full_in_value_and_gradients(beta, chunk_size):
    torch.manual_seed(2)
    n, hs, ht, vocab, tau = 20, 8, 12, 50, 1.5
    labels = torch.randint(0, vocab, (n,))
    labels[3] = -100
    teacher_hidden, teacher_weight = torch.randn(n, ht, dtype=torch.float64), torch.randn(vocab, ht).double()
    results = {}
    for mode in ("full", "chunked"):
        hidden = torch.randn(n, hs, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        weight = torch.randn(vocab, hs, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        hidden.requires_grad_(True), weight.requires_grad_(True)
        loss, parts = linear_distillation_loss(
            hidden, weight, teacher_hidden, teacher_weight, labels, temperature=tau, alpha=0.3, mode=mode,
            chunk_size=chunk_size, beta=beta,
        )  # fmt: skip
        loss.backward()
        results[mode] = (loss.detach(), parts["divergence"], hidden.grad, weight.grad)
    for full, chunked in zip(results["full"], results["chunked"]):
        torch.testing.assert_close(chunked, full, rtol=1e-10, atol=1e-12)


def test_sampled_refuses_what_its_estimator_cannot_do(tmp_path):
    with pytest.raises(OptionError, match=r"kd_loss='sampled' estimates the forward KL \(beta=0\) only"):
        CheckpointDistillConfig(**trainer_args(tmp_path, kd_loss="sampled", kd_num_samples=4, beta=1.0))
    with pytest.raises(ValueError, match=r"mode='sampled' estimates the forward KL"):
        linear_distillation_loss(
            torch.randn(4, 3), torch.randn(9, 3), torch.randn(4, 3), torch.randn(9, 3), torch.zeros(4).long(),
            mode="sampled", num_samples=3, beta=0.5,
        )  # fmt: skip
    with pytest.raises(OptionError, match=r"beta must lie in \[0, 1\]"):
        CheckpointDistillConfig(**trainer_args(tmp_path, beta=1.5))


# ---- TRL ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_jsd():
    pytest.importorskip("trl")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_the_divergence_equals_trls_generalized_jsd(trl_jsd, beta, tau):
    """At alpha=0 hf_ckd's ``divergence`` is TRL's loss for the same labels (TRL does not scale by tau^2;
    hf_ckd's ``kd`` is tau^2 times it)."""
    torch.manual_seed(5)
    student, teacher = torch.randn(3, 7, 40, requires_grad=True), torch.randn(3, 7, 40)
    labels = torch.randint(0, 40, (3, 7))
    labels[0, :2] = -100
    theirs = trl_jsd(student, teacher, labels=labels, beta=beta, temperature=tau)
    loss, parts = ensemble_kd_loss(student, [teacher], labels, temperature=tau, alpha=0.0, beta=beta)
    assert parts["divergence"].item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    assert loss.item() == pytest.approx(tau**2 * theirs.item(), rel=1e-5, abs=1e-6)
    (grad_theirs,) = torch.autograd.grad(theirs, student)
    (grad_ours,) = torch.autograd.grad(loss / tau**2, student)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-7)


# ---- the trainer -----------------------------------------------------------------------------------


def test_a_student_learns_by_reverse_kl_and_logs_the_divergence(lm_teacher, lm_data, tmp_path):
    """beta=1 through the trainer (chunked): the reverse KL to the teacher falls, and ``kd_divergence`` is
    ``loss_kd`` / tau^2 in every log."""
    tau = 2.0
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "s", teacher=lm_teacher, beta=1.0, alpha=0.0, temperature=tau, kd_loss="chunked",
            kd_chunk_size=64, max_steps=60, save_strategy="no", logging_steps=10,
        )
    )  # fmt: skip
    trainer = CheckpointDistillTrainer(
        model=tiny_gpt2(hidden=16, layers=1), args=args, train_dataset=lm_data[0]
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kd_divergence" in e]
    assert len(logs) == 6
    for entry in logs:
        assert entry["kd_divergence"] == pytest.approx(entry["loss_kd"] / tau**2, rel=1e-4)
    assert logs[-1]["kd_divergence"] < 0.7 * logs[0]["kd_divergence"], logs  # 1.31 -> 0.73 nats measured


def test_eval_kd_divergence_is_the_divergence_on_the_eval_set(lm_teacher, lm_data, tmp_path):
    """``eval_kd_divergence`` beside ``eval_loss``: the mean over eval tokens of D_beta(P_T, p_S) at tau,
    recomputed here from the two models' logits."""
    tau, beta = 2.0, 0.5
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "s", teacher=lm_teacher, beta=beta, temperature=tau, max_steps=1, save_strategy="no",
            eval_kd_divergence=True, per_device_eval_batch_size=50,
        )
    )  # fmt: skip
    evaluation = lm_data[1].select(range(100))
    student = tiny_gpt2(hidden=16, layers=1)
    trainer = CheckpointDistillTrainer(
        model=student, args=args, train_dataset=lm_data[0], eval_dataset=evaluation
    )
    metrics = trainer.evaluate()
    teacher = trainer.teachers.models[0]
    with torch.no_grad():
        batch = evaluation[:]
        s, t = student(input_ids=batch["input_ids"]).logits, teacher(input_ids=batch["input_ids"]).logits
    expected = divergence_rows(
        (t[:, :-1] / tau).log_softmax(-1), (s[:, :-1] / tau).log_softmax(-1), beta
    ).mean()
    assert metrics["eval_kd_divergence"] == pytest.approx(expected.item(), rel=1e-4)
    assert "eval_loss" in metrics
    with pytest.raises(OptionError, match="eval_kd_divergence needs the teachers"):
        CheckpointDistillConfig(
            **trainer_args(tmp_path / "c", eval_kd_divergence=True, soft_target_cache="x")
        )


@pytest.mark.parametrize("kd_loss", ["full", "chunked"])
def test_accumulation_equals_the_large_batch_for_the_jsd(kd_loss, lm_teacher, tmp_path):
    """beta=0.5: batch 8 x 1 step and batch 2 x 4 accumulation steps reach the same weights (the divergence
    is summed per position and divided by the accumulated token count, as forward KL is)."""
    from test_trainer import assert_same_weights, distill, padded_lm_dataset, weights

    train, results = padded_lm_dataset(64, 3), []
    for batch, accumulation in ((8, 1), (2, 4)):
        model = tiny_gpt2(hidden=16, layers=1, seed=2)
        distill(
            model, lm_teacher, train, tmp_path / f"{kd_loss}-{batch}x{accumulation}", per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, max_steps=3, optim="sgd", learning_rate=0.5,
            save_strategy="no", beta=0.5, kd_loss=kd_loss, kd_chunk_size=5,
        )  # fmt: skip
        results.append(weights(model))
    assert_same_weights(results[0], results[1], atol=1e-5)
