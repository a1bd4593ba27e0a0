"""Checkpoint distillation on scikit-learn's handwritten digits: the whole hf_ckd flow, offline, on CPU.

The question is the one of Wang et al. 2022, "Efficient Knowledge Distillation from Model Checkpoints"
(arXiv:2210.06458): do intermediate checkpoints of a teacher's run teach a student as well as, or better than,
the final one? The digits (1,797 8x8 images, 10 classes) ship with scikit-learn, so this runs with no network. It

1. trains ``teacher_seeds`` small CNN teachers with a plain ``transformers.Trainer`` that keeps every
   checkpoint (the trajectory) and evaluates each one on the test split;
2. distils MLP 64-32-10 students with ``CheckpointDistillTrainer`` from each teacher's T^0.3, T^0.5, T^0.7
   and T^full checkpoints, from a snapshot ensemble of intermediate checkpoints of that one run, and from the
   *full ensemble*: the final checkpoints of all ``teacher_seeds`` independent runs, averaged the same way
   (passed as ``teachers=TeacherEnsemble.from_checkpoints(...)``: a config's ``teacher`` names one
   trajectory), plus a labels-only baseline (alpha=1, same trainer), ``student_seeds`` per teacher. Seeds
   are *paired*: run j of every arm starts from the same student initialisation and sees the same batches,
   so arms differ only in the teacher (the full ensemble is the same teacher for every group of student
   seeds; its run j of group k is paired with the other arms' run j of teacher k);
3. reports each arm's student accuracy (mean +- std over all runs) and its paired difference to T^full
   (mean +- standard error, and per teacher seed), the paired difference of the snapshot ensemble to the
   full ensemble (the claim of arXiv:2210.06458 that the first beats the second), says which differences
   are noise at this scale (within 2 standard errors, or changing sign across teacher seeds), and writes
   ``results.md`` and ``results.json`` to ``output_dir`` (the teachers' trajectories stay in
   ``output_dir/teachers/``).

Runs go to ``num_workers`` spawned processes (default 2, one torch thread each); every run seeds itself, so
the numbers do not depend on how the runs are spread over them.

The pool, the paired-seed statistics, the tables and the output files are the experiments' shared harness
(``experiments/_harness.py``).

Usage:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python experiments/demo_digits.py --output_dir runs/demo
    python experiments/demo_digits.py --output_dir runs/demo_quick --quick   # 1 teacher, 2 students: under a minute
    # (with one teacher there is no full ensemble to build: --quick --teacher_seeds 2 runs that arm too)
    python experiments/demo_digits.py demo.yaml                              # a lone .json/.yaml is a config file

``make demo`` runs the first line. See docs/demo.md for the measured table and how to read it.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared harness; spawned workers import this file by module name from here too
    sys.path.append(HERE)

from _harness import (  # noqa: E402
    CPU_TRAINING_ARGS,
    apply_quick,
    describe_machine,
    float_list,
    markdown_table,
    mean_std,
    paired_comparison,
    parse_dataclasses,
    pct,
    prepare_output_dir,
    quiet_process,
    require_positive,
    run_jobs,
    seed_everything,
    split_list,
    verdict,
    worker_pool,
    write_json,
    write_text,
)

NUM_CLASSES = 10
MI_SPEC = "mi"  # placeholder spec of the T* arm, replaced per teacher by the selected checkpoint
REFERENCE = "T^full"  # the arm every other arm is compared with, run for run
FULL_ENSEMBLE = "full ensemble"  # the final checkpoints of all teacher runs, one ensemble
AVERAGED = {"probs": "probabilities", "logits": "logits"}
QUICK_SETTINGS = {
    "teacher_seeds": 1,
    "student_seeds": 2,
    "teacher_steps": 120,
    "teacher_save_steps": 12,
    "student_epochs": 3.0,
}


@dataclass
class DemoArguments:
    """Settings of the digits demo. The defaults are the ones `make demo` runs and docs/demo.md reports."""

    output_dir: str = field(
        metadata={
            "help": "Where results.md, results.json and the teacher trajectories (teachers/) are written."
        }
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results (and teacher trajectories) of an earlier run in output_dir."},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Tiny settings for a smoke test (about a minute): sizes left at their defaults become "
            + ", ".join(f"{k}={v}" for k, v in QUICK_SETTINGS.items())
            + ". The numbers it prints are not meaningful."
        },
    )
    teacher_seeds: int = field(
        default=3, metadata={"help": "Number of teacher training runs (seeds 0, 1, ...), each a trajectory."}
    )
    student_seeds: int = field(
        default=10,
        metadata={
            "help": "Student runs per teacher and arm. Run j of every arm shares the student's initialisation and "
            "batch order (paired seeds)."
        },
    )
    teacher_steps: int = field(default=600, metadata={"help": "Optimizer steps of each teacher run."})
    teacher_save_steps: int = field(
        default=60,
        metadata={"help": "A teacher checkpoint (evaluated on the test split) every this many steps."},
    )
    teacher_learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate of the teacher (linear decay to 0)."}
    )
    student_epochs: float = field(default=20.0, metadata={"help": "Epochs of each student run."})
    student_learning_rate: float = field(
        default=3e-2, metadata={"help": "AdamW learning rate of the students (linear decay to 0)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Training batch size of teachers and students."})
    temperature: float = field(default=4.0, metadata={"help": "Distillation temperature tau."})
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the hard-label cross-entropy in the distilled arms: "
            "loss = alpha * CE + (1 - alpha) * tau^2 * KL. The labels-only arm uses 1."
        },
    )
    single_checkpoints: str = field(
        default="0.3,0.5,0.7",
        metadata={
            "help": "Fractions of teacher training whose checkpoint teaches alone, one arm each (T^0.3, T^0.5, "
            "T^0.7); T^full is always an arm."
        },
    )
    snapshot_ensemble: str = field(
        default="0.3,0.5,0.7",
        metadata={"help": "Checkpoint spec of the snapshot-ensemble arm (uniform weights); empty for none."},
    )
    full_ensemble: bool = field(
        default=True,
        metadata={
            "help": "Add a 'full ensemble' arm: the final checkpoints of all teacher_seeds runs as one uniform "
            "ensemble, averaged like the snapshot ensemble (ensemble_average). Needs teacher_seeds >= 2: with "
            "one teacher it would be T^full itself, so it is skipped (and results.md says so)."
        },
    )
    mi_selection: bool = field(
        default=True,
        metadata={
            "help": "Add a T* arm: the checkpoint hf_ckd.selection picks per teacher (mi_estimator on penultimate "
            "features, probe = the training split), written to <teacher>/selection.json."
        },
    )
    mi_estimator: str = field(
        default="probe",
        metadata={
            "help": "The T* arm's MI estimator (a name in hf_ckd.mi.ESTIMATORS). probe: the estimator with the least "
            "regret against the oracle on this task (benchmarks/selection_oracle.py; docs/selection.md)."
        },
    )
    ensemble_average: str = field(
        default="probs",
        metadata={
            "help": "How the snapshot ensemble combines its checkpoints: probs (paper) or logits (official code).",
            "choices": ["probs", "logits"],
        },
    )
    train_size: int = field(
        default=1200,
        metadata={"help": "Training examples; the rest of the 1,797 digits is the test split (stratified)."},
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/test split."})
    num_workers: int = field(
        default=2,
        metadata={
            "help": "Processes that train teachers and students side by side (1 = all in this process). The "
            "results do not depend on it: every run seeds itself."
        },
    )
    torch_threads: int = field(
        default=1,
        metadata={
            "help": "torch intra-op threads per process. The models are tiny: one thread per process and one "
            "process per core is fastest. Results can differ in the last bits between thread counts."
        },
    )

    def __post_init__(self):
        if self.quick:
            apply_quick(QUICK_SETTINGS, self)
        require_positive(
            self, ("teacher_seeds", "teacher_steps", "teacher_save_steps", "batch_size", "num_workers")
        )
        if self.student_seeds < 2:
            raise ValueError(
                f"student_seeds must be >= 2 (a standard deviation needs two runs), got {self.student_seeds}."
            )
        if self.teacher_save_steps > self.teacher_steps:
            raise ValueError(
                f"teacher_save_steps ({self.teacher_save_steps}) exceeds teacher_steps ({self.teacher_steps}): "
                "the trajectory would have no intermediate checkpoint."
            )
        if not 0 < self.train_size < 1797 - NUM_CLASSES:
            raise ValueError(
                f"train_size must lie in (0, 1787) (digits has 1,797 images), got {self.train_size}."
            )
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1) for the distilled arms, got {self.alpha}.")
        if self.mi_selection:
            from hf_ckd.mi import ESTIMATORS

            if self.mi_estimator not in ESTIMATORS:
                raise ValueError(f"mi_estimator {self.mi_estimator!r} is not one of {sorted(ESTIMATORS)}.")
        self.fractions = float_list(self.single_checkpoints, "single_checkpoints", "fractions")
        if any(not 0.0 <= f < 1.0 for f in self.fractions):
            raise ValueError(
                f"single_checkpoints must be fractions in [0, 1), got {self.single_checkpoints!r}."
            )

    def arms(self) -> list[dict]:
        """The arms in table order: name, kind, checkpoint spec (None = no teacher), alpha. An arm with
        ``across_teachers`` takes the spec's checkpoints from every teacher run into one ensemble."""
        arms = [{"name": "labels only", "kind": "labels", "spec": None, "alpha": 1.0}]
        arms += [
            {"name": f"T^{f:g}", "kind": "checkpoint", "spec": f"{f:g}", "alpha": self.alpha}
            for f in self.fractions
        ]
        arms.append({"name": REFERENCE, "kind": "checkpoint", "spec": "last", "alpha": self.alpha})
        if self.snapshot_ensemble.strip():
            items = split_list(self.snapshot_ensemble)
            arms.append(
                {
                    "name": "snapshot " + "+".join(items),
                    "kind": "snapshot",
                    "spec": ",".join(items),
                    "alpha": self.alpha,
                }
            )
        if self.has_full_ensemble:
            arms.append(
                {
                    "name": FULL_ENSEMBLE,
                    "kind": "full_ensemble",
                    "spec": "last",
                    "alpha": self.alpha,
                    "across_teachers": True,
                }
            )
        if self.mi_selection:
            arms.append({"name": "T* (MI)", "kind": "mi", "spec": MI_SPEC, "alpha": self.alpha})
        return arms

    @property
    def has_full_ensemble(self) -> bool:
        """The full-ensemble arm runs: asked for, and more than one teacher to ensemble."""
        return self.full_ensemble and self.teacher_seeds >= 2

    def teacher_dirs(self) -> list[str]:
        """The teacher runs' output folders (their trajectories), by teacher seed."""
        return [os.path.join(self.output_dir, "teachers", f"seed-{k}") for k in range(self.teacher_seeds)]


