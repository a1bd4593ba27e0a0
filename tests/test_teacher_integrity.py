"""Teachers that would teach garbage are refused before any step: checkpoints missing weights, checkpoints of
another shape among a trajectory's, a selection file of another run; the pickle opt-in really works; a NaN
student stops before its update; teachers passed the TRL way (docs/security.md, docs/trainer.md)."""

import json
import os
import shutil

import pytest
import torch
from conftest import StateDict, tiny_bert, trainer_args
from safetensors.torch import load_file, save_file

from hf_ckd import (
    CheckpointDistillConfig,
    CheckpointDistillTrainer,
    StudentOutputError,
    TeacherEnsemble,
    TeacherLoadError,
    Trajectory,
    TrajectoryError,
)


def _drop(checkpoint, prefix: str) -> None:
    path = os.path.join(checkpoint, "model.safetensors")
    state = {k: v for k, v in load_file(path).items() if not k.startswith(prefix)}
    save_file(state, path, metadata={"format": "pt"})


def _trainer(tmp_path, teacher, text_data, **overrides):
    args = CheckpointDistillConfig(
        **trainer_args(tmp_path / "student", teacher=str(teacher), max_steps=4, **overrides)
    )
    return CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
    )


def test_a_checkpoint_missing_its_classifier_is_refused_alone(text_teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    _drop(run / "checkpoint-120", "classifier.")
    with pytest.raises(
        TeacherLoadError,
        match=r"checkpoint-120.*2 tensor\(s\) missing \(classifier.bias, classifier.weight\)",
    ):
        TeacherEnsemble.from_trajectory(Trajectory.from_local(run), "last")


@pytest.mark.parametrize(
    "overrides",
    [
        {"teacher_checkpoints": "0.5,last"},
        {"teacher_checkpoints": "all", "teacher_schedule": "progressive"},
    ],
    ids=["snapshot", "progressive"],
)
def test_a_later_checkpoint_missing_weights_is_refused_before_training(
    overrides, text_teacher, text_data, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    _drop(run / "checkpoint-120", "classifier.")  # the last one: active only at the end of a progressive run
    with pytest.raises(
        TeacherLoadError,
        match=r"'checkpoint-120'.*lacks 2 tensor\(s\) \(classifier.bias, classifier.weight\)",
    ):
        _trainer(tmp_path, run, text_data, **overrides)
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {"teacher_checkpoints": "0.5,last"},
        {"teacher_checkpoints": "all", "teacher_schedule": "progressive"},
    ],
    ids=["snapshot", "progressive"],
)
def test_a_checkpoint_of_another_size_is_refused(overrides, text_teacher, text_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    wider = tiny_bert(hidden=32, layers=1)  # same class, same label space, another hidden size
    os.remove(run / "checkpoint-90" / "model.safetensors")
    wider.save_pretrained(run / "checkpoint-90")  # its trainer_state.json (step 90) stays
    overrides = (
        {**overrides, "teacher_checkpoints": "checkpoint-90,last"}
        if "teacher_schedule" not in overrides
        else overrides
    )
    with pytest.raises(TeacherLoadError, match=r"'checkpoint-90'.*of another shape"):
        _trainer(tmp_path, run, text_data, **overrides)
    assert not (tmp_path / "student").exists()


def test_unsafe_pickle_opt_in_loads_a_transformers_checkpoint(text_teacher, tmp_path):
    """A .bin that weights_only=True refuses (a dict subclass) is refused by default, with a message that
    names the flag, and loads when the user opts in; the weights are the checkpoint's own."""
    run = tmp_path / "run" / "checkpoint-1"
    run.mkdir(parents=True)
    source = os.path.join(text_teacher, "checkpoint-120")
    shutil.copy(os.path.join(source, "config.json"), run / "config.json")
    state = load_file(os.path.join(source, "model.safetensors"))
    torch.save(StateDict(state), run / "pytorch_model.bin")
    traj = Trajectory.from_local(tmp_path / "run")
    with pytest.raises(TeacherLoadError, match=r"needs full unpickling.*allow_unsafe_pickle=True"):
        TeacherEnsemble.from_trajectory(traj, "last")
    ensemble = TeacherEnsemble.from_trajectory(traj, "last", allow_unsafe_pickle=True)
    loaded = ensemble.models[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)


def test_a_selection_written_for_another_trajectory_is_refused(text_teacher, text_data, tmp_path):
    other = tmp_path / "other_run"
    shutil.copytree(text_teacher, other)  # same checkpoint names, another run
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"source": str(other), "selected": ["checkpoint-90"]}))
    with pytest.raises(
        TrajectoryError, match=r"written for trajectory '.*other_run', but this run's teacher is"
    ):
        _trainer(tmp_path, text_teacher, text_data, teacher_selection=str(selection))
    assert not (tmp_path / "student").exists()
    # The same run under another spelling of its path is the same trajectory.
    selection.write_text(json.dumps({"source": str(text_teacher) + "/", "selected": ["checkpoint-90"]}))
    trainer = _trainer(tmp_path, text_teacher, text_data, teacher_selection=str(selection))
    assert [c.name for c in trainer.teacher_source.checkpoints] == ["checkpoint-90"]


