"""Resuming a run killed while it saved a checkpoint: hf_ckd.data.last_complete_checkpoint (and the recipes'
last_checkpoint / --resume_from_checkpoint) skip the incomplete checkpoint-N/ folders, which
transformers.trainer_utils.get_last_checkpoint picks by name alone."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
from conftest import marker_text_dataset, tiny_bert, trainer_args
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from hf_ckd.data import checkpoint_incomplete, last_complete_checkpoint
from hf_ckd.run_folders import ResumeError
from hf_ckd.scripts._common import last_checkpoint, resolve_resume


def complete_checkpoint(folder, step: int) -> None:
    import torch

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


@pytest.fixture
def run_folder(tmp_path):
    """checkpoint-2 complete; checkpoint-3 with a trainer_state.json cut short; checkpoint-4 empty."""
    run = tmp_path / "run"
    complete_checkpoint(run / "checkpoint-2", 2)
    complete_checkpoint(run / "checkpoint-3", 3)
    (run / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hist')
    (run / "checkpoint-4").mkdir()
    (run / "checkpoint-10.tmp").mkdir()  # not a checkpoint name: ignored, as by transformers
    return run


def test_the_latest_complete_checkpoint_skips_incomplete_ones_with_a_warning(run_folder, caplog):
    assert get_last_checkpoint(str(run_folder)) == str(run_folder / "checkpoint-4")  # by name alone
    with caplog.at_level(logging.WARNING, logger="hf_ckd.data"):
        assert last_complete_checkpoint(str(run_folder)) == str(run_folder / "checkpoint-2")
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 2
    assert f"Skipping incomplete checkpoint {run_folder / 'checkpoint-4'}: it is empty" in skipped[0]
    assert f"{run_folder / 'checkpoint-3'}: its trainer_state.json does not parse" in skipped[1]
    assert last_checkpoint(str(run_folder), overwrite=False) == str(run_folder / "checkpoint-2")
    assert last_checkpoint(str(run_folder), overwrite=True) is None


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("no_state", "it has no trainer_state.json"),
        ("state_list", "its trainer_state.json does not parse (a list, not an object)"),
        ("no_weights", "it has no model weights (model.safetensors, model.safetensors.index.json"),
        ("truncated_weights", "its model.safetensors is truncated"),
        (
            "missing_shard",
            "its model.safetensors.index.json lists missing shards ['model-00002.safetensors']",
        ),
    ],
)
def test_each_kind_of_incomplete_checkpoint_is_named(tmp_path, damage, problem):
    folder = tmp_path / "checkpoint-7"
    complete_checkpoint(folder, 7)
    assert checkpoint_incomplete(str(folder)) is None
    weights = folder / "model.safetensors"
    if damage == "no_state":
        os.remove(folder / "trainer_state.json")
    elif damage == "state_list":
        (folder / "trainer_state.json").write_text("[]")
    elif damage == "no_weights":
        os.remove(weights)
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-5])
    elif damage == "missing_shard":
        os.rename(weights, folder / "model-00001.safetensors")
        index = {"weight_map": {"w": "model-00001.safetensors", "v": "model-00002.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert problem in checkpoint_incomplete(str(folder))
    assert last_complete_checkpoint(str(tmp_path)) is None


def test_resume_from_checkpoint_true_and_an_incomplete_folder(run_folder, tmp_path):
    assert resolve_resume(str(run_folder), "true") == str(run_folder / "checkpoint-2")
    assert resolve_resume(str(run_folder), True) == str(run_folder / "checkpoint-2")
    assert resolve_resume(str(run_folder), None) is None
    assert resolve_resume(str(run_folder), str(run_folder / "checkpoint-2")) == str(
        run_folder / "checkpoint-2"
    )
    with pytest.raises(
        ResumeError, match=r"checkpoint-4. is incomplete: it is empty .*Resume from '.*checkpoint-2'"
    ):
        resolve_resume(str(run_folder), str(run_folder / "checkpoint-4"))
    empty = tmp_path / "empty_run"
    (empty / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(
        ResumeError, match=r"--resume_from_checkpoint=True: output_dir ..*empty_run. holds no complete"
    ):
        resolve_resume(str(empty), "true")


def test_a_real_trainer_run_killed_while_saving_resumes_from_the_checkpoint_before(tmp_path):
    """The Trainer's own resume_from_checkpoint=True fails on the folder a killed save left; the latest
    complete checkpoint resumes (real Trainer checkpoints count as complete)."""
    data = marker_text_dataset(64, seed=0)
    out = tmp_path / "run"

    def trainer(max_steps):
        args = TrainingArguments(
            **trainer_args(out, max_steps=max_steps, save_strategy="steps", save_steps=2, logging_steps=1)
        )
        return Trainer(model=tiny_bert(), args=args, train_dataset=data)

    trainer(4).train()
    assert checkpoint_incomplete(str(out / "checkpoint-4")) is None
    # A kill during the save of checkpoint-6: the folder exists, its weights are there, its state is not.
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    os.remove(out / "checkpoint-6" / "trainer_state.json")
    (out / "checkpoint-8").mkdir()
    with pytest.raises(Exception, match="checkpoint-8"):
        trainer(8).train(resume_from_checkpoint=True)
    resumed = trainer(8)
    resumed.train(resume_from_checkpoint=last_complete_checkpoint(str(out)))
    assert resumed.state.global_step == 8
    assert checkpoint_incomplete(str(out / "checkpoint-8")) is None  # saved over the empty folder
