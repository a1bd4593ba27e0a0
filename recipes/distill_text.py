#!/usr/bin/env python
"""Distil a transformers text model from a teacher's checkpoints (one intermediate checkpoint or a snapshot
ensemble of several) with `CheckpointDistillTrainer`.

Two tasks, picked with `--task` or read from the teacher checkpoint's `config.json` (`architectures`):

* `text-classification`: sequence classification (`AutoModelForSequenceClassification`); KD over the
  classes, `--text_column` and `--label_column` read from the dataset, texts truncated to `--max_length`.
* `causal-lm`: token-level KD over the vocabulary (`AutoModelForCausalLM`); texts are concatenated and cut
  into `--block_size` blocks as in transformers' `run_clm.py`. Teacher and student share the vocabulary.

The student is any `AutoModelFor…` model: loaded pretrained from `--student_model_name_or_path` (a Hub id or
a local folder), or built from its config with `--student_from_scratch` (optionally changed with
`--student_config_overrides "hidden_size=128,num_hidden_layers=2"`). It must predict over the teacher's
label space (`num_labels`, or the vocabulary).

Usage:

    python recipes/distill_text.py \
        --teacher runs/bert_teacher --teacher_checkpoints 0.5,last \
        --student_model_name_or_path google/bert_uncased_L-2_H-128_A-2 \
        --dataset_name stanfordnlp/sst2 --text_column sentence --eval_split validation \
        --temperature 4 --alpha 0.5 --num_train_epochs 3 --output_dir runs/student

    accelerate launch recipes/distill_text.py \
        --teacher runs/gpt2_teacher --teacher_checkpoints 0.3,0.5,last \
        --student_model_name_or_path openai-community/gpt2 --student_from_scratch \
        --student_config_overrides "n_layer=4,n_embd=256" \
        --dataset_name Salesforce/wikitext --dataset_config_name wikitext-2-raw-v1 \
        --block_size 512 --output_dir runs/student_lm

    python recipes/distill_text.py config.yaml      # every argument from a YAML (or .json) file

Every argument: `python recipes/distill_text.py --help` and docs/recipes_text.md. Bad input (an unknown
student, missing columns, a label space or vocabulary that does not match, an `--output_dir` holding a
finished run) stops with an error naming the argument before anything is written to `--output_dir`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_ckd.cli import parse_recipe_args
from hf_ckd.config import CheckpointDistillConfig

logger = logging.getLogger(__name__)

TASKS = ("text-classification", "causal-lm")
# Pipeline tag written into the model card for each task.
CARD_TASKS = {"text-classification": "text-classification", "causal-lm": "text-generation"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx")


def _auto_sequence_classification():
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


def _auto_causal_lm():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


# Auto class of the student per task, imported when called (keeps --help fast).
AUTO_CLASSES = {"text-classification": _auto_sequence_classification, "causal-lm": _auto_causal_lm}


@dataclass
class ModelArguments:
    """Which student to build, from what, and with which tokenizer."""

    student_model_name_or_path: str = field(
        metadata={
            "help": "The student: a Hub model id or a local folder with a config.json (and weights, unless "
            "--student_from_scratch)."
        }
    )
    student_from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Build the student from its config (AutoConfig + AutoModelFor....from_config) with fresh "
            "weights instead of loading pretrained weights."
        },
    )
    student_config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override student config values, e.g. 'hidden_size=128,num_hidden_layers=2,num_labels=4' "
            "(as run_clm's --config_overrides)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer (Hub id or folder). Default: the first selected teacher checkpoint, then the "
            "--teacher folder, then --student_model_name_or_path, whichever holds a tokenizer first. Teacher and "
            "student read the same input ids, so it must be the teacher's tokenizer."
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "text-classification or causal-lm. Default: read from the teacher checkpoint's "
            "config.json architectures (…ForSequenceClassification or a causal LM).",
            "choices": list(TASKS),
        },
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "Revision (branch, tag or commit) of a Hub student and tokenizer."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and datasets are cached."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom modelling code from the student's and tokenizer's repositories. Only for authors "
            "you trust (teachers: --teacher_trust_remote_code)."
        },
    )

    def __post_init__(self):
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"--task must be one of {list(TASKS)} (or unset), got {self.task!r}.")


@dataclass
class DataArguments:
    """Which data to distil on and how to cut it."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the Hub (datasets.load_dataset name)."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration of --dataset_name, if it has several."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "A local dataset instead of --dataset_name: a folder written by save_to_disk, a data folder, or "
            "one data file (.json/.jsonl/.csv/.parquet/.txt)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str | None = field(
        default="validation",
        metadata={
            "help": "The split to evaluate on; 'none' skips evaluation. If the dataset has no such split, pass "
            "--validation_split_percentage to hold out part of --train_split."
        },
    )
    validation_split_percentage: int | None = field(
        default=None,
        metadata={
            "help": "Percentage of --train_split held out for evaluation when the dataset has no --eval_split."
        },
    )
    text_column: str | None = field(
        default=None, metadata={"help": "Column holding the text. Default: text, sentence or content."}
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding integer class ids (text-classification). Default: fine_label, label or labels."
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "text-classification: texts are truncated to this many tokens."}
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "causal-lm: length of the token blocks the concatenated texts are cut into. Default: "
            "min(1024, the tokenizer's model_max_length, the models' positions)."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only the first N training examples (blocks, for causal-lm): for quick runs."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N evaluation examples (blocks, for causal-lm): for quick runs."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train over an --output_dir that already holds a finished run."},
    )
    cache_k: int = field(
        default=1024,
        metadata={
            "help": "causal-lm with --soft_target_cache: teacher ids stored per position (k // 2 most likely, the "
            "rest draws from the remaining mass)."
        },
    )
    cache_num_uniform: int | None = field(
        default=None,
        metadata={
            "help": "causal-lm with --soft_target_cache: uniform ids stored per position for the student's "
            "normaliser. Default: cache_k // 2."
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
        if self.max_length <= 0:
            raise ValueError(f"--max_length must be > 0, got {self.max_length}.")
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"--block_size must be > 0, got {self.block_size}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}.")


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, CheckpointDistillConfig))


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, CheckpointDistillConfig]:
    """Command-line arguments, or a lone ``.yaml``/``.yml``/``.json`` file holding them."""
    return parse_recipe_args(make_parser(), sys.argv[1:] if argv is None else argv)


