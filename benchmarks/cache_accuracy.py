#!/usr/bin/env python
"""Does a student trained from the soft-target cache match one trained online from the same teachers?

The demo's digits task (``experiments/demo_digits.py``: a CNN teacher trajectory, an MLP student), with a
replayable augmentation (Gaussian pixel noise drawn from torch's RNG, ``views`` views per image) so that the
cache has something to replay. For every seed, two students with the same initialisation and batch order
distil the same snapshot ensemble: one online (teachers run every step on the replayed view), one from a
cache built once for those teachers, views and temperature. Test accuracy, mean ± std over seeds.

    python benchmarks/cache_accuracy.py --json benchmarks/cache_accuracy.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser


@dataclass
class BenchmarkArguments:
    seeds: int = field(default=5, metadata={"help": "Student seeds (paired across the two arms)."})
    views: int = field(default=4, metadata={"help": "Augmented views per training image."})
    noise: float = field(
        default=0.3, metadata={"help": "Std of the Gaussian pixel noise (standardised pixels)."}
    )
    spec: str = field(default="0.5,last", metadata={"help": "Teacher checkpoints (snapshot ensemble)."})
    epochs: float = field(default=8.0, metadata={"help": "Student epochs (each epoch sees the next view)."})
    json: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})


class PixelNoise:
    """``example -> example`` with N(0, std^2) noise added to ``pixel_values`` (torch RNG: replayable)."""

    def __init__(self, std: float):
        self.std = std

    def __call__(self, example: dict) -> dict:
        pixels = torch.as_tensor(example["pixel_values"], dtype=torch.float32)
        return {"pixel_values": pixels + self.std * torch.randn_like(pixels), "labels": example["labels"]}

    def __repr__(self) -> str:
        return f"PixelNoise(std={self.std})"


def load_demo():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "demo_digits.py")
    spec = importlib.util.spec_from_file_location("demo_digits", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_digits"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    demo = load_demo()
    from transformers import set_seed

    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, TeacherEnsemble, Trajectory
    from hf_ckd.cache import ReplayViews, build_soft_target_cache
    from hf_ckd.data import collate_images
    from hf_ckd.metrics import classification_metrics

    demo_args = demo.DemoArguments(output_dir="unused")
    DigitsCNN, DigitsMLP = demo.model_classes()
    train, test = demo.load_digits_splits(train_size=1000, seed=0)
    metrics = classification_metrics()
    workdir = tempfile.mkdtemp(prefix="cache_accuracy-")
    teacher_dir = os.path.join(workdir, "teacher")
    demo.train_teacher(demo_args, 0, teacher_dir, train, test, metrics)
    transform = PixelNoise(args.noise)
    teachers = TeacherEnsemble.from_trajectory(
        Trajectory.from_local(teacher_dir), args.spec, model_init=DigitsCNN
    )
    start = time.perf_counter()
    cache = os.path.join(workdir, "cache")
    build_soft_target_cache(
        teachers, train, cache, transform=transform, collate_fn=collate_images,
        temperature=demo_args.temperature, views=args.views, progress=False,
    )  # fmt: skip
    build_s = time.perf_counter() - start

    accuracy: dict[str, list[float]] = {"online": [], "cached": []}
    seconds: dict[str, float] = {"online": 0.0, "cached": 0.0}
    for seed in range(args.seeds):
        for arm in ("online", "cached"):
            config = CheckpointDistillConfig(
                output_dir=os.path.join(workdir, f"{arm}-{seed}"), seed=seed, teacher=teacher_dir,
                teacher_checkpoints=args.spec, temperature=demo_args.temperature, alpha=demo_args.alpha,
                num_train_epochs=args.epochs, per_device_train_batch_size=demo_args.batch_size,
                learning_rate=demo_args.student_learning_rate, save_strategy="no", logging_strategy="no",
                soft_target_cache=cache if arm == "cached" else None, **demo.common_args(),
            )  # fmt: skip
            set_seed(seed)
            trainer = CheckpointDistillTrainer(
                model=DigitsMLP(), args=config, train_dataset=ReplayViews(train, transform, views=args.views),
                eval_dataset=test, data_collator=collate_images, compute_metrics=metrics,
                teacher_model_init=DigitsCNN if arm == "online" else None,
            )  # fmt: skip
            start = time.perf_counter()
            demo.quiet(trainer).train()
            seconds[arm] += time.perf_counter() - start
            accuracy[arm].append(trainer.evaluate()["eval_accuracy"])
            print(f"seed {seed} {arm}: {accuracy[arm][-1]:.4f}", flush=True)

    result = {
        "settings": {**vars(args), "temperature": demo_args.temperature, "alpha": demo_args.alpha},
        "accuracy": accuracy,
        "summary": {
            arm: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for arm, v in accuracy.items()
        },
        "paired_difference": [c - o for o, c in zip(accuracy["online"], accuracy["cached"])],
        "train_seconds": seconds,
        "cache_build_seconds": build_s,
    }
    for arm, s in result["summary"].items():
        print(f"{arm}: {s['mean']:.4f} ± {s['std']:.4f} (train {seconds[arm]:.0f} s)")
    print(f"cached - online, per seed: {[round(d, 4) for d in result['paired_difference']]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
