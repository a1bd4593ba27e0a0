"""Progressive distillation on sparse parity: the sandbox of Panigrahi et al. 2024, scaled to 2 CPU cores.

The paper, "Progressive distillation induces an implicit curriculum" (arXiv:2410.05464), finds that a student
taught by a teacher's successive checkpoints learns sparse parity far sooner than one taught by the final
teacher alone. This experiment repeats that comparison with hf_ckd's teacher schedules.

(n, k)-sparse parity: inputs x in {-1, +1}^n, label = the product of the k bits in a hidden support S
(class 1 when it is +1). Per seed it

1. trains a wide one-hidden-layer ReLU MLP teacher with a plain ``transformers.Trainer`` (plain SGD, fresh
   batches every step), keeping a checkpoint every ``teacher_save_steps`` steps: a dense trajectory across
   the loss plateau and the phase transition;
2. scores every teacher checkpoint on a fixed held-out set (accuracy) and on a probe set (the correlation of
   its output p(1) - p(0) with each single bit, each pair of bits and the parity itself, in and out of S):
   the implicit curriculum the paper finds in intermediate checkpoints;
3. trains a narrow student with ``CheckpointDistillTrainer`` in every arm, all with the same step budget,
   the same initialisation and the same batches (paired): labels only (alpha=1); one-shot KD from the final
   teacher; progressive KD over the whole trajectory (``teacher_schedule=progressive``, teacher-time pace);
   2-shot KD (the checkpoint in the middle of the teacher's transition for ``two_shot_steps`` steps, then the
   final one). KD arms are pure distillation (alpha=0) at ``temperature``; ``tau_sweep`` repeats them at
   other temperatures;
4. writes ``results.md`` (steps to 95% / 99% held-out accuracy per arm, mean +- std over the seeds that
   reached it, or "not reached in budget"), ``results.json``, ``accuracy.png`` (held-out accuracy against
   student steps, every run) and ``curriculum.png`` (the teacher checkpoints' correlations).

What differs from the paper's setting (100, 6)-parity, teacher width 50k, SGD batch 1, a checkpoint every
100k steps, 20M student steps: here (100, 4)-parity, fresh batches of 64, teacher width 1,000 (a plateau of
~12-20k steps, then a transition of ~1.5k steps), student width 50, a checkpoint every 250 teacher steps and
a 60k-step student budget. See docs/progressive.md for what it showed. The pool, the statistics, the tables,
the plots and the output files are the experiments' shared harness (``experiments/_harness.py``).

Usage:

    python experiments/sparse_parity.py --output_dir runs/sparse_parity                 # the full sandbox
    python experiments/sparse_parity.py --output_dir runs/sparse_parity --tau_sweep 2,4  # + a temperature sweep
    python experiments/sparse_parity.py --output_dir runs/sp_quick --quick              # under a minute
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared harness; spawned workers import this file by module name from here too
    sys.path.append(HERE)

from _harness import (  # noqa: E402
    CPU_TRAINING_ARGS,
    apply_quick,
    float_list,
    map_jobs,
    markdown_table,
    mean_std,
    parse_dataclasses,
    prepare_output_dir,
    pyplot,
    quiet_process,
    require_positive,
    save_figure,
    seed_everything,
    split_list,
    write_json,
    write_text,
)

THRESHOLDS = (0.95, 0.99)
EVAL_SEED, PROBE_SEED = 12345, 54321
ARMS = {
    "labels": "labels only",
    "one_shot": "one-shot (final teacher)",
    "progressive": "progressive (all checkpoints)",
    "two_shot": "2-shot (transition, then final)",
}
QUICK_SETTINGS = {
    "n_bits": 12,
    "k": 2,
    "teacher_width": 64,
    "teacher_steps": 160,
    "teacher_save_steps": 16,
    "student_width": 16,
    "student_steps": 200,
    "eval_steps": 20,
    "two_shot_steps": 40,
    "stop_after": 0,
    "eval_size": 1024,
    "probe_size": 2048,
}


@dataclass
class ParityArguments:
    """The task, the models and the budgets. The defaults are the full sandbox of docs/progressive.md."""

    n_bits: int = field(default=100, metadata={"help": "n: input bits."})
    k: int = field(default=4, metadata={"help": "k: size of the hidden support whose product is the label."})
    seeds: int = field(
        default=3,
        metadata={
            "help": "Seeds 0, 1, ...: each draws its own support, trains its own teacher and one student per arm "
            "(same initialisation and batches in every arm)."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Fresh examples per step (teacher and students)."})
    learning_rate: float = field(
        default=0.1, metadata={"help": "Plain SGD learning rate (teacher and students)."}
    )
    teacher_width: int = field(default=1000, metadata={"help": "Hidden units of the teacher MLP."})
    teacher_steps: int = field(default=30000, metadata={"help": "Teacher training steps."})
    teacher_save_steps: int = field(
        default=250, metadata={"help": "A teacher checkpoint every this many steps."}
    )
    student_width: int = field(default=50, metadata={"help": "Hidden units of the student MLP."})
    student_steps: int = field(
        default=60000, metadata={"help": "Step budget of every student run (every arm)."}
    )
    eval_steps: int = field(
        default=250, metadata={"help": "Held-out accuracy of the student every this many steps."}
    )
    eval_size: int = field(default=4096, metadata={"help": "Fixed held-out examples (shared by all runs)."})
    probe_size: int = field(
        default=8192, metadata={"help": "Probe examples for the teacher checkpoints' correlations."}
    )


@dataclass
class SandboxArguments:
    """Where results go, which arms run, and how."""

    output_dir: str = field(
        metadata={"help": "Where results.md/json, the plots and the teacher trajectories (teachers/) go."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an earlier run's results and teachers in output_dir."}
    )
    teachers_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the teacher trajectories live (default: output_dir/teachers). Teachers trained earlier "
            "with the same settings are reused, so other arms can run against the same trajectories."
        },
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Tiny settings for a smoke test (under a minute): sizes left at their defaults become "
            + ", ".join(f"{k}={v}" for k, v in QUICK_SETTINGS.items())
            + ". The numbers it prints are not meaningful."
        },
    )
    arms: str = field(
        default="labels,one_shot,progressive,two_shot",
        metadata={"help": f"Comma-separated arms to run, from {', '.join(ARMS)}."},
    )
    temperature: float = field(default=1.0, metadata={"help": "tau of the KD arms (pure KD, alpha=0)."})
    tau_sweep: str = field(
        default="",
        metadata={"help": "Comma-separated extra temperatures at which the sweep_arms run again, e.g. 2,4."},
    )
    sweep_arms: str = field(
        default="one_shot,progressive,two_shot",
        metadata={"help": "The KD arms repeated at every tau_sweep temperature."},
    )
    progressive_time_scale: float = field(
        default=1.0,
        metadata={
            "help": "teacher_schedule_time_scale of the progressive arm: teacher steps per student step (1 = the "
            "teacher's own pace; the final checkpoint teaches once the trajectory is walked)."
        },
    )
    two_shot_steps: int = field(
        default=2000,
        metadata={
            "help": "Student steps taught by the transition checkpoint in the 2-shot arm (the checkpoint whose "
            "held-out accuracy first reaches the middle of the teacher's rise from 0.5 to its final accuracy)."
        },
    )
    stop_after: int = field(
        default=2000,
        metadata={
            "help": "Stop a student run once it has held 99%% held-out accuracy at every evaluation for this many "
            "steps (saves time; its curve ends there). 0 runs every student for the whole budget."
        },
    )
    num_workers: int = field(
        default=1, metadata={"help": "Processes that train students side by side (1 = all in this process)."}
    )
    torch_threads: int = field(
        default=1, metadata={"help": "torch threads per process (the models are tiny)."}
    )


def parse_args(argv: list[str] | None = None) -> tuple[ParityArguments, SandboxArguments]:
    task, run = parse_dataclasses(
        [ParityArguments, SandboxArguments], argv, description=__doc__.split("\n\n")[0]
    )
    if run.quick:
        apply_quick(QUICK_SETTINGS, task, run)
    check_args(task, run)
    return task, run


def check_args(task: ParityArguments, run: SandboxArguments) -> None:
    positive = ("n_bits", "k", "seeds", "batch_size", "teacher_width", "teacher_steps", "teacher_save_steps")
    positive += ("student_width", "student_steps", "eval_steps", "eval_size", "probe_size")
    require_positive(task, positive, flag="--")
    if task.k > task.n_bits:
        raise ValueError(f"--k ({task.k}) exceeds --n_bits ({task.n_bits}).")
    if task.teacher_steps < 2 * task.teacher_save_steps:
        raise ValueError("--teacher_steps must allow at least 2 checkpoints (2 x --teacher_save_steps).")
    unknown = [a for a in split_list(run.arms) + split_list(run.sweep_arms) if a not in ARMS]
    if unknown or not split_list(run.arms):
        raise ValueError(f"Unknown or no arms {unknown or run.arms!r}; choose from {', '.join(ARMS)}.")
    if "labels" in split_list(run.sweep_arms):
        raise ValueError("--sweep_arms: the labels arm has no temperature; sweep KD arms only.")
    if not 0 < run.two_shot_steps < task.student_steps:
        raise ValueError(f"--two_shot_steps must lie in (0, student_steps={task.student_steps}).")
    for tau in [run.temperature, *temperatures(run.tau_sweep)]:
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"Temperatures must be > 0, got {tau}.")
    if run.stop_after < 0 or run.num_workers < 1:
        raise ValueError("--stop_after must be >= 0 and --num_workers >= 1.")


def temperatures(text: str) -> list[float]:
    """--tau_sweep as numbers."""
    return float_list(text, "--tau_sweep")


# ---- task and models (built lazily so that --help does not import torch) -----------------------------


@lru_cache(maxsize=1)
def torch_parts():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ParityMLP(nn.Module):
        """One hidden ReLU layer, two logits; ``forward(x, labels=None) -> {"logits"[, "loss"]}``."""

        def __init__(self, n_bits: int, width: int):
            super().__init__()
            self.hidden = nn.Linear(n_bits, width)
            self.out = nn.Linear(width, 2)

        def forward(self, x, labels=None):
            logits = self.out(F.relu(self.hidden(x)))
            if labels is None:
                return {"logits": logits}
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    class ParityBatches(torch.utils.data.IterableDataset):
        """Endless fresh batches (already batched: use batch size 1 and ``first_item`` as collator)."""

        def __init__(self, n_bits: int, support: list[int], batch_size: int, seed: int):
            self.n_bits, self.support, self.batch_size, self.seed = n_bits, support, batch_size, seed

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed)
            while True:
                yield parity_data(self.n_bits, self.support, self.batch_size, generator)

    return torch, ParityMLP, ParityBatches


def parity_data(n_bits: int, support: list[int], size: int, generator) -> dict:
    torch, _, _ = torch_parts()
    x = torch.randint(0, 2, (size, n_bits), generator=generator).float() * 2 - 1
    return {"x": x, "labels": ((x[:, support].prod(1) + 1) / 2).long()}


def first_item(features: list[dict]) -> dict:
    return features[0]


def support_of(seed: int, n_bits: int, k: int) -> list[int]:
    torch, _, _ = torch_parts()
    return sorted(torch.randperm(n_bits, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def fixed_set(task: ParityArguments, support: list[int], size: int, seed: int) -> dict:
    torch, _, _ = torch_parts()
    return parity_data(task.n_bits, support, size, torch.Generator().manual_seed(seed))


def accuracy(model, data: dict) -> float:
    torch, _, _ = torch_parts()
    with torch.no_grad():
        return (model(x=data["x"])["logits"].argmax(-1) == data["labels"]).float().mean().item()


def common_args(task: ParityArguments, output_dir: str, max_steps: int, seed: int) -> dict:
    return {
        **CPU_TRAINING_ARGS,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": 1,  # the dataset yields whole batches
        "learning_rate": task.learning_rate,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,  # plain SGD, no clipping
        "logging_steps": max_steps,
        "seed": seed,
    }


# ---- teacher ----------------------------------------------------------------------------------------


def train_teacher(task: ParityArguments, seed: int, folder: str, overwrite: bool) -> str:
    """Train (or reuse) the teacher of ``seed``: a dense trajectory of ``checkpoint-<step>`` folders."""
    _, ParityMLP, ParityBatches = torch_parts()
    from transformers import Trainer, TrainingArguments

    settings = {
        "seed": seed,
        "support": support_of(seed, task.n_bits, task.k),
        **{k: getattr(task, k) for k in ("n_bits", "k", "batch_size", "learning_rate", "teacher_width")},
        **{k: getattr(task, k) for k in ("teacher_steps", "teacher_save_steps")},
    }
    marker = os.path.join(folder, "sandbox_teacher.json")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == settings:
                return folder  # an earlier run trained this very teacher
        if not overwrite:
            raise FileExistsError(
                f"{folder} holds a teacher trained with other settings; pass --overwrite_output_dir to retrain it."
            )
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    seed_everything(seed)
    model = ParityMLP(task.n_bits, task.teacher_width)
    args = TrainingArguments(
        **common_args(task, folder, task.teacher_steps, seed),
        save_strategy="steps",
        save_steps=task.teacher_save_steps,
        save_only_model=True,
    )
    data = ParityBatches(task.n_bits, settings["support"], task.batch_size, seed=1000 + seed)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=first_item)
    trainer.train()
    trainer.save_state()
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(settings, f)
    return folder


def fourier_profile(model, probe: dict, support: list[int]) -> dict:
    """Correlations of the teacher's output f = p(1) - p(0) (what KD at tau=1 passes on) with low-degree
    monomials of the input: single bits and pairs in / out of the support, and the parity itself."""
    torch, _, _ = torch_parts()
    x = probe["x"]
    with torch.no_grad():
        f = torch.softmax(model(x=x)["logits"], -1) @ torch.tensor([-1.0, 1.0])
    f = f - f.mean()
    scale = f.std().item()
    n = x.shape[1]
    inside = torch.zeros(n, dtype=torch.bool)
    inside[support] = True
    if scale < 1e-8:  # a constant output correlates with nothing
        zeros = {
            "single_in": [0.0] * len(support),
            "pair_in": [0.0] * (len(support) * (len(support) - 1) // 2),
        }
        return {**zeros, "single_out_mean": 0.0, "single_out_max": 0.0, "pair_out_mean": 0.0, "pair_out_max": 0.0,
                "parity": 0.0, "output_std": scale}  # fmt: skip
    single = (x * f[:, None]).mean(0) / scale
    pairs = (x * f[:, None]).T @ x / len(f) / scale  # corr(f, x_i x_j), i != j
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    pair_in = upper & inside[:, None] & inside[None, :]
    return {
        "single_in": [round(v, 5) for v in single[inside].tolist()],
        "single_out_mean": round(single[~inside].abs().mean().item(), 5) if (~inside).any() else 0.0,
        "single_out_max": round(single[~inside].abs().max().item(), 5) if (~inside).any() else 0.0,
        "pair_in": [round(v, 5) for v in pairs[pair_in].tolist()],
        "pair_out_mean": round(pairs[upper & ~pair_in].abs().mean().item(), 5),
        "pair_out_max": round(pairs[upper & ~pair_in].abs().max().item(), 5),
        "parity": round(((x[:, support].prod(1) * f).mean() / scale).item(), 5),
        "output_std": round(scale, 5),
    }


def analyse_trajectory(task: ParityArguments, folder: str, support: list[int]) -> list[dict]:
    """Accuracy and correlations of every teacher checkpoint."""
    from hf_ckd import Trajectory, load_teacher

    _, ParityMLP, _ = torch_parts()
    held_out = fixed_set(task, support, task.eval_size, EVAL_SEED)
    probe = fixed_set(task, support, task.probe_size, PROBE_SEED)
    rows = []
    for checkpoint in Trajectory.from_local(folder):
        model = load_teacher(checkpoint, model_init=lambda: ParityMLP(task.n_bits, task.teacher_width))
        rows.append(
            {
                "name": checkpoint.name,
                "step": checkpoint.step,
                "accuracy": round(accuracy(model, held_out), 5),
            }
            | fourier_profile(model, probe, support)
        )
    return rows


def transition_checkpoint(rows: list[dict]) -> dict:
    """The first checkpoint whose accuracy reaches the middle of the rise from 0.5 to the final accuracy."""
    middle = (0.5 + rows[-1]["accuracy"]) / 2
    return next((r for r in rows if r["accuracy"] >= middle), rows[-1])


# ---- students ---------------------------------------------------------------------------------------


def student_specs(task: ParityArguments, run: SandboxArguments, teachers: dict[int, dict]) -> list[dict]:
    specs = []
    sweep = [(run.temperature, split_list(run.arms))]
    sweep += [
        (tau, split_list(run.sweep_arms)) for tau in temperatures(run.tau_sweep) if tau != run.temperature
    ]
    for tau, arms in sweep:
        for arm in arms:
            if arm == "labels" and tau != run.temperature:
                continue
            for seed, teacher in teachers.items():
                specs.append(
                    {"arm": arm, "tau": None if arm == "labels" else tau, "seed": seed, "teacher": teacher}
                )
    return specs


def run_student(task: ParityArguments, run: SandboxArguments, spec: dict) -> dict:
    """One student run; returns its accuracy curve and the steps at which it reached each threshold."""
    _, ParityMLP, ParityBatches = torch_parts()
    from transformers import TrainerCallback

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    arm, seed, teacher = spec["arm"], spec["seed"], spec["teacher"]
    support = teacher["support"]
    held_out = fixed_set(task, support, task.eval_size, EVAL_SEED)
    name = f"{arm}-tau{spec['tau']}-seed{seed}" if spec["tau"] is not None else f"{arm}-seed{seed}"
    config = common_args(task, os.path.join(run.output_dir, "students", name), task.student_steps, seed)
    config.update(
        teacher=teacher["folder"],
        alpha=1.0 if arm == "labels" else 0.0,
        temperature=spec["tau"] or 1.0,
        save_strategy="no",
    )
    if arm == "progressive":
        config.update(
            teacher_checkpoints="all",
            teacher_schedule="progressive",
            teacher_schedule_time_scale=run.progressive_time_scale,
        )
    elif arm == "two_shot":
        config.update(
            teacher_checkpoints=f"{teacher['transition']},last",
            teacher_schedule="progressive",
            teacher_schedule_boundaries=[run.two_shot_steps / task.student_steps],
        )

    class HeldOutAccuracy(TrainerCallback):
        def __init__(self):
            self.curve: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % task.eval_steps and step != state.max_steps:
                return
            self.curve.append((step, round(accuracy(model, held_out), 5)))
            window = [a for s, a in self.curve if s > step - run.stop_after]
            if run.stop_after and step >= run.stop_after and all(a >= THRESHOLDS[-1] for a in window):
                control.should_training_stop = True

    evaluation = HeldOutAccuracy()
    seed_everything(10_000 + seed)  # the same initialisation in every arm of a seed
    student = ParityMLP(task.n_bits, task.student_width)
    trainer = CheckpointDistillTrainer(
        model=student,
        args=CheckpointDistillConfig(**config),
        train_dataset=ParityBatches(task.n_bits, support, task.batch_size, seed=2000 + seed),
        data_collator=first_item,
        callbacks=[evaluation],
        teacher_model_init=lambda: ParityMLP(task.n_bits, task.teacher_width),
    )
    start = time.time()
    trainer.train()
    switches = [
        (e["step"], e["teacher/checkpoint"]) for e in trainer.state.log_history if "teacher/checkpoint" in e
    ]
    return {
        "arm": arm,
        "tau": spec["tau"],
        "seed": seed,
        "curve": evaluation.curve,
        "reached": {str(t): next((s for s, a in evaluation.curve if a >= t), None) for t in THRESHOLDS},
        "final_accuracy": evaluation.curve[-1][1],
        "steps_run": trainer.state.global_step,
        "teacher_switches": switches if len(switches) <= 6 else [*switches[:3], "...", *switches[-2:]],
        "seconds": round(time.time() - start, 1),
    }


def _run_student_job(job: tuple) -> dict:
    return run_student(*job)


def run_students(task: ParityArguments, run: SandboxArguments, specs: list[dict]) -> list[dict]:
    """Every student run, in the order of ``specs``. Pool workers run one torch thread each (as they always
    have, whatever --torch_threads says); with num_workers=1 the runs share this process's threads."""
    jobs = [(task, run, spec) for spec in specs]
    threads = 1 if run.num_workers > 1 else run.torch_threads
    return map_jobs(_run_student_job, jobs, run.num_workers, quiet_process, (threads,))


