#!/usr/bin/env python
"""Distil a transformers text model from a teacher's checkpoints (one intermediate checkpoint or a snapshot
ensemble of several) with `CheckpointDistillTrainer`.

Two tasks, picked with `--task` or read from the teacher checkpoint's `config.json` (`architectures`):
`text-classification` (KD over the classes; `--text_column`/`--label_column`, texts truncated to
`--max_length`) and `causal-lm` (token-level KD over the shared vocabulary; texts concatenated and cut into
`--block_size` blocks as in transformers' `run_clm.py`). The student is any `AutoModelFor…` model, loaded
pretrained from `--student_model_name_or_path` or built from its config with `--student_from_scratch`
(changed with `--student_config_overrides "hidden_size=128,num_hidden_layers=2"`); it predicts over the
teacher's label space. The checks live in `hf_ckd.text`; docs/recipes_text.md has every argument.

Usage:

    hf-ckd distill_text --teacher runs/bert_teacher --teacher_checkpoints 0.5,last \\
        --student_model_name_or_path google/bert_uncased_L-2_H-128_A-2 \\
        --dataset_name stanfordnlp/sst2 --text_column sentence --eval_split validation \\
        --temperature 4 --alpha 0.5 --num_train_epochs 3 --output_dir runs/student

    accelerate launch -m hf_ckd.scripts.distill_text --teacher runs/gpt2_teacher \\
        --teacher_checkpoints 0.3,0.5,last --student_model_name_or_path openai-community/gpt2 \\
        --student_from_scratch --student_config_overrides "n_layer=4,n_embd=256" \\
        --dataset_name Salesforce/wikitext --dataset_config_name wikitext-2-raw-v1 --output_dir runs/lm

    hf-ckd distill_text config.yaml      # every argument from a YAML (or .json) file

Bad input (an unknown student, missing columns, a label space or vocabulary that does not match, an
`--output_dir` holding a finished run) stops with an error naming the argument before anything is written.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_ckd.config import CheckpointDistillConfig
from hf_ckd.modeling import PIPELINE_TAGS
from hf_ckd.scripts._common import parse_recipe_args, run_recipe
from hf_ckd.text import TASKS

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which student to build, from what, and with which tokenizer."""

    student_model_name_or_path: str = field(
        metadata={
            "help": "The student: a Hub id or a folder with a config.json (and weights, unless scratch)."
        }
    )
    student_from_scratch: bool = field(
        default=False,
        metadata={"help": "Build the student from its config with fresh weights instead of pretrained ones."},
    )
    student_config_overrides: str | None = field(
        default=None,
        metadata={"help": "Student config changes, e.g. 'hidden_size=128,num_hidden_layers=2,num_labels=4'."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (Hub id or folder). Default: the first selected teacher checkpoint's, the --teacher "
            "folder's, then the student's. Teacher and student read the same ids: use the teacher's tokenizer."
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "Default: read from the teacher's config.json architectures.",
            "choices": list(TASKS),
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Revision of a Hub student and tokenizer."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache of downloaded models and datasets."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow the student's/tokenizer's custom code (teachers: --teacher_trust_remote_code)."
        },
    )

    def __post_init__(self):
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"--task must be one of {list(TASKS)} (or unset), got {self.task!r}.")


