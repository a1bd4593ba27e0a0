"""Soft-target cache: the teachers' ensemble targets computed once, stored as a memory-mapped ``datasets``
Arrow table keyed by (example index, augmentation view), and replayed to the student (docs/cache.md).

* **Augmentation replay.** View ``v`` of example ``i`` is the training transform run with every RNG it may
  use (torch, Python ``random``, NumPy) seeded from ``(seed, i, v)``; at epoch ``e`` the student gets view
  ``e mod views`` through the same transform, so it trains on exactly the pixels its targets were computed
  on (:class:`ReplayViews`, :class:`ReplayViewCallback`).
* **Storage.** ``"probs"``: the full tempered ensemble distribution (fp16 by default) for small label
  spaces. ``"topk"``: the k largest probabilities and the residual mass, spread uniformly over the other
  ids when read back (biased: the tail's shape is lost). ``"sampled"``: k draws from the distribution
  stored as distinct ids and counts (unbiased: E[count / k] = p).
* **Fingerprint and atomicity.** The teachers' weight-file hashes, temperature, ensemble weights and
  averaging, the dataset's fingerprint and size, the transform, views, seed, storage, k and dtype are stored
  in ``hf_ckd_cache.json``; a run whose settings differ is refused with the command that rebuilds the cache.
  A build writes into a temporary folder and renames it when complete, so a killed build never looks like a
  cache.
* **Killed builds.** The temporary folder is ``.hf_ckd_cache-<target>-<random>`` beside the target, and the
  build holds an exclusive ``flock`` on its ``.hf_ckd_build.lock`` (with the owner's pid and host inside) until
  the rename. The kernel drops the lock when the owner dies, ``SIGKILL`` included, so the next build of the same
  target removes the folders whose lock it can take (:func:`remove_stale_builds`) and leaves a live build's
  alone: the advisory-lock rule huggingface_hub and datasets use for their own downloads (``filelock``,
  ``flock`` underneath), where a pid check would be fooled by a reused pid or another host's process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .losses import TeacherSamples, stratified_targets
from .teachers import TeacherEnsemble, _weight_files
from .trajectory import Checkpoint

CACHE_CONFIG_NAME = "hf_ckd_cache.json"
TABLE_DIR = "table"
STORAGE_MODES = ("probs", "topk", "sampled")
CACHE_KEYS = ("cache_index", "cache_view")
CACHE_FORMAT_VERSION = 1
BUILD_PREFIX = ".hf_ckd_cache-"
BUILD_LOCK_NAME = ".hf_ckd_build.lock"
# A build folder younger than this is never removed: it may be between its creation and its lock.
STALE_BUILD_GRACE_S = 60.0

logger = logging.getLogger(__name__)


class CacheError(ValueError):
    """A soft-target cache is missing, incomplete, or was built for other teachers, data or settings."""


# ---- augmentation replay ---------------------------------------------------------------------------


def view_seed(seed: int, index: int, view: int) -> int:
    """The RNG seed of view ``view`` of example ``index`` (stable across processes, machines and runs)."""
    digest = hashlib.blake2b(f"{seed}:{index}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_rngs(seed: int) -> None:
    """Seed torch's CPU RNG, Python's ``random`` and NumPy's global RNG (what transforms draw from)."""
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also queues (slow) lazy seeds for GPUs
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def preserved_rngs() -> Iterator[None]:
    """Restore torch's CPU RNG, Python's ``random`` and NumPy's global RNG on exit (the training RNG must
    not move because a view was replayed)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ReplayViews(torch.utils.data.Dataset):
    """Example ``i`` of ``dataset`` under the current augmentation view, reproducibly.

    Args:
        dataset: a ``datasets.Dataset`` (or any sized, indexable dataset) of raw examples.
        transform: ``example dict -> model inputs dict`` (e.g. ``{"pixel_values": ..., "labels": ...}``); any
            randomness must come from torch, ``random`` or NumPy's global RNG (torchvision v2, timm and
            PIL-based transforms do).
        views: number of distinct augmented views per example (``>= 1``).
        seed: base seed of the views.

    Items carry ``cache_index`` and ``cache_view`` for the trainer to look their targets up. The view is
    ``epoch mod views``, set by :meth:`set_epoch` (``ReplayViewCallback`` calls it at each epoch).
    """

    def __init__(self, dataset, transform: Callable[[dict], dict], views: int = 1, seed: int = 0):
        if not isinstance(views, int) or views < 1:
            raise CacheError(f"views must be an integer >= 1, got {views!r}.")
        self.dataset, self.transform, self.views, self.seed = dataset, transform, views, seed
        self.view = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.view = int(epoch) % self.views

    def _view(self, example: Mapping, index: int, view: int) -> dict[str, Any]:
        """Call inside :func:`preserved_rngs`."""
        seed_rngs(view_seed(self.seed, index, view))
        out = dict(self.transform(dict(example)))
        out["cache_index"], out["cache_view"] = index, view
        return out

    def item(self, index: int, view: int) -> dict[str, Any]:
        with preserved_rngs():
            return self._view(self.dataset[int(index)], int(index), int(view))

    def items(self, keys: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """The ``(index, view)`` items of ``keys``, the raw examples read in one batched lookup.

        A ``datasets.Dataset`` formats one slice much faster than the same rows one by one (per-row reads
        dominated the cache build before), so both the build and the training ``DataLoader`` (through
        :meth:`__getitems__`) read this way.
        """
        indices = [int(index) for index, _ in keys]
        getitems = getattr(self.dataset, "__getitems__", None)
        examples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        with preserved_rngs():  # saved and restored once per batch: it costs more than a small transform
            return [self._view(example, i, int(v)) for example, (i, v) in zip(examples, keys)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index, self.view)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.items([(int(i), self.view) for i in indices])

    def describe(self) -> dict[str, Any]:
        """What the targets depend on: the data (fingerprint, size), the transform, the views and the seed."""
        return {
            "dataset_fingerprint": getattr(self.dataset, "_fingerprint", None),
            "num_examples": len(self.dataset),
            "transform": repr(self.transform),
            "views": self.views,
            "seed": self.seed,
        }


class ExampleTransform:
    """``example -> {"pixel_values": transform(example[image_column]), "labels": example[label_column]}``,
    with a stable ``repr`` (it goes into the cache fingerprint; a lambda's ``repr`` changes every run)."""

    def __init__(
        self,
        transform: Callable,
        image_column: str = "image",
        label_column: str = "label",
        convert: str | None = None,
    ):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column
        self.convert = convert  # PIL mode the image is converted to first ("RGB"), or None

    def __call__(self, example: dict) -> dict:
        image = example[self.image_column]
        if self.convert is not None and hasattr(image, "convert"):
            image = image.convert(self.convert)
        return {"pixel_values": self.transform(image), "labels": example[self.label_column]}

    def __repr__(self) -> str:
        return (
            f"ExampleTransform({self.transform!r}, image_column={self.image_column!r}, "
            f"label_column={self.label_column!r}, convert={self.convert!r})"
        )


class SelectColumns:
    """``example -> {column: example[column]}`` for already-tokenised text (no augmentation), with a stable
    ``repr`` for the fingerprint: the transform of a token-level cache's ``ReplayViews``."""

    def __init__(self, columns: Sequence[str] = ("input_ids", "attention_mask", "labels")):
        self.columns = tuple(columns)

    def __call__(self, example: dict) -> dict:
        return {column: example[column] for column in self.columns if column in example}

    def __repr__(self) -> str:
        return f"SelectColumns({list(self.columns)!r})"


class ReplayViewCallback(TrainerCallback):
    """Sets the replayed view of the training dataset to ``epoch mod views`` at the start of every epoch
    (resumed runs included: the epoch comes from the restored ``TrainerState``)."""

    def __init__(self, dataset: ReplayViews):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)