# ---- helpers --------------------------------------------------------------------------------------


def detect_task(config) -> str | None:
    """The task a teacher config's first architecture was trained for, or ``None``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    arch = architectures[0] if architectures else ""
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith("ForCausalLM") or arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal-lm"
    return None


def max_positions(config) -> int | None:
    for name in POSITION_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def holds_tokenizer(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def resolve_teacher(training_args: CheckpointDistillConfig, task: str | None):
    """The teacher trajectory, the selected checkpoints, the first one's config, and the task."""
    from transformers import AutoConfig

    from hf_ckd.hub import fetch_checkpoint, teacher_trajectory
    from hf_ckd.selection import teacher_spec

    if not training_args.teacher:
        raise ValueError(
            "--teacher is required: the output_dir of the teacher's Trainer run (checkpoint-<step>/ folders), "
            "a saved model folder, or hub:ORG/NAME."
        )
    trajectory = teacher_trajectory(training_args)
    selected = trajectory.select(teacher_spec(training_args, trajectory))
    # The first selected checkpoint gives the config and the tokenizer: a Hub checkpoint is downloaded here
    # (teacher loading reuses the cache); the others only when (and if) a schedule activates them.
    selected[0] = fetch_checkpoint(selected[0])
    logger.info("Teacher trajectory %s; teaching: %s", trajectory, [c.name for c in selected])
    try:
        teacher_config = AutoConfig.from_pretrained(
            selected[0].path, trust_remote_code=training_args.teacher_trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--teacher checkpoint '{selected[0].path}' has no readable config.json ({err}); this recipe needs "
            "transformers checkpoints saved by Trainer / save_pretrained."
        ) from err
    detected = detect_task(teacher_config)
    task = task or detected
    if task is None:
        raise ValueError(
            f"Cannot tell the task from the teacher checkpoint '{selected[0].name}' (architectures "
            f"{teacher_config.architectures}); pass --task {' or --task '.join(TASKS)}."
        )
    if detected is not None and task != detected:
        raise ValueError(
            f"--task {task} does not match the teacher checkpoint '{selected[0].name}', a {detected} model "
            f"({teacher_config.architectures[0]}). Leave --task unset or use a {task} teacher."
        )
    logger.info("Task: %s", task)
    return trajectory, selected, teacher_config, task