@dataclass
class DataArguments:
    """Which data to distil on and how to cut it."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub."})
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A local dataset: a save_to_disk folder, a data folder or one data file."},
    )
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str | None = field(
        default="validation",
        metadata={"help": "The split to evaluate on; 'none' skips evaluation."},
    )
    validation_split_percentage: int | None = field(
        default=None, metadata={"help": "Percent of --train_split held out when there is no --eval_split."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Default: text, sentence or content."})
    label_column: str | None = field(default=None, metadata={"help": "Default: fine_label, label or labels."})
    max_length: int = field(default=128, metadata={"help": "text-classification: tokens per text."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "causal-lm: tokens per block. Default: min(1024, tokenizer, models' positions)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "First N train examples/blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "First N eval examples/blocks."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train over an --output_dir that holds a finished run."}
    )
    cache_k: int = field(
        default=1024,
        metadata={"help": "causal-lm with --soft_target_cache: teacher ids stored per position."},
    )
    cache_num_uniform: int | None = field(
        default=None,
        metadata={
            "help": "causal-lm with --soft_target_cache: uniform ids per position. Default: cache_k // 2."
        },
    )

    def __post_init__(self):
        if not self.dataset_name and not self.dataset_path:
            raise ValueError(
                "No data: pass --dataset_name (a Hub dataset) or --dataset_path (a local dataset)."
            )
        if self.eval_split is not None and self.eval_split.strip().lower() in ("", "none"):
            self.eval_split = None
        if self.validation_split_percentage is not None and not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must lie in (0, 100), got {self.validation_split_percentage}."
            )
        for name in ("max_length", "block_size", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}.")


def make_parser() -> HfArgumentParser:
    return HfArgumentParser(
        (ModelArguments, DataArguments, CheckpointDistillConfig), description=__doc__.split("\n\n")[0]
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, CheckpointDistillConfig]:
    """Command-line arguments, or a lone ``.yaml``/``.yml``/``.json`` file holding them."""
    return parse_recipe_args(make_parser(), sys.argv[1:] if argv is None else argv)


def resolve_teachers(training_args: CheckpointDistillConfig, task: str | None):
    """The run's teachers (``hf_ckd.build_teacher_source``: loaded and checked once, or a built soft-target
    cache), the first teaching checkpoint's config, and the task it was trained for."""
    from hf_ckd import build_teacher_source
    from hf_ckd.text import teacher_task

    if not training_args.teacher:
        raise ValueError(
            "--teacher is required: the output_dir of the teacher's Trainer run (checkpoint-<step>/ folders), "
            "a saved model folder, or hub:ORG/NAME."
        )
    cache = training_args.soft_target_cache
    source = build_teacher_source(training_args, use_cache=cache is not None and os.path.isdir(cache))
    logger.info(
        "Teacher trajectory %s; teaching: %s", source.trajectory, [c.name for c in source.checkpoints]
    )
    config = source.teacher_config()
    task = teacher_task(config, task, source.checkpoints[0].name)
    logger.info("Task: %s", task)
    if cache is not None and task != "causal-lm":
        raise ValueError(
            "--soft_target_cache in this recipe stores a causal LM's teacher samples per position; for "
            f"{task} run without it."
        )
    return source, config, task


