"""CheckpointDistillTrainer end to end: students that learn, exact gradient accumulation, exact resume,
bad input refused before anything is written."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import (
    LM_LEN,
    accuracy,
    digits_dataset,
    progression_lm_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_timm,
    trainer_args,
)
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments

from hf_ckd import (
    CheckpointDistillConfig,
    CheckpointDistillTrainer,
    TeacherLoadError,
    TeacherOutputError,
    TrajectoryError,
)


def distill(student, teacher, train, output_dir, eval_dataset=None, teacher_model_init=None, **overrides):
    config = {"teacher": teacher, "teacher_checkpoints": "0.5,last", "temperature": 2.0, "alpha": 0.3}
    config.update(overrides)
    args = CheckpointDistillConfig(**trainer_args(output_dir, **config))
    trainer = CheckpointDistillTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        teacher_model_init=teacher_model_init,
    )
    trainer.train()
    return trainer


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


# ---- students that learn ---------------------------------------------------------------------------


def test_text_student_learns_from_snapshot_ensemble(text_teacher, text_data, tmp_path):
    train, val = text_data
    student = tiny_bert(hidden=16, layers=1, seed=1)
    assert accuracy(student, val) < 0.4
    trainer = distill(
        student, text_teacher, train, tmp_path / "s", eval_dataset=val, max_steps=100, save_steps=100
    )
    assert [c.name for c in trainer.teachers.checkpoints] == ["checkpoint-60", "checkpoint-120"]
    assert accuracy(student, val) > 0.8  # chance is 0.25
    kd = logged(trainer, "loss_kd")
    assert len(kd) == 10 and kd[-1] < 0.7 * kd[0]
    assert len(logged(trainer, "loss_ce")) == 10
    # Evaluation scores the student alone: eval_loss is its cross-entropy on the labels.
    metrics = trainer.evaluate()
    student.eval()
    with torch.no_grad():
        batch = val[:]
        ce = torch.nn.functional.cross_entropy(student(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert metrics["eval_loss"] == pytest.approx(ce.item(), rel=1e-4)
    # Lineage: saved in trainer_state.json and in the model card.
    with open(tmp_path / "s" / "checkpoint-100" / "trainer_state.json") as f:
        lineage = json.load(f)["stateful_callbacks"]["TeacherLineageCallback"]["args"]["lineage"]
    assert lineage["teacher"] == text_teacher
    assert [(c["name"], c["step"]) for c in lineage["checkpoints"]] == [
        ("checkpoint-60", 60),
        ("checkpoint-120", 120),
    ]
    assert lineage["temperature"] == 2.0 and lineage["alpha"] == 0.3
    trainer.create_model_card(model_name="student")
    card = (tmp_path / "s" / "README.md").read_text()
    assert "knowledge-distillation" in card and "hf-ckd" in card
    assert "| checkpoint-60 | 60 | 0.500 | 0.500 |" in card
    from huggingface_hub import ModelCard

    metadata = ModelCard.load(tmp_path / "s" / "README.md").data
    assert [c["name"] for c in metadata["distillation"]["checkpoints"]] == ["checkpoint-60", "checkpoint-120"]
    assert metadata["distillation"]["teacher"] == text_teacher
    assert "hf-ckd" in metadata.tags


def test_timm_student_learns(timm_teacher, digits_data, tmp_path):
    train, val = digits_data
    student = tiny_timm("test_efficientnet", seed=1)
    trainer = distill(student, timm_teacher, train, tmp_path / "s", max_steps=80, save_strategy="no")
    assert accuracy(student, val) > 0.6  # chance is 0.1
    kd = logged(trainer, "loss_kd")
    assert kd[-1] < 0.6 * kd[0]


def test_causal_lm_token_level_learns(lm_teacher, lm_data, tmp_path):
    train, val = lm_data
    student = tiny_gpt2(hidden=16, layers=1, seed=1)
    assert accuracy(student, val) < 0.15
    trainer = distill(
        student,
        lm_teacher,
        train,
        tmp_path / "s",
        max_steps=100,
        temperature=1.0,
        alpha=0.5,
        save_strategy="no",
        logging_steps=1,
    )
    assert accuracy(student, val) > 0.4  # chance is 1/16
    kd = logged(trainer, "loss_kd")
    assert kd[-1] < 0.6 * kd[0]
    # Trainer's own loss (normalised by its num_items_in_batch) equals the parts averaged over the positions the
    # causal shift keeps: the two counts agree.
    for entry in trainer.state.log_history[:-1]:
        assert entry["loss"] == pytest.approx(0.5 * entry["loss_ce"] + 0.5 * entry["loss_kd"], rel=1e-4)


def test_pure_kd_without_labels(lm_teacher, lm_data, tmp_path):
    """alpha=0 needs no labels: every non-padding position is distilled."""
    train, val = lm_data
    unlabeled = train.remove_columns("labels")
    student = tiny_gpt2(hidden=16, layers=1, seed=1)
    trainer = distill(
        student,
        lm_teacher,
        unlabeled,
        tmp_path / "s",
        max_steps=100,
        alpha=0.0,
        temperature=1.0,
        save_strategy="no",
    )
    assert accuracy(student, val) > 0.4
    assert logged(trainer, "loss_kd") and not logged(trainer, "loss_ce")


class DigitsMLP(nn.Module):
    """A plain module (no transformers config): Trainer saves only its weights."""

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


def test_plain_module_teacher_through_teacher_model_init(digits_data, tmp_path):
    train, val = digits_data
    torch.manual_seed(0)
    teacher_args = TrainingArguments(**trainer_args(tmp_path / "t", max_steps=60, save_steps=30))
    Trainer(model=DigitsMLP(), args=teacher_args, train_dataset=train).train()
    assert not os.path.exists(tmp_path / "t" / "checkpoint-60" / "config.json")
    torch.manual_seed(1)
    student = DigitsMLP(hidden=16)
    trainer = distill(
        student,
        str(tmp_path / "t"),
        train,
        tmp_path / "s",
        teacher_model_init=DigitsMLP,
        max_steps=60,
        save_strategy="no",
    )
    assert type(trainer.teachers.models[0]).__name__ == "DigitsMLP"
    assert accuracy(student, val) > 0.8


# ---- exactness -------------------------------------------------------------------------------------


def padded_lm_dataset(n, seed):
    """Progressions whose labels mask a random-length prefix and suffix: label counts differ per row."""
    base = progression_lm_dataset(n, seed)[:]
    rng = np.random.default_rng(seed)
    labels = base["labels"].clone()
    for i in range(n):
        labels[i, : rng.integers(0, 4)] = -100
        labels[i, LM_LEN - rng.integers(0, 5) :] = -100
    return Dataset.from_dict({"input_ids": base["input_ids"], "labels": labels}).with_format("torch")


@pytest.mark.parametrize("kind", ["lm", "timm"])
def test_gradient_accumulation_equals_large_batch(kind, lm_teacher, timm_teacher, tmp_path):
    """Batch 8 x 1 step and batch 2 x 4 accumulation steps reach the same weights."""
    if kind == "lm":
        train, teacher, make = (
            padded_lm_dataset(64, 3),
            lm_teacher,
            lambda: tiny_gpt2(hidden=16, layers=1, seed=2),
        )
    else:
        # Group norm: batch-norm statistics would depend on the micro-batch, not on the loss maths under test.
        train, teacher = digits_dataset("train").select(range(64)), timm_teacher
        make = lambda: tiny_timm("test_efficientnet_gn", seed=2)  # noqa: E731
    results = []
    for batch, accumulation in ((8, 1), (2, 4)):
        model = make()
        distill(
            model,
            teacher,
            train,
            tmp_path / f"{batch}x{accumulation}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=3,
            optim="sgd",
            learning_rate=0.5,
            save_strategy="no",
        )
        results.append(weights(model))
    assert_same_weights(results[0], results[1], atol=1e-5)


def test_resume_reaches_the_same_student(text_teacher, text_data, tmp_path):
    train, _ = text_data
    full = tiny_bert(hidden=16, layers=1, seed=1)
    distill(full, text_teacher, train, tmp_path / "full", max_steps=20, save_steps=10)
    resumed = tiny_bert(
        hidden=16, layers=1, seed=5
    )  # different init: everything must come from the checkpoint
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "resumed",
            teacher=text_teacher,
            teacher_checkpoints="0.5,last",
            temperature=2.0,
            alpha=0.3,
            max_steps=20,
            save_steps=10,
        )
    )
    trainer = CheckpointDistillTrainer(model=resumed, args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-10"))
    assert trainer.state.global_step == 20
    assert_same_weights(weights(full), weights(resumed), atol=1e-6)


# ---- bad input -------------------------------------------------------------------------------------


def _break(run, case):
    if case == "no_weights":
        os.remove(run / "checkpoint-60" / "model.safetensors")
    elif case == "no_config":
        os.remove(run / "checkpoint-60" / "config.json")
    elif case == "corrupted":
        path = run / "checkpoint-60" / "model.safetensors"
        path.write_bytes(b"\x00" * 64 + path.read_bytes()[64:])


@pytest.mark.parametrize(
    ("case", "config", "error", "message"),
    [
        ("missing_path", {"teacher": "{tmp}/nope"}, TrajectoryError, "does not exist"),
        ("empty_dir", {"teacher": "{tmp}/empty"}, TrajectoryError, "No checkpoints"),
        ("no_weights", {}, TeacherLoadError, "checkpoint-60.*has no weights"),
        ("no_config", {}, TeacherLoadError, "checkpoint-60.*no config.json"),
        ("corrupted", {}, TeacherLoadError, "checkpoint-60.*not a valid safetensors"),
        ("spec", {"teacher_checkpoints": "0.5,checkpoint-999"}, TrajectoryError, "checkpoint-999"),
        ("weights", {"teacher_weights": [1.0, 2.0, 3.0]}, ValueError, "teacher_weights has 3 values"),
        ("label_space", {"student_labels": 7}, TeacherLoadError, "predict over 4 .* student over 7"),
        ("no_teacher", {"teacher": None}, ValueError, "No teacher"),
    ],
)
def test_bad_input_raises_before_writing(text_teacher, text_data, tmp_path, case, config, error, message):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    (tmp_path / "empty").mkdir()
    _break(run, case)
    config = dict(config)
    student = tiny_bert(hidden=16, layers=1)
    if "student_labels" in config:
        student.config.num_labels = config.pop("student_labels")
        student = type(student)(student.config)
    config.setdefault("teacher", str(run))
    if config["teacher"]:
        config["teacher"] = config["teacher"].format(tmp=tmp_path)
    config.setdefault("teacher_checkpoints", "0.5,last")
    out = tmp_path / "student_out"
    args = CheckpointDistillConfig(**trainer_args(out, max_steps=5, **config))
    with pytest.raises(error, match=message):
        CheckpointDistillTrainer(model=student, args=args, train_dataset=text_data[0])
    assert not out.exists()


def test_labels_needed_when_alpha_is_positive(lm_teacher, lm_data, tmp_path):
    unlabeled = lm_data[0].remove_columns("labels")
    with pytest.raises(ValueError, match=r"alpha=0.5 weights a hard-label term but no labels"):
        distill(tiny_gpt2(hidden=16, layers=1), lm_teacher, unlabeled, tmp_path / "s", alpha=0.5, max_steps=2)


def test_label_space_checked_for_model_init_students(text_teacher, text_data, tmp_path):
    def seven_labels():
        model = tiny_bert(hidden=16, layers=1)
        model.config.num_labels = 7
        return type(model)(model.config)

    out = tmp_path / "student_out"
    args = CheckpointDistillConfig(**trainer_args(out, teacher=text_teacher, max_steps=2))
    with pytest.raises(TeacherLoadError, match="student over 7"):
        CheckpointDistillTrainer(model_init=seven_labels, args=args, train_dataset=text_data[0])
    assert not out.exists()


def test_nan_teacher_logits_stop_training(text_data, tmp_path):
    teacher = tiny_bert()
    with torch.no_grad():
        teacher.classifier.bias.fill_(float("nan"))
    teacher.save_pretrained(tmp_path / "teacher" / "checkpoint-5")
    student = tiny_bert(hidden=16, layers=1)
    before = weights(student)
    with pytest.raises(TeacherOutputError, match=r"checkpoint-5.*teacher step 5.*student step 0"):
        distill(
            student,
            str(tmp_path / "teacher"),
            text_data[0],
            tmp_path / "s",
            teacher_checkpoints="last",
            max_steps=5,
            save_strategy="no",
        )
    assert_same_weights(before, weights(student), atol=0)
