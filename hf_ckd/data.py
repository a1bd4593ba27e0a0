"""Data for the recipes: datasets by Hub name or local path, column checks that fail before training,
image augmentation, tokenisation, collators, and the run folder: the finished-run guard for ``output_dir``
and the latest complete checkpoint to resume from (:func:`last_complete_checkpoint`).

Everything goes through ``datasets``; errors name the recipe argument to change (``--dataset_path``,
``--image_column`` ...).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

IMAGE_COLUMN_CANDIDATES = ("img", "image", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("fine_label", "label", "labels")
TEXT_COLUMN_CANDIDATES = ("text", "sentence", "content")
logger = logging.getLogger(__name__)
# Files a finished Trainer run leaves at the top of its output_dir.
FINISHED_RUN_FILES = ("all_results.json", "train_results.json", "trainer_state.json", "model.safetensors")


class DataError(ValueError):
    """A dataset, column or output directory cannot be used as given; the message names the argument."""


# ---- loading ---------------------------------------------------------------------------------------


def load_dataset_from_args(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_path: str | None = None,
    cache_dir: str | None = None,
):
    """A ``datasets.DatasetDict`` from a Hub name or a local path (``dataset_path`` wins).

    ``dataset_path`` may be a folder written by ``save_to_disk`` (a ``DatasetDict`` or a single
    ``Dataset``, which becomes the ``train`` split), a data folder ``datasets.load_dataset`` understands
    (``imagefolder``, Parquet/CSV/JSON files ...), or a single data file.
    """
    import datasets

    if dataset_path:
        if not os.path.exists(dataset_path):
            raise DataError(f"--dataset_path '{dataset_path}' does not exist.")
        saved = any(
            os.path.isfile(os.path.join(dataset_path, f)) for f in ("dataset_dict.json", "state.json")
        )
        if os.path.isdir(dataset_path) and saved:
            loaded = datasets.load_from_disk(dataset_path)
            return (
                loaded
                if isinstance(loaded, datasets.DatasetDict)
                else datasets.DatasetDict({"train": loaded})
            )
        if os.path.isfile(dataset_path):
            extension = os.path.splitext(dataset_path)[1].lstrip(".")
            builder = {"jsonl": "json", "txt": "text"}.get(extension, extension)
            return datasets.load_dataset(builder, data_files=dataset_path, cache_dir=cache_dir)
        return datasets.load_dataset(dataset_path, cache_dir=cache_dir)
    if not dataset_name:
        raise DataError("No data: pass --dataset_name (a Hub dataset) or --dataset_path (a local dataset).")
    return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)


def get_split(dataset_dict, split: str, argument: str):
    """``dataset_dict[split]`` or an error listing the splits there are."""
    if split not in dataset_dict:
        raise DataError(
            f"--{argument} '{split}' is not a split of the dataset; it has {sorted(dataset_dict)}."
        )
    return dataset_dict[split]


def train_eval_splits(
    dataset_dict, train_split: str, eval_split: str | None, validation_split_percentage: int | None, seed: int
):
    """``(train, eval_or_None)``: ``eval_split`` when the dataset has it, else ``validation_split_percentage``
    percent of ``train_split`` held out (seeded); ``eval_split=None`` evaluates on nothing."""
    train = get_split(dataset_dict, train_split, "train_split")
    if eval_split is None:
        return train, None
    if eval_split in dataset_dict:
        return train, dataset_dict[eval_split]
    if validation_split_percentage is None:
        raise DataError(
            f"--eval_split '{eval_split}' is not a split of the dataset; it has {sorted(dataset_dict)}. Pass "
            "--validation_split_percentage to hold out part of --train_split, or --eval_split none."
        )
    held_out = train.train_test_split(test_size=validation_split_percentage / 100, seed=seed)
    return held_out["train"], held_out["test"]


def first_rows(dataset, n: int | None):
    """The first ``n`` rows of ``dataset`` (all of them when ``n`` is ``None``; ``None`` stays ``None``)."""
    return dataset if dataset is None or n is None else dataset.select(range(min(n, len(dataset))))


def _pick_column(dataset, requested: str | None, candidates: Sequence[str], argument: str, what: str) -> str:
    if requested:
        if requested not in dataset.column_names:
            raise DataError(
                f"--{argument} '{requested}' is not a column of the dataset; its columns are {dataset.column_names}."
            )
        return requested
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise DataError(
        f"The dataset has no {what} column (looked for {list(candidates)}; columns are {dataset.column_names}). "
        f"Pass --{argument}."
    )


def num_classes_of(dataset, label_column: str) -> int:
    """Number of classes: from a ``ClassLabel`` feature, else ``max(label) + 1``."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    values = dataset.unique(label_column)
    if not all(isinstance(v, int) for v in values):
        raise DataError(f"--label_column '{label_column}' holds {feature}, not integer class ids.")
    return max(values) + 1