# ---- data and models --------------------------------------------------------------------------------


def load_digits_splits(train_size: int, seed: int):
    """scikit-learn's digits as two ``datasets.Dataset``s (flat 64-pixel rows, standardised per pixel with the
    training split's statistics), split stratified by class."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = digits.data.astype(np.float32)  # [1797, 64], values 0..16
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)), train_size=train_size, stratify=digits.target, random_state=seed
    )
    mean, std = pixels[train_idx].mean(0), pixels[train_idx].std(0)
    pixels = (pixels - mean) / (std + 1.0)  # +1 (one grey level) keeps always-blank border pixels at 0
    features = Features(
        {"pixel_values": Sequence(Value("float32"), length=64), "labels": ClassLabel(num_classes=NUM_CLASSES)}
    )

    def split(index):
        data = {"pixel_values": pixels[index], "labels": digits.target[index]}
        return Dataset.from_dict(data, features=features).with_format("torch")

    return split(train_idx), split(test_idx)


@lru_cache(maxsize=1)
def model_classes():
    """The teacher CNN and the student MLP (built here so that ``--help`` does not import torch)."""
    from torch import nn
    from torch.nn import functional as F

    class DigitsModel(nn.Module):
        """Plain module with the Trainer interface: ``forward(pixel_values, labels=None) -> {"loss", "logits"}``."""

        def forward(self, pixel_values, labels=None):
            logits = self.logits(pixel_values)
            if labels is None:
                return {"logits": logits}
            return {"loss": F.cross_entropy(logits, labels), "logits": logits}

    class DigitsCNN(DigitsModel):
        """Teacher: two 3x3 convolutions (16, 32 channels), 2x2 max-pool, a 384-unit layer; ~206k parameters."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
            )
            self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 384), nn.ReLU(), nn.Linear(384, NUM_CLASSES))

        def logits(self, pixel_values):
            return self.head(self.features(pixel_values.view(-1, 1, 8, 8)))

    class DigitsMLP(DigitsModel):
        """Student: MLP 64-32-10 (2,410 parameters)."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))

        def logits(self, pixel_values):
            return self.net(pixel_values)

    return DigitsCNN, DigitsMLP


# ---- training -------------------------------------------------------------------------------------------


def common_args() -> dict:
    """TrainingArguments shared by teachers and students: CPU, quiet, no reporting."""
    return {**CPU_TRAINING_ARGS, "log_level": "error", "per_device_eval_batch_size": 1024}


def quiet(trainer):
    """Drop the callback that prints every log dict (Trainer adds it when ``disable_tqdm=True``)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def train_teacher(args: DemoArguments, seed: int, output_dir: str, train, test, compute_metrics) -> None:
    """A plain ``transformers.Trainer`` run that keeps every checkpoint and evaluates each on the test split."""
    from transformers import Trainer, TrainingArguments

    DigitsCNN, _ = model_classes()
    if os.path.isdir(output_dir):  # this demo's own folder, left by an earlier or interrupted run
        shutil.rmtree(output_dir)
    targs = TrainingArguments(
        output_dir=output_dir,
        seed=seed,
        max_steps=args.teacher_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.teacher_learning_rate,
        save_strategy="steps",
        save_steps=args.teacher_save_steps,
        save_only_model=True,  # weights + trainer_state.json: the trajectory, without optimizer states
        eval_strategy="steps",
        eval_steps=args.teacher_save_steps,
        logging_steps=args.teacher_save_steps,
        **common_args(),
    )  # save_total_limit stays unset: no checkpoint is deleted
    seed_everything(seed)
    trainer = Trainer(
        model=DigitsCNN(), args=targs, train_dataset=train, eval_dataset=test, compute_metrics=compute_metrics
    )
    quiet(trainer).train()
    trainer.save_state()  # output_dir/trainer_state.json: the run's final step, for the fractions


