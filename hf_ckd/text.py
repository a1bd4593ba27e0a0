"""Text distillation checks and builders: what ``hf_ckd.scripts.distill_text`` does before a
``CheckpointDistillTrainer`` exists, as functions a script of your own can call.

Teacher and student read the same input ids and predict over the same label space, so before anything is
trained (or written to ``output_dir``) these functions check that the task matches the teacher checkpoint
(:func:`teacher_task`), that the tokenizer is the teacher's and fits every embedding (:func:`load_tokenizer`,
:func:`check_vocabulary`), that the texts fit every model's positions (:func:`check_length`), and that the
student can be built (:func:`load_student_config`, :func:`build_student`). Each error is a ``ValueError``
(``hf_ckd.data.DataError`` for the data) that names the recipe argument to change and how.

:func:`classification_data` and :func:`causal_lm_data` tokenise the splits the way each task reads them and
return the collator and metrics that go with them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .modeling import CAUSAL_LM, TEXT_CLASSIFICATION, auto_model_class, max_positions, model_task

logger = logging.getLogger(__name__)

# The tasks of hf_ckd.scripts.distill_text.
TASKS = (TEXT_CLASSIFICATION, CAUSAL_LM)
# A folder holding one of these files holds a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
# Config attributes that give the number of positions a model embeds, by model family.
# Longest causal-LM block by default (run_clm's cap).
DEFAULT_MAX_BLOCK = 1024


def holds_tokenizer(path: str) -> bool:
    """Whether ``path`` is a local folder with tokenizer files."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0].rstrip('.')}"


# ---- the teacher -----------------------------------------------------------------------------------


def load_teacher_config(path: str, trust_remote_code: bool = False):
    """The ``config.json`` of a teacher checkpoint folder, or an error naming ``--teacher``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--teacher checkpoint '{path}' has no readable config.json ({err}); this recipe needs "
            "transformers checkpoints saved by Trainer / save_pretrained."
        ) from err


def teacher_task(
    teacher_config: Any, task: str | None = None, name: str = "", supported: Sequence[str] = TASKS
) -> str:
    """The task to distil: ``task`` (``--task``) checked against the teacher checkpoint ``name``'s config,
    or the teacher's own task (:func:`hf_ckd.modeling.model_task`) when ``task`` is ``None``."""
    detected = model_task(teacher_config)
    architectures = getattr(teacher_config, "architectures", None)
    if task is not None and detected is not None and task != detected:
        raise ValueError(
            f"--task {task} does not match the teacher checkpoint '{name}', a {detected} model "
            f"({architectures[0]}). Leave --task unset or use a {task} teacher."
        )
    task = task or detected
    if task is None:
        raise ValueError(
            f"Cannot tell the task from the teacher checkpoint '{name}' (architectures {architectures}); pass "
            f"--task {' or --task '.join(supported)}."
        )
    if task not in supported:
        raise ValueError(
            f"The teacher checkpoint '{name}' is a {task} model ({architectures[0]}); this recipe distils "
            f"{' or '.join(supported)} teachers."
        )
    return task


# ---- the student -----------------------------------------------------------------------------------


