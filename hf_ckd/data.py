"""Data for the recipes: datasets by Hub name or local path, column checks that fail before training,
image augmentation, tokenisation, collators, and the run folder: the finished-run guard for ``output_dir``
and the latest complete checkpoint to resume from (:func:`last_complete_checkpoint`, from
``hf_ckd.run_folders``).

Everything goes through ``datasets``; errors name the recipe argument to change (``--dataset_path``,
``--image_column`` ...).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

# The run folder's helpers, also importable from here (the recipes' docs name hf_ckd.data).
from .run_folders import checkpoint_incomplete, last_complete_checkpoint  # noqa: F401

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