def teacher_ensemble(teacher_dirs: list[str], spec: str, average: str):
    """The checkpoints ``spec`` selects in each of ``teacher_dirs`` (trajectories of separate runs), loaded
    into one uniform ``TeacherEnsemble``. ``CheckpointDistillConfig.teacher`` names one trajectory, so
    teachers from several runs go to the trainer as ``teachers=`` this way."""
    from hf_ckd import TeacherEnsemble, Trajectory, load_teacher

    DigitsCNN, _ = model_classes()
    checkpoints = [c for d in teacher_dirs for c in Trajectory.from_local(d).select(spec)]
    return TeacherEnsemble.from_checkpoints(
        checkpoints,
        average=average,
        load=partial(load_teacher, model_init=DigitsCNN),  # plain-module checkpoints have no config.json
        check_architecture=False,  # that check reads config.json; model_init fixes the architecture
        source=os.path.commonpath([os.path.abspath(d) for d in teacher_dirs]),
    )


def distill_student(
    args: DemoArguments, arm: dict, teacher_dir: str | list[str], seed: int, train, test, compute_metrics
):
    """One student run of one arm; returns its test accuracy. The same ``seed`` gives every arm the same
    initialisation and batch order. The labels-only arm goes through the same trainer with alpha=1 (the
    teacher is then never run). An ``across_teachers`` arm (the full ensemble) gets the list of all teacher
    folders in ``teacher_dir`` and its ensemble as ``teachers=``; the others name one trajectory in the config."""
    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer

    DigitsCNN, DigitsMLP = model_classes()
    if arm.get("across_teachers"):
        # Built before seed_everything: loading the teachers draws from the RNG (DigitsCNN's initialisation).
        teachers = {"teachers": teacher_ensemble(list(teacher_dir), arm["spec"], args.ensemble_average)}
        teacher, spec = None, "last"  # unused with teachers=
    else:
        teachers = {"teacher_model_init": DigitsCNN}  # plain-module checkpoints have no config.json
        teacher, spec = teacher_dir, arm["spec"] or "last"
    with tempfile.TemporaryDirectory(prefix="hf_ckd_demo_student_") as scratch:
        config = CheckpointDistillConfig(
            output_dir=scratch,
            seed=seed,
            teacher=teacher,
            teacher_checkpoints=spec,
            ensemble_average=args.ensemble_average,
            temperature=args.temperature,
            alpha=arm["alpha"],
            num_train_epochs=args.student_epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.student_learning_rate,
            save_strategy="no",
            logging_strategy="no",
            **common_args(),
        )
        seed_everything(seed)
        student = DigitsMLP()
        trainer = CheckpointDistillTrainer(
            model=student,
            args=config,
            train_dataset=train,
            eval_dataset=test,
            compute_metrics=compute_metrics,
            **teachers,
        )
        quiet(trainer).train()
        return trainer.evaluate()["eval_accuracy"]