def load_student_config(
    path: str,
    overrides: str | None = None,
    *,
    revision: str = "main",
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
):
    """The student's config from ``path`` (``--student_model_name_or_path``: a Hub id or a local folder),
    with ``overrides`` (``--student_config_overrides``, ``"key=value,key=value"``) applied."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            path, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        if not os.path.exists(path):
            where = f"does not exist locally and could not be loaded from the Hub ({_reason(err)})"
        elif os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            where = "has no config.json"
        else:
            where = f"could not be loaded ({_reason(err)})"
        raise ValueError(
            f"--student_model_name_or_path '{path}' {where}. Pass a Hub model id or a local folder holding the "
            "student's config.json."
        ) from err
    if overrides:
        try:
            config.update_from_string(overrides)
        except ValueError as err:
            raise ValueError(
                f"--student_config_overrides '{overrides}' does not apply to the {type(config).__name__} of "
                f"'{path}': {err}. Use comma-separated key=value pairs of existing keys."
            ) from err
        logger.info("Student config overrides applied: %s", overrides)
    return config


def build_student(
    path: str,
    config: Any,
    task: str,
    *,
    from_scratch: bool = False,
    revision: str = "main",
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
):
    """The student through ``task``'s Auto class: built from ``config`` with fresh weights
    (``from_scratch``) or loaded pretrained from ``path`` with ``config``."""
    auto_class = auto_model_class(config, task)
    try:
        if from_scratch:
            return auto_class.from_config(config, trust_remote_code=trust_remote_code)
        return auto_class.from_pretrained(
            path, config=config, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        hint = "" if from_scratch else " To build it from its config alone, pass --student_from_scratch."
        raise ValueError(
            f"--student_model_name_or_path '{path}' cannot be built as a {task} student ({auto_class.__name__}): "
            f"{type(err).__name__}: {str(err).rstrip('.')}.{hint}"
        ) from err


# ---- tokenizer, vocabulary and lengths --------------------------------------------------------------


def load_tokenizer(
    tokenizer_name: str | None,
    teacher_dirs: Sequence[str],
    student: str,
    *,
    revision: str = "main",
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
):
    """The tokenizer: ``tokenizer_name`` (``--tokenizer_name``), else the first of ``teacher_dirs`` that holds
    one, else the ``student``'s. Returns ``(tokenizer, its path, the teacher's tokenizer folder or None)``;
    the last is what :func:`check_vocabulary` compares against."""
    from transformers import AutoTokenizer

    teacher_tokenizer = next((d for d in teacher_dirs if holds_tokenizer(d)), None)
    path = tokenizer_name or teacher_tokenizer or student
    if path == student and os.path.isdir(student) and not holds_tokenizer(student):
        raise ValueError(
            f"No tokenizer: neither the teacher ({', '.join(teacher_dirs)}) nor --student_model_name_or_path "
            f"'{student}' holds one. Pass --tokenizer_name (the teacher's tokenizer)."
        )
    argument = "--tokenizer_name" if tokenizer_name else "the default tokenizer"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, cache_dir=cache_dir, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{argument} '{path}' could not be loaded ({type(err).__name__}: {err}). Pass --tokenizer_name: a Hub "
            "id or a folder holding the teacher's tokenizer."
        ) from err
    logger.info("Tokenizer: %s (%d tokens)", path, len(tokenizer))
    return tokenizer, path, teacher_tokenizer


def check_vocabulary(
    tokenizer, tokenizer_path: str, teacher_tokenizer: str | None, configs: Mapping[str, Any]
) -> None:
    """Teacher and student read the same ids: the tokenizer must have the vocabulary of the teacher's
    (``teacher_tokenizer``, when there is one) and fit the ``vocab_size`` of every config in ``configs``
    (described by its key, e.g. ``"the student"``)."""
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


def check_length(length: int, argument: str, configs: Mapping[str, Any]) -> None:
    """``length`` tokens (``--{argument}``) must fit the positions of every config in ``configs``."""
    for what, config in configs.items():
        limit = max_positions(config)
        if limit is not None and length > limit:
            raise ValueError(
                f"--{argument} {length} exceeds the {limit} positions of {what}; lower --{argument}."
            )


def default_block_size(tokenizer, configs: Mapping[str, Any]) -> int:
    """run_clm's default block: ``min(1024, the tokenizer's model_max_length, every model's positions)``."""
    limits = [min(DEFAULT_MAX_BLOCK, tokenizer.model_max_length)]
    limits += [n for n in map(max_positions, configs.values()) if n is not None]
    return min(limits)


