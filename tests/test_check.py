"""`hf-ckd check` (hf_ckd.scripts.check): a pre-flight report of a teacher trajectory, read from configs,
safetensors headers and trainer states only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from hf_ckd.scripts import RECIPES
from hf_ckd.scripts.check import main
from hf_ckd.trajectory import TrajectoryError

STEPS = (30, 60, 90, 120)


def _drop(checkpoint, prefix: str) -> None:
    path = os.path.join(checkpoint, "model.safetensors")
    state = {k: v for k, v in load_file(path).items() if not k.startswith(prefix)}
    save_file(state, path, metadata={"format": "pt"})


@pytest.fixture
def run(text_teacher, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(text_teacher, copy)
    return copy


def _messages(report) -> str:
    return "\n".join(p["message"] for p in report["problems"])


def test_a_healthy_trajectory_passes_and_lists_every_checkpoint(text_teacher, capsys, monkeypatch):
    import hf_ckd.teachers

    def no_loading(*args, **kwargs):
        raise AssertionError("hf-ckd check loaded a model")

    import safetensors.torch
    import torch

    import hf_ckd.sources

    for module, name in [
        (hf_ckd.teachers, "load_teacher"),
        (hf_ckd.sources, "load_teacher"),
        (hf_ckd.teachers, "_load_state_dict"),
        (safetensors.torch, "load_file"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(module, name, no_loading)
    report = main(["--teacher", text_teacher, "--teacher_checkpoints", "0.5,last"])
    out = capsys.readouterr().out
    assert report["ok"] and report["exit_status"] == 0 and report["problems"] == []
    assert [r["step"] for r in report["checkpoints"]] == list(STEPS)
    assert report["selected"] == ["checkpoint-60", "checkpoint-120"]
    assert {r["architecture"] for r in report["checkpoints"]} == {"BertForSequenceClassification"}
    assert {r["label_space"] for r in report["checkpoints"]} == {4} and report["label_space"] == 4
    first = report["checkpoints"][0]
    assert first["tensors"] > 10 and first["parameters"] > 1000
    assert first["weights"] == [{"file": "model.safetensors", "format": "safetensors"}]
    assert "eval_loss" in first["metrics"]
    for step in STEPS:
        line = next(line for line in out.splitlines() if f"checkpoint-{step} " in line)
        assert f" {step} " in line and "BertForSequenceClassification" in line
        assert line.startswith("*") == (step in (60, 120))
    assert out.rstrip().splitlines()[-1].startswith("OK: 2 of 4 checkpoint(s) selected")


def test_a_checkpoint_missing_its_classifier_is_named(run, capsys):
    _drop(run / "checkpoint-90", "classifier.")
    report = main(["--teacher", str(run)])
    assert report["exit_status"] == 1 and not report["ok"]
    assert [p["checkpoint"] for p in report["problems"]] == ["checkpoint-90"]
    assert "lacks 2 tensor(s) (classifier.bias, classifier.weight)" in _messages(report)
    row = next(r for r in report["checkpoints"] if r["name"] == "checkpoint-90")
    assert row["tensors"] == report["checkpoints"][0]["tensors"] - 2
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("FAILED: 1 problem(s)")


def test_a_truncated_safetensors_is_named_and_the_other_checks_still_run(run, tmp_path):
    with open(run / "checkpoint-60" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    _drop(run / "checkpoint-120", "classifier.")
    report = main(["--teacher", str(run)])
    assert report["exit_status"] == 1
    found = {(p["check"], p["checkpoint"]) for p in report["problems"]}
    assert found == {("files", "checkpoint-60"), ("signature", "checkpoint-120")}
    assert "'model.safetensors' is not a valid safetensors file" in _messages(report)
    # Not selected: reported as a warning, and the run it would start is fine.
    spared = main(["--teacher", str(run), "--teacher_checkpoints", "checkpoint-30,checkpoint-90"])
    assert spared["exit_status"] == 0 and spared["problems"] == []
    assert {w["checkpoint"] for w in spared["warnings"]} == {"checkpoint-60", "checkpoint-120"}


def test_a_selection_written_for_another_source_is_named(text_teacher, tmp_path):
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"source": "runs/another_run", "selected": ["checkpoint-60"]}))
    report = main(["--teacher", text_teacher, "--teacher_selection", str(selection)])
    assert report["exit_status"] == 1 and report["selected"] == []
    assert [p["check"] for p in report["problems"]] == ["teacher_selection"]
    assert "written for trajectory 'runs/another_run'" in _messages(report)
    assert len(report["checkpoints"]) == 4  # the table is still there
    selection.write_text(json.dumps({"source": text_teacher, "selected": ["checkpoint-60", "checkpoint-7"]}))
    report = main(["--teacher", text_teacher, "--teacher_selection", str(selection)])
    assert report["exit_status"] == 1 and "['checkpoint-7']" in _messages(report)
    selection.write_text(json.dumps({"source": text_teacher, "selected": ["checkpoint-60"]}))
    report = main(["--teacher", text_teacher, "--teacher_selection", str(selection)])
    assert report["exit_status"] == 0 and report["selected"] == ["checkpoint-60"]


def test_a_student_of_another_label_space_is_named(text_teacher, tmp_path):
    from conftest import tiny_bert

    student = tiny_bert(hidden=16, layers=1)
    student.config.save_pretrained(tmp_path / "same")
    student.config.num_labels = 7
    student.config.save_pretrained(tmp_path / "other")
    same = main(["--teacher", text_teacher, "--student_model_name_or_path", str(tmp_path / "same")])
    assert same["exit_status"] == 0 and same["student"]["label_space"] == 4
    other = main(["--teacher", text_teacher, "--student_model_name_or_path", str(tmp_path / "other")])
    assert other["exit_status"] == 1 and [p["check"] for p in other["problems"]] == ["student"]
    assert "predicts over 7 classes/tokens but the teachers over 4" in _messages(other)


def test_a_cache_that_is_missing_or_incomplete_is_named(text_teacher, tmp_path):
    report = main(["--teacher", text_teacher, "--soft_target_cache", str(tmp_path / "no_cache")])
    assert report["exit_status"] == 1 and [p["check"] for p in report["problems"]] == ["soft_target_cache"]
    assert "does not exist" in _messages(report)
    (tmp_path / "half").mkdir()
    report = main(["--teacher", text_teacher, "--soft_target_cache", str(tmp_path / "half")])
    assert "not a complete soft-target cache" in _messages(report)


def test_the_json_report_matches(run, tmp_path):
    _drop(run / "checkpoint-30", "classifier.")
    path = tmp_path / "out" / "check.json"
    report = main(["--teacher", str(run), "--json", str(path)])
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(report))
    assert written["exit_status"] == 1 and written["problems"][0]["checkpoint"] == "checkpoint-30"
    assert [r["name"] for r in written["checkpoints"]] == [f"checkpoint-{s}" for s in STEPS]


def test_a_missing_teacher_raises_in_process(tmp_path):
    with pytest.raises(TrajectoryError, match="does not exist"):
        main(["--teacher", str(tmp_path / "nope")])


def test_registered_and_exit_status_on_the_command_line(run, tmp_path):
    assert RECIPES["check"][0] == "hf_ckd.scripts.check"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_CKD_DEBUG", None)

    def check(*argv):
        command = [sys.executable, "-m", "hf_ckd.check", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    healthy = check("--teacher", str(run))
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    assert "checkpoint-120" in healthy.stdout and "OK:" in healthy.stdout
    _drop(run / "checkpoint-60", "classifier.")
    broken = check("--teacher", str(run))
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "checkpoint-60" in broken.stdout and "classifier.bias" in broken.stdout
    assert broken.stdout.rstrip().splitlines()[-1].startswith("FAILED")
    missing = check("--teacher", str(tmp_path / "nope"))
    assert (
        missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    )