def load_student_config(model_args: ModelArguments):
    from transformers import AutoConfig

    path = model_args.student_model_name_or_path
    try:
        config = AutoConfig.from_pretrained(
            path,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0].rstrip('.')}"
        if not os.path.exists(path):
            where = f"does not exist locally and could not be loaded from the Hub ({reason})"
        elif os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            where = "has no config.json"
        else:
            where = f"could not be loaded ({reason})"
        raise ValueError(
            f"--student_model_name_or_path '{path}' {where}. Pass a Hub model id or a local folder holding the "
            "student's config.json."
        ) from err
    if model_args.student_config_overrides:
        try:
            config.update_from_string(model_args.student_config_overrides)
        except ValueError as err:
            raise ValueError(
                f"--student_config_overrides '{model_args.student_config_overrides}' does not apply to the "
                f"{type(config).__name__} of '{path}': {err}. Use comma-separated key=value pairs of existing keys."
            ) from err
        logger.info("Student config overrides applied: %s", model_args.student_config_overrides)
    return config


def load_tokenizer(model_args: ModelArguments, teacher_dirs: list[str]):
    """The tokenizer, and the teacher tokenizer's folder when the teacher ships one (for the vocab check)."""
    from transformers import AutoTokenizer

    teacher_tokenizer = next((d for d in teacher_dirs if holds_tokenizer(d)), None)
    student = model_args.student_model_name_or_path
    path = model_args.tokenizer_name or teacher_tokenizer or student
    if path == student and os.path.isdir(student) and not holds_tokenizer(student):
        raise ValueError(
            f"No tokenizer: neither the teacher ({', '.join(teacher_dirs)}) nor --student_model_name_or_path "
            f"'{student}' holds one. Pass --tokenizer_name (the teacher's tokenizer)."
        )
    argument = "--tokenizer_name" if model_args.tokenizer_name else "the default tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{argument} '{path}' could not be loaded ({type(err).__name__}: {err}). Pass --tokenizer_name: a Hub "
            "id or a folder holding the teacher's tokenizer."
        ) from err
    logger.info("Tokenizer: %s (%d tokens)", path, len(tokenizer))
    return tokenizer, path, teacher_tokenizer


def check_vocabulary(tokenizer, tokenizer_path: str, teacher_tokenizer: str | None, configs: dict) -> None:
    """Teacher and student read the same ids: the tokenizer must be the teacher's and fit every embedding."""
    from transformers import AutoTokenizer

    if teacher_tokenizer is not None and os.path.abspath(tokenizer_path) != os.path.abspath(
        teacher_tokenizer
    ):
        reference = AutoTokenizer.from_pretrained(teacher_tokenizer)
        if reference.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"--tokenizer_name '{tokenizer_path}' has another vocabulary than the teacher's tokenizer in "
                f"'{teacher_tokenizer}'. Teacher and student read the same input ids: use the teacher's tokenizer."
            )
    for what, config in configs.items():
        vocab_size = getattr(config, "vocab_size", None)
        if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
            raise ValueError(
                f"The tokenizer '{tokenizer_path}' has {len(tokenizer)} tokens but {what} embeds only {vocab_size} "
                "(vocab_size). Pass --tokenizer_name with the teacher's tokenizer, or a student whose vocab_size "
                "matches the teacher's."
            )


def check_length(length: int, argument: str, configs: dict) -> None:
    for what, config in configs.items():
        limit = max_positions(config)
        if limit is not None and length > limit:
            raise ValueError(
                f"--{argument} {length} exceeds the {limit} positions of {what}; lower --{argument}."
            )


def split_data(raw, data_args: DataArguments, seed: int):
    """The train and eval splits (eval ``None`` when ``--eval_split none``)."""
    from hf_ckd.data import DataError, get_split

    train = get_split(raw, data_args.train_split, "train_split")
    if data_args.eval_split is None:
        return train, None
    if data_args.eval_split in raw:
        return train, raw[data_args.eval_split]
    if data_args.validation_split_percentage is None:
        raise DataError(
            f"--eval_split '{data_args.eval_split}' is not a split of the dataset; it has {sorted(raw)}. Pass "
            "--validation_split_percentage to hold out part of --train_split, or --eval_split none."
        )
    held_out = train.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
    return held_out["train"], held_out["test"]


def first(dataset, n: int | None):
    return dataset if dataset is None or n is None else dataset.select(range(min(n, len(dataset))))


