#!/usr/bin/env python
"""Distil a CIFAR-100 student from a teacher's checkpoints: the setting of Wang et al. 2022, *Efficient
Knowledge Distillation from Model Checkpoints* (arXiv:2210.06458, Table 3).

The teacher is a trajectory written by ``hf-ckd train_teacher`` (or any ``transformers.Trainer`` run of a
``TimmWrapperForImageClassification``); ``--teacher_checkpoints`` picks one checkpoint (``0.3``, ``0.5``,
``0.7``, ``last``) or a snapshot ensemble (``0.3,0.5,0.7``); ``--teacher_schedule progressive
--teacher_checkpoints all`` walks the trajectory instead (docs/progressive.md). The student is a timm
architecture (the CIFAR networks of ``hf_ckd.models`` are registered on import). Defaults are the standard
CIFAR schedule: SGD momentum 0.9, lr 0.05, weight decay 5e-4, 240 epochs, lr x0.1 at epochs 150/180/210,
batch 64, random crop 32 (padding 4) + horizontal flip + normalisation; top-1 accuracy through ``evaluate``.

Usage:

    accelerate launch -m hf_ckd.scripts.distill_cifar100 --teacher runs/wrn40_2 --teacher_checkpoints 0.5 \\
        --student_model cifar_wrn_16_2 --temperature 4 --alpha 0.5 --output_dir runs/wrn16_2_from_T0.5

    # any dataset with the same columns (an image column and an integer/ClassLabel label column)
    hf-ckd distill_cifar100 --dataset_path data/my_cifar_like --teacher runs/teacher ...

    hf-ckd distill_cifar100 config.yaml      # every argument from a YAML (or .json) file
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_ckd import CheckpointDistillConfig
from hf_ckd.scripts._common import (
    CifarScheduleDefaults,
    ImageDataArguments,
    parse_recipe_args,
    run_recipe,
)

logger = logging.getLogger(__name__)


@dataclass
class StudentArguments:
    student_model: str = field(
        default="cifar_wrn_40_1",
        metadata={
            "help": "timm architecture of the student, e.g. cifar_wrn_40_1, cifar_resnet32, cifar_mobilenetv2."
        },
    )
    drop_rate: float = field(default=0.0, metadata={"help": "Dropout before the student's classifier."})


@dataclass
class CacheArguments:
    cache_views: int = field(
        default=8,
        metadata={
            "help": "With --soft_target_cache: augmented views per image (the student sees epoch mod views)."
        },
    )
    cache_seed: int = field(
        default=0,
        metadata={"help": "Seed of the cached views (independent of --seed, so students share it)."},
    )
    cache_storage: str = field(default="probs", metadata={"help": "Cache storage: probs, topk or sampled."})
    cache_k: int | None = field(default=None, metadata={"help": "k of cache_storage topk / sampled."})


@dataclass
class CifarDistillConfig(CifarScheduleDefaults, CheckpointDistillConfig):
    """``CheckpointDistillConfig`` with the standard CIFAR schedule as defaults."""

    save_total_limit: int | None = field(default=2, metadata={"help": "Student checkpoints to keep."})


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(
        (StudentArguments, ImageDataArguments, CacheArguments, CifarDistillConfig),
        description=__doc__.split("\n\n")[0],
    )


def resolve_teachers(training_args: CifarDistillConfig, cache_ready: bool):
    """The run's teachers (``hf_ckd.build_teacher_source``): a static ensemble, a schedule's lazy
    checkpoints, or, once ``--soft_target_cache`` is built, the cache (no teacher loaded)."""
    from hf_ckd import build_teacher_source
    from hf_ckd.data import DataError

    if not training_args.teacher:
        raise DataError(
            "--teacher is required: the output_dir of the teacher's training run, or hub:ORG/NAME."
        )
    source = build_teacher_source(training_args, use_cache=cache_ready)
    names = ", ".join(f"{c.name} (T^{c.fraction:.2f})" for c in source.checkpoints)
    logger.info("Teachers (%s): %s", source.kind, names)
    return source


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), distil, and return the train and eval metrics."""
    student_args, data_args, cache_args, training_args = parse_recipe_args(
        make_parser(), sys.argv[1:] if argv is None else argv
    )

    import transformers
    from transformers import set_seed

    from hf_ckd import CheckpointDistillTrainer, build_teacher_source
    from hf_ckd import data as hf_data
    from hf_ckd.cache import build_soft_target_cache
    from hf_ckd.metrics import classification_metrics
    from hf_ckd.models import check_timm_architecture, timm_classifier
    from hf_ckd.optim import install_multistep_lr, parse_epochs
    from hf_ckd.scripts._common import last_checkpoint, log_distributed_setup, train_and_report

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    hf_data.guard_output_dir(training_args.output_dir, data_args.overwrite_output_dir)
    decay_epochs = parse_epochs(training_args.lr_decay_epochs)
    check_timm_architecture(student_args.student_model, "--student_model")

    # Teachers first: a broken trajectory fails before any data is read.
    cache_path = training_args.soft_target_cache
    teachers = resolve_teachers(training_args, cache_path is not None and os.path.isdir(cache_path))
    num_labels = teachers.output_size
    raw_train, raw_eval = data_args.load_splits()

    set_seed(training_args.seed)
    student = timm_classifier(
        student_args.student_model, num_labels, "--student_model", drop_rate=student_args.drop_rate
    )
    train, evaluation, _ = data_args.transformed_splits(student.timm_model, raw_train, raw_eval, num_labels)
    if evaluation is None:
        training_args.eval_strategy = "no"
    if cache_path is not None:
        # The student trains on replayed views; the cache is built once (first run) and reused by every student.
        train = replayed_train(student.timm_model, raw_train, data_args, cache_args)
        if teachers.kind != "cached":
            from accelerate import PartialState

            build_soft_target_cache(
                teachers.ensemble, raw_train, cache_path, transform=train.transform, collate_fn=hf_data.collate_images,
                temperature=training_args.temperature, views=cache_args.cache_views, seed=cache_args.cache_seed,
                storage=cache_args.cache_storage, k=cache_args.cache_k,
                batch_size=training_args.per_device_eval_batch_size, accelerator=PartialState(),
                num_workers=training_args.dataloader_num_workers,
            )  # fmt: skip
            # The loaded teachers are freed: from now on the targets come from the cache.
            teachers = build_teacher_source(training_args, trajectory=teachers.trajectory)

    trainer = CheckpointDistillTrainer(
        model=student,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=hf_data.collate_images,
        compute_metrics=classification_metrics(),
        teacher_source=teachers,
    )
    log_distributed_setup(trainer)
    if decay_epochs and training_args.lr_scheduler_type == "constant":
        install_multistep_lr(trainer, decay_epochs, training_args.lr_decay_rate)
    resume = last_checkpoint(training_args.output_dir, data_args.overwrite_output_dir)
    return train_and_report(trainer, resume, dataset=data_args.dataset_path or data_args.dataset_name)


def replayed_train(timm_model, raw_train, data_args, cache_args):
    """The training split as ``ReplayViews`` under the recipe's augmentation (what the cache is keyed by)."""
    import timm

    from hf_ckd import data as hf_data
    from hf_ckd.cache import ExampleTransform, ReplayViews

    data_config = timm.data.resolve_data_config({}, model=timm_model)
    image, label = hf_data.image_columns(raw_train, data_args.image_column, data_args.label_column)
    augment = hf_data.image_transform(
        True, data_config["mean"], data_config["std"], data_config["input_size"][-1], data_args.crop_padding
    )
    transform = ExampleTransform(augment, image, label, convert="RGB")
    return ReplayViews(raw_train, transform, views=cache_args.cache_views, seed=cache_args.cache_seed)


if __name__ == "__main__":
    sys.exit(run_recipe(main))