def cached_lm_train(train_dataset, teachers, data_args, training_args):
    """--soft_target_cache: the teachers' samples per position, built on the first run and read by every
    later student without a teacher; returns the blocks as ReplayViews and the cache's teacher source."""
    from accelerate import PartialState
    from transformers import default_data_collator

    from hf_ckd import build_teacher_source
    from hf_ckd.cache import ReplayViews, SelectColumns, build_soft_target_cache

    if teachers.kind != "cached":
        build_soft_target_cache(
            teachers.ensemble, train_dataset, training_args.soft_target_cache, transform=SelectColumns(),
            collate_fn=default_data_collator, temperature=training_args.temperature, storage="sampled",
            k=data_args.cache_k, num_uniform=data_args.cache_num_uniform,
            batch_size=training_args.per_device_eval_batch_size, accelerator=PartialState(),
        )  # fmt: skip
        teachers = build_teacher_source(
            training_args, trajectory=teachers.trajectory
        )  # the loaded ones freed
    return ReplayViews(train_dataset, SelectColumns()), teachers


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), distil, and return the train and eval metrics."""
    model_args, data_args, training_args = parse_args(argv)
    return run(model_args, data_args, training_args)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: CheckpointDistillConfig):
    from transformers import set_seed

    from hf_ckd import CheckpointDistillTrainer
    from hf_ckd import text as hf_text
    from hf_ckd.data import guard_output_dir, load_dataset_from_args, text_column, train_eval_splits
    from hf_ckd.scripts._common import last_checkpoint, setup_logging, train_and_report

    setup_logging(training_args)
    # ---- everything is checked before the trainer exists: nothing is written to output_dir on bad input
    guard_output_dir(training_args.output_dir, data_args.overwrite_output_dir)
    resume = last_checkpoint(training_args.output_dir, data_args.overwrite_output_dir)
    teachers, teacher_config, task = resolve_teachers(training_args, model_args.task)
    student_path = model_args.student_model_name_or_path
    hub = {
        "revision": model_args.model_revision,
        "cache_dir": model_args.cache_dir,
        "trust_remote_code": model_args.trust_remote_code,
    }
    student_config = hf_text.load_student_config(student_path, model_args.student_config_overrides, **hub)
    tokenizer, tokenizer_path, teacher_tokenizer = hf_text.load_tokenizer(
        model_args.tokenizer_name,
        [teachers.checkpoints[0].path, *([teachers.trajectory.source] if teachers.trajectory else [])],
        student_path,
        **hub,
    )
    configs = {
        f"the teacher checkpoint '{teachers.checkpoints[0].name}'": teacher_config,
        "the student": student_config,
    }
    hf_text.check_vocabulary(tokenizer, tokenizer_path, teacher_tokenizer, configs)

    # ---- data
    raw = load_dataset_from_args(
        data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_path, model_args.cache_dir
    )
    train_dataset, eval_dataset = train_eval_splits(
        raw,
        data_args.train_split,
        data_args.eval_split,
        data_args.validation_split_percentage,
        training_args.seed,
    )
    text = text_column(train_dataset, data_args.text_column)
    if eval_dataset is not None:
        text_column(eval_dataset, text)
    common = {
        "text": text, "tokenizer": tokenizer, "configs": configs, "max_train_samples": data_args.max_train_samples,
        "max_eval_samples": data_args.max_eval_samples, "main_process_first": training_args.main_process_first,
    }  # fmt: skip
    if task == "text-classification":
        data = hf_text.classification_data(
            train_dataset, eval_dataset, label=data_args.label_column, tokenizer_path=tokenizer_path,
            student_config=student_config, max_length=data_args.max_length, **common,
        )  # fmt: skip
    else:
        data = hf_text.causal_lm_data(train_dataset, eval_dataset, block_size=data_args.block_size, **common)
    train_dataset = data.train_dataset
    if training_args.soft_target_cache is not None:
        train_dataset, teachers = cached_lm_train(train_dataset, teachers, data_args, training_args)

    # ---- student
    set_seed(training_args.seed)
    model = hf_text.build_student(
        student_path, student_config, task, from_scratch=model_args.student_from_scratch, **hub
    )
    logger.info(
        "Student %s %s: %.2fM parameters",
        type(model).__name__,
        "built from its config" if model_args.student_from_scratch else "loaded pretrained",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    # Checks the teachers' label space / vocabulary against the student before Trainer.__init__, so a
    # TeacherLoadError leaves output_dir untouched.
    trainer = CheckpointDistillTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=data.eval_dataset,
        processing_class=tokenizer,
        data_collator=data.data_collator,
        compute_metrics=data.compute_metrics,
        preprocess_logits_for_metrics=data.preprocess_logits_for_metrics,
        teacher_source=teachers,
    )

    # ---- train, evaluate, save, model card with the teachers' lineage (or push to the Hub)
    card = {"tasks": PIPELINE_TAGS[task], "tags": [task]}
    if not model_args.student_from_scratch:
        card["finetuned_from"] = student_path
    if data_args.dataset_name:
        card["dataset_tags"] = card["dataset"] = data_args.dataset_name
        if data_args.dataset_config_name:
            card["dataset_args"] = data_args.dataset_config_name
            card["dataset"] = f"{data_args.dataset_name} {data_args.dataset_config_name}"
    return train_and_report(trainer, resume, perplexity=task == "causal-lm", **card)


if __name__ == "__main__":
    sys.exit(run_recipe(main))
