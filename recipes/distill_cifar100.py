#!/usr/bin/env python
"""Distil a CIFAR-100 student from a teacher's checkpoints: the setting of Wang et al., *Efficient Knowledge
Distillation from Model Checkpoints* (seed 001, Table 3).

The teacher is a trajectory written by ``recipes/train_teacher.py`` (or any ``transformers.Trainer`` run of
a ``TimmWrapperForImageClassification``); ``--teacher_checkpoints`` picks one checkpoint (``0.3``, ``0.5``,
``0.7``, ``last``) or a snapshot ensemble (``0.3,0.5,0.7``). The student is a timm architecture (the CIFAR
networks of ``hf_ckd.models`` are registered on import). Defaults are the standard CIFAR schedule: SGD
momentum 0.9, lr 0.05, weight decay 5e-4, 240 epochs, lr x0.1 at epochs 150/180/210, batch 64, random
crop 32 (padding 4) + horizontal flip + normalisation; top-1 accuracy through ``evaluate``.

    accelerate launch recipes/distill_cifar100.py --teacher runs/wrn40_2 --teacher_checkpoints 0.5 \\
        --student_model cifar_wrn_16_2 --temperature 4 --alpha 0.5 --output_dir runs/wrn16_2_from_T0.5

    # any dataset with the same columns (an image column and an integer/ClassLabel label column)
    python recipes/distill_cifar100.py --dataset_path data/my_cifar_like --teacher runs/teacher ...

A lone ``.json`` or ``.yaml`` argument is read as the configuration file.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_ckd import CheckpointDistillConfig

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
class DataArguments:
    dataset_name: str | None = field(
        default="uoft-cs/cifar100",
        metadata={"help": "A dataset on the Hub (ignored when --dataset_path is set)."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "A local dataset with the same columns: a save_to_disk folder, an imagefolder, or data files."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (empty: none)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column. Default: img or image."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column. Default: fine_label (CIFAR-100), label or labels."}
    )
    crop_padding: int = field(default=4, metadata={"help": "Padding of the random 32x32 crop (0: no crop)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many eval rows."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train even if --output_dir already holds a finished run."}
    )


@dataclass
class CifarDistillConfig(CheckpointDistillConfig):
    """``CheckpointDistillConfig`` with the standard CIFAR schedule as defaults."""

    learning_rate: float = field(default=0.05, metadata={"help": "Initial learning rate (SGD)."})
    num_train_epochs: float = field(default=240, metadata={"help": "Epochs to train."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (transformers OptimizerNames)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Scheduler when --lr_decay_epochs is empty."}
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to save a checkpoint: no, epoch or steps."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, epoch or steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Student checkpoints to keep."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns for the transforms."}
    )
    lr_decay_epochs: str = field(
        default="150,180,210",
        metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_rate."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Learning-rate decay factor."})


def parse_args(argv: list[str]):
    parser = HfArgumentParser((StudentArguments, DataArguments, CifarDistillConfig))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    student_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)

    import timm
    import transformers
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, set_seed

    import hf_ckd.models  # noqa: F401  (registers the CIFAR architectures with timm)
    from hf_ckd import CheckpointDistillTrainer, Trajectory
    from hf_ckd import data as hf_data
    from hf_ckd.metrics import classification_metrics
    from hf_ckd.optim import install_multistep_lr, parse_epochs
    from hf_ckd.teachers import TeacherEnsemble

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    hf_data.guard_output_dir(training_args.output_dir, data_args.overwrite_output_dir)
    decay_epochs = parse_epochs(training_args.lr_decay_epochs)
    if not timm.is_model(student_args.student_model):
        close = timm.list_models(f"*{student_args.student_model.split('_')[0]}*")[:8]
        raise hf_data.DataError(
            f"--student_model '{student_args.student_model}' is not a timm architecture; close ones: {close}."
        )
    if not training_args.teacher:
        raise hf_data.DataError("--teacher is required: the output_dir of the teacher's training run.")

    # Teachers first: a broken trajectory fails before any data is read.
    trajectory = Trajectory.from_local(training_args.teacher)
    teachers = TeacherEnsemble.from_trajectory(
        trajectory,
        training_args.teacher_checkpoints,
        training_args.teacher_weights,
        training_args.ensemble_average,
        dtype=training_args.teacher_dtype,
        trust_remote_code=training_args.teacher_trust_remote_code,
        allow_unsafe_pickle=training_args.teacher_allow_unsafe_pickle,
    )
    logger.info("Teachers: %s", ", ".join(f"{c.name} (T^{c.fraction:.2f})" for c in teachers.checkpoints))

    raw = hf_data.load_dataset_from_args(
        data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_path
    )
    raw_train = hf_data.get_split(raw, data_args.train_split, "train_split")
    raw_eval = hf_data.get_split(raw, data_args.eval_split, "eval_split") if data_args.eval_split else None
    if data_args.max_train_samples is not None:
        raw_train = raw_train.select(range(min(data_args.max_train_samples, len(raw_train))))
    if raw_eval is not None and data_args.max_eval_samples is not None:
        raw_eval = raw_eval.select(range(min(data_args.max_eval_samples, len(raw_eval))))

    set_seed(training_args.seed)
    num_labels = teachers.output_size
    student = TimmWrapperForImageClassification(
        TimmWrapperConfig(
            architecture=student_args.student_model,
            num_labels=num_labels,
            model_args={"drop_rate": student_args.drop_rate},
        )
    )
    if hasattr(
        student.timm_model, "init_weights"
    ):  # transformers re-initialises from a config; restore timm's
        student.timm_model.init_weights()
    data_config = timm.data.resolve_data_config({}, model=student.timm_model)
    train, evaluation, _ = hf_data.image_classification_splits(
        raw_train,
        raw_eval,
        data_args.image_column,
        data_args.label_column,
        num_labels,
        data_config["mean"],
        data_config["std"],
        data_config["input_size"][-1],
        data_args.crop_padding,
    )
    if evaluation is None:
        training_args.eval_strategy = "no"

    trainer = CheckpointDistillTrainer(
        model=student,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=hf_data.collate_images,
        compute_metrics=classification_metrics(),
        teachers=teachers,
    )
    accelerator = trainer.accelerator
    logger.info(
        "Distributed type %s, %d processes, device %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device,
    )
    if decay_epochs and training_args.lr_scheduler_type == "constant":
        install_multistep_lr(trainer, decay_epochs, training_args.lr_decay_rate)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = dict(result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if evaluation is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.create_model_card(
        model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
        dataset=data_args.dataset_path or data_args.dataset_name,
    )
    return metrics


if __name__ == "__main__":
    main()