def collate_with_cache_keys(collate_fn: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Wrap a collator so ``cache_index`` / ``cache_view`` of the items reach the trainer as tensors."""

    def collate(items: list[dict]) -> dict:
        batch = collate_fn([{k: v for k, v in item.items() if k not in CACHE_KEYS} for item in items])
        for key in CACHE_KEYS:
            if key in items[0]:
                batch[key] = torch.tensor([item[key] for item in items], dtype=torch.long)
        return batch

    return collate


# ---- fingerprint -----------------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_hashes(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """sha256 of each checkpoint's weight files (what the targets depend on), without loading a model."""
    hashes = []
    for checkpoint in checkpoints:
        files = _weight_files(checkpoint.path) if checkpoint.path else []
        if not files:
            raise CacheError(
                f"Teacher checkpoint '{checkpoint.name}' ({checkpoint.location}) has no weight files."
            )
        digest = hashlib.sha256()
        for file in files:
            digest.update(file_sha256(file).encode())
        hashes.append(digest.hexdigest())
    return hashes


def run_fingerprint(
    checkpoints: Sequence[Checkpoint],
    weights: Sequence[float],
    average: str,
    temperature: float,
    replay: ReplayViews,
) -> dict[str, Any]:
    """What a run needs its cache to have been built from."""
    return {
        "teachers": [c.name for c in checkpoints],
        "teacher_hashes": teacher_hashes(checkpoints),
        "weights": [round(float(w), 8) for w in weights],
        "average": average,
        "temperature": float(temperature),
        **replay.describe(),
    }


# ---- build folders ---------------------------------------------------------------------------------


def _build_prefix(output_dir: str) -> str:
    """``.hf_ckd_cache-<basename>-``: the temporary folders of builds of ``output_dir`` (and only of it)."""
    return f"{BUILD_PREFIX}{os.path.basename(os.path.abspath(output_dir))}-"


def _try_lock(path: str, create: bool) -> int | None:
    """An exclusive, non-blocking ``flock`` on ``path``: its descriptor, or ``None`` when another process
    holds it (or the file is missing and not ``create``). Raises ``OSError`` where locks are unsupported."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _new_build_dir(output_dir: str, parent: str) -> tuple[str, int | None]:
    """A fresh ``.hf_ckd_cache-<basename>-<random>`` folder in ``parent``, locked by this process until the
    returned descriptor is closed. Where the filesystem has no ``flock`` the descriptor is ``None``, and a later
    build keeps the folder (it cannot tell a live build from a dead one there)."""
    tmp = tempfile.mkdtemp(prefix=_build_prefix(output_dir), dir=parent)
    try:
        fd = _try_lock(os.path.join(tmp, BUILD_LOCK_NAME), create=True)
    except (OSError, ImportError) as err:
        fd, reason = None, err
    else:
        reason = "held by another process"
    if fd is None:
        logger.warning("No file lock on %s (%s): if this build is killed, delete the folder.", tmp, reason)
        return tmp, None
    os.write(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())
    return tmp, fd


def remove_stale_builds(output_dir: str) -> list[str]:
    """Remove the temporary folders that killed builds of ``output_dir`` left beside it; returns them.

    A folder is stale when its name is ``.hf_ckd_cache-<basename of output_dir>-<random>`` (other targets'
    builds are never touched), it is older than ``STALE_BUILD_GRACE_S``, and no process holds the ``flock`` on
    its ``.hf_ckd_build.lock``: a live build holds it until it renames the folder, and the kernel releases it
    when the build dies, however it dies. Each removal is logged with the owner the lock file names.
    """
    parent = os.path.dirname(os.path.abspath(output_dir))
    pattern = re.compile(re.escape(_build_prefix(output_dir)) + r"[A-Za-z0-9_]+")
    try:
        names = sorted(os.listdir(parent))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        folder = os.path.join(parent, name)
        if not pattern.fullmatch(name) or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        lock_path = os.path.join(folder, BUILD_LOCK_NAME)
        try:
            age = time.time() - max(os.path.getmtime(p) for p in (folder, lock_path) if os.path.exists(p))
        except OSError:
            continue  # removed meanwhile
        if age < STALE_BUILD_GRACE_S:
            continue
        try:
            fd = _try_lock(lock_path, create=False)
        except (OSError, ImportError) as err:
            logger.warning("Kept %s: cannot tell whether its build is alive (%s).", folder, err)
            continue
        if fd is None and os.path.exists(lock_path):
            logger.info("Kept %s: a live build holds its lock.", folder)
            continue
        try:
            owner = ""
            if fd is not None:
                owner = os.read(fd, 200).decode(errors="replace").strip()
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
        logger.warning(
            "Removed %s, left by a killed build of %s (%s, %.0f s old).",
            folder,
            output_dir,
            owner or "no lock file",
            age,
        )
        removed.append(folder)
    return removed


# ---- build -----------------------------------------------------------------------------------------


def _encode(probs: torch.Tensor, storage: str, k: int, generator: torch.Generator) -> dict[str, list]:
    """``[B, V]`` float32 probabilities to the stored columns of one batch."""
    if storage == "probs":
        return {"probs": probs.cpu().numpy()}
    if storage == "topk":
        values, ids = probs.topk(k, dim=-1)
        residual = (1.0 - values.sum(-1)).clamp(min=0.0)
        return {
            "ids": ids.int().cpu().numpy(),
            "probs": values.cpu().numpy(),
            "residual": residual.cpu().numpy(),
        }
    draws = torch.multinomial(probs.cpu(), k, replacement=True, generator=generator)
    ids, counts = [], []
    for row in draws:
        unique, count = torch.unique(row, return_counts=True)
        ids.append(unique.int().numpy())
        counts.append(count.int().numpy())
    return {"ids": ids, "counts": counts}


class _ViewRows(torch.utils.data.Dataset):
    """Row ``r`` of the cache (example ``r // views``, view ``r mod views``) for the rows one process builds;
    fetched a batch at a time (``__getitems__``) so the raw examples are read in one lookup."""

    def __init__(self, replay: ReplayViews, rows: Sequence[int]):
        self.replay, self.rows = replay, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[int, dict]:
        return self.__getitems__([position])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[tuple[int, dict]]:
        views = self.replay.views
        rows = [self.rows[p] for p in positions]
        return list(zip(rows, self.replay.items([(row // views, row % views) for row in rows])))


def _collate_rows(collate_fn: Callable[[list[dict]], dict]) -> Callable:
    def collate(pairs: list[tuple[int, dict]]) -> tuple[list[int], dict]:
        items = [{k: v for k, v in item.items() if k not in CACHE_KEYS} for _, item in pairs]
        return [row for row, _ in pairs], collate_fn(items)

    return collate


def _encode_tokens(
    log_target: torch.Tensor,
    attention_mask: torch.Tensor | None,
    k: int,
    num_uniform: int,
    generator: torch.Generator,
) -> dict[str, list]:
    """``[B, T, V]`` log-probabilities to per-example lists over the attended positions (in order): at each
    position the teacher's ``k // 2`` most likely ids, the distinct ids of ``k - k // 2`` systematic draws from
    the rest with their counts, and ``num_uniform`` uniform ids, all with their exact probabilities, and the
    position's exact entropy (``hf_ckd.losses.stratified_targets``)."""
    mask = (
        attention_mask.bool()
        if attention_mask is not None
        else torch.ones(log_target.shape[:2], dtype=torch.bool)
    )
    columns: dict[str, list] = {"ids": [], "counts": [], "probs": [], "uniform_counts": [], "entropy": []}
    for b in range(log_target.shape[0]):
        positions = mask[b].to(log_target.device).nonzero().squeeze(-1)
        samples = stratified_targets(
            log_target[b, positions].cpu(), k // 2, k - k // 2, generator, num_uniform=num_uniform
        )
        used = samples.ids < log_target.shape[-1]
        for key, dtype in (
            ("ids", np.int32),
            ("counts", np.int32),
            ("probs", np.float32),
            ("uniform_counts", np.int8),
        ):
            values = getattr(samples, key)
            columns[key].append([v[u].numpy().astype(dtype) for v, u in zip(values, used)])
        columns["entropy"].append(samples.entropy.numpy().astype(np.float32))
    return columns


def build_soft_target_cache(
    teachers: TeacherEnsemble,
    dataset,
    output_dir: str,
    *,
    transform: Callable[[dict], dict],
    collate_fn: Callable[[list[dict]], dict],
    temperature: float,
    views: int = 1,
    seed: int = 0,
    storage: str = "probs",
    k: int | None = None,
    num_uniform: int | None = None,
    dtype: str = "float16",
    batch_size: int = 256,
    num_workers: int = 0,
    accelerator=None,
    overwrite: bool = False,
    progress: bool = True,
) -> SoftTargetCache:
    """Compute the ensemble's tempered targets for every (example, view) and store them at ``output_dir``.

    Args:
        teachers: the loaded ensemble (its weights and averaging are used and recorded).
        dataset: raw examples (a ``datasets.Dataset``: its fingerprint is recorded).
        transform: the training transform, ``example -> inputs`` (replayed per view, see :class:`ReplayViews`).
        collate_fn: turns a list of transformed examples into a batch for the teachers.
        temperature: tau of the targets (must equal the run's ``temperature``).
        views: augmented views per example; the student sees view ``epoch mod views``.
        storage: ``"probs"``, ``"topk"`` or ``"sampled"`` (the latter two need ``k < num_classes``).
        k: ids per example (``topk``, ``sampled``); for a causal LM's token-level ``sampled`` storage, teacher ids
            per position: its ``k // 2`` most likely and ``k - k // 2`` draws from the rest.
        num_uniform: token-level ``sampled`` only: uniform ids per position, stored with the teacher's
            probabilities, for the student's importance-sampled normaliser (default ``k // 2``: the online
            split of ``kd_num_samples = k + k // 2``). The loss then reads exactly the samples it would draw.
        dtype: float dtype of stored probabilities (``float16`` or ``float32``).
        batch_size: examples per teacher forward.
        num_workers: ``DataLoader`` worker processes that read and transform the next batches while the
            teachers run (0: in the main process, between forwards).
        accelerator: an ``accelerate.Accelerator`` or ``PartialState`` to build with several processes (each
            computes a shard on its device; the main process writes the one cache).

    Returns:
        The :class:`SoftTargetCache` (opened from disk).
    """
    from datasets import Dataset, concatenate_datasets, load_from_disk
    from tqdm.auto import tqdm

    if storage not in STORAGE_MODES:
        raise CacheError(f"storage must be one of {STORAGE_MODES}, got {storage!r}.")
    if dtype not in ("float16", "float32"):
        raise CacheError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    replay = ReplayViews(dataset, transform, views, seed)
    num_classes = teachers.output_size
    if storage == "topk" and (
        k is None or not isinstance(k, int) or k < 1 or (num_classes is not None and k >= num_classes)
    ):
        raise CacheError(
            f"storage='topk' needs k, an integer in [1, num_classes - 1] (num_classes = {num_classes}), got {k!r}; "
            "for small label spaces use storage='probs'."
        )
    if storage == "sampled" and (k is None or not isinstance(k, int) or k < 1):
        raise CacheError(f"storage='sampled' needs k >= 1 draws per example, got {k!r}.")
    if num_uniform is not None and (not isinstance(num_uniform, int) or num_uniform < 1):
        raise CacheError(
            f"num_uniform must be an integer >= 1 (uniform ids per position, for the student's normaliser where "
            f"the teacher has no mass), got {num_uniform!r}."
        )
    if os.path.exists(output_dir) and not overwrite:
        raise CacheError(f"Cache folder '{output_dir}' already exists; pass overwrite=True to rebuild it.")
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    if accelerator is not None:
        teachers.to(accelerator.device)
    device = accelerator.device if accelerator is not None else next(teachers.models[0].parameters()).device
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    # One temporary folder for all processes: its name is agreed on through the main process, which first
    # removes what killed builds of this target left, then holds the new folder's lock until the rename.
    tmp, lock_fd = None, None
    if rank == 0:
        remove_stale_builds(output_dir)
        tmp, lock_fd = _new_build_dir(output_dir, parent)
    if accelerator is not None:
        from accelerate.utils import broadcast_object_list

        tmp = broadcast_object_list([tmp])[0]
    try:
        rows = range(rank, len(replay) * views, world)
        generator = torch.Generator().manual_seed(view_seed(seed, -1, rank))
        columns: dict[str, list] = {"row": []}
        token_level = False
        np_dtype = np.float16 if dtype == "float16" else np.float32
        loader = torch.utils.data.DataLoader(
            _ViewRows(replay, rows),
            batch_size=batch_size,
            collate_fn=_collate_rows(collate_fn),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        with torch.inference_mode():
            bar = tqdm(total=len(rows), desc="soft targets", disable=not progress or rank != 0)
            for chunk, batch in loader:
                batch = {
                    k_: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k_, v in batch.items()
                }
                log_target = teachers.log_targets(batch, temperature).float()
                if num_classes is None:
                    num_classes = log_target.shape[-1]
                if log_target.dim() == 3:  # a causal LM: one distribution per position
                    if storage != "sampled":
                        raise CacheError(
                            f"The teachers' targets are token-level ({tuple(log_target.shape)}: batch, positions, "
                            f"vocabulary); store them with storage='sampled' and k draws per position "
                            f"('{storage}' would hold positions x vocabulary numbers per example)."
                        )
                    token_level = True
                    if k < 2:
                        raise CacheError(
                            f"Token-level storage='sampled' needs k >= 2 teacher ids per position (k // 2 top ids, "
                            f"the rest draws), got k={k}."
                        )
                    num_uniform = k // 2 if num_uniform is None else num_uniform
                    if not isinstance(num_uniform, int) or not 1 <= num_uniform <= log_target.shape[-1]:
                        raise CacheError(
                            f"num_uniform must be an integer in [1, {log_target.shape[-1]}] (the vocabulary), got "
                            f"{num_uniform!r}."
                        )
                    encoded = _encode_tokens(
                        log_target, batch.get("attention_mask"), k, num_uniform, generator
                    )
                elif log_target.dim() == 2:
                    encoded = _encode(log_target.exp(), storage, k or 0, generator)
                else:
                    raise CacheError(
                        f"The teachers' targets have shape {tuple(log_target.shape)}; the cache stores one "
                        "distribution per example ([batch, num_classes]) or per position ([batch, seq, vocab])."
                    )
                columns["row"].extend(chunk)
                for key, value in encoded.items():
                    columns.setdefault(key, []).extend(
                        list(value.astype(np_dtype)) if key == "probs" and not token_level else list(value)
                    )
                bar.update(len(chunk))
            bar.close()
        Dataset.from_dict(columns).save_to_disk(os.path.join(tmp, f"shard-{rank:05d}"))
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if rank == 0:
            shards = [load_from_disk(os.path.join(tmp, f"shard-{r:05d}")) for r in range(world)]
            table = concatenate_datasets(shards).sort("row")
            table.save_to_disk(os.path.join(tmp, TABLE_DIR))
            for r in range(world):
                shutil.rmtree(os.path.join(tmp, f"shard-{r:05d}"))
            config = {
                "format_version": CACHE_FORMAT_VERSION,
                **run_fingerprint(
                    teachers.checkpoints, teachers.weights, teachers.average, temperature, replay
                ),
                "storage": storage,
                "k": k,
                "dtype": dtype,
                "num_classes": num_classes,
                "token_level": token_level,
                "num_uniform": num_uniform if token_level else None,
                "num_rows": len(table),
            }
            with open(os.path.join(tmp, CACHE_CONFIG_NAME), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)
            if os.path.exists(output_dir):
                shutil.rmtree(output_dir)
            os.replace(tmp, output_dir)  # the cache appears complete, or not at all
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, BUILD_LOCK_NAME))
        if accelerator is not None:
            accelerator.wait_for_everyone()
    except BaseException:
        if rank == 0 and tmp and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return SoftTargetCache(output_dir)


# ---- read ------------------------------------------------------------------------------------------

# What a reader needs of hf_ckd_cache.json: key -> (accepted types, required). Fingerprint keys are compared by
# SoftTargetCache.check, which reports a missing one as a difference.
_CONFIG_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "num_examples": ((int,), True),
    "views": ((int,), True),
    "num_rows": ((int,), True),
    "storage": ((str,), True),
    "num_classes": ((int,), True),
    "token_level": ((bool,), False),
    "num_uniform": ((int, type(None)), False),
    "k": ((int, type(None)), False),
}