def test_a_student_whose_loss_turns_nan_stops_before_its_update(text_teacher, text_data, tmp_path):
    trainer = _trainer(tmp_path, text_teacher, text_data, teacher_checkpoints="last")
    student = trainer.model
    with torch.no_grad():
        student.classifier.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(StudentOutputError, match=r"The student's loss is nan at step 0"):
        trainer.train()
    after = student.state_dict()
    assert all(torch.allclose(before[k], after[k], equal_nan=True) for k in before)  # no update was applied
    assert trainer.state.global_step == 0


def test_teacher_model_the_trl_way(text_teacher, text_data, tmp_path):
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(os.path.join(text_teacher, "checkpoint-120"))
    args = CheckpointDistillConfig(**trainer_args(tmp_path / "a", max_steps=2))  # no teacher path configured
    trainer = CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0], teacher_model=teacher
    )
    assert trainer.teachers.models[0] is teacher and not teacher.training
    assert trainer.lineage["teacher"] == os.path.join(text_teacher, "checkpoint-120")
    trainer.train()
    assert trainer.state.global_step == 2
    # A path works as args.teacher does; two different teachers are refused before anything is loaded.
    args = CheckpointDistillConfig(**trainer_args(tmp_path / "b", max_steps=1))
    trainer = CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1),
        args=args,
        train_dataset=text_data[0],
        teacher_model=text_teacher,
    )
    assert trainer.lineage["teacher"] == text_teacher
    args = CheckpointDistillConfig(**trainer_args(tmp_path / "c", teacher=text_teacher, max_steps=1))
    with pytest.raises(ValueError, match="name two teachers"):
        CheckpointDistillTrainer(
            model=tiny_bert(hidden=16, layers=1),
            args=args,
            train_dataset=text_data[0],
            teacher_model="elsewhere",
        )
    assert not (tmp_path / "c").exists()


def test_a_static_run_resumed_with_other_teachers_is_refused(text_teacher, text_data, tmp_path):
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "run", teacher=text_teacher, teacher_checkpoints="last", max_steps=4, save_steps=2
        )
    )
    CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
    ).train()
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    record = saved["stateful_callbacks"]["TeacherScheduleCallback"]["args"]
    assert record["schedule"]["kind"] == "static" and record["schedule"]["checkpoints"] == [
        ["checkpoint-120", 120]
    ]
    for spec in ("0.5", "0.5,last"):  # another checkpoint; another ensemble
        args = CheckpointDistillConfig(
            **trainer_args(
                tmp_path / "run", teacher=text_teacher, teacher_checkpoints=spec, max_steps=4, save_steps=2
            )
        )
        trainer = CheckpointDistillTrainer(
            model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
        )
        with pytest.raises(
            ValueError, match=r"resume_from_checkpoint.*another teacher schedule or trajectory"
        ):
            trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
        assert trainer.state.global_step == 2  # stopped before its first step
    # The same teachers resume.
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "run", teacher=text_teacher, teacher_checkpoints="last", max_steps=4, save_steps=2
        )
    )
    trainer = CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert trainer.state.global_step == 4


def test_chunked_kd_is_honoured_without_labels(lm_teacher, tmp_path):
    """kd_loss='chunked' with alpha=0 and batches without labels runs the chunked loss (never full logits)
    and reaches the weights of kd_loss='full' on the same batches."""
    from conftest import tiny_gpt2
    from test_trainer import assert_same_weights, padded_lm_dataset, weights

    import hf_ckd.trainer

    train = padded_lm_dataset(16, 4).remove_columns("labels")
    calls = {"chunked": 0}
    real = hf_ckd.trainer.linear_distillation_loss

    def counting(*args, **kwargs):
        calls["chunked"] += 1
        return real(*args, **kwargs)

    results = {}
    for mode in ("full", "chunked"):
        student = tiny_gpt2(hidden=16, layers=1, seed=3)
        args = CheckpointDistillConfig(
            **trainer_args(
                tmp_path / mode, teacher=lm_teacher, temperature=2.0, alpha=0.0, kd_loss=mode, kd_chunk_size=5,
                max_steps=2, per_device_train_batch_size=4, optim="sgd", learning_rate=0.5, save_strategy="no",
                remove_unused_columns=False,
            )
        )  # fmt: skip
        trainer = CheckpointDistillTrainer(model=student, args=args, train_dataset=train)
        hf_ckd.trainer.linear_distillation_loss = counting
        try:
            trainer.train()
        finally:
            hf_ckd.trainer.linear_distillation_loss = real
        results[mode] = weights(student)
        if mode == "full":
            assert calls["chunked"] == 0
    assert calls["chunked"] == 2  # one per step: the mode chosen, not swapped for full logits
    assert_same_weights(results["full"], results["chunked"], atol=1e-5)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"global_step": "ten"}', "global_step='ten'"),
        ('{"global_step": 10, "epoch": "one"}', "epoch='one'"),
        ('{"global_step": 10, "log_history": {"eval_loss": 1}}', "log_history"),
        ("[1, 2]", "JSON list"),
    ],
)
def test_a_trainer_state_of_wrong_types_is_named(text_teacher, tmp_path, content, field):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    (run / "checkpoint-60" / "trainer_state.json").write_text(content)
    with pytest.raises(TrajectoryError, match=rf"checkpoint-60/trainer_state.json' (has|holds) .*{field}"):
        Trajectory.from_local(run)


