"""What the recipes in ``hf_ckd.scripts`` share: argument parsing (with config files), the image data
arguments, the CIFAR schedule defaults, logging, and the standard ending of a Trainer run (the transformers
examples' train / save / metrics / state / eval / card / push)."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


def parse_recipe_args(parser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse ``argv`` with an ``HfArgumentParser``; a lone ``.json``/``.yaml`` argument is a config file."""
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


@dataclass
class ImageDataArguments:
    """Where the images come from and which columns hold them (the recipes' data arguments)."""

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
            "help": "A local dataset with the same columns: a save_to_disk folder, a data folder (imagefolder, "
            "parquet, csv, json) or a data file."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (empty: none)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column. Default: img or image."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column. Default: fine_label (CIFAR-100), label or labels."}
    )
    crop_padding: int = field(
        default=4, metadata={"help": "Images: padding of the random crop (0: no crop)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many eval rows."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train even if --output_dir already holds a finished run."}
    )

    def transformed_splits(self, timm_model, raw_train, raw_eval, num_labels: int | None):
        """Check the splits and attach train/eval transforms with ``timm_model``'s input size, mean and std.
        Returns ``(train, eval_or_None, num_labels)``."""
        import timm

        from ..data import image_classification_splits

        data_config = timm.data.resolve_data_config({}, model=timm_model)
        return image_classification_splits(
            raw_train,
            raw_eval,
            self.image_column,
            self.label_column,
            num_labels,
            data_config["mean"],
            data_config["std"],
            data_config["input_size"][-1],
            self.crop_padding,
        )

    def load_splits(self):
        """``(train, eval_or_None)`` raw splits, truncated to ``max_*_samples``."""
        from ..data import get_split, load_dataset_from_args

        raw = load_dataset_from_args(self.dataset_name, self.dataset_config_name, self.dataset_path)
        train = get_split(raw, self.train_split, "train_split")
        evaluation = get_split(raw, self.eval_split, "eval_split") if self.eval_split else None
        if self.max_train_samples is not None:
            train = train.select(range(min(self.max_train_samples, len(train))))
        if evaluation is not None and self.max_eval_samples is not None:
            evaluation = evaluation.select(range(min(self.max_eval_samples, len(evaluation))))
        return train, evaluation


@dataclass
class CifarScheduleDefaults:
    """Mixin for a ``TrainingArguments`` subclass: the standard CIFAR schedule as defaults (SGD momentum
    0.9, lr 0.05, weight decay 5e-4, 240 epochs, batch 64, lr x0.1 at epochs 150/180/210, a checkpoint and
    an evaluation every epoch). Put it before the ``TrainingArguments`` class in the bases."""

    learning_rate: float = field(default=0.05, metadata={"help": "Initial learning rate (SGD)."})
    num_train_epochs: float = field(default=240, metadata={"help": "Epochs to train."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (transformers OptimizerNames)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Trainer's scheduler, used when --lr_decay_epochs is empty."}
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to save a checkpoint: no, epoch or steps."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, epoch or steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns for the transforms."}
    )
    lr_decay_epochs: str = field(
        default="150,180,210",
        metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_rate."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Learning-rate decay factor."})


def log_distributed_setup(trainer) -> None:
    """One line per process: distributed type, process count, device (so a wrong launch shows at once)."""
    accelerator = trainer.accelerator
    logger.info(
        "Distributed type %s, %d processes, device %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device,
    )


def setup_logging(training_args) -> None:
    """Logging as the transformers examples set it up: to stdout, at the process's log level (info on the
    main process unless ``--log_level`` says otherwise), and one line per process on where it runs."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # log_level defaults to "passive", which keeps transformers' level: make it info, as the examples do.
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in ("hf_ckd", "__main__"):  # the library and the recipe (also when run with python -m)
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        "Process rank: %s, device: %s, n_gpu: %s, distributed training: %s, 16-bits training: %s",
        training_args.local_process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.fp16 or training_args.bf16,
    )
    logger.info("Training/evaluation parameters %s", training_args)


def last_checkpoint(output_dir: str, overwrite: bool) -> str | None:
    """The checkpoint an interrupted run left in ``output_dir`` (resumed as the transformers examples do),
    or ``None`` with ``overwrite`` or when there is none."""
    from transformers.trainer_utils import get_last_checkpoint

    if overwrite or not os.path.isdir(output_dir):
        return None
    checkpoint = get_last_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info("Resuming from %s; pass --overwrite_output_dir to start from scratch.", checkpoint)
    return checkpoint


def train_and_report(
    trainer, resume_from_checkpoint: str | None = None, perplexity: bool = False, **card_kwargs
) -> dict[str, float]:
    """Train, then save the model, the train and eval metrics (``all_results.json``), the state, and the
    model card, or push to the Hub with ``args.push_to_hub``. Returns the metrics."""
    checkpoint = trainer.args.resume_from_checkpoint or resume_from_checkpoint
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = dict(result.metrics)
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = len(trainer.eval_dataset)
        if perplexity and "eval_loss" in eval_metrics:
            try:
                eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"])
            except OverflowError:
                eval_metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    card_kwargs.setdefault("model_name", os.path.basename(os.path.normpath(trainer.args.output_dir)))
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)
    return metrics