def teacher_accuracy(teacher_dir: str | list[str], spec: str, average: str, test, metric) -> float:
    """Test accuracy of a checkpoint or an ensemble (a snapshot ensemble of one run, or with several
    ``teacher_dir``s the ensemble of their checkpoints; averaged as in distillation, at tau = 1)."""
    dirs = [teacher_dir] if isinstance(teacher_dir, str | os.PathLike) else list(teacher_dir)
    return ensemble_accuracy(teacher_ensemble(dirs, spec, average), test, metric)


def ensemble_accuracy(ensemble, test, metric) -> float:
    """Test accuracy of a loaded ``TeacherEnsemble`` (its ensemble_average, at tau = 1)."""
    import torch

    batch = test[:]
    with torch.no_grad():
        predictions = ensemble.log_targets({"pixel_values": batch["pixel_values"]}, temperature=1.0).argmax(
            -1
        )
    return float(
        metric.compute(predictions=predictions.numpy(), references=batch["labels"].numpy())["accuracy"]
    )


# ---- statistics and reporting -------------------------------------------------------------------------


def summarise(
    args: DemoArguments, arms: list[dict], teachers: list[dict], runs: list[dict], pooled: dict
) -> list[dict]:
    """Per arm: student accuracy mean/std, paired difference to T^full (mean, SE, per teacher seed). The
    teacher accuracy of an ``across_teachers`` arm is its one ensemble's (``pooled``), with no std."""
    rows = []
    for arm in arms:
        c = paired_comparison(runs, arm["name"], REFERENCE, [t["seed"] for t in teachers])
        if arm.get("across_teachers"):
            teacher_mean, teacher_std = pooled[arm["name"]]["accuracy"], None
        elif arm["spec"] is not None:
            teacher_mean, teacher_std = mean_std([t["arm_accuracy"][arm["name"]] for t in teachers])
        else:
            teacher_mean = teacher_std = None
        rows.append(
            {
                "arm": arm["name"],
                "teacher_checkpoints": arm["spec"],
                "alpha": arm["alpha"],
                "teacher_accuracy_mean": teacher_mean,
                "teacher_accuracy_std": teacher_std,
                "student_accuracy_mean": c["mean"],
                "student_accuracy_std": c["std"],
                "n": c["n"],
                "delta_vs_full_mean": c["delta_mean"],
                "delta_vs_full_se": c["delta_se"],
                "delta_vs_full_per_teacher_seed": c["delta_per_group"],
                "within_2se": c["within_2se"],
                "sign_changes_across_teacher_seeds": c["sign_changes"],
                "reading": verdict(arm["name"], c, REFERENCE),
            }
        )
    return rows


