"""Checkpoint scoring, representations, selection.json, and --teacher_selection in the trainer."""

import json

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_timm, trainer_args

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, Trajectory, TrajectoryError
from hf_ckd.selection import (
    SelectionError,
    extract_representation,
    read_selection,
    score_trajectory,
    select,
    teacher_spec,
    write_selection,
)


def text_batches(dataset, size=64):
    return [dataset[i : i + size] for i in range(0, len(dataset), size)]


def test_representations_have_the_shapes_the_head_reads(text_data):
    val = text_data[1]
    bert = tiny_bert(hidden=48).eval()
    features, logits, labels = extract_representation(bert, text_batches(val), "penultimate")
    assert features.shape == (256, 48) and logits.shape == (256, 4) and labels.shape == (256,)
    # The penultimate features are what the classifier reads: applying it gives the logits back.
    torch.testing.assert_close(bert.classifier(features), logits, atol=1e-5, rtol=1e-5)
    probs, _, _ = extract_representation(bert, text_batches(val), "probs", temperature=2.0)
    torch.testing.assert_close(probs, torch.softmax(logits / 2.0, -1))
    timm_model = tiny_timm().eval()
    batch = [{"pixel_values": torch.randn(8, 1, 16, 16), "labels": torch.arange(8) % 10}]
    features, logits, _ = extract_representation(timm_model, batch, "penultimate")
    assert features.shape == (8, timm_model.timm_model.num_features)


def test_token_level_models_are_refused():
    batch = [{"input_ids": torch.randint(0, 16, (4, 12)), "labels": torch.randint(0, 16, (4, 12))}]
    with pytest.raises(SelectionError, match="one prediction per example"):
        extract_representation(tiny_gpt2().eval(), batch, "logits")
    with pytest.raises(SelectionError, match="representation must be one of"):
        extract_representation(tiny_gpt2().eval(), batch, "attention")


def test_score_trajectory_rows_and_selection(text_teacher, text_data):
    traj = Trajectory.from_local(text_teacher)
    rows = score_trajectory(traj, text_batches(text_data[1]), estimator="kde", progress=False)
    assert [r["name"] for r in rows] == traj.names
    for row in rows:
        assert 0 <= row["accuracy"] <= 1
        assert 0 <= row["i_xf_norm"] <= 1 + 1e-12 and 0 <= row["i_yf_norm"] <= 1 + 1e-12
        assert row["score"] == pytest.approx(row["i_xf_norm"] + row["i_yf_norm"])
        assert row["i_yf"] <= row["i_xf"] + 1e-6  # I(T;Y) <= I(T;X) (data processing)
    assert max(r["i_xf_norm"] for r in rows) == pytest.approx(1.0)
    # Accuracy rises along the run (the teacher learns).
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    best = max(rows, key=lambda r: r["score"])["name"]
    assert select(rows, k=1) == [best]
    assert len(select(rows, k=2)) == 2
    # A datasets.Dataset is batched by score_trajectory itself, with the same result.
    same = score_trajectory(traj, text_data[1], estimator="kde", progress=False, batch_size=64)
    assert [r["score"] for r in same] == pytest.approx([r["score"] for r in rows])
    with pytest.raises(SelectionError, match="k=9"):
        select(rows, k=9)


def test_probe_set_checks(text_teacher, text_data):
    traj = Trajectory.from_local(text_teacher)
    one_class = text_data[1].filter(lambda row: row["labels"] == 0)
    with pytest.raises(SelectionError, match="1 class"):
        score_trajectory(traj, text_batches(one_class), progress=False)
    with pytest.raises(SelectionError, match="at least 20"):
        score_trajectory(traj, text_batches(text_data[1].select(range(8))), progress=False)
    with pytest.raises(SelectionError, match="Unknown estimator"):
        score_trajectory(traj, text_batches(text_data[1]), estimator="magic", progress=False)


def test_selection_file_roundtrip_and_errors(text_teacher, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    rows = [
        {"name": c.name, "step": c.step, "score": s, "saturation_x": 0.5, "saturation_y": 0.5}
        for c, s in zip(traj, [0.2, 1.9, 1.5, 1.0])
    ]
    path = tmp_path / "selection.json"
    content = write_selection(str(path), traj, rows, select(rows, 2), "kde", "penultimate", {"samples": 256})
    assert content["selected"] == ["checkpoint-60", "checkpoint-90"]
    assert read_selection(str(path), traj) == ["checkpoint-60", "checkpoint-90"]
    assert json.loads(path.read_text())["source"] == text_teacher

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"source": "runs/elsewhere", "selected": ["checkpoint-7"]}))
    with pytest.raises(TrajectoryError, match=r"runs/elsewhere.*checkpoint-7"):
        read_selection(str(other), traj)
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    with pytest.raises(SelectionError, match="not valid JSON"):
        read_selection(str(broken), traj)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"selected": []}))
    with pytest.raises(SelectionError, match="no 'selected'"):
        read_selection(str(empty), traj)
    with pytest.raises(SelectionError, match="does not exist"):
        read_selection(str(tmp_path / "missing.json"), traj)


def test_saturated_scores_warn(text_teacher, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    rows = [
        {"name": c.name, "step": c.step, "score": 2.0, "saturation_x": 1.0, "saturation_y": 0.999}
        for c in traj
    ]
    content = write_selection(
        str(tmp_path / "s.json"), traj, rows, ["checkpoint-30"], "kde", "penultimate", {}
    )
    assert len(content["warnings"]) == 2 and "log N" in content["warnings"][0]


def test_trainer_uses_the_selection(text_teacher, text_data, tmp_path):
    traj = Trajectory.from_local(text_teacher)
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"source": text_teacher, "selected": ["checkpoint-90"]}))
    args = CheckpointDistillConfig(
        **trainer_args(tmp_path / "s", teacher=text_teacher, teacher_selection=str(path), max_steps=2)
    )
    assert teacher_spec(args, traj) == ["checkpoint-90"]
    trainer = CheckpointDistillTrainer(
        model=tiny_bert(hidden=16, layers=1), args=args, train_dataset=text_data[0]
    )
    assert [c.name for c in trainer.teachers.checkpoints] == ["checkpoint-90"]
    assert trainer.lineage["teacher_selection"] == str(path)