@pytest.mark.parametrize(
    ("length", "top_id", "message"),
    [
        (20, 3, r"sequences of 20 tokens but the (student|teachers) embed\(s\) only 12 positions"),
        (12, 16, r"token id 16 but the (student|teachers) embed\(s\) ids 0..15"),
    ],
    ids=["positions", "vocabulary"],
)
def test_batches_beyond_the_models_inputs_are_named(lm_teacher, tmp_path, length, top_id, message):
    """Not an IndexError from inside an embedding: the batch is checked before any forward."""
    from conftest import tiny_gpt2
    from datasets import Dataset

    ids = torch.randint(0, 3, (8, length))
    ids[0, -1] = top_id
    data = Dataset.from_dict({"input_ids": ids, "labels": ids.clone()}).with_format("torch")
    args = CheckpointDistillConfig(**trainer_args(tmp_path / "s", teacher=lm_teacher, max_steps=2))
    student = tiny_gpt2(hidden=16, layers=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = CheckpointDistillTrainer(model=student, args=args, train_dataset=data)
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_later_scheduled_checkpoint_with_another_label_space_is_refused_up_front(
    text_teacher, text_data, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    other = tiny_bert(hidden=16, layers=1)
    other.config.num_labels = 7
    os.remove(run / "checkpoint-120" / "model.safetensors")
    type(other)(other.config).save_pretrained(run / "checkpoint-120")  # the last one, active at the end only
    with pytest.raises(TeacherLoadError, match=r"different label spaces.*'checkpoint-120': 7"):
        _trainer(tmp_path, run, text_data, teacher_checkpoints="all", teacher_schedule="progressive")
    assert not (tmp_path / "student").exists()


def test_pickle_weights_are_judged_from_their_opcodes_without_unpickling(tmp_path):
    """hf-ckd check and the up-front checks of a schedule read a pickle's opcodes: the globals that
    weights_only=True would refuse are named, a plain state dict (either torch.save format) has none, and
    nothing in the file runs."""
    import pickle
    from pathlib import Path

    from hf_ckd.teachers import unsafe_pickle_globals

    state = tiny_bert(hidden=16, layers=1).state_dict()
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save(StateDict(state), tmp_path / "subclass.bin")
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"weight": RunsCode()}, f)
    (tmp_path / "junk.bin").write_bytes(b"\x00not a pickle" * 8)
    assert unsafe_pickle_globals(str(tmp_path / "zip.bin")) == []
    assert unsafe_pickle_globals(str(tmp_path / "legacy.bin")) == []
    assert unsafe_pickle_globals(str(tmp_path / "subclass.bin")) == ["conftest.StateDict"]
    assert "pathlib.Path.touch" in unsafe_pickle_globals(str(tmp_path / "evil.bin"))
    assert unsafe_pickle_globals(str(tmp_path / "junk.bin")) == ["<not a pickle>"]
    assert not marker.exists()


def test_plain_training_arguments_are_converted_with_the_kd_defaults(text_teacher, text_data, tmp_path):
    """As TRL's trainers do: every TrainingArguments field kept, the KD fields at their defaults, named in a
    warning; the teacher then comes from teacher_model=."""
    from transformers import TrainingArguments

    plain = TrainingArguments(**trainer_args(tmp_path / "s", max_steps=2, learning_rate=1e-3, seed=7))
    with pytest.warns(
        UserWarning, match=r"plain TrainingArguments: converted .*temperature=4.0, alpha=0.5, beta=0.0"
    ):
        trainer = CheckpointDistillTrainer(
            model=tiny_bert(hidden=16, layers=1),
            args=plain,
            train_dataset=text_data[0],
            teacher_model=text_teacher,
        )
    args = trainer.args
    assert isinstance(args, CheckpointDistillConfig) and args.teacher == text_teacher
    assert (args.learning_rate, args.seed, args.max_steps, args.output_dir) == (
        1e-3,
        7,
        2,
        str(tmp_path / "s"),
    )
    assert (args.temperature, args.alpha, args.beta) == (4.0, 0.5, 0.0)
    trainer.train()
    assert trainer.state.global_step == 2