def snapshot_vs_full_ensemble(arms: list[dict], teachers: list[dict], runs: list[dict]) -> dict | None:
    """The claim of arXiv:2210.06458 run for run: Δ = acc(snapshot ensemble) - acc(full ensemble) over the
    paired runs (same student seed), per group of student seeds; ``None`` without both arms."""
    snapshot = next((a for a in arms if a["kind"] == "snapshot"), None)
    full = next((a for a in arms if a["kind"] == "full_ensemble"), None)
    if snapshot is None or full is None:
        return None
    c = paired_comparison(runs, snapshot["name"], full["name"], [t["seed"] for t in teachers])
    return {
        "arm": snapshot["name"],
        "reference": full["name"],
        "snapshot_size": len(split_list(snapshot["spec"])),
        "full_ensemble_size": len(teachers),
        "n": c["n"],
        "delta_mean": c["delta_mean"],
        "delta_se": c["delta_se"],
        "delta_per_student_seed_group": c["delta_per_group"],
        "within_2se": c["within_2se"],
        "sign_changes_across_groups": c["sign_changes"],
        "reading": verdict(snapshot["name"], c, full["name"], groups_name="student-seed groups"),
    }


def ensemble_notes(args: DemoArguments, pooled: dict, claim: dict | None) -> list[str]:
    """results.md's paragraphs on the full-ensemble arm and the snapshot-vs-full-ensemble comparison."""
    if not args.full_ensemble:
        return []
    if not args.has_full_ensemble:
        return [
            f"Full ensemble: skipped. With {args.teacher_seeds} teacher seed the ensemble of the teachers' final "
            "checkpoints is T^full itself; run with --teacher_seeds 2 or more for that arm.",
            "",
        ]
    members = pooled[FULL_ENSEMBLE]["checkpoints"]
    lines = [
        f"Full ensemble: the final checkpoints of all {len(members)} independently trained teachers ("
        + ", ".join(members)
        + f"), one uniform ensemble averaged `{args.ensemble_average}` like the snapshot ensemble; its teacher "
        "acc. is that ensemble's. It is one teacher for every group of student seeds, so its Δ per teacher seed "
        "reads per group: student seed s of group k against T^full of teacher k with the same student seed.",
        "",
    ]
    if claim is not None:
        same = claim["snapshot_size"] == claim["full_ensemble_size"]
        per_group = " / ".join(pct(v, signed=True) for v in claim["delta_per_student_seed_group"].values())
        lines += [
            f"**Snapshot vs full ensemble** (arXiv:2210.06458: a snapshot ensemble of one run's intermediate "
            f"checkpoints can beat an ensemble of independently trained, converged teachers): Δ = "
            f"acc({claim['arm']}) - acc({claim['reference']}) = {pct(claim['delta_mean'], signed=True)} ± "
            f"{pct(claim['delta_se'])} points (paired runs, same student seed; n = {claim['n']}; per student-seed "
            f"group {per_group}): {claim['reading']}. "
            + (
                f"Both ensembles have {claim['snapshot_size']} members."
                if same
                else f"**The sizes differ:** the snapshot ensemble has {claim['snapshot_size']} checkpoints, the "
                f"full ensemble {claim['full_ensemble_size']} teachers (--teacher_seeds "
                f"{claim['full_ensemble_size']}), so this is not the equal-size comparison of the paper."
            ),
            "",
        ]
    return lines


