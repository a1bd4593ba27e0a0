#!/usr/bin/env python
"""What teachers cost a KD step: online (loop or fused) against targets read from a soft-target cache.

In one process, on one batch shape, with warm-up and the median of interleaved repeats:

* the time of a student-only step (forward, cross-entropy, backward, SGD step);
* the ratio to it of a KD step with M = 1, 2, 4 teachers: ``online_loop`` (M teacher forwards one after
  the other), ``online_fused`` (one ``vmap`` over the stacked checkpoints), ``cached`` (targets looked up in
  a ``SoftTargetCache`` built for those teachers);
* the cache build's throughput (examples/s: PNG decoding, the augmentation, the teacher forwards and the
  Arrow writes) as a ratio to raw teacher inference throughput on the same examples (batches already
  decoded, augmented and collated), each measured ``build_repeats`` times, interleaved, after a warm-up.

The data are CIFAR-shaped: a ``datasets.Dataset`` of 32 x 32 PNG images with a ``ClassLabel`` column and
the recipes' augmentation (``hf_ckd.data.image_transform``: crop with padding, flip, normalise), which is
what ``distill_cifar100.py --soft_target_cache`` builds from.

The teachers are M copies of a bigger CIFAR network with different random weights (their cost does not
depend on what they learnt); the student is a small one.

    python benchmarks/teacher_cost.py --json benchmarks/teacher_cost.json
    python benchmarks/teacher_cost.py --quick
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import HfArgumentParser

import hf_ckd.models  # noqa: F401  (registers the CIFAR networks with timm)
from hf_ckd._constants import CIFAR100_MEAN, CIFAR100_STD
from hf_ckd.cache import ExampleTransform, SoftTargetCache, build_soft_target_cache
from hf_ckd.data import collate_images, image_transform
from hf_ckd.losses import ensemble_kd_loss
from hf_ckd.models import timm_classifier
from hf_ckd.teachers import TeacherEnsemble
from hf_ckd.trajectory import Checkpoint


@dataclass
class BenchmarkArguments:
    batch_size: int = field(default=64, metadata={"help": "Images per step (3 x 32 x 32)."})
    student: str = field(default="cifar_resnet20", metadata={"help": "Student architecture (timm name)."})
    teacher: str = field(default="cifar_wrn_40_2", metadata={"help": "Teacher architecture (timm name)."})
    num_classes: int = field(default=100, metadata={"help": "Label space."})
    teachers: str = field(default="1,2,4", metadata={"help": "Ensemble sizes M."})
    repeats: int = field(default=7, metadata={"help": "Timed repeats per variant (median)."})
    warmup: int = field(default=2, metadata={"help": "Untimed steps per variant first."})
    build_examples: int = field(default=512, metadata={"help": "Examples in the cache-build measurement."})
    build_repeats: int = field(default=3, metadata={"help": "Timed cache builds (and inference passes)."})
    build_workers: int = field(
        default=0, metadata={"help": "DataLoader workers of the cache build (0: data read between forwards)."}
    )
    temperature: float = field(default=4.0, metadata={"help": "tau."})
    threads: int = field(default=0, metadata={"help": "torch threads (0: leave as is)."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    quick: bool = field(default=False, metadata={"help": "Small shape, for the tests."})
    json: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})

    def apply_quick(self) -> None:
        if self.quick:
            self.batch_size, self.teacher, self.teachers, self.num_classes = 8, "cifar_resnet20", "1,2", 10
            self.repeats, self.warmup, self.build_examples, self.build_repeats = 3, 1, 32, 1

    @property
    def sizes(self) -> list[int]:
        return [int(m) for m in self.teachers.split(",") if m.strip()]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_teachers(args: BenchmarkArguments, m: int, fusion: str, workdir: str) -> TeacherEnsemble:
    """M teachers with different random weights, saved as checkpoints (the cache fingerprints their files)."""
    models, checkpoints = [], []
    for seed in range(m):
        torch.manual_seed(seed)
        model = timm_classifier(args.teacher, args.num_classes, "--teacher")
        path = os.path.join(workdir, f"teacher-{seed}")
        if not os.path.isdir(path):
            model.save_pretrained(path)
        model = model.to(args.device).eval()
        model.requires_grad_(False)
        models.append(model)
        checkpoints.append(Checkpoint(name=f"teacher-{seed}", path=path, step=seed))
    return TeacherEnsemble(models, checkpoints, fusion=fusion)


def build_cache(
    args: BenchmarkArguments, teachers: TeacherEnsemble, data, transform, path: str
) -> SoftTargetCache:
    return build_soft_target_cache(
        teachers, data, path, transform=transform, collate_fn=collate_images, temperature=args.temperature,
        batch_size=args.batch_size, num_workers=args.build_workers, progress=False, overwrite=True,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    args.apply_quick()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    rng = np.random.default_rng(0)
    n_images = max(args.build_examples, args.batch_size)
    data = Dataset.from_dict(
        {
            "img": [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n_images)],
            "fine_label": rng.integers(0, args.num_classes, n_images).tolist(),
        },
        features=Features({"img": Image(), "fine_label": ClassLabel(num_classes=args.num_classes)}),
    )  # fmt: skip
    augment = image_transform(True, CIFAR100_MEAN, CIFAR100_STD, 32, 4)
    transform = ExampleTransform(augment, "img", "fine_label", convert="RGB")

    torch.manual_seed(0)
    student = timm_classifier(args.student, args.num_classes, "--student").to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batch = collate_images([transform(data[i]) for i in range(args.batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    index = torch.arange(args.batch_size)
    view = torch.zeros(args.batch_size, dtype=torch.long)

    def student_step(log_target=None, teacher_logits=()):
        logits = student(pixel_values=batch["pixel_values"]).logits
        loss, _ = ensemble_kd_loss(
            logits, list(teacher_logits), batch["labels"], temperature=args.temperature,
            alpha=1.0 if log_target is None and not teacher_logits else 0.5, log_target=log_target,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    variants = {"student": lambda: student_step()}
    workdir = tempfile.mkdtemp(prefix="teacher_cost-")
    for m in args.sizes:
        loop = make_teachers(args, m, "loop", workdir)
        fused = TeacherEnsemble(loop.models, loop.checkpoints, fusion="vmap")
        variants[f"online_loop/{m}"] = lambda t=loop: student_step(teacher_logits=t.logits(batch))
        if m > 1:
            variants[f"online_fused/{m}"] = lambda t=fused: student_step(teacher_logits=t.logits(batch))
        cache = build_cache(args, loop, data, transform, os.path.join(workdir, f"cache-{m}"))
        variants[f"cached/{m}"] = lambda c=cache: student_step(
            log_target=c.log_targets(index, view).to(device)
        )

    for fn in variants.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    student_s = median["student"]
    ratios: dict[str, dict[str, float]] = {"online_loop": {}, "online_fused": {}, "cached": {}}
    for name, t in median.items():
        if "/" in name:
            kind, m = name.split("/")
            ratios[kind][m] = round(t / student_s, 3)
    if "1" in ratios["online_loop"]:  # one teacher: nothing to fuse
        ratios["online_fused"].setdefault("1", ratios["online_loop"]["1"])

    # Build throughput against raw inference of the same teachers on the same examples, for M = max.
    m = max(args.sizes)
    teachers = make_teachers(args, m, "loop", workdir)
    batches = [
        {k: v.to(device) for k, v in collate_images([transform(data[i]) for i in range(s, min(s + args.batch_size, n_images))]).items()}
        for s in range(0, n_images, args.batch_size)
    ]  # fmt: skip

    def inference() -> None:
        with torch.inference_mode():
            for b in batches:
                teachers.log_targets(b, args.temperature)

    cache_dir = os.path.join(workdir, "cache-build")
    build_s, inference_s = [], []
    inference()  # warm-up (the build's warm-up was the cache built above)
    for r in range(args.build_repeats):
        order = [
            ("build", lambda: build_cache(args, teachers, data, transform, cache_dir)),
            ("inference", inference),
        ]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            (build_s if name == "build" else inference_s).append(time.perf_counter() - start)
    build_time, inference_time = statistics.median(build_s), statistics.median(inference_s)
    build_vs_inference = round(inference_time / build_time, 3)

    machine = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    result = {
        "machine": machine,
        "shape": [args.batch_size, 3, 32, 32],
        "student": args.student,
        "teacher": args.teacher,
        "student_step_s": round(student_s, 5),
        "ratios": ratios,
        "build_vs_inference": build_vs_inference,
        "build_examples_per_s": round(n_images / build_time, 1),
        "inference_examples_per_s": round(n_images / inference_time, 1),
        "build_workers": args.build_workers,
    }
    print(f"{machine}; batch {args.batch_size}x3x32x32, student {args.student}, teachers {args.teacher}")
    print(f"student-only step: {student_s * 1000:.1f} ms")
    for kind, by_m in ratios.items():
        print(f"{kind:>13}: " + "  ".join(f"M={k}: {v:.2f}x" for k, v in by_m.items()))
    print(
        f"cache build: {result['build_examples_per_s']} ex/s vs raw inference "
        f"{result['inference_examples_per_s']} ex/s ({build_vs_inference:.2f}x), M={m}"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