def ensure_pad_token(tokenizer, tokenizer_path: str) -> None:
    """Batches of texts need a pad token: the tokenizer's own, else its eos token (with a warning)."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(
            f"The tokenizer '{tokenizer_path}' has no pad token (nor an eos token to pad with); batches of "
            "texts need one. Pass --tokenizer_name with a pad token."
        )
    logger.warning("The tokenizer has no pad token; padding with its eos token %r.", tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token


# ---- data ------------------------------------------------------------------------------------------


class TextData(NamedTuple):
    """What a ``Trainer`` takes for one task's data."""

    train_dataset: Any
    eval_dataset: Any
    data_collator: Callable
    compute_metrics: Callable
    preprocess_logits_for_metrics: Callable | None


def _first(process_first: Callable[..., Any] | None, desc: str):
    return process_first(desc=desc) if process_first is not None else contextlib.nullcontext()


def classification_data(
    train_dataset,
    eval_dataset,
    *,
    text: str,
    label: str | None,
    tokenizer,
    tokenizer_path: str,
    student_config,
    configs: Mapping[str, Any],
    max_length: int,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    main_process_first: Callable[..., Any] | None = None,
) -> TextData:
    """Sequence classification: check the ``label`` column (``--label_column``; default: found) against the
    student's ``num_labels``, copy ClassLabel names into the student config, tokenise truncated to
    ``max_length`` and pad per batch; accuracy over classes. ``main_process_first`` is
    ``TrainingArguments.main_process_first`` (tokenise once under DDP)."""
    from transformers import DataCollatorWithPadding

    from .data import check_label_space, first_rows, label_column, tokenize_for_classification
    from .metrics import classification_metrics

    label = label_column(train_dataset, label)
    student = "the student (--student_model_name_or_path, --student_config_overrides)"
    for dataset in (train_dataset, eval_dataset):
        if dataset is not None:
            label_column(dataset, label)
            check_label_space(dataset, label, student_config.num_labels, student)
    names = getattr(train_dataset.features[label], "names", None)
    if names and len(names) == student_config.num_labels:
        student_config.id2label = dict(enumerate(names))
        student_config.label2id = {name: i for i, name in enumerate(names)}
    ensure_pad_token(tokenizer, tokenizer_path)
    if student_config.pad_token_id is None:
        student_config.pad_token_id = tokenizer.pad_token_id
    check_length(max_length, "max_length", configs)

    train_dataset = first_rows(train_dataset, max_train_samples)
    eval_dataset = first_rows(eval_dataset, max_eval_samples)
    with _first(main_process_first, "tokenizing"):
        train_dataset = tokenize_for_classification(train_dataset, tokenizer, text, label, max_length)
        if eval_dataset is not None:
            eval_dataset = tokenize_for_classification(eval_dataset, tokenizer, text, label, max_length)
    return TextData(
        train_dataset, eval_dataset, DataCollatorWithPadding(tokenizer), classification_metrics(), None
    )


def causal_lm_data(
    train_dataset,
    eval_dataset,
    *,
    text: str,
    tokenizer,
    configs: Mapping[str, Any],
    block_size: int | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    main_process_first: Callable[..., Any] | None = None,
) -> TextData:
    """Causal LM: concatenate the texts and cut them into ``block_size`` blocks (default:
    :func:`default_block_size`), as run_clm does; token accuracy from the argmax kept during evaluation.
    ``max_*_samples`` count blocks."""
    from transformers import default_data_collator

    from .data import first_rows, tokenize_for_causal_lm
    from .metrics import argmax_logits, classification_metrics

    block_size = block_size or default_block_size(tokenizer, configs)
    check_length(block_size, "block_size", configs)
    with _first(main_process_first, "grouping texts"):
        train_dataset = tokenize_for_causal_lm(train_dataset, tokenizer, text, block_size)
        if eval_dataset is not None:
            eval_dataset = tokenize_for_causal_lm(eval_dataset, tokenizer, text, block_size)
    return TextData(
        first_rows(train_dataset, max_train_samples),
        first_rows(eval_dataset, max_eval_samples),
        default_data_collator,
        classification_metrics(token_level=True),
        argmax_logits,
    )
