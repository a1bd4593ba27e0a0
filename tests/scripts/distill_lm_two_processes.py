"""Distil a tiny GPT-2 student with a given kd_loss mode; run by tests/test_distributed.py under
`accelerate launch`.

Usage: distill_lm_two_processes.py TEACHER_DIR OUTPUT_DIR PER_DEVICE_BATCH KD_LOSS (full, chunked, sampled)
Writes OUTPUT_DIR/rank<k>.safetensors (final student weights) and OUTPUT_DIR/rank<k>.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from accelerate import PartialState
from conftest import progression_lm_dataset, tiny_gpt2, trainer_args
from safetensors.torch import save_file

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer


def main(teacher: str, output_dir: str, batch: int, kd_loss: str) -> None:
    args = CheckpointDistillConfig(
        **trainer_args(
            output_dir,
            teacher=teacher,
            teacher_checkpoints="0.5,last",
            temperature=2.0,
            alpha=0.3,
            kd_loss=kd_loss,
            kd_chunk_size=5,
            kd_num_samples=8 if kd_loss == "sampled" else None,
            max_steps=4,
            per_device_train_batch_size=batch,
            optim="sgd",
            learning_rate=0.5,
            save_strategy="no",
            logging_steps=2,
        )
    )
    student = tiny_gpt2(hidden=16, layers=1, seed=1)
    trainer = CheckpointDistillTrainer(
        model=student, args=args, train_dataset=progression_lm_dataset(256, seed=0)
    )
    trainer.train()
    rank = PartialState().process_index
    os.makedirs(output_dir, exist_ok=True)
    # clone: the tied embedding and LM head share storage, which safetensors refuses to save twice
    save_file(
        {k: v.clone() for k, v in student.state_dict().items()},
        os.path.join(output_dir, f"rank{rank}.safetensors"),
    )
    info = {
        "distributed_type": trainer.accelerator.distributed_type.value,
        "loss_kd": [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e],
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