def check_label_space(dataset, label_column: str, num_labels: int, what: str = "the model") -> None:
    """Refuse labels that ``num_labels`` outputs cannot represent (or a ClassLabel of another size)."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes != num_labels:
        raise DataError(
            f"--label_column '{label_column}' has {feature.num_classes} classes but {what} predicts {num_labels}. "
            "Use a dataset with the teacher's classes, or another --label_column."
        )
    largest = num_classes_of(dataset, label_column)
    if largest > num_labels:
        raise DataError(
            f"--label_column '{label_column}' has labels up to {largest - 1} but {what} predicts {num_labels} classes."
        )


# ---- images ----------------------------------------------------------------------------------------


def image_columns(
    dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """Resolve and check the image and label columns (``img``/``image`` and ``fine_label``/``label``)."""
    import datasets

    image = _pick_column(dataset, image_column, IMAGE_COLUMN_CANDIDATES, "image_column", "image")
    if not isinstance(dataset.features[image], datasets.Image):
        raise DataError(
            f"--image_column '{image}' holds {dataset.features[image]}, not images. Pass the image column, or cast "
            f"it with dataset.cast_column('{image}', datasets.Image())."
        )
    label = _pick_column(dataset, label_column, LABEL_COLUMN_CANDIDATES, "label_column", "label")
    num_classes_of(dataset, label)  # integer labels
    return image, label


def image_transform(
    train: bool, mean: Sequence[float], std: Sequence[float], size: int = 32, padding: int = 4
):
    """CIFAR augmentation (torchvision v2): random crop ``size`` with ``padding`` + horizontal flip when
    ``train``; then float tensor ``[C, size, size]`` normalised by ``mean``/``std``."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage()]
    if train:
        steps += [v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(size), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def with_image_transform(dataset, transform, image_column: str, label_column: str):
    """Lazily map rows to ``{"pixel_values": [C, H, W], "labels": int}`` (augmentation drawn per access)."""

    def apply(batch):
        return {
            "pixel_values": [transform(image.convert("RGB")) for image in batch[image_column]],
            "labels": batch[label_column],
        }

    return dataset.with_transform(apply)


def image_classification_splits(
    raw_train,
    raw_eval,
    image_column: str | None,
    label_column: str | None,
    num_labels: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    size: int = 32,
    padding: int = 4,
):
    """Check both splits and attach the train/eval transforms.

    Returns ``(train, eval_or_None, num_labels)``; ``num_labels`` is read from the train labels when ``None``
    and checked against both splits otherwise.
    """
    image, label = image_columns(raw_train, image_column, label_column)
    num_labels = num_labels or num_classes_of(raw_train, label)
    check_label_space(raw_train, label, num_labels)
    train = with_image_transform(raw_train, image_transform(True, mean, std, size, padding), image, label)
    evaluation = None
    if raw_eval is not None:
        image_columns(raw_eval, image, label)
        check_label_space(raw_eval, label, num_labels)
        evaluation = with_image_transform(raw_eval, image_transform(False, mean, std, size), image, label)
    return train, evaluation, num_labels


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` to ``[B, C, H, W]`` and ``labels`` to ``[B]``."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }


# ---- text ------------------------------------------------------------------------------------------


def text_column(dataset, requested: str | None = None) -> str:
    column = _pick_column(dataset, requested, TEXT_COLUMN_CANDIDATES, "text_column", "text")
    if dataset.features[column].dtype != "string":
        raise DataError(f"--text_column '{column}' holds {dataset.features[column]}, not strings.")
    return column


def label_column(dataset, requested: str | None = None) -> str:
    column = _pick_column(dataset, requested, LABEL_COLUMN_CANDIDATES, "label_column", "label")
    num_classes_of(dataset, column)
    return column


def tokenize_for_classification(dataset, tokenizer, text: str, label: str, max_length: int):
    """``input_ids``/``attention_mask`` truncated to ``max_length`` and ``labels``; other columns dropped."""

    def encode(batch):
        encoded = tokenizer(batch[text], truncation=True, max_length=max_length)
        encoded["labels"] = batch[label]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


def tokenize_for_causal_lm(dataset, tokenizer, text: str, block_size: int):
    """Concatenate the tokenised texts and cut them into ``block_size`` blocks (the run_clm recipe);
    ``labels`` are the ``input_ids`` (the model shifts them)."""

    def encode(batch):
        return tokenizer(batch[text])

    def group(batch):
        ids = list(itertools.chain.from_iterable(batch["input_ids"]))
        total = (len(ids) // block_size) * block_size
        blocks = [ids[i : i + block_size] for i in range(0, total, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks], "labels": blocks}

    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    grouped = tokenized.map(group, batched=True, remove_columns=tokenized.column_names, desc="Grouping")
    if len(grouped) == 0:
        raise DataError(f"No block of {block_size} tokens could be made from the data; lower --block_size.")
    return grouped


# ---- output dir ------------------------------------------------------------------------------------


def guard_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse an ``output_dir`` that already holds a finished run, unless ``overwrite``."""
    if overwrite or not os.path.isdir(output_dir):
        return
    finished = [f for f in FINISHED_RUN_FILES if os.path.isfile(os.path.join(output_dir, f))]
    if finished:
        raise DataError(
            f"--output_dir '{output_dir}' already holds a finished run ({', '.join(finished)}). Choose another "
            "--output_dir, or pass --overwrite_output_dir to train over it."
        )


# Besides the WEIGHT_FILE_NAMES, what transformers.Trainer._load_from_checkpoint resumes from: PEFT adapters and
# FSDP state dicts (a folder whose name holds "pytorch_model_fsdp", or pytorch_model_fsdp.bin).
ADAPTER_FILE_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
FSDP_MODEL_NAME = "pytorch_model_fsdp"


def _safetensors_problem(path: str) -> str | None:
    """Why the safetensors file ``path`` is cut short (its header is read, not the tensors), or ``None``."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or 8 + length > size:
                raise ValueError("shorter than its header")
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        return f"its {os.path.basename(path)} is truncated or damaged ({err})"
    if 8 + length + end > size:
        return (
            f"its {os.path.basename(path)} is truncated ({size} bytes, its header needs {8 + length + end})"
        )
    return None


def checkpoint_incomplete(folder: str) -> str | None:
    """Why the ``transformers.Trainer`` checkpoint ``folder`` cannot be resumed from, or ``None`` when it is
    complete: a ``trainer_state.json`` that parses (the Trainer writes it last, after the weights, optimizer,
    scheduler and RNG states) and model weights the Trainer can load (``model.safetensors`` with a whole
    header, a sharded index whose shards exist, ``pytorch_model.bin``, a PEFT adapter or an FSDP state dict).
    """
    from ._constants import TRAINER_STATE_NAME, WEIGHT_FILE_NAMES

    try:
        entries = os.listdir(folder)
    except OSError as err:
        return f"it cannot be read ({err})"
    if not entries:
        return "it is empty"
    problems = []
    state = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        problems.append(f"it has no {TRAINER_STATE_NAME}")
    else:
        try:
            with open(state, encoding="utf-8") as f:
                content = json.load(f)
            if not isinstance(content, dict):
                raise ValueError(f"a {type(content).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            problems.append(f"its {TRAINER_STATE_NAME} does not parse ({err})")
    weights = [name for name in WEIGHT_FILE_NAMES if os.path.isfile(os.path.join(folder, name))]
    other = [name for name in ADAPTER_FILE_NAMES if os.path.isfile(os.path.join(folder, name))] or [
        name
        for name in entries
        if FSDP_MODEL_NAME in name
        or (
            os.path.isdir(os.path.join(folder, name))
            and any(os.path.isfile(os.path.join(folder, name, a)) for a in ADAPTER_FILE_NAMES)
        )
    ]
    if not weights and not other:
        problems.append(f"it has no model weights ({', '.join(WEIGHT_FILE_NAMES)})")
    elif weights:
        name = weights[0]
        path = os.path.join(folder, name)
        if name.endswith(".index.json"):
            try:
                with open(path, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
                problems.append(f"its {name} does not parse ({err})")
            else:
                missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
                if missing:
                    problems.append(f"its {name} lists missing shards {missing}")
        elif name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
            if problem:
                problems.append(problem)
    return "; ".join(problems) or None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The latest ``checkpoint-<step>`` folder of ``output_dir`` that a run can resume from, or ``None``.

    ``transformers.trainer_utils.get_last_checkpoint`` picks the highest step by folder name alone, so a run
    killed while saving (an empty ``checkpoint-N/``, or one without ``trainer_state.json`` or weights) makes
    ``resume_from_checkpoint`` fail with "Can't find a valid checkpoint". Here the folders are tried from the
    highest step down, and each incomplete one (:func:`checkpoint_incomplete`) is skipped with a warning that
    names it and says why. The skipped folders are left in place: delete them, or let the resumed run save
    over them. Pass the result to ``Trainer.train(resume_from_checkpoint=...)``.
    """
    from ._constants import CHECKPOINT_DIR_RE

    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (
            (int(match.group(1)), name)
            for name in os.listdir(output_dir)
            if (match := CHECKPOINT_DIR_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
        ),
        reverse=True,
    )
    for _, name in steps:
        folder = os.path.join(output_dir, name)
        problem = checkpoint_incomplete(folder)
        if problem is None:
            return folder
        logger.warning(
            "Skipping incomplete checkpoint %s: %s (a save that did not finish). Trying the checkpoint before it.",
            folder,
            problem,
        )
    return None
