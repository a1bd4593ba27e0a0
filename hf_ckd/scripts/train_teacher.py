#!/usr/bin/env python
"""Train a teacher with a plain ``transformers.Trainer`` and keep its whole trajectory.

Every checkpoint is kept (``save_total_limit`` is refused), so ``hf_ckd.Trajectory.from_local(output_dir)``
can read the run and any intermediate checkpoint can teach later.

Image models are timm architectures trained through ``TimmWrapperForImageClassification`` (the CIFAR
networks of ``hf_ckd.models`` are registered on import); text models are any ``AutoModelFor...`` for
sequence classification or causal language modelling.

Usage:

    # the CIFAR-100 teacher of Wang et al. 2022 (arXiv:2210.06458): WRN-40-2, 240 epochs, SGD, lr x0.1 at
    # 150/180/210, a checkpoint every epoch
    accelerate launch -m hf_ckd.scripts.train_teacher --model_name cifar_wrn_40_2 \\
        --dataset_name uoft-cs/cifar100 --output_dir runs/wrn40_2

    # a text classifier from a config, on a local dataset with text/label columns
    hf-ckd train_teacher --model_name path/to/config_dir --from_scratch --task text-classification \\
        --dataset_path data/my_text --output_dir runs/text_teacher --num_train_epochs 5

    hf-ckd train_teacher config.yaml      # every argument from a YAML (or .json) file
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from hf_ckd.scripts._common import (
    CifarScheduleDefaults,
    ImageDataArguments,
    parse_recipe_args,
    run_recipe,
)

logger = logging.getLogger(__name__)
TASKS = ("image-classification", "text-classification", "causal-lm")


@dataclass
class ModelArguments:
    model_name: str = field(
        metadata={
            "help": "A timm architecture (e.g. cifar_wrn_40_2, resnet18) for image classification, or a transformers "
            "model id / local folder for text."
        }
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "image-classification, text-classification or causal-lm. Default: image-classification for timm "
            "architectures, else read from the model config's architectures.",
            "choices": list(TASKS),
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Text models: build from the config with random weights instead of loading weights."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer id or folder (text tasks). Default: --model_name."}
    )
    drop_rate: float = field(default=0.0, metadata={"help": "timm models: dropout before the classifier."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modelling code from the Hub (text models). Off by default."},
    )


@dataclass
class DataArguments(ImageDataArguments):
    """Image arguments (shared with distill_cifar100.py) plus the text ones."""

    text_column: str | None = field(
        default=None, metadata={"help": "Text column. Default: text or sentence."}
    )
    max_length: int = field(default=128, metadata={"help": "Text classification: tokens per example."})
    block_size: int = field(default=128, metadata={"help": "Causal LM: tokens per training block."})


@dataclass
class TeacherTrainingArguments(CifarScheduleDefaults, TrainingArguments):
    """``TrainingArguments`` with the CIFAR teacher schedule as defaults and a checkpoint every epoch."""


def infer_task(model_name: str, trust_remote_code: bool) -> str:
    """image-classification for a timm architecture; for a transformers model, causal-lm when its config is
    a causal LM's (hf_ckd.modeling.model_task), else text-classification (a pretrained encoder such as a
    ``BertForMaskedLM`` checkpoint gets a classification head)."""
    import timm

    from hf_ckd.modeling import CAUSAL_LM, model_task

    if timm.is_model(model_name):
        return "image-classification"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        from hf_ckd.data import DataError

        raise DataError(
            f"--model_name '{model_name}' is neither a timm architecture nor a transformers model id or folder "
            f"({type(err).__name__}: {str(err).splitlines()[0]})."
        ) from err
    return CAUSAL_LM if model_task(config) == CAUSAL_LM else "text-classification"


def build_image_task(model_args, data_args, raw_train, raw_eval):
    from hf_ckd import data
    from hf_ckd.models import timm_classifier

    _, label = data.image_columns(raw_train, data_args.image_column, data_args.label_column)
    num_labels = data.num_classes_of(raw_train, label)
    model = timm_classifier(model_args.model_name, num_labels, "--model_name", drop_rate=model_args.drop_rate)
    train, evaluation, _ = data_args.transformed_splits(model.timm_model, raw_train, raw_eval, num_labels)
    return model, train, evaluation, data.collate_images, None


def build_text_task(model_args, data_args, task, raw_train, raw_eval):
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
    )

    from hf_ckd import data
    from hf_ckd.modeling import auto_model_class

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name, trust_remote_code=model_args.trust_remote_code
    )
    text = data.text_column(raw_train, data_args.text_column)
    if task == "causal-lm":
        train = data.tokenize_for_causal_lm(raw_train, tokenizer, text, data_args.block_size)
        evaluation = (
            None
            if raw_eval is None
            else data.tokenize_for_causal_lm(raw_eval, tokenizer, text, data_args.block_size)
        )
        config_kwargs = {}
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    else:
        label = data.label_column(raw_train, data_args.label_column)
        config_kwargs = {"num_labels": data.num_classes_of(raw_train, label)}
        if raw_eval is not None:
            data.check_label_space(raw_eval, data.label_column(raw_eval, label), config_kwargs["num_labels"])
        train = data.tokenize_for_classification(raw_train, tokenizer, text, label, data_args.max_length)
        evaluation = (
            None
            if raw_eval is None
            else data.tokenize_for_classification(raw_eval, tokenizer, text, label, data_args.max_length)
        )
        collator = DataCollatorWithPadding(tokenizer)
    config = AutoConfig.from_pretrained(
        model_args.model_name, trust_remote_code=model_args.trust_remote_code, **config_kwargs
    )
    auto = auto_model_class(config, task)
    if model_args.from_scratch:
        model = auto.from_config(config, trust_remote_code=model_args.trust_remote_code)
    else:
        model = auto.from_pretrained(
            model_args.model_name, config=config, trust_remote_code=model_args.trust_remote_code
        )
    return model, train, evaluation, collator, tokenizer


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(
        (ModelArguments, DataArguments, TeacherTrainingArguments), description=__doc__.split("\n\n")[0]
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), train, and return the train and eval metrics."""
    model_args, data_args, training_args = parse_recipe_args(
        make_parser(), sys.argv[1:] if argv is None else argv
    )

    import transformers
    from transformers import Trainer, set_seed

    import hf_ckd.models  # noqa: F401  (registers the CIFAR architectures with timm)
    from hf_ckd import data
    from hf_ckd.metrics import classification_metrics
    from hf_ckd.optim import install_multistep_lr, parse_epochs
    from hf_ckd.scripts._common import last_checkpoint, log_distributed_setup, train_and_report

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    if training_args.save_total_limit is not None:
        raise data.DataError(
            "--save_total_limit deletes checkpoints; leave it unset to keep the whole trajectory."
        )
    if training_args.save_strategy == "no":
        raise data.DataError("--save_strategy no keeps no trajectory; use epoch or steps.")
    data.guard_output_dir(training_args.output_dir, data_args.overwrite_output_dir)
    decay_epochs = parse_epochs(training_args.lr_decay_epochs)
    set_seed(training_args.seed)

    task = model_args.task or infer_task(model_args.model_name, model_args.trust_remote_code)
    raw_train, raw_eval = data_args.load_splits()
    if task == "image-classification":
        model, train, evaluation, collator, tokenizer = build_image_task(
            model_args, data_args, raw_train, raw_eval
        )
    else:
        model, train, evaluation, collator, tokenizer = build_text_task(
            model_args, data_args, task, raw_train, raw_eval
        )
    if evaluation is None:
        training_args.eval_strategy = "no"

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=classification_metrics(token_level=task == "causal-lm"),
    )
    log_distributed_setup(trainer)
    if decay_epochs and training_args.lr_scheduler_type == "constant":
        install_multistep_lr(trainer, decay_epochs, training_args.lr_decay_rate)
    resume = last_checkpoint(training_args.output_dir, data_args.overwrite_output_dir)
    return train_and_report(trainer, resume, perplexity=task == "causal-lm")


if __name__ == "__main__":
    sys.exit(run_recipe(main))