# ---- report -----------------------------------------------------------------------------------------


def arm_label(arm: str, tau: float | None) -> str:
    return ARMS[arm] if tau is None else f"{ARMS[arm]}, τ={tau:g}"


def summarize(values: list[int | None], budget: int) -> str:
    """Steps to a threshold over the seeds (None = not reached): "mean ± std (r/n reached)"."""
    reached = [v for v in values if v is not None]
    if not reached:
        return f"not reached in budget ({budget:,} steps)"
    mean, std = mean_std(reached)
    std = std if len(reached) > 1 else 0.0
    return f"{mean:,.0f} ± {std:,.0f} ({len(reached)}/{len(values)} reached)"


def groups(students: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for result in students:
        grouped.setdefault((result["arm"], result["tau"]), []).append(result)
    return grouped


def results_table(task: ParityArguments, students: list[dict]) -> list[dict]:
    rows = []
    for (arm, tau), runs in groups(students).items():
        runs = sorted(runs, key=lambda r: r["seed"])
        rows.append(
            {
                "arm": arm,
                "tau": tau,
                "label": arm_label(arm, tau),
                **{
                    f"steps_to_{t}": summarize([r["reached"][str(t)] for r in runs], task.student_steps)
                    for t in THRESHOLDS
                },
                "per_seed": {
                    str(t): [r["reached"][str(t)] for r in runs] for t in THRESHOLDS
                },  # None = not reached
                "final_accuracy": [r["final_accuracy"] for r in runs],
            }
        )
    return rows


def markdown(task, run, teachers, table, seconds) -> str:
    """results.md: the steps-to-threshold table and the teachers' transitions."""

    def cell(values):
        return ", ".join("—" if v is None else f"{v:,}" for v in values)

    lines = [
        "# Progressive distillation on sparse parity",
        "",
        f"({task.n_bits}, {task.k})-sparse parity, fresh batches of {task.batch_size}, plain SGD lr "
        f"{task.learning_rate}; teacher MLP width {task.teacher_width}, {task.teacher_steps:,} steps, a checkpoint "
        f"every {task.teacher_save_steps}; student MLP width {task.student_width}, budget {task.student_steps:,} "
        f"steps, held-out accuracy on {task.eval_size:,} fixed examples every {task.eval_steps} steps; "
        f"{task.seeds} seeds (paired: same student init and batches in every arm). KD arms: pure KD (alpha=0). "
        f"Progressive: teacher-time pace, time scale {run.progressive_time_scale:g}; 2-shot: the transition "
        f"checkpoint for {run.two_shot_steps:,} steps, then the final one."
        + (f" Runs stop once they have held 99% for {run.stop_after:,} steps." if run.stop_after else ""),
        "",
    ]
    lines += markdown_table(
        ["arm", "steps to 95%", "steps to 99%", "per seed (99%)"],
        [
            [row["label"], row["steps_to_0.95"], row["steps_to_0.99"], cell(row["per_seed"]["0.99"])]
            for row in table
        ],
    )
    cells = []
    for seed, teacher in teachers.items():
        rows = teacher["checkpoints"]
        start = next((r["step"] for r in rows if r["accuracy"] >= 0.6), None)
        done = next((r["step"] for r in rows if r["accuracy"] >= 0.99), None)
        cells.append(
            [
                seed,
                teacher["support"],
                start if start is not None else "—",
                done if done is not None else "—",
                f"{teacher['transition']} ({teacher['transition_accuracy']:.2f})",
            ]
        )
    header = ["teacher seed", "support", "plateau ends (acc ≥ 0.6)", "99% at", "2-shot checkpoint (acc)"]
    lines += ["", *markdown_table(header, cells)]
    lines += ["", f"Wall time: {seconds / 60:.1f} min. Plots: accuracy.png, curriculum.png.", ""]
    return "\n".join(lines)


def plot_accuracy(path: str, students: list[dict], task: ParityArguments) -> None:
    plt = pyplot()
    grouped = groups(students)
    taus = sorted({tau for _, tau in grouped if tau is not None})
    fig, axes = plt.subplots(1, max(len(taus), 1), figsize=(6 * max(len(taus), 1), 4.2), squeeze=False)
    colors = {"labels": "tab:gray", "one_shot": "tab:red", "progressive": "tab:blue", "two_shot": "tab:green"}
    for ax, tau in zip(axes[0], taus or [None]):
        for (arm, arm_tau), runs in grouped.items():
            if arm_tau not in (tau, None):
                continue
            for i, result in enumerate(sorted(runs, key=lambda r: r["seed"])):
                steps, accs = zip(*result["curve"]) if result["curve"] else ((), ())
                ax.plot(
                    steps, accs, color=colors[arm], lw=1.2, alpha=0.8, label=ARMS[arm] if i == 0 else None
                )
        for t in THRESHOLDS:
            ax.axhline(t, color="k", lw=0.5, ls=":")
        ax.set_title(f"KD at τ={tau:g} (one line per seed)" if tau is not None else "students")
        ax.set_xlabel("student step")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(0.4, 1.02)
        ax.set_xlim(0, task.student_steps)
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path, dpi=110)