def markdown(
    args: DemoArguments, rows: list[dict], teachers: list[dict], meta: dict, pooled: dict, claim: dict | None
) -> str:
    n_test = meta["data"]["test_size"]
    lines = [
        "# hf_ckd digits demo",
        "",
        f"scikit-learn digits, {meta['data']['train_size']} train / {n_test} test images (stratified split, "
        f"seed {args.split_seed}; one test image = {100 / n_test:.2f} points). Teacher: CNN "
        f"({meta['teacher_parameters']:,} parameters), {args.teacher_seeds} seed(s), {args.teacher_steps} steps, a "
        f"checkpoint every {args.teacher_save_steps}. Student: MLP 64-32-10 ({meta['student_parameters']:,} "
        f"parameters), {args.student_epochs:g} epochs, {args.student_seeds} paired seed(s) per teacher. "
        f"KD at tau = {args.temperature:g}, alpha = {args.alpha:g}, snapshot ensemble averages `{args.ensemble_average}`.",
        "",
        *(["**--quick: smoke-test settings; these numbers are not meaningful.**", ""] if args.quick else []),
        "## Students",
        "",
        "Accuracy on the test split in %. Δ vs T^full is the paired difference (same teacher, same student seed) "
        "as mean ± standard error over all runs; Δ per teacher seed shows whether its sign holds across teachers.",
        "",
    ]
    cells = []
    for row in rows:
        std = row["teacher_accuracy_std"]
        teacher = pct(row["teacher_accuracy_mean"])  # "—" for labels only
        if std is not None and not math.isnan(std):  # one teacher seed, or the one full ensemble: no std
            teacher += f" ± {pct(std)}"
        per_teacher = " / ".join(pct(v, signed=True) for v in row["delta_vs_full_per_teacher_seed"].values())
        delta = f"{pct(row['delta_vs_full_mean'], signed=True)} ± {pct(row['delta_vs_full_se'])}"
        if row["arm"] == REFERENCE:
            delta = per_teacher = "—"
        student = f"{pct(row['student_accuracy_mean'])} ± {pct(row['student_accuracy_std'])}"
        cells.append([row["arm"], teacher, student, row["n"], delta, per_teacher, row["reading"]])
    header = ["arm", "teacher acc.", "student acc. (mean ± std)", "n", "Δ vs T^full (± SE)"]
    lines += markdown_table([*header, "Δ per teacher seed", "reading"], cells)
    lines += [
        "",
        *(
            [
                f"T* (MI): the checkpoint hf_ckd.selection picked for each teacher seed ({args.mi_estimator}, "
                "penultimate features, probe = training split): "
                + " / ".join(", ".join(t["arm_checkpoints"].get("T* (MI)", [])) for t in teachers)
                + "; its verdicts: "
                + " / ".join(t.get("selection_verdict") or "—" for t in teachers)
                + ". Scores in teachers/seed-k/selection.json.",
                "",
            ]
            if args.mi_selection
            else []
        ),
        *ensemble_notes(args, pooled, claim),
        f"Teacher acc.: the arm's checkpoint (or ensemble, {AVERAGED[args.ensemble_average]} averaged at tau = 1) "
        "on the test split, mean ± std over teacher seeds. Reading: a Δ within 2 SE is noise. The SE treats every run as "
        "independent, but runs that share a teacher are not, so a Δ whose sign changes across teacher seeds is "
        "read as noise too.",
        "",
        "## Teacher trajectory",
        "",
    ]
    cells = []
    for i, checkpoint in enumerate(teachers[0]["checkpoints"]):
        accs = [t["checkpoints"][i]["accuracy"] for t in teachers]
        mean, std = mean_std(accs)
        across = pct(mean) + (f" ± {pct(std)}" if len(accs) > 1 else "")
        cells.append(
            [f"{checkpoint['fraction']:.2f}", checkpoint["step"], across, " / ".join(map(pct, accs))]
        )
    header = ["fraction", "step", "test acc. (mean ± std over teacher seeds)", "per teacher seed"]
    lines += markdown_table(header, cells)
    machine = meta["machine"]
    lines += [
        "",
        f"Wall time {meta['wall_time_s']:.0f} s on {machine['cpu_cores']} CPU core(s), no GPU "
        f"({machine['platform']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"{machine['workers']} worker process(es) x {machine['torch_threads_per_worker']} torch thread(s)).",
        "",
    ]
    return "\n".join(lines)


# ---- running the runs: in worker processes or inline ----------------------------------------------------

_WORKER: dict = {}  # per process: the arguments, the data and the metric


def init_worker(args: DemoArguments) -> None:
    """Set up a process (a pool worker, or the main process with num_workers=1) to train teachers and students."""
    from hf_ckd.metrics import classification_metrics

    quiet_process(args.torch_threads)
    train, test = load_digits_splits(args.train_size, args.split_seed)
    _WORKER.update(args=args, train=train, test=test, compute_metrics=classification_metrics())
    # Trainer runs gc.collect() at the start of every train(); with the libraries' objects frozen out of the
    # collector's reach it costs milliseconds instead of ~0.25 s per student run.
    gc.freeze()