def read_cache_config(config_path: str) -> dict[str, Any]:
    """``hf_ckd_cache.json`` as a dict, or a ``CacheError`` naming the file and what is wrong with it (not
    JSON, not an object, a missing key, a value of the wrong type) and saying to delete and rebuild."""
    folder = os.path.dirname(config_path)
    fix = (
        f"Delete the cache folder '{folder}' and rebuild it (build_soft_target_cache(..., overwrite=True), or "
        "rerun the recipe with --soft_target_cache)."
    )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(
            f"Soft-target cache metadata '{config_path}' is not valid JSON ({err}). {fix}"
        ) from err
    if not isinstance(config, dict):
        raise CacheError(
            f"Soft-target cache metadata '{config_path}' holds a {type(config).__name__}, not a JSON object. {fix}"
        )
    problems = []
    for key, (types, required) in _CONFIG_SCHEMA.items():
        if key not in config:
            if required:
                problems.append(f"'{key}' is missing")
            continue
        value = config[key]
        # bool is an int in Python; a JSON true is never a count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"'{key}' is {value!r}, not {names}")
    if isinstance(config.get("storage"), str) and config["storage"] not in STORAGE_MODES:
        problems.append(f"'storage' is {config['storage']!r}, not one of {STORAGE_MODES}")
    if problems:
        raise CacheError(
            f"Soft-target cache metadata '{config_path}' is damaged: {'; '.join(problems)}. {fix}"
        )
    return config