def plot_curriculum(path: str, teachers: dict[int, dict], task: ParityArguments) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(teachers), 4, figsize=(17, 3.3 * len(teachers)), squeeze=False)
    noise = 1 / math.sqrt(task.probe_size)
    for row, (seed, teacher) in zip(axes, teachers.items()):
        rows = teacher["checkpoints"]
        steps = [r["step"] for r in rows]
        row[0].plot(steps, [r["accuracy"] for r in rows], color="k")
        row[0].set_ylabel(f"seed {seed}")
        row[0].set_title("teacher held-out accuracy")
        for j in range(len(rows[0]["single_in"])):
            row[1].plot(
                steps, [r["single_in"][j] for r in rows], lw=1, label="support bits" if j == 0 else None
            )
        row[1].plot(
            steps, [r["single_out_max"] for r in rows], color="gray", ls="--", label="max |corr|, other bits"
        )
        row[1].set_title("degree 1: corr(f, x_i)")
        for j in range(len(rows[0]["pair_in"])):
            row[2].plot(
                steps, [r["pair_in"][j] for r in rows], lw=1, label="support pairs" if j == 0 else None
            )
        row[2].plot(
            steps, [r["pair_out_max"] for r in rows], color="gray", ls="--", label="max |corr|, other pairs"
        )
        row[2].set_title("degree 2: corr(f, x_i x_j)")
        row[3].plot(steps, [r["parity"] for r in rows], color="tab:purple")
        row[3].set_title(f"degree {task.k}: corr(f, parity)")
        for ax in row:
            ax.axvline(teacher["transition_step"], color="tab:green", lw=0.8, ls=":")
            ax.set_xlabel("teacher step")
        for ax in row[1:]:
            ax.axhspan(-noise, noise, color="gray", alpha=0.15, lw=0)
        row[1].legend(fontsize=7)
        row[2].legend(fontsize=7)
    fig.suptitle("Teacher checkpoints: output f = p(1) - p(0) against low-degree monomials (band: ±1/√probe)")
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    """Run the sandbox; returns what it writes to ``output_dir/results.json``."""
    task, run = parse_args(argv)
    prepare_output_dir(
        run.output_dir,
        run.overwrite_output_dir,
        ["results.json", "results.md", "accuracy.png", "curriculum.png"],
        folders=["students"],
        refusal="; pass --overwrite_output_dir to replace them (teachers trained with the same settings are "
        "reused).",
    )
    start = time.time()
    quiet_process(run.torch_threads)

    teachers: dict[int, dict] = {}
    for seed in range(task.seeds):
        support = support_of(seed, task.n_bits, task.k)
        folder = os.path.join(run.teachers_dir or os.path.join(run.output_dir, "teachers"), f"seed{seed}")
        began = time.time()
        train_teacher(task, seed, folder, run.overwrite_output_dir)
        rows = analyse_trajectory(task, folder, support)
        transition = transition_checkpoint(rows)
        teachers[seed] = {
            "folder": folder,
            "support": support,
            "transition": transition["name"],
            "transition_step": transition["step"],
            "transition_accuracy": transition["accuracy"],
            "final_accuracy": rows[-1]["accuracy"],
            "seconds": round(time.time() - began, 1),
            "checkpoints": rows,
        }
        print(
            f"teacher seed {seed}: final accuracy {rows[-1]['accuracy']:.3f}, transition {transition['name']}"
        )

    specs = student_specs(task, run, teachers)
    students = run_students(task, run, [{**s, "teacher": _light(s["teacher"])} for s in specs])
    table = results_table(task, students)
    seconds = time.time() - start
    results = {
        "task": asdict(task),
        "run": asdict(run),
        "teachers": {str(k): v for k, v in teachers.items()},
        "table": table,
        "students": students,
        "seconds": round(seconds, 1),
    }
    text = markdown(task, run, teachers, table, seconds)
    write_text(os.path.join(run.output_dir, "results.md"), text)
    plot_accuracy(os.path.join(run.output_dir, "accuracy.png"), students, task)
    plot_curriculum(os.path.join(run.output_dir, "curriculum.png"), teachers, task)
    write_json(os.path.join(run.output_dir, "results.json"), results, indent=1)
    print(text)
    return results


def _light(teacher: dict) -> dict:
    """What a student run needs of its teacher (not the per-checkpoint analysis)."""
    return {k: teacher[k] for k in ("folder", "support", "transition")}


if __name__ == "__main__":
    main()
