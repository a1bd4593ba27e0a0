"""Teachers that would teach garbage are refused before any step: checkpoints missing weights, checkpoints of
another shape among a trajectory's, and the pickle opt-in that must really work (docs/security.md)."""

import os
import shutil

import pytest
import torch
from conftest import StateDict, tiny_bert, trainer_args
from safetensors.torch import load_file, save_file

from hf_ckd import (
    CheckpointDistillConfig,
    CheckpointDistillTrainer,
    TeacherEnsemble,
    TeacherLoadError,
    Trajectory,
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
