"""Runs killed with SIGKILL and resumed reach the weights of an uninterrupted run (static and progressive).

For each teacher set-up (a static snapshot ensemble, a progressive schedule over the whole trajectory) this
runs, each in its own process:

- **uninterrupted**: ``max_steps`` steps with ``CheckpointDistillTrainer``, a checkpoint every ``save_steps``;
- **killed between steps**: the same run, which sends itself SIGKILL at the end of step ``kill_step`` (no
  cleanup of any kind runs), then a new process resuming with ``resume_from_checkpoint=True``;
- **killed during a save**: the same run, killed inside the save of a checkpoint (after the weights, before
  the optimizer, scheduler, RNG and ``trainer_state.json``), leaving an incomplete ``checkpoint-N/``; the
  resumed process (``resume_from_checkpoint=True``) must skip it, with a warning, for the one before.

It reports, per set-up and kill, the checkpoint the resume started from and max |w_resumed - w_uninterrupted|
over every student parameter. Everything runs on CPU in fp32 with one torch thread.

    python benchmarks/resume_after_kill.py            # writes benchmarks/resume_after_kill.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SETUPS = {
    "static": {"teacher_checkpoints": "0.5,last"},
    "progressive": {"teacher_checkpoints": "all", "teacher_schedule": "progressive"},
}
VOCAB, LENGTH, CLASSES = 32, 16, 4


def dataset(n: int, seed: int):
    """Token sequences whose class is the marker token that occurs most often."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    ids = rng.integers(CLASSES + 2, VOCAB, size=(n, LENGTH))
    labels = rng.integers(0, CLASSES, size=n)
    for i, y in enumerate(labels):
        ids[i, rng.choice(np.arange(1, LENGTH), size=3, replace=False)] = 2 + y
    ids[:, 0] = 1
    return Dataset.from_dict(
        {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    ).with_format("torch")


def bert(hidden: int, seed: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=LENGTH,
        num_labels=CLASSES,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )  # fmt: skip  (dropout on: the RNG state must be restored for the resumed run to match)
    return BertForSequenceClassification(config)


def common_args(output_dir: str, **overrides) -> dict:
    return {
        "output_dir": output_dir, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "report_to": "none",
        "use_cpu": True, "seed": 0, "disable_tqdm": True, "dataloader_num_workers": 0, "logging_steps": 5,
        **overrides,
    }  # fmt: skip


def train_teacher(output_dir: str) -> None:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**common_args(output_dir, max_steps=40, save_strategy="steps", save_steps=10))
    Trainer(model=bert(32, 0), args=args, train_dataset=dataset(512, 0)).train()


def student_run(
    teacher: str, setup: str, output_dir: str, max_steps: int, save_steps: int, kill: str, at: int
):
    """One student run in this process; ``kill`` is 'none', 'step' or 'save' (SIGKILL to itself at ``at``)."""
    import torch
    from transformers import Trainer, TrainerCallback

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    torch.set_num_threads(1)

    class KillAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if kill == "step" and state.global_step == at:
                os.kill(os.getpid(), signal.SIGKILL)

    if kill == "save":
        save = Trainer._save_optimizer_and_scheduler

        def killed_save(self, output_dir):  # the weights of checkpoint-<at> are written, the rest never is
            if self.state.global_step == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return save(self, output_dir)

        Trainer._save_optimizer_and_scheduler = killed_save
    args = CheckpointDistillConfig(
        **common_args(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=save_steps),
        teacher=teacher, temperature=4.0, alpha=0.5, **SETUPS[setup],
    )  # fmt: skip
    trainer = CheckpointDistillTrainer(
        model=bert(16, 1), args=args, train_dataset=dataset(512, 1), callbacks=[KillAfterStep()]
    )
    resume = (
        any(name.startswith("checkpoint-") for name in os.listdir(output_dir))
        if os.path.isdir(output_dir)
        else False
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(output_dir)


def child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    for name in ("teacher", "setup", "output_dir", "kill"):
        p.add_argument(f"--{name}")
    for name in ("max_steps", "save_steps", "at"):
        p.add_argument(f"--{name}", type=int)
    a = p.parse_args(argv)
    student_run(a.teacher, a.setup, a.output_dir, a.max_steps, a.save_steps, a.kill, a.at)


def spawn(
    teacher, setup, output_dir, max_steps, save_steps, kill="none", at=0
) -> subprocess.CompletedProcess:
    command = [
        sys.executable, __file__, "--child", "--teacher", teacher, "--setup", setup, "--output_dir", output_dir,
        "--max_steps", str(max_steps), "--save_steps", str(save_steps), "--kill", kill, "--at", str(at),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def final_weights(output_dir: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(output_dir, "model.safetensors"))


def main() -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max_steps", type=int, default=24)
    parser.add_argument("--save_steps", type=int, default=6)
    parser.add_argument("--output", default=os.path.join(HERE, "resume_after_kill.json"))
    args = parser.parse_args()
    kill_step, save_kill = args.max_steps // 2 + 1, args.max_steps // 2 + args.save_steps
    results = {"max_steps": args.max_steps, "save_steps": args.save_steps, "runs": []}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="hf_ckd_resume-") as tmp:
        teacher = os.path.join(tmp, "teacher")
        train_teacher(teacher)
        for setup in SETUPS:
            reference = os.path.join(tmp, f"{setup}-uninterrupted")
            done = spawn(teacher, setup, reference, args.max_steps, args.save_steps)
            assert done.returncode == 0, done.stderr[-3000:]
            expected = final_weights(reference)
            for kill, at in (("step", kill_step), ("save", save_kill)):
                folder = os.path.join(tmp, f"{setup}-killed-{kill}")
                killed = spawn(teacher, setup, folder, args.max_steps, args.save_steps, kill, at)
                assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
                left = sorted(os.listdir(folder))
                resumed = spawn(teacher, setup, folder, args.max_steps, args.save_steps)
                assert resumed.returncode == 0, resumed.stderr[-3000:]
                got = final_weights(folder)
                delta = max(float((got[k].double() - v.double()).abs().max()) for k, v in expected.items())
                log = resumed.stderr
                skipped = [
                    line.strip() for line in log.splitlines() if "Skipping incomplete checkpoint" in line
                ]
                row = {
                    "setup": setup,
                    "killed": f"after step {at}" if kill == "step" else f"while saving checkpoint-{at}",
                    "left_behind": left,
                    "skipped": [s.split("checkpoint ")[1].split(":")[0].rsplit("/", 1)[-1] for s in skipped],
                    "max_abs_weight_difference": delta,
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    results["seconds"] = round(time.time() - start, 1)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