def run_task(task: dict) -> dict:
    """Train one teacher (``task["kind"] == "teacher"``) or one student; returns the task with its result."""
    w = _WORKER
    if task["kind"] == "teacher":
        train_teacher(
            w["args"], task["teacher_seed"], task["teacher_dir"], w["train"], w["test"], w["compute_metrics"]
        )
        return task
    accuracy = distill_student(
        w["args"],
        task["arm"],
        task["teacher_dir"],
        task["student_seed"],
        w["train"],
        w["test"],
        w["compute_metrics"],
    )
    return {**task, "accuracy": accuracy}


def select_teacher(
    teacher_dir: str, train, arms: list[dict], estimator: str = "probe"
) -> tuple[list[dict], str | None]:
    """Score the trajectory with hf_ckd.selection (``estimator``, probe = the training split), write
    selection.json, and return the arms with the T* arm's spec set to the selected checkpoint, and the
    selection's verdict (None without a T* arm)."""
    from hf_ckd import Trajectory
    from hf_ckd.mi import estimator_accepts
    from hf_ckd.selection import score_trajectory, select, write_selection

    if not any(arm["spec"] == MI_SPEC for arm in arms):
        return arms, None
    DigitsCNN, _ = model_classes()
    trajectory = Trajectory.from_local(teacher_dir)
    batches = [train[i : i + 256] for i in range(0, len(train), 256)]
    params = {"seed": 0} if estimator_accepts(estimator, "seed") else {}
    rows = score_trajectory(
        trajectory, batches, estimator=estimator, model_init=DigitsCNN, device="cpu", estimator_params=params,
        progress=False,
    )  # fmt: skip
    selected = select(rows)
    probe = {"dataset": "sklearn digits, training split", "samples": len(train)}
    content = write_selection(
        os.path.join(teacher_dir, "selection.json"), trajectory, rows, selected, estimator, "penultimate", probe,
        estimator_params=params,
    )  # fmt: skip
    arms = [dict(arm, spec=selected[0]) if arm["spec"] == MI_SPEC else arm for arm in arms]
    return arms, content["verdict"]["verdict"]


def describe_teacher(
    args: DemoArguments, seed: int, teacher_dir: str, arms: list[dict], test, metric
) -> dict:
    """The trajectory's checkpoints with their logged test accuracy, and each arm's teacher accuracy."""
    from hf_ckd import Trajectory

    trajectory = Trajectory.from_local(teacher_dir)
    taught = [arm for arm in arms if arm["spec"] is not None and not arm.get("across_teachers")]
    return {
        "seed": seed,
        "path": teacher_dir,
        "checkpoints": [
            {
                "name": c.name,
                "step": c.step,
                "fraction": c.fraction,
                "accuracy": c.metrics.get("eval_accuracy"),
            }
            for c in trajectory
        ],
        "arm_accuracy": {
            arm["name"]: teacher_accuracy(teacher_dir, arm["spec"], args.ensemble_average, test, metric)
            for arm in taught
        },
        "arm_checkpoints": {arm["name"]: [c.name for c in trajectory.select(arm["spec"])] for arm in taught},
    }


def describe_pooled(args: DemoArguments, arm: dict, teacher_dirs: list[str], test, metric) -> dict:
    """An ``across_teachers`` arm's one ensemble: the checkpoints it loads (``seed-k/checkpoint-<step>``, and
    their paths) and its teacher accuracy."""
    ensemble = teacher_ensemble(teacher_dirs, arm["spec"], args.ensemble_average)
    root = os.path.join(args.output_dir, "teachers")
    return {
        "spec": arm["spec"],
        "teacher_dirs": teacher_dirs,
        "checkpoints": [os.path.relpath(c.path, root) for c in ensemble.checkpoints],
        "checkpoint_paths": [c.path for c in ensemble.checkpoints],
        "weights": list(ensemble.weights),
        "average": ensemble.average,
        "accuracy": ensemble_accuracy(ensemble, test, metric),
    }


