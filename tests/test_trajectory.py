"""Trajectory discovery over real Trainer output dirs, checkpoint specs, and broken inputs."""

import json
import os
import shutil

import pytest
from conftest import tiny_bert

from hf_ckd import Trajectory, TrajectoryError


def test_real_trainer_output_dir(text_teacher):
    traj = Trajectory.from_local(text_teacher)
    assert [c.name for c in traj] == ["checkpoint-30", "checkpoint-60", "checkpoint-90", "checkpoint-120"]
    assert [c.step for c in traj] == [30, 60, 90, 120]
    assert traj.final_step == 120
    assert [c.fraction for c in traj] == [0.25, 0.5, 0.75, 1.0]
    # 1,024 examples / batch 32 = 32 steps per epoch.
    assert traj[1].epoch == pytest.approx(60 / 32)
    for c in traj:
        assert os.path.isdir(c.path)
        assert "eval_loss" in c.metrics, c.metrics
        assert c.source == text_teacher
    # Eval loss recorded at each checkpoint's own step falls as the teacher trains.
    assert traj[-1].metrics["eval_loss"] < traj[0].metrics["eval_loss"]


def test_at_picks_the_nearest_fraction(text_teacher):
    traj = Trajectory.from_local(text_teacher)
    assert traj.at(0.5).name == "checkpoint-60"
    assert traj.at(0.3).name == "checkpoint-30"
    assert traj.at(0.4).name == "checkpoint-60"
    assert traj.at(0.0).name == "checkpoint-30"
    assert traj.at(1.0).name == "checkpoint-120"
    with pytest.raises(TrajectoryError, match="outside"):
        traj.at(1.2)


def test_select_spec_items(text_teacher):
    traj = Trajectory.from_local(text_teacher)
    names = lambda spec: [c.name for c in traj.select(spec)]  # noqa: E731
    assert names("0.3,0.5,last") == ["checkpoint-30", "checkpoint-60", "checkpoint-120"]
    assert names("first, step:90") == ["checkpoint-30", "checkpoint-90"]
    assert names(["checkpoint-60", 1.0]) == ["checkpoint-60", "checkpoint-120"]
    assert names("all") == traj.names
    assert names("0.5,0.55") == [
        "checkpoint-60",
        "checkpoint-60",
    ]  # duplicates kept; the ensemble merges them


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("checkpoint-999", "checkpoint-999"),
        ("step:999", "No checkpoint at step 999"),
        ("step:abc", "step:<integer>"),
        ("1.5", "step:1.5"),
        ("", "Empty checkpoint spec"),
        ("middle", "matches nothing"),
    ],
)
def test_select_errors_name_the_item(text_teacher, spec, message):
    with pytest.raises(TrajectoryError, match=message):
        Trajectory.from_local(text_teacher).select(spec)


def test_explicit_list_of_checkpoint_dirs(text_teacher):
    paths = [os.path.join(text_teacher, "checkpoint-90"), os.path.join(text_teacher, "checkpoint-30")]
    traj = Trajectory.from_local(paths)
    assert [c.step for c in traj] == [30, 90]
    assert [c.fraction for c in traj] == [pytest.approx(1 / 3), 1.0]


def test_single_model_folder_is_a_one_checkpoint_run(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "model")
    traj = Trajectory.from_local(tmp_path / "model")
    assert len(traj) == 1 and traj[0].fraction == 1.0
    assert traj.select("0.5")[0] is traj[0]  # "0.5" on a one-checkpoint run is fine
    with pytest.raises(TrajectoryError, match="checkpoint-999"):
        traj.select("checkpoint-999")


def test_missing_path_file_and_empty_dir(tmp_path):
    with pytest.raises(TrajectoryError, match=r"does not exist.*output_dir"):
        Trajectory.from_local(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TrajectoryError, match="is a file"):
        Trajectory.from_local(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrajectoryError, match=r"No checkpoints in .*save_strategy"):
        Trajectory.from_local(tmp_path / "empty")
    with pytest.raises(TrajectoryError, match="does not exist"):
        Trajectory.from_local([str(tmp_path / "nope")])


def test_malformed_trainer_state_names_the_file(text_teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    state = run / "checkpoint-60" / "trainer_state.json"
    state.write_text("{not json")
    with pytest.raises(TrajectoryError, match=r"checkpoint-60.*trainer_state\.json.*not valid JSON"):
        Trajectory.from_local(run)


def test_step_from_trainer_state_when_names_disagree(text_teacher, tmp_path):
    """global_step in trainer_state.json is authoritative; two folders at one step are refused."""
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    state_path = run / "checkpoint-60" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["global_step"] = 30
    state_path.write_text(json.dumps(state))
    with pytest.raises(TrajectoryError, match="several checkpoints at step"):
        Trajectory.from_local(run)


def test_ties_go_to_the_earlier_checkpoint_despite_float_error():
    from hf_ckd import Checkpoint

    traj = Trajectory(
        [Checkpoint(name=f"checkpoint-{s}", path="/x", step=s) for s in (30, 50, 70)], final_step=100
    )
    assert [c.fraction for c in traj] == [0.3, 0.5, 0.7]
    assert traj.at(0.4).name == "checkpoint-30"  # 0.4 - 0.3 and 0.5 - 0.4 differ in floating point
    assert traj.at(0.6).name == "checkpoint-50"
