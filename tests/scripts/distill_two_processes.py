"""Distil a tiny BERT student; run by tests/test_distributed.py under `accelerate launch` (or plainly).

Usage: distill_two_processes.py TEACHER_DIR OUTPUT_DIR PER_DEVICE_BATCH
Writes OUTPUT_DIR/rank<k>.safetensors (final student weights) and OUTPUT_DIR/rank<k>.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from accelerate import PartialState
from conftest import marker_text_dataset, tiny_bert, trainer_args
from safetensors.torch import save_file

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer


def main(teacher: str, output_dir: str, batch: int) -> None:
    args = CheckpointDistillConfig(
        **trainer_args(
            output_dir,
            teacher=teacher,
            teacher_checkpoints="0.5,last",
            temperature=2.0,
            alpha=0.3,
            max_steps=8,
            per_device_train_batch_size=batch,
            optim="sgd",
            learning_rate=0.5,
            save_strategy="no",
            logging_steps=4,
        )
    )
    student = tiny_bert(hidden=16, layers=1, seed=1)
    trainer = CheckpointDistillTrainer(
        model=student, args=args, train_dataset=marker_text_dataset(512, seed=0)
    )
    trainer.train()
    state = PartialState()
    rank = state.process_index
    save_file(
        {k: v.contiguous() for k, v in student.state_dict().items()},
        os.path.join(output_dir, f"rank{rank}.safetensors"),
    )
    info = {
        "distributed_type": str(state.distributed_type).split(".")[-1],
        "num_processes": state.num_processes,
        "device": str(trainer.accelerator.device),
        "teacher_devices": [str(next(m.parameters()).device) for m in trainer.teachers.models],
        "loss_kd": [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e],
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)
    state.wait_for_everyone()
    state.destroy_process_group()  # tear gloo down before interpreter exit, not during it


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