# ---- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> DemoArguments:
    (args,) = parse_dataclasses([DemoArguments], argv, description=__doc__.split("\n\n")[0])
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the demo; returns what it writes to ``output_dir/results.json``."""
    args = parse_args(argv)
    prepare_output_dir(
        args.output_dir,
        args.overwrite_output_dir,
        ["results.json", "results.md"],  # never leave an earlier run's results beside a new run
        folders=["teachers"] if args.overwrite_output_dir else [],  # an earlier run's trajectories
        refusal=". Pass --overwrite_output_dir to replace them, or choose another --output_dir.",
    )
    start = time.time()

    from tqdm.auto import tqdm

    from hf_ckd.metrics import load_accuracy

    quiet_process(args.torch_threads)
    train, test = load_digits_splits(args.train_size, args.split_seed)
    metric = load_accuracy()
    arms = args.arms()
    DigitsCNN, DigitsMLP = model_classes()
    meta = {
        "data": {
            "source": "sklearn.datasets.load_digits",
            "train_size": args.train_size,
            "test_size": len(test),
            "split": f"stratified, random_state={args.split_seed}",
        },
        "teacher_parameters": sum(p.numel() for p in DigitsCNN().parameters()),
        "student_parameters": sum(p.numel() for p in DigitsMLP().parameters()),
    }
    print(
        f"hf_ckd digits demo: {args.teacher_seeds} teacher(s) x {args.student_seeds} student seed(s) x "
        f"{len(arms)} arms ({', '.join(a['name'] for a in arms)}), {args.num_workers} worker(s) -> "
        f"{args.output_dir}",
        flush=True,
    )

    teachers, runs, pooled = {}, [], {}
    total = args.teacher_seeds * args.student_seeds * len(arms)
    teacher_dirs = args.teacher_dirs()

    def students(k: int, teacher_dir: str | list[str], arms: list[dict]) -> list[dict]:
        """The student runs of group k (seeds distinct across groups, shared by the arms: paired runs)."""
        return [
            {
                "kind": "student",
                "teacher_seed": k,
                "teacher_dir": teacher_dir,
                "student_seed": k * args.student_seeds + j,
                "arm": arm,
            }
            for j in range(args.student_seeds)
            for arm in arms
        ]

    with tqdm(total=total, desc="student runs", unit="run", dynamic_ncols=True) as bar:

        def collect(task: dict) -> list[dict]:
            """A student's accuracy, or a trained teacher: select, describe, and queue its students."""
            if task["kind"] == "student":
                runs.append({k: task[k] for k in ("teacher_seed", "student_seed", "accuracy")})
                runs[-1]["arm"] = task["arm"]["name"]
                bar.update()
                return []
            k, teacher_dir = task["teacher_seed"], task["teacher_dir"]
            teacher_arms, selection_verdict = select_teacher(teacher_dir, train, arms, args.mi_estimator)
            teachers[k] = describe_teacher(args, k, teacher_dir, teacher_arms, test, metric)
            teachers[k]["selection_verdict"] = selection_verdict
            final = teachers[k]["checkpoints"][-1]
            tqdm.write(
                f"teacher {k}: {len(teachers[k]['checkpoints'])} checkpoints, test accuracy "
                f"{pct(final['accuracy'])}% at step {final['step']}"
            )
            bar.set_postfix_str(f"{len(teachers)}/{args.teacher_seeds} teacher(s) trained")
            jobs = students(k, teacher_dir, [a for a in teacher_arms if not a.get("across_teachers")])
            if len(teachers) == args.teacher_seeds:  # all trained: the arms that ensemble every teacher
                for arm in (a for a in arms if a.get("across_teachers")):
                    pooled[arm["name"]] = describe_pooled(args, arm, teacher_dirs, test, metric)
                    tqdm.write(
                        f"{arm['name']}: {', '.join(pooled[arm['name']]['checkpoints'])}, test accuracy "
                        f"{pct(pooled[arm['name']]['accuracy'])}%"
                    )
                    # the same student seeds as every group's other arms: paired with teacher k's T^full
                    jobs += [
                        job for g in range(args.teacher_seeds) for job in students(g, teacher_dirs, [arm])
                    ]
            return jobs

        bar.set_postfix_str(f"training {args.teacher_seeds} teacher(s)")
        teacher_jobs = [
            {"kind": "teacher", "teacher_seed": k, "teacher_dir": d} for k, d in enumerate(teacher_dirs)
        ]
        with worker_pool(args.num_workers, init_worker, (args,)) as executor:
            run_jobs(executor, run_task, teacher_jobs, collect)

    teachers = [teachers[k] for k in sorted(teachers)]
    order = {arm["name"]: i for i, arm in enumerate(arms)}
    runs.sort(key=lambda r: (r["teacher_seed"], r["student_seed"], order[r["arm"]]))
    rows = summarise(args, arms, teachers, runs, pooled)
    claim = snapshot_vs_full_ensemble(arms, teachers, runs)
    meta["wall_time_s"] = round(time.time() - start, 1)
    meta["machine"] = describe_machine(args.num_workers, args.torch_threads)
    results = {
        "config": asdict(args),
        **meta,
        "arms": rows,
        "snapshot_vs_full_ensemble": claim,
        "teachers": teachers,
        "full_ensemble": pooled.get(FULL_ENSEMBLE),
        "runs": runs,
    }
    table = markdown(args, rows, teachers, meta, pooled, claim)
    results_json = os.path.join(args.output_dir, "results.json")
    write_text(os.path.join(args.output_dir, "results.md"), table)
    write_json(results_json, results)
    print("\n" + table)
    print(f"Wrote {results_json} and results.md.")
    return results


if __name__ == "__main__":
    try:
        main()
    except FileExistsError as err:
        sys.exit(f"error: {err}")
