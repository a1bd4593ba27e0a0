"""The run folder of a ``transformers.Trainer`` run: which ``checkpoint-<step>`` folders a run can resume from.

A run killed while it saved leaves an empty or partial ``checkpoint-N/``; transformers' own
``get_last_checkpoint`` picks the highest step by name alone, so ``resume_from_checkpoint=True`` then fails with
"Can't find a valid checkpoint". Here a folder counts as a checkpoint only when the Trainer can resume from it
(:func:`checkpoint_incomplete`), :func:`last_complete_checkpoint` skips the incomplete ones with a warning, and
:func:`resolve_resume_checkpoint` is what ``CheckpointDistillTrainer.train`` and the recipes do with a
``resume_from_checkpoint`` value. Stdlib only.
"""

from __future__ import annotations

import json
import logging
import os
import re

from ._constants import CHECKPOINT_DIR_RE, TRAINER_STATE_NAME, WEIGHT_FILE_NAMES

logger = logging.getLogger(__name__)


class ResumeError(ValueError):
    """``resume_from_checkpoint`` names no checkpoint a run can resume from; the message names the folder and
    the complete checkpoint to use instead."""


# Besides the WEIGHT_FILE_NAMES, what transformers.Trainer resumes from: PEFT adapters, FSDP state dicts (a folder
# whose name holds "pytorch_model_fsdp", or pytorch_model_fsdp.bin) and DeepSpeed's global_step<N>/ folders.
ADAPTER_FILE_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
FSDP_MODEL_NAME = "pytorch_model_fsdp"
DEEPSPEED_STATE_RE = re.compile(r"global_step\d+")  # a DeepSpeed engine's own checkpoint folder


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
        or (DEEPSPEED_STATE_RE.fullmatch(name) and os.path.isdir(os.path.join(folder, name)))
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


def resolve_resume_checkpoint(
    output_dir: str, requested: str | bool | None, argument: str = "resume_from_checkpoint"
) -> str | None:
    """``resume_from_checkpoint`` as ``Trainer.train`` should get it, or ``None`` to start from scratch.

    ``True`` (or ``"true"``) is the latest complete checkpoint of ``output_dir`` (the Trainer's own ``True``
    takes the highest step, complete or not); a folder must be a complete checkpoint. ``argument`` is how the
    caller spells the option in the :class:`ResumeError` (``--resume_from_checkpoint`` for the recipes).
    """
    if requested is None or requested is False or requested == "":
        return None
    if requested is True or (isinstance(requested, str) and requested.strip().lower() == "true"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ResumeError(
                f"{argument}=True: output_dir '{output_dir}' holds no complete checkpoint-<step> folder to resume "
                f"from. Drop {argument} to start from scratch."
            )
        return checkpoint
    requested = os.fspath(requested)
    if not os.path.isdir(requested):
        raise ResumeError(
            f"{argument} '{requested}' is not a folder. Pass a checkpoint-<step> folder of a run, or True for the "
            "latest complete one of output_dir."
        )
    problem = checkpoint_incomplete(requested)
    if problem is not None:
        earlier = last_complete_checkpoint(os.path.dirname(os.path.abspath(requested)))
        raise ResumeError(
            f"{argument} '{requested}' is incomplete: {problem} (a save that did not finish). "
            + (f"Resume from '{earlier}' instead." if earlier else "Start from scratch without it.")
        )
    return requested
