"""Teacher schedules: active() over a run, bad input, lazy teachers in the trainer, exact resume, and the
sparse-parity sandbox (experiments/sparse_parity.py --quick)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import weakref
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import trainer_args
from datasets import Dataset
from safetensors.torch import load_file
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, Trajectory
from hf_ckd.schedules import (
    AnchorSchedule,
    ProgressiveSchedule,
    ScheduleError,
    StaticSchedule,
    check_resume_state,
    schedule_from_args,
)
from hf_ckd.trajectory import Checkpoint

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def trajectory(steps) -> Trajectory:
    return Trajectory(
        [Checkpoint(name=f"checkpoint-{s}", path=f"/nowhere/checkpoint-{s}", step=s) for s in steps],
        "/nowhere",
    )


def indices(schedule, max_steps: int) -> list[int]:
    """Position in schedule.checkpoints of the checkpoint teaching each step of a run."""
    out = []
    for step in range(max_steps):
        (checkpoint, weight), *rest = schedule.active(step, max_steps)
        assert not rest and weight == 1.0
        out.append(schedule.checkpoints.index(checkpoint))
    return out


# ---- active() ---------------------------------------------------------------------------------------


def test_teacher_time_pace_by_hand():
    # After s steps the step being taken is s + 1; teacher time (s + 1) * 400 / 8 = 50 (s + 1); the first
    # checkpoint with step >= that teaches.
    even = ProgressiveSchedule(trajectory([100, 200, 300, 400]).select("all"))
    assert indices(even, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    # Uneven checkpoints, coarse student: teacher time 100 (s + 1) skips checkpoints 10 and 20 entirely.
    uneven = ProgressiveSchedule(trajectory([10, 20, 200, 1000]).select("all"))
    assert indices(uneven, 10) == [2, 2] + [3] * 8
    # time_scale=1: the teacher's own pace, then the last checkpoint to the end of a longer run.
    own_pace = ProgressiveSchedule(trajectory([100, 200, 300, 400]).select("all"), time_scale=1.0)
    run = indices(own_pace, 1000)
    assert run[:100] == [0] * 100 and run[100:200] == [1] * 100 and run[300:400] == [3] * 100
    assert set(run[400:]) == {3}
    # time_scale=2.5 squeezes: step s + 1 is teacher time ceil(2.5 (s + 1)).
    squeezed = indices(
        ProgressiveSchedule(trajectory([100, 200, 300, 400]).select("all"), time_scale=2.5), 200
    )
    assert squeezed[39] == 0 and squeezed[40] == 1 and squeezed[79] == 1 and squeezed[80] == 2
    assert squeezed[159:] == [3] * 41


def test_equal_pace_and_boundaries_by_hand():
    checkpoints = trajectory([10, 20, 30]).select("all")
    # equal: checkpoint i teaches while (s + 1) / max_steps lies in (i/3, (i+1)/3].
    equal = ProgressiveSchedule(checkpoints, pace="equal")
    assert indices(equal, 10) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert equal.shares(10) == pytest.approx(
        {"checkpoint-10": 0.3, "checkpoint-20": 0.3, "checkpoint-30": 0.4}
    )
    # boundaries: checkpoint i teaches while (s + 1) / max_steps <= boundaries[i].
    bounded = ProgressiveSchedule(checkpoints, boundaries=[0.25, 0.5])
    assert indices(bounded, 8) == [0, 0, 1, 1, 2, 2, 2, 2]
    # k-shot = progressive over k listed checkpoints (the paper's 2-shot: one from the transition, then the last).
    two_shot = ProgressiveSchedule(trajectory([100, 200, 300]).select("0.67,last"), boundaries=[0.1])
    assert indices(two_shot, 100) == [0] * 10 + [1] * 90
    assert [c.name for c in two_shot.checkpoints] == ["checkpoint-200", "checkpoint-300"]


def test_anchor_schedule_picks_equal_interval_anchors():
    traj = trajectory(range(100, 1001, 100))  # 10 checkpoints
    anchors = AnchorSchedule(traj.select("all"), num_anchors=4)
    # anchor i of 4 is checkpoint ceil(i * 10 / 4) - 1: positions 2, 4, 7, 9
    assert [c.step for c in anchors.checkpoints] == [300, 500, 800, 1000]
    assert indices(anchors, 8) == [0, 0, 1, 1, 2, 2, 3, 3]  # RCO: equal shares by default
    assert AnchorSchedule(traj.select("all"), num_anchors=10).checkpoints == list(traj)
    listed = AnchorSchedule(traj.select("0.3,0.6,last"))  # no num_anchors: the list is the anchors
    assert [c.step for c in listed.checkpoints] == [300, 600, 1000]
    assert (
        AnchorSchedule(traj.select("all"), num_anchors=2, pace="teacher_time").active(0, 10)[0][0].step == 500
    )


def test_static_schedule_is_the_ensemble():
    traj = trajectory([10, 20, 30])
    static = StaticSchedule(traj.select("0.67,0.67,last"))
    active = static.active(5, 10)
    assert [c.name for c, _ in active] == ["checkpoint-20", "checkpoint-30"]
    assert [w for _, w in active] == pytest.approx([2 / 3, 1 / 3])
    weighted = StaticSchedule(traj.select("first,last"), weights=[1, 3])
    assert [w for _, w in weighted.active(0, 1)] == pytest.approx([0.25, 0.75])


SCHEDULES = {
    "static": lambda t: StaticSchedule(t.select("all")),
    "progressive": lambda t: ProgressiveSchedule(t.select("all")),
    "progressive-own-pace": lambda t: ProgressiveSchedule(t.select("all"), time_scale=1.0),
    "progressive-equal": lambda t: ProgressiveSchedule(t.select("all"), pace="equal"),
    "progressive-boundaries": lambda t: ProgressiveSchedule(
        t.select("all"), boundaries=[0.1, 0.2, 0.5, 0.55]
    ),
    "two-shot": lambda t: ProgressiveSchedule(t.select("0.5,last"), boundaries=[0.05]),
    "anchors": lambda t: AnchorSchedule(t.select("all"), num_anchors=3),
}


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("max_steps", [1, 7, 100, 1000])
def test_every_schedule_over_a_run(name, max_steps):
    schedule = SCHEDULES[name](trajectory([50, 100, 150, 200, 250]))
    previous = -1
    for step in range(max_steps):
        active = schedule.active(step, max_steps)
        assert sum(w for _, w in active) == pytest.approx(1.0)
        assert all(w > 0 for _, w in active)
        position = max(schedule.checkpoints.index(c) for c, _ in active)
        assert position >= previous, "a schedule walks the trajectory forwards"
        previous = position
    last = [c for c, _ in schedule.active(max_steps - 1, max_steps)]
    if name == "progressive-own-pace" and max_steps < 250:  # at the teacher's pace, a short run stops early
        assert schedule.checkpoints[-1] not in last
    else:
        assert schedule.checkpoints[-1] in last, "every schedule ends on the last checkpoint"
    # segments() agrees with active() at every step and covers the run without gaps.
    pieces = schedule.segments(max_steps)
    assert pieces[0][0] == 0 and pieces[-1][1] == max_steps
    assert all(a[1] == b[0] for a, b in pairwise(pieces))
    for start, end, active in pieces:
        for step in {start, end - 1, (start + end) // 2}:
            assert schedule.active(step, max_steps) == active
    assert sum(schedule.shares(max_steps).values()) == pytest.approx(1.0)
    if name in ("progressive-equal", "anchors") and max_steps >= len(schedule.checkpoints):
        assert all(share > 0 for share in schedule.shares(max_steps).values())


def test_identity_survives_json_and_tells_schedules_apart():
    traj = trajectory([10, 20, 30])
    schedule = ProgressiveSchedule(traj.select("all"), boundaries=[0.2, 0.7])
    saved = json.loads(json.dumps({"schedule": schedule.identity()}))
    check_resume_state(saved, schedule)  # the same schedule: accepted
    for other in (
        ProgressiveSchedule(traj.select("all"), boundaries=[0.2, 0.6]),
        ProgressiveSchedule(traj.select("all"), pace="equal"),
        AnchorSchedule(traj.select("all"), boundaries=[0.2, 0.7]),
        ProgressiveSchedule(trajectory([10, 20, 40]).select("all"), boundaries=[0.2, 0.7]),
    ):
        with pytest.raises(ScheduleError, match="resume_from_checkpoint"):
            check_resume_state(saved, other)


# ---- bad input --------------------------------------------------------------------------------------

FOUR = trajectory([10, 20, 30, 40])


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.5, 0.3, 0.8]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.2, 0.2, 0.8]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.0, 0.5, 0.8]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.2, 0.5, 1.0]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[-0.1, 0.5, 0.8]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.5]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), boundaries=[0.2, 0.4, 0.6, 0.8]), "boundaries"),
        (lambda: ProgressiveSchedule(FOUR.select("last")), "checkpoints"),
        (lambda: ProgressiveSchedule(FOUR.select("last,first")), "checkpoints"),
        (lambda: ProgressiveSchedule(FOUR.select("first,first,last")), "checkpoints"),
        (lambda: ProgressiveSchedule([]), "checkpoints"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), pace="fast"), "pace"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), pace="equal", boundaries=[0.2, 0.5, 0.8]), "pace"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), pace="equal", time_scale=1.0), "time_scale"),
        (lambda: ProgressiveSchedule(FOUR.select("all"), time_scale=0.0), "time_scale"),
        (lambda: AnchorSchedule(FOUR.select("last")), "checkpoints"),
        (lambda: AnchorSchedule(FOUR.select("all"), num_anchors=5), "num_anchors"),
        (lambda: AnchorSchedule(FOUR.select("all"), num_anchors=1), "num_anchors"),
        (lambda: StaticSchedule(FOUR.select("first,last"), weights=[1.0]), "weights"),
        (lambda: StaticSchedule(FOUR.select("first,last"), weights=[0.0, 0.0]), "weights"),
    ],
)
def test_bad_schedule_arguments_are_named(build, argument):
    with pytest.raises(ScheduleError, match=argument) as err:
        build()
    assert err.value.argument == argument


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"teacher_schedule": "cyclic"}, "teacher_schedule"),
        ({"teacher_schedule": "progressive", "teacher_schedule_boundaries": [0.6, 0.3]}, "teacher_schedule_boundaries"),
        ({"teacher_schedule": "progressive", "teacher_schedule_boundaries": [0.5, 1.5]}, "teacher_schedule_boundaries"),
        ({"teacher_schedule": "progressive", "teacher_schedule_boundaries": "0.2,x"}, "teacher_schedule_boundaries"),
        ({"teacher_schedule": "progressive", "teacher_schedule_pace": "slow"}, "teacher_schedule_pace"),
        ({"teacher_schedule": "progressive", "teacher_schedule_time_scale": -1.0}, "teacher_schedule_time_scale"),
        ({"teacher_schedule": "progressive", "teacher_schedule_pace": "equal", "teacher_schedule_time_scale": 1.0},
         "teacher_schedule_time_scale"),
        ({"teacher_schedule": "progressive", "teacher_schedule_pace": "equal",
          "teacher_schedule_boundaries": [0.5]}, "teacher_schedule_boundaries"),
        ({"teacher_schedule": "anchors", "teacher_num_anchors": 1}, "teacher_num_anchors"),
        ({"teacher_schedule": "progressive", "teacher_num_anchors": 3}, "teacher_num_anchors"),
        ({"teacher_schedule": "progressive", "teacher_weights": [1.0, 2.0]}, "teacher_weights"),
        ({"teacher_schedule_boundaries": [0.5]}, "teacher_schedule_boundaries"),  # static
        ({"teacher_num_anchors": 3}, "teacher_num_anchors"),  # static
    ],
)  # fmt: skip
def test_config_names_the_bad_schedule_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        CheckpointDistillConfig(output_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_schedule_fields_from_the_command_line_and_the_recipes(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--teacher_schedule", "progressive", "--teacher_checkpoints", "all",
            "--teacher_schedule_boundaries", "0.2", "0.6", "--temperature", "1"]  # fmt: skip
    (args,) = HfArgumentParser(CheckpointDistillConfig).parse_args_into_dataclasses(argv)
    assert (args.teacher_schedule, args.teacher_schedule_boundaries) == ("progressive", [0.2, 0.6])
    schedule = schedule_from_args(args, trajectory([10, 20, 30]).select(args.teacher_checkpoints))
    assert isinstance(schedule, ProgressiveSchedule) and schedule.boundaries == [0.2, 0.6]
    with pytest.raises(ScheduleError, match="teacher_schedule_boundaries"):  # 2 boundaries need 3 checkpoints
        schedule_from_args(args, trajectory([10, 20, 30, 40]).select("all"))
    with pytest.raises(ScheduleError, match="teacher_checkpoints"):
        schedule_from_args(args, trajectory([10, 20, 30]).select("last"))
    # Every distill recipe parses its config through HfArgumentParser: the fields reach its trainer.
    text = load_recipe("distill_text").make_parser()
    cifar = load_recipe("distill_cifar100")
    image = HfArgumentParser((cifar.StudentArguments, cifar.ImageDataArguments, cifar.CifarDistillConfig))
    for parser, required in (
        (text, ["--student_model_name_or_path", "s", "--dataset_path", "d"]),
        (image, []),
    ):
        *_, config = parser.parse_args_into_dataclasses([*argv, *required])
        assert (config.teacher_schedule, config.teacher_schedule_boundaries) == ("progressive", [0.2, 0.6])


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# ---- the trainer: lazy teachers, logging, resume -----------------------------------------------------

N_BITS = 10


class MLP(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.hidden = nn.Linear(N_BITS, width)
        self.out = nn.Linear(width, 2)

    def forward(self, x, labels=None):
        logits = self.out(torch.relu(self.hidden(x)))
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def teacher_mlp() -> MLP:
    return MLP(64)


@pytest.fixture(scope="module")
def parity_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (1024, N_BITS), generator=generator).float() * 2 - 1
    labels = ((x[:, :2].prod(1) + 1) / 2).long()
    return Dataset.from_dict({"x": x.numpy(), "labels": labels.numpy()}).with_format("torch")


def train_mlp_teacher(folder, data, save_steps: int) -> str:
    torch.manual_seed(0)
    args = TrainingArguments(
        **trainer_args(folder, learning_rate=0.1, optim="sgd", max_steps=60, save_steps=save_steps),
        save_strategy="steps",
        save_only_model=True,
    )
    Trainer(model=teacher_mlp(), args=args, train_dataset=data).train()
    return str(folder)


@pytest.fixture(scope="module")
def mlp_teacher(parity_data, tmp_path_factory):
    return train_mlp_teacher(tmp_path_factory.mktemp("mlp_teacher") / "run", parity_data, save_steps=10)


@pytest.fixture(scope="module")
def other_teacher(parity_data, tmp_path_factory):
    return train_mlp_teacher(tmp_path_factory.mktemp("other_teacher") / "run", parity_data, save_steps=15)


def student_config(output_dir, teacher, **overrides) -> CheckpointDistillConfig:
    config = trainer_args(
        output_dir, learning_rate=0.1, optim="sgd", max_steps=30, save_steps=13, logging_steps=5
    )
    config.update(teacher=teacher, teacher_checkpoints="all", teacher_schedule="progressive", alpha=0.0)
    config.update(temperature=1.0, per_device_train_batch_size=16)
    config.update(overrides)
    return CheckpointDistillConfig(**config)


def distil(args, data, callbacks=(), resume=None, **kwargs) -> CheckpointDistillTrainer:
    torch.manual_seed(1)
    trainer = CheckpointDistillTrainer(
        model=MLP(16),
        args=args,
        train_dataset=data,
        teacher_model_init=teacher_mlp,
        callbacks=list(callbacks),
        **kwargs,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class ResidentTeachers(TrainerCallback):
    """Weak references to every teacher module seen; the most alive at once after any step."""

    def __init__(self):
        self.trainer = None
        self.seen: list[weakref.ref] = []  # not keyed by id(): a freed model's address can be reused
        self.most_alive = 0

    def on_step_end(self, args, state, control, **kwargs):
        for model in self.trainer.teachers.models:
            if not any(ref() is model for ref in self.seen):
                self.seen.append(weakref.ref(model))
        alive = sum(ref() is not None for ref in self.seen)
        self.most_alive = max(self.most_alive, alive)


def test_lazy_teachers_keep_only_the_active_checkpoint(mlp_teacher, parity_data, tmp_path):
    resident = ResidentTeachers()
    torch.manual_seed(1)
    args = student_config(tmp_path / "student", mlp_teacher, save_strategy="no")
    trainer = CheckpointDistillTrainer(
        model=MLP(16),
        args=args,
        train_dataset=parity_data,
        teacher_model_init=teacher_mlp,
        callbacks=[resident],
    )
    assert len(trainer.teachers.models) == 1  # not the six checkpoints of the trajectory
    resident.trainer = trainer
    trainer.train()
    assert len(resident.seen) == 6, "every checkpoint taught, each loaded once"
    assert resident.most_alive == 1, "a checkpoint left behind is freed before the next one is loaded"
    # Switches are logged: when each checkpoint took over, in trajectory order (teacher time 2 steps per step).
    switches = [(e["step"], e["teacher/checkpoint"], e["teacher/step"]) for e in trainer.state.log_history
                if "teacher/checkpoint" in e]  # fmt: skip
    assert switches == [(5 * i, f"checkpoint-{10 * (i + 1)}", 10 * (i + 1)) for i in range(6)]
    lineage = trainer.lineage
    assert [c["name"] for c in lineage["checkpoints"]] == [f"checkpoint-{s}" for s in range(10, 61, 10)]
    assert sum(c["weight"] for c in lineage["checkpoints"]) == pytest.approx(1.0, abs=1e-5)  # rounded to 1e-6
    assert lineage["schedule"]["kind"] == "progressive" and len(lineage["schedule"]["segments"]) == 6


def test_schedule_object_and_anchors(mlp_teacher, parity_data, tmp_path):
    schedule = AnchorSchedule(Trajectory.from_local(mlp_teacher).select("all"), num_anchors=3)
    args = student_config(tmp_path / "student", None, teacher_schedule="static", save_strategy="no")
    trainer = distil(args, parity_data, teacher_schedule=schedule)
    taught = [e["teacher/checkpoint"] for e in trainer.state.log_history if "teacher/checkpoint" in e]
    assert taught == ["checkpoint-20", "checkpoint-40", "checkpoint-60"]


def weights_of(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_resume_after_a_switch_reaches_the_same_student(
    restore_callbacks, mlp_teacher, parity_data, tmp_path
):
    full = distil(student_config(tmp_path / "full", mlp_teacher), parity_data)
    saved = json.loads((tmp_path / "full" / "checkpoint-13" / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["TeacherScheduleCallback"]["args"]
    assert state["active"] == ["checkpoint-30"] and state["since"] == 10  # switched twice before step 13
    assert state["schedule"]["kind"] == "progressive" and len(state["schedule"]["checkpoints"]) == 6
    resumed = distil(
        # restore_callback_states_from_checkpoint=True makes Trainer rebuild the callback from its saved state
        student_config(
            tmp_path / "resumed", mlp_teacher, restore_callback_states_from_checkpoint=restore_callbacks
        ),
        parity_data,
        resume=str(tmp_path / "full" / "checkpoint-13"),
    )
    for name, value in weights_of(full).items():
        torch.testing.assert_close(weights_of(resumed)[name], value, rtol=0, atol=1e-7)
    # The resumed run reloaded the active checkpoint at step 13, then followed the schedule.
    after = [(e["step"], e["teacher/checkpoint"]) for e in resumed.state.log_history if "teacher/step" in e]
    assert after[-4:] == [
        (13, "checkpoint-30"),
        (15, "checkpoint-40"),
        (20, "checkpoint-50"),
        (25, "checkpoint-60"),
    ]
    later = json.loads((tmp_path / "resumed" / "checkpoint-26" / "trainer_state.json").read_text())
    state = later["stateful_callbacks"]["TeacherScheduleCallback"]
    assert not isinstance(state, list) and (state["args"]["active"], state["args"]["since"]) == (
        ["checkpoint-60"],
        25,
    )


@pytest.mark.parametrize("change", ["another trajectory", "another pace", "another checkpoint list"])
def test_resume_refused_for_another_trajectory_or_schedule(
    change, mlp_teacher, other_teacher, parity_data, tmp_path
):
    distil(student_config(tmp_path / "first", mlp_teacher, max_steps=13), parity_data)
    overrides = {
        "another trajectory": {"teacher": other_teacher},
        "another pace": {"teacher_schedule_pace": "equal"},
        "another checkpoint list": {"teacher_checkpoints": "0.5,last"},
    }[change]
    args = student_config(tmp_path / "second", overrides.pop("teacher", mlp_teacher), **overrides)
    torch.manual_seed(1)
    trainer = CheckpointDistillTrainer(
        model=MLP(16), args=args, train_dataset=parity_data, teacher_model_init=teacher_mlp
    )
    checkpoint = tmp_path / "first" / "checkpoint-13"
    with pytest.raises(ScheduleError, match="resume_from_checkpoint") as err:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert "another teacher schedule or trajectory" in str(err.value)
    assert trainer.state.global_step == 13, "refused before the first step"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in weights_of(trainer).items()), "loaded, never updated"
    assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"teacher_checkpoints": "last"}, ScheduleError, "teacher_checkpoints"),
        ({"teacher_schedule_boundaries": [0.5]}, ScheduleError, "teacher_schedule_boundaries"),
        ({"teacher_schedule": "anchors", "teacher_num_anchors": 7}, ScheduleError, "teacher_num_anchors"),
    ],
)
def test_bad_schedule_fails_before_writing(mlp_teacher, parity_data, tmp_path, overrides, error, message):
    args = student_config(tmp_path / "student", mlp_teacher, **overrides)
    with pytest.raises(error, match=message):
        CheckpointDistillTrainer(
            model=MLP(16), args=args, train_dataset=parity_data, teacher_model_init=teacher_mlp
        )
    assert not (tmp_path / "student").exists()


def test_ready_teachers_and_a_schedule_are_refused(mlp_teacher, parity_data, tmp_path):
    from hf_ckd import TeacherEnsemble

    teachers = TeacherEnsemble.from_trajectory(
        Trajectory.from_local(mlp_teacher), "last", model_init=teacher_mlp
    )
    with pytest.raises(ValueError, match="teacher_schedule"):
        CheckpointDistillTrainer(
            model=MLP(16),
            args=student_config(tmp_path / "s", None),
            train_dataset=parity_data,
            teachers=teachers,
        )


# ---- the sandbox ------------------------------------------------------------------------------------

ROW = re.compile(r"^\| (?P<arm>[^|]+?) \| (?P<s95>[^|]+?) \| (?P<s99>[^|]+?) \| (?P<seeds>[^|]+?) \|$")
CELL = re.compile(r"^(not reached in budget \([\d,]+ steps\)|[\d,]+ ± [\d,]+ \(\d/\d reached\))$")


@pytest.mark.slow
def test_sparse_parity_quick_end_to_end(tmp_path):
    path = Path(__file__).resolve().parents[1] / "experiments" / "sparse_parity.py"
    spec = importlib.util.spec_from_file_location("sparse_parity", path)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(recipe)
    out = tmp_path / "sandbox"
    results = recipe.main(
        ["--output_dir", str(out), "--quick", "--tau_sweep", "2", "--sweep_arms", "one_shot"]
    )
    for name in ("results.md", "results.json", "accuracy.png", "curriculum.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rows = [m.groupdict() for line in (out / "results.md").read_text().splitlines() if (m := ROW.match(line))]
    table = {r["arm"]: r for r in rows if r["arm"] not in ("arm", "---")}
    expected = {recipe.arm_label(a, None if a == "labels" else 1.0) for a in recipe.ARMS}
    assert expected | {recipe.arm_label("one_shot", 2.0)} == set(table)
    for row in table.values():
        assert CELL.match(row["s95"]) and CELL.match(row["s99"]), row
        assert len(row["seeds"].split(", ")) == 3  # three seeds
    # The json holds the same runs: 3 seeds x (4 arms + one swept arm), every curve inside the budget.
    assert len(results["students"]) == 15 == len(json.loads((out / "results.json").read_text())["students"])
    for run in results["students"]:
        assert run["curve"] and run["curve"][-1][0] <= 200
        reached = run["reached"]["0.99"]
        assert reached is None or any(s == reached and a >= 0.99 for s, a in run["curve"])
    progressive = [r for r in results["students"] if r["arm"] == "progressive"]
    assert all(list(r["teacher_switches"][0]) == [0, "checkpoint-16"] for r in progressive)
    for teacher in results["teachers"].values():
        assert len(teacher["checkpoints"]) == 10 and len(teacher["checkpoints"][0]["single_in"]) == 2


@pytest.mark.slow
def test_distill_cifar100_recipe_walks_the_trajectory(tmp_path):
    """The image recipe builds its teachers itself: with a schedule it hands the trainer the schedule."""
    import datasets
    from test_recipes_image import COMMON, cifar_like

    data = str(tmp_path / "data")
    datasets.DatasetDict({"train": cifar_like(64), "test": cifar_like(16, seed=1)}).save_to_disk(data)
    teacher = str(tmp_path / "teacher")
    load_recipe("train_teacher").main(
        ["--model_name", "cifar_resnet20", "--dataset_path", data, "--output_dir", teacher, "--max_steps", "6",
         "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--lr_decay_epochs", "", *COMMON]
    )  # fmt: skip
    out = tmp_path / "student"
    load_recipe("distill_cifar100").main(
        ["--teacher", teacher, "--teacher_checkpoints", "all", "--teacher_schedule", "progressive",
         "--student_model", "cifar_resnet20", "--dataset_path", data, "--output_dir", str(out), "--max_steps", "6",
         "--save_strategy", "no", "--eval_strategy", "no", "--alpha", "0.5", "--logging_steps", "2", *COMMON]
    )  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    switches = [
        (e["step"], e["teacher/checkpoint"]) for e in state["log_history"] if "teacher/checkpoint" in e
    ]
    assert switches == [(0, "checkpoint-2"), (2, "checkpoint-4"), (4, "checkpoint-6")]
    lineage = state["stateful_callbacks"]["TeacherLineageCallback"]["args"]["lineage"]
    assert [c["name"] for c in lineage["checkpoints"]] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    card = (out / "README.md").read_text()  # the model card lists every checkpoint that taught
    assert all(f"checkpoint-{step}" in card for step in (2, 4, 6))
