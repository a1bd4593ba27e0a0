"""The KD loss against hand computations written with plain Python loops over math.exp/log."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ckd.losses import ensemble_kd_loss, ensemble_log_probs, kd_loss, shift_for_causal_lm


def softmax(row, tau=1.0):
    m = max(row)
    e = [math.exp((z - m) / tau) for z in row]
    s = sum(e)
    return [x / s for x in e]


def hand_loss(student, teachers, labels, tau, alpha, weights=None, average="probs", keep=None):
    """alpha * CE + (1 - alpha) * tau^2 * KL(P_ens || p_S), averaged over kept rows."""
    m = len(teachers)
    w = [1.0 / m] * m if weights is None else [x / sum(weights) for x in weights]
    keep = keep if keep is not None else [True] * len(student)
    ce = kd = 0.0
    n = 0
    for r, z in enumerate(student):
        if not keep[r]:
            continue
        n += 1
        if average == "probs":
            target = [
                sum(w[i] * softmax(t[r], tau)[v] for i, t in enumerate(teachers)) for v in range(len(z))
            ]
        else:
            mean_z = [sum(w[i] * t[r][v] for i, t in enumerate(teachers)) for v in range(len(z))]
            target = softmax(mean_z, tau)
        ps_tau = softmax(z, tau)
        kd += tau**2 * sum(p * (math.log(p) - math.log(q)) for p, q in zip(target, ps_tau))
        if labels is not None:
            ce += -math.log(softmax(z)[labels[r]])
    return alpha * ce / n + (1 - alpha) * kd / n, ce / n, kd / n


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    teachers = [torch.randn(5, 4, generator=g, dtype=torch.float64) * 3 for _ in range(3)]
    labels = torch.tensor([0, 3, 1, 2, 2])
    return student, teachers, labels


@pytest.mark.parametrize("average", ["probs", "logits"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_ensemble_loss_matches_hand_computation(logits, average, alpha, tau):
    student, teachers, labels = logits
    weights = [0.5, 0.2, 0.3]
    loss, parts = ensemble_kd_loss(
        student, teachers, labels, temperature=tau, alpha=alpha, weights=weights, average=average
    )
    expected, ce, kd = hand_loss(
        student.tolist(), [t.tolist() for t in teachers], labels.tolist(), tau, alpha, weights, average
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-6)


def test_probs_and_logits_averaging_differ(logits):
    student, teachers, labels = logits
    a, _ = ensemble_kd_loss(student, teachers, labels, temperature=2.0, alpha=0.0, average="probs")
    b, _ = ensemble_kd_loss(student, teachers, labels, temperature=2.0, alpha=0.0, average="logits")
    assert abs(a.item() - b.item()) > 1e-3


def test_tau_squared_scaling(logits):
    """The KD term is tau^2 * KL: compare with KL computed directly at the same temperature."""
    student, teachers, _ = logits
    tau = 3.0
    _, parts = ensemble_kd_loss(student, teachers[:1], None, temperature=tau, alpha=0.0)
    p = torch.softmax(teachers[0] / tau, -1)
    q = torch.softmax(student / tau, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    assert parts["kd"].item() == pytest.approx(tau**2 * kl.item(), rel=1e-9)


def test_alpha_one_is_cross_entropy_and_alpha_zero_needs_no_labels(logits):
    student, teachers, labels = logits
    loss, _ = ensemble_kd_loss(student, teachers, labels, temperature=4.0, alpha=1.0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(student, labels).item(), rel=1e-9)
    loss0, parts0 = ensemble_kd_loss(student, teachers, None, temperature=4.0, alpha=0.0)
    assert loss0.item() == pytest.approx(parts0["kd"].item())
    assert loss0.item() > 0


def test_kd_is_zero_when_student_matches_teacher(logits):
    _, teachers, labels = logits
    loss, parts = kd_loss(teachers[0].clone(), teachers[0], labels, temperature=4.0, alpha=0.0)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_identical_teachers_equal_single_teacher(logits):
    student, teachers, labels = logits
    single, _ = kd_loss(student, teachers[1], labels, temperature=2.0, alpha=0.4)
    double, _ = ensemble_kd_loss(student, [teachers[1], teachers[1]], labels, temperature=2.0, alpha=0.4)
    assert single.item() == pytest.approx(double.item(), rel=1e-12)


def test_ensemble_log_probs_is_normalised_mixture(logits):
    _, teachers, _ = logits
    log_p = ensemble_log_probs(teachers, temperature=2.0, weights=[1, 0, 3])
    expected = 0.25 * torch.softmax(teachers[0] / 2, -1) + 0.75 * torch.softmax(teachers[2] / 2, -1)
    torch.testing.assert_close(log_p.exp().double(), expected, rtol=1e-6, atol=1e-7)


def test_token_level_masking_and_causal_shift():
    g = torch.Generator().manual_seed(1)
    batch, length, vocab = 2, 5, 6
    student = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64)
    teacher = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[0, 3:] = -100  # padding
    labels[1, 0] = -100  # a masked prompt token: irrelevant after the shift
    loss, parts = ensemble_kd_loss(student, [teacher], labels, temperature=2.0, alpha=0.5, shift_labels=True)
    # Position t is scored against label t+1; it is kept iff label t+1 != -100.
    shifted = shift_for_causal_lm(labels)
    keep = (shifted != -100).reshape(-1).tolist()
    assert parts["num_items"].item() == sum(keep) == 2 + 4
    expected, _, _ = hand_loss(
        student.reshape(-1, vocab).tolist(),
        [teacher.reshape(-1, vocab).tolist()],
        [max(int(y), 0) for y in shifted.reshape(-1)],
        2.0,
        0.5,
        keep=keep,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Matches transformers' own causal-LM loss for the CE part.
    from transformers.loss.loss_utils import ForCausalLMLoss

    ce_ref = ForCausalLMLoss(student.float(), labels, vocab_size=vocab)
    _, ce_only = ensemble_kd_loss(student.float(), [], labels, alpha=1.0, shift_labels=True)
    assert ce_only["ce"].item() == pytest.approx(ce_ref.item(), rel=1e-5)


def test_num_items_in_batch_gives_sum_reduction(logits):
    student, teachers, labels = logits
    mean_loss, _ = ensemble_kd_loss(student, teachers, labels, temperature=2.0, alpha=0.5)
    summed, _ = ensemble_kd_loss(student, teachers, labels, temperature=2.0, alpha=0.5, num_items_in_batch=10)
    assert summed.item() == pytest.approx(mean_loss.item() * 5 / 10, rel=1e-9)


def test_gradient_flows_to_student_only(logits):
    student, teachers, labels = logits
    student = student.clone().requires_grad_(True)
    teacher = teachers[0].clone().requires_grad_(True)
    loss, _ = ensemble_kd_loss(student, [teacher], labels, temperature=2.0, alpha=0.5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"weights": [1.0, 2.0]}, "3 teacher"),
        ({"weights": [0.0, 0.0, 0.0]}, "not all zero"),
        ({"weights": [1.0, -1.0, 1.0]}, ">= 0"),
        ({"average": "median"}, "average"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(logits, kwargs, message):
    student, teachers, labels = logits
    with pytest.raises(ValueError, match=message):
        ensemble_kd_loss(student, teachers, labels, **{"temperature": 2.0, "alpha": 0.5, **kwargs})


def test_shape_mismatch_and_missing_labels(logits):
    student, teachers, labels = logits
    with pytest.raises(ValueError, match="label space"):
        ensemble_kd_loss(student, [torch.randn(5, 7)], labels)
    with pytest.raises(ValueError, match="no labels"):
        ensemble_kd_loss(student, teachers, None, alpha=0.5)


def test_the_package_re_exports_what_callers_import():
    """Every name imported from hf_ckd.losses before it became a package, and the one rule per option."""
    import hf_ckd._options as options
    import hf_ckd.losses as losses

    old_names = {
        "AVERAGE_MODES", "KD_LOSS_MODES", "TeacherSamples", "cat_samples", "draw_targets", "ensemble_kd_loss",
        "ensemble_log_probs", "kd_loss", "linear_distillation_loss", "linear_kd_loss", "normalize_weights",
        "shift_for_causal_lm", "stratified_targets",
    }  # fmt: skip
    assert set(losses.__all__) == old_names and all(hasattr(losses, n) for n in old_names)
    assert losses.normalize_weights is options.normalize_weights
    assert losses.AVERAGE_MODES is options.AVERAGE_MODES and losses.KD_LOSS_MODES is options.KD_LOSS_MODES
    assert losses.normalize_weights(torch.tensor([1.0, 3.0]), 2) == [0.25, 0.75]


def test_the_losses_import_neither_transformers_nor_timm():
    """hf_ckd.losses needs torch and the standard library only (hf_ckd's own __init__ left out: it imports the
    trainer)."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, types\n"
        f"package = types.ModuleType('hf_ckd'); package.__path__ = [{str(root / 'hf_ckd')!r}]\n"
        "sys.modules['hf_ckd'] = package\n"
        "import hf_ckd.losses\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'timm', 'datasets', 'accelerate'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