class SoftTargetCache:
    """A built cache, memory-mapped. ``log_targets(index, view)`` gives the stored targets as ``[B, V]``
    float32 log-probabilities."""

    def __init__(self, path: str):
        from datasets import load_from_disk

        config_path = os.path.join(path, CACHE_CONFIG_NAME)
        if not os.path.isdir(path):
            raise CacheError(
                f"Soft-target cache '{path}' does not exist; build it with build_soft_target_cache."
            )
        if not os.path.isfile(config_path):
            raise CacheError(
                f"'{path}' is not a complete soft-target cache (no {CACHE_CONFIG_NAME}: the build did not finish). "
                "Delete it and rebuild."
            )
        self.config: dict[str, Any] = read_cache_config(config_path)
        try:
            self.table = load_from_disk(os.path.join(path, TABLE_DIR))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise CacheError(
                f"Soft-target cache '{path}' is damaged ({err}); delete it and rebuild."
            ) from err
        expected_rows = self.config["num_examples"] * self.config["views"]
        if len(self.table) != expected_rows or len(self.table) != self.config.get("num_rows"):
            raise CacheError(
                f"Soft-target cache '{path}' holds {len(self.table)} rows, expected {expected_rows} "
                f"({self.config['num_examples']} examples x {self.config['views']} views); delete it and rebuild."
            )
        self.path = path
        self.storage, self.views = self.config["storage"], self.config["views"]
        self.num_classes = self.config["num_classes"]
        if self.config.get("token_level") and "num_uniform" not in self.config:
            raise CacheError(
                f"Soft-target cache '{path}' holds token-level samples in an older layout (no uniform ids with the "
                "teacher's probabilities); rebuild it with build_soft_target_cache(..., overwrite=True)."
            )
        self.table = self.table.with_format("numpy")

    def check(self, expected: Mapping[str, Any], rebuild_hint: str = "") -> None:
        """Refuse a cache whose fingerprint differs from what the run expects (lists every difference)."""
        differences = [
            f"{key}: cache has {self.config.get(key)!r}, the run has {value!r}"
            for key, value in expected.items()
            if self.config.get(key) != value
        ]
        if differences:
            raise CacheError(
                f"Soft-target cache '{self.path}' was built for other settings:\n- "
                + "\n- ".join(differences)
                + "\nRebuild it for this run"
                + (f": {rebuild_hint}" if rebuild_hint else " (build_soft_target_cache with these settings).")
            )

    @property
    def token_level(self) -> bool:
        """Targets per position of causal-LM examples (``storage="sampled"``), not one per example."""
        return bool(self.config.get("token_level", False))

    @property
    def num_uniform(self) -> int:
        """Uniform ids per position in a token-level cache (the loss's ``num_samples`` for these samples)."""
        return int(self.config.get("num_uniform") or 0)

    def token_samples(
        self, index: torch.Tensor, view: torch.Tensor, attention_mask: torch.Tensor | None, seq_len: int
    ) -> TeacherSamples:
        """The stored teacher samples of a batch, aligned with its ``[B, T]`` positions (hidden state t, which
        predicts token t + 1): ``hf_ckd.losses.TeacherSamples``, ``[B, T, D]`` each but the entropy (``[B, T]``),
        as ``stratified_targets`` gives them: what ``linear_distillation_loss(teacher_samples=samples,
        num_samples=cache.num_uniform)`` takes. Positions with
        ``attention_mask == 0`` (padding) get nothing (id ``V``, zeros)."""
        if not self.token_level:
            raise CacheError(
                f"Soft-target cache '{self.path}' holds one target per example, not per position."
            )
        import pyarrow.compute as pc

        rows = (index.long() * self.views + view.long()).tolist()
        records = self.table.with_format("arrow")[rows]
        batch = len(rows)
        mask = (
            attention_mask.bool().cpu()
            if attention_mask is not None
            else torch.ones(batch, seq_len, dtype=torch.bool)
        )
        # Nested Arrow lists (example -> position -> draws) read as flat arrays, without Python objects.
        ids_column = records.column("ids").combine_chunks()
        stored = pc.list_value_length(ids_column).to_numpy(zero_copy_only=False)
        attended = mask.sum(1).numpy()
        for b in np.flatnonzero(stored != attended):
            raise CacheError(
                f"Example {int(index[b])} has {attended[b]} attended positions in this batch but {stored[b]} in "
                f"soft-target cache '{self.path}': the tokenisation, truncation or padding changed since the "
                "build. Rebuild the cache with the run's data and collator."
            )
        per_position = ids_column.flatten()
        lengths = torch.tensor(
            pc.list_value_length(per_position).to_numpy(zero_copy_only=False), dtype=torch.long
        )
        flat_ids = torch.tensor(per_position.flatten().to_numpy(zero_copy_only=False), dtype=torch.long)
        flat_counts = (
            records.column("counts").combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
        )
        flat_probs = (
            records.column("probs").combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
        )
        flat_uniform = (
            records.column("uniform_counts")
            .combine_chunks()
            .flatten()
            .flatten()
            .to_numpy(zero_copy_only=False)
        )

        flat_entropy = records.column("entropy").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        b_index, t_index = mask.nonzero(as_tuple=True)  # row-major: the order the positions were stored in
        width = max(int(lengths.max()) if len(lengths) else 1, 1)
        ids = torch.full((batch, seq_len, width), self.num_classes, dtype=torch.long)
        counts = torch.zeros(batch, seq_len, width)
        starts = torch.cumsum(lengths, 0) - lengths
        slot = torch.arange(len(flat_ids)) - starts.repeat_interleave(lengths)
        b_draw, t_draw = b_index.repeat_interleave(lengths), t_index.repeat_interleave(lengths)
        ids[b_draw, t_draw, slot] = flat_ids
        counts[b_draw, t_draw, slot] = torch.tensor(flat_counts, dtype=torch.float32)
        probs = torch.zeros(batch, seq_len, width)
        probs[b_draw, t_draw, slot] = torch.tensor(flat_probs, dtype=torch.float32)
        uniform_counts = torch.zeros(batch, seq_len, width)
        uniform_counts[b_draw, t_draw, slot] = torch.tensor(flat_uniform, dtype=torch.float32)
        entropy = torch.zeros(batch, seq_len)
        entropy[b_index, t_index] = torch.tensor(flat_entropy, dtype=torch.float32)
        return TeacherSamples(ids, counts, probs, uniform_counts, entropy)

    def log_targets(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` float32 log-probabilities of examples ``index`` under views ``view`` (``-inf`` where a
        stored distribution has no mass)."""
        if self.token_level:
            raise CacheError(
                f"Soft-target cache '{self.path}' holds teacher draws per position (a causal LM); train with "
                "kd_loss='sampled', which reads them without materialising the logits."
            )
        rows = (index.long() * self.views + view.long()).tolist()
        records = self.table[rows]
        num_classes = self.num_classes
        if self.storage == "probs":
            probs = torch.as_tensor(np.asarray(records["probs"]), dtype=torch.float32)
        elif self.storage == "topk":
            ids = torch.as_tensor(np.asarray(records["ids"]), dtype=torch.long)
            values = torch.as_tensor(np.asarray(records["probs"]), dtype=torch.float32)
            residual = torch.as_tensor(np.asarray(records["residual"]), dtype=torch.float32)
            k = ids.shape[1]
            probs = (residual / (num_classes - k))[:, None].expand(-1, num_classes).clone()
            probs.scatter_(1, ids, values)
        else:
            probs = torch.zeros(len(rows), num_classes)
            for r, (ids, counts) in enumerate(zip(records["ids"], records["counts"])):
                probs[r, torch.as_tensor(ids, dtype=torch.long)] = torch.as_tensor(
                    counts, dtype=torch.float32
                )
        probs = probs / probs.sum(-1, keepdim=True)  # fp16 storage rounding
        return probs.log()