def prepare_classification(
    train_dataset,
    eval_dataset,
    text,
    tokenizer,
    tokenizer_path,
    student_config,
    models,
    data_args,
    training_args,
):
    """Check labels against the student, tokenise, pad per batch; accuracy over classes."""
    from transformers import DataCollatorWithPadding

    from hf_ckd.data import check_label_space, label_column, tokenize_for_classification
    from hf_ckd.metrics import classification_metrics

    label = label_column(train_dataset, data_args.label_column)
    student = "the student (--student_model_name_or_path, --student_config_overrides)"
    for dataset in (train_dataset, eval_dataset):
        if dataset is not None:
            label_column(dataset, label)
            check_label_space(dataset, label, student_config.num_labels, student)
    names = getattr(train_dataset.features[label], "names", None)
    if names and len(names) == student_config.num_labels:
        student_config.id2label = dict(enumerate(names))
        student_config.label2id = {name: i for i, name in enumerate(names)}
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"The tokenizer '{tokenizer_path}' has no pad token (nor an eos token to pad with); batches of "
                "texts need one. Pass --tokenizer_name with a pad token."
            )
        logger.warning("The tokenizer has no pad token; padding with its eos token %r.", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    if student_config.pad_token_id is None:
        student_config.pad_token_id = tokenizer.pad_token_id
    check_length(data_args.max_length, "max_length", models)

    train_dataset = first(train_dataset, data_args.max_train_samples)
    eval_dataset = first(eval_dataset, data_args.max_eval_samples)
    with training_args.main_process_first(desc="tokenizing"):
        train_dataset = tokenize_for_classification(
            train_dataset, tokenizer, text, label, data_args.max_length
        )
        if eval_dataset is not None:
            eval_dataset = tokenize_for_classification(
                eval_dataset, tokenizer, text, label, data_args.max_length
            )
    return train_dataset, eval_dataset, DataCollatorWithPadding(tokenizer), classification_metrics(), None


def prepare_causal_lm(
    train_dataset,
    eval_dataset,
    text,
    tokenizer,
    tokenizer_path,
    student_config,
    models,
    data_args,
    training_args,
):
    """Concatenate and cut into blocks (run_clm); token accuracy from the argmax kept during evaluation."""
    from transformers import default_data_collator

    from hf_ckd.data import tokenize_for_causal_lm

    limits = [min(1024, tokenizer.model_max_length)]
    limits += [n for n in map(max_positions, models.values()) if n is not None]
    block_size = data_args.block_size or min(limits)
    check_length(block_size, "block_size", models)
    with training_args.main_process_first(desc="grouping texts"):
        train_dataset = tokenize_for_causal_lm(train_dataset, tokenizer, text, block_size)
        if eval_dataset is not None:
            eval_dataset = tokenize_for_causal_lm(eval_dataset, tokenizer, text, block_size)
    train_dataset = first(train_dataset, data_args.max_train_samples)
    eval_dataset = first(eval_dataset, data_args.max_eval_samples)
    from hf_ckd.metrics import argmax_logits, classification_metrics

    return (
        train_dataset,
        eval_dataset,
        default_data_collator,
        classification_metrics(token_level=True),
        argmax_logits,
    )


def cached_lm_train(train_dataset, trajectory, task: str, data_args, training_args):
    """--soft_target_cache: the teachers' samples per position, built once (first run, on the teachers loaded
    here and freed after) and read by every later student without a teacher; the blocks as ReplayViews."""
    from accelerate import PartialState
    from transformers import default_data_collator

    from hf_ckd import TeacherEnsemble
    from hf_ckd.cache import ReplayViews, SelectColumns, build_soft_target_cache
    from hf_ckd.selection import teacher_spec

    if task != "causal-lm":
        raise ValueError(
            "--soft_target_cache in this recipe stores a causal LM's teacher samples per position; for "
            f"{task} run without it."
        )
    cache_path = training_args.soft_target_cache
    if not os.path.isdir(cache_path):
        teachers = TeacherEnsemble.from_trajectory(
            trajectory,
            teacher_spec(training_args, trajectory),
            training_args.teacher_weights,
            training_args.ensemble_average,
            dtype=training_args.teacher_dtype,
            trust_remote_code=training_args.teacher_trust_remote_code,
            allow_unsafe_pickle=training_args.teacher_allow_unsafe_pickle,
        )
        build_soft_target_cache(
            teachers, train_dataset, cache_path, transform=SelectColumns(), collate_fn=default_data_collator,
            temperature=training_args.temperature, storage="sampled", k=data_args.cache_k,
            num_uniform=data_args.cache_num_uniform, batch_size=training_args.per_device_eval_batch_size,
            accelerator=PartialState(),
        )  # fmt: skip
        del teachers
    return ReplayViews(train_dataset, SelectColumns())


def build_student(model_args: ModelArguments, student_config, task: str):
    """The student: from its config (fresh weights) or pretrained, through the task's Auto class."""
    auto_class = AUTO_CLASSES[task]()
    path = model_args.student_model_name_or_path
    try:
        if model_args.student_from_scratch:
            return auto_class.from_config(student_config, trust_remote_code=model_args.trust_remote_code)
        return auto_class.from_pretrained(
            path,
            config=student_config,
            revision=model_args.model_revision,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        hint = (
            ""
            if model_args.student_from_scratch
            else " To build it from its config alone, pass --student_from_scratch."
        )
        raise ValueError(
            f"--student_model_name_or_path '{path}' cannot be built as a {task} student ({auto_class.__name__}): "
            f"{type(err).__name__}: {str(err).rstrip('.')}.{hint}"
        ) from err


def setup_logging(training_args: CheckpointDistillConfig) -> None:
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
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


# ---- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` (default: ``sys.argv[1:]``), distil, and return the train and eval metrics."""
    model_args, data_args, training_args = parse_args(argv)
    return run(model_args, data_args, training_args)


def run(
    model_args: ModelArguments, data_args: DataArguments, training_args: CheckpointDistillConfig
) -> dict[str, float]:
    from transformers import set_seed

    from hf_ckd import CheckpointDistillTrainer
    from hf_ckd.cli import last_checkpoint as find_last_checkpoint
    from hf_ckd.cli import train_and_report
    from hf_ckd.data import guard_output_dir, load_dataset_from_args, text_column

    setup_logging(training_args)
    logger.warning(
        "Process rank: %s, device: %s, n_gpu: %s, distributed training: %s, 16-bits training: %s",
        training_args.local_process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.fp16 or training_args.bf16,
    )
    logger.info("Training/evaluation parameters %s", training_args)

    # ---- everything is checked before the trainer exists: nothing is written to output_dir on bad input
    guard_output_dir(training_args.output_dir, data_args.overwrite_output_dir)
    last_checkpoint = find_last_checkpoint(training_args.output_dir, data_args.overwrite_output_dir)

    trajectory, selected, teacher_config, task = resolve_teacher(training_args, model_args.task)

    student_config = load_student_config(model_args)
    tokenizer, tokenizer_path, teacher_tokenizer = load_tokenizer(
        model_args, [selected[0].path, trajectory.source]
    )
    models = {f"the teacher checkpoint '{selected[0].name}'": teacher_config, "the student": student_config}
    check_vocabulary(tokenizer, tokenizer_path, teacher_tokenizer, models)

    # ---- data
    raw = load_dataset_from_args(
        data_args.dataset_name, data_args.dataset_config_name, data_args.dataset_path, model_args.cache_dir
    )
    train_dataset, eval_dataset = split_data(raw, data_args, training_args.seed)
    text = text_column(train_dataset, data_args.text_column)
    if eval_dataset is not None:
        text_column(eval_dataset, text)

    prepare = prepare_classification if task == "text-classification" else prepare_causal_lm
    train_dataset, eval_dataset, data_collator, compute_metrics, preprocess_logits_for_metrics = prepare(
        train_dataset,
        eval_dataset,
        text,
        tokenizer,
        tokenizer_path,
        student_config,
        models,
        data_args,
        training_args,
    )

    if training_args.soft_target_cache is not None:
        train_dataset = cached_lm_train(train_dataset, trajectory, task, data_args, training_args)

    # ---- student
    set_seed(training_args.seed)
    model = build_student(model_args, student_config, task)
    logger.info(
        "Student %s %s: %.2fM parameters",
        type(model).__name__,
        "built from its config" if model_args.student_from_scratch else "loaded pretrained",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )

    # Loads and checks every teacher checkpoint and the label space / vocabulary against the student before
    # Trainer.__init__, so a TeacherLoadError or TrajectoryError leaves output_dir untouched.
    trainer = CheckpointDistillTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )

    # ---- train, evaluate, save, model card with the teachers' lineage (or push to the Hub)
    card = {"tasks": CARD_TASKS[task], "tags": [task]}
    if not model_args.student_from_scratch:
        card["finetuned_from"] = model_args.student_model_name_or_path
    if data_args.dataset_name:
        card["dataset_tags"] = data_args.dataset_name
        card["dataset"] = data_args.dataset_name
        if data_args.dataset_config_name:
            card["dataset_args"] = data_args.dataset_config_name
            card["dataset"] = f"{data_args.dataset_name} {data_args.dataset_config_name}"
    return train_and_report(trainer, last_checkpoint, perplexity=task == "causal-lm", **card)


if __name__ == "__main__":
    main()
