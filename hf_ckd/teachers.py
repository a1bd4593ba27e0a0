"""Teacher checkpoints as frozen models, and the snapshot ensemble that turns them into soft targets.

``load_teacher`` builds a frozen, eval-mode model from a :class:`~hf_ckd.trajectory.Checkpoint`:

* transformers checkpoints through the Auto class their ``config.json`` architecture names (sequence /
  token / image classification, causal LM, masked LM); timm models trained through
  ``transformers.TimmWrapperForImageClassification`` and timm's own hub format (``config.json`` with a
  ``pretrained_cfg``) both load through ``AutoModelForImageClassification``, so timm and text teachers share
  one path;
* any other ``nn.Module`` through a user ``model_init`` that builds the architecture, into which the
  checkpoint's weights are loaded (strictly).

safetensors files are preferred; pickle files (``pytorch_model.bin``) load only through
``torch.load(weights_only=True)`` unless ``allow_unsafe_pickle=True``.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ._constants import CONFIG_NAME, SAFE_WEIGHTS_NAME, WEIGHT_FILE_NAMES, WEIGHTS_NAME
from ._options import (
    AVERAGE_MODES,
    FUSION_MODES,
    TEACHER_DTYPES,
    OptionError,
    check_choice,
    normalize_weights,
)
from .hub import checkpoint_config_file, fetch_checkpoint
from .losses import ensemble_log_probs
from .modeling import CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, auto_model_class, is_timm_model, model_task
from .trajectory import Checkpoint, Trajectory, TrajectoryError

# Inputs that belong to the loss, not to a teacher's forward.
NON_MODEL_INPUTS = (
    "labels",
    "shift_labels",
    "num_items_in_batch",
    "return_loss",
    "cache_index",
    "cache_view",
)

TeacherModelInit = Callable[..., nn.Module]
logger = logging.getLogger(__name__)


class TeacherLoadError(ValueError):
    """One or more teacher checkpoints cannot be loaded; the message lists every problem."""


class TeacherOutputError(RuntimeError):
    """A teacher produced NaN or Inf logits during training."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"fp16"``/``"fp32"`` (or the torch names) to a ``torch.dtype``; ``None`` stays ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = check_choice(str(dtype).lower().removeprefix("torch."), tuple(TEACHER_DTYPES), "teacher_dtype")
    return getattr(torch, TEACHER_DTYPES[key])


# ---- checkpoint files ------------------------------------------------------------------------------


def _weight_files(path: str) -> list[str]:
    """Weight files present in ``path``, safetensors first; shards resolved through their index."""
    for name in WEIGHT_FILE_NAMES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".index.json"):
            with open(file, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            return [os.path.join(path, s) for s in shards]
        return [file]
    return []


def unsafe_pickle_globals(file: str) -> list[str]:
    """The globals (``module.name``) a pickle weight file would import that ``torch.load(weights_only=True)``
    refuses, found by reading its opcodes: nothing is unpickled, so nothing in it runs. ``[]`` for a file
    ``weights_only=True`` loads; ``["<not a pickle>"]`` when the opcodes cannot be read."""
    import pickletools
    import zipfile

    from torch.serialization import get_safe_globals, get_unsafe_globals_in_checkpoint

    if zipfile.is_zipfile(file):  # torch.save's format since torch 1.6: torch reads the pickle's opcodes
        return get_unsafe_globals_in_checkpoint(file)
    # The legacy format (and a plain pickle): up to five pickles in a row, then raw storage bytes.
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = set(_get_allowed_globals()) | {f"{g.__module__}.{g.__name__}" for g in get_safe_globals()}
    found: list[str] = []
    with open(file, "rb") as f:
        for index in range(5):
            strings, memo = [], {}
            try:
                for opcode, arg, _ in pickletools.genops(f):
                    if isinstance(arg, str) and ("UNICODE" in opcode.name or opcode.name.endswith("STRING")):
                        strings.append(arg)
                    elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE") and strings:
                        memo[arg if opcode.name != "MEMOIZE" else len(memo)] = strings[-1]
                    elif opcode.name in ("GET", "BINGET", "LONG_BINGET") and arg in memo:
                        strings.append(memo[arg])
                    if opcode.name in ("GLOBAL", "INST"):
                        found.append(arg.replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL":
                        found.append(".".join(strings[-2:]) if len(strings) >= 2 else "<STACK_GLOBAL>")
            except Exception:  # the raw storage bytes after the legacy format's pickles, or not a pickle
                if index == 0:
                    return ["<not a pickle>"]
                break
    return sorted({g for g in found if g not in allowed})


def _remote_code_problem(where: str, config_file: str) -> str | None:
    """Why ``config_file`` needs ``trust_remote_code=True`` (its classes are code shipped with the checkpoint
    and its ``model_type`` is none transformers has), or ``None``; an unreadable file is reported elsewhere."""
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        auto_map, model_type = config.get("auto_map"), config.get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    if not auto_map:
        return None
    from transformers import CONFIG_MAPPING

    if model_type in CONFIG_MAPPING:
        return None  # transformers builds it from its own classes and ignores the shipped code
    modules = sorted(
        {str(v).split(".")[0] for v in (auto_map.values() if isinstance(auto_map, dict) else [])}
    )
    return (
        f"{where}: its {CONFIG_NAME} maps its classes to code shipped with the checkpoint (auto_map: "
        f"{', '.join(modules) or auto_map}) for model_type {model_type!r}, which transformers does not have. That "
        "code would run when the teacher loads, so it is refused: pass trust_remote_code=True "
        "(teacher_trust_remote_code) only if you have read it and trust its author."
    )


def checkpoint_problems(
    checkpoint: Checkpoint,
    needs_config: bool = True,
    allow_unsafe_pickle: bool = False,
    trust_remote_code: bool = False,
) -> list[str]:
    """Cheap checks of a checkpoint's files (no model is built, no pickle unpickled, no shipped code run).
    Returns human-readable problems; a pickle that ``weights_only=True`` would refuse is one unless
    ``allow_unsafe_pickle``, a config whose classes are shipped code one unless ``trust_remote_code``."""
    where = f"checkpoint '{checkpoint.name}' ({checkpoint.path})"
    problems = []
    config_file = os.path.join(checkpoint.path, CONFIG_NAME)
    if needs_config and not os.path.isfile(config_file):
        problems.append(
            f"{where} has no {CONFIG_NAME}: save the teacher with save_pretrained / Trainer, or pass "
            "teacher_model_init to build the architecture yourself."
        )
    elif needs_config and not trust_remote_code and (problem := _remote_code_problem(where, config_file)):
        problems.append(problem)
    try:
        files = _weight_files(checkpoint.path)
    except (OSError, json.JSONDecodeError) as err:
        return [*problems, f"{where} has an unreadable weight index ({err}); re-save the checkpoint."]
    if not files:
        problems.append(
            f"{where} has no weights ({SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}); the save was interrupted or "
            "the folder is not a checkpoint. Delete it or re-save it."
        )
    for file in files:
        if not os.path.isfile(file):
            problems.append(
                f"{where} is missing weight shard '{os.path.basename(file)}'; re-save the checkpoint."
            )
        elif file.endswith(".safetensors"):
            try:
                with safe_open(file, framework="pt") as f:
                    f.keys()
            except (SafetensorError, OSError, ValueError) as err:
                problems.append(
                    f"{where}: '{os.path.basename(file)}' is not a valid safetensors file ({err}); it is corrupted or "
                    "truncated. Re-save the checkpoint from the training run or delete it."
                )
        elif not allow_unsafe_pickle and (unsafe := unsafe_pickle_globals(file)):
            problems.append(
                _unsafe_pickle_message(
                    f"{where}: {os.path.basename(file)}", f"Unsupported global(s): {', '.join(unsafe)}"
                )
            )
    return problems


def _unsafe_pickle_message(what: str, err: Exception | str) -> str:
    reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
    return (
        f"{what} needs full unpickling, which can run arbitrary code, so it was refused"
        f"{' (' + reason + ')' if reason else ''}. Convert it to safetensors, or pass allow_unsafe_pickle=True "
        "(teacher_allow_unsafe_pickle) only if you trust its author."
    )


def _load_state_dict(file: str, allow_unsafe_pickle: bool) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file)
    try:
        return torch.load(file, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as err:
        raise TeacherLoadError(_unsafe_pickle_message(f"'{file}'", err)) from err


def _auto_class(config) -> type:
    """The transformers Auto class that rebuilds a checkpoint of this config (:mod:`hf_ckd.modeling`)."""
    auto = auto_model_class(config)
    if auto is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        raise TeacherLoadError(
            f"Cannot tell which model class to build for architecture {arch or '<none>'} (model_type "
            f"{getattr(config, 'model_type', None)!r}); pass teacher_model_init to build it yourself."
        )
    return auto


def architecture_of(config: Mapping[str, Any]) -> str:
    """What a ``config.json`` says the model is: its class, or for timm models the timm architecture."""
    arch = (config.get("architectures") or [None])[0] or config.get("model_type") or "<unknown>"
    timm_arch = config.get("architecture")
    return f"{arch} ({timm_arch})" if timm_arch else arch


def check_same_architecture(checkpoints: Sequence[Checkpoint], source: str) -> None:
    """Refuse checkpoints whose ``config.json`` files name different architectures (one run's trajectory
    has one). Reads only the configs (for Hub checkpoints, downloads only them)."""
    archs, spaces = {}, {}
    for checkpoint in checkpoints:
        path = checkpoint_config_file(checkpoint)
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
                archs[checkpoint] = architecture_of(config)
                spaces[checkpoint.name] = _label_space(config)
            except (OSError, json.JSONDecodeError, AttributeError, TypeError):
                continue  # reported with the checkpoint's other problems when it is loaded
    if len({s for s in spaces.values() if s is not None}) > 1:
        raise TeacherLoadError(
            f"The selected teacher checkpoints of '{source}' predict over different label spaces (classes, or the "
            f"vocabulary for LMs): {spaces}. One run's checkpoints share one: drop the odd checkpoint(s)."
        )
    if len(set(archs.values())) > 1:
        counts = {a: list(archs.values()).count(a) for a in set(archs.values())}
        majority = max(counts, key=counts.get)
        odd = [
            f"'{c.name}' ({c.location}{f', revision {c.revision}' if c.revision and c.path else ''}) is {a}"
            for c, a in archs.items()
            if a != majority
        ]
        raise TeacherLoadError(
            f"The teacher checkpoints of '{source}' are not one architecture: {'; '.join(odd)}, but the others are "
            f"{majority}. A trajectory holds the checkpoints of one training run: drop the odd checkpoint(s) from "
            "the spec, or point at the right revision/folder."
        )


def _label_space(config: Mapping[str, Any]) -> int | None:
    """The number of classes (``id2label``/``num_labels``) or, for a language model, the vocabulary a
    ``config.json`` says its model predicts over."""
    if model_task(config) in (CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM):
        return config.get("vocab_size")
    labels = config.get("id2label") or {}
    return len(labels) or config.get("num_labels")


def _call_model_init(model_init: TeacherModelInit, checkpoint: Checkpoint) -> nn.Module:
    """Call ``model_init(checkpoint)`` if it has a required positional parameter, else ``model_init()``."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [
        p
        for p in inspect.signature(model_init).parameters.values()
        if p.kind in positional and p.default is inspect.Parameter.empty
    ]
    return model_init(checkpoint) if required else model_init()


def load_teacher(
    checkpoint: Checkpoint,
    *,
    model_init: TeacherModelInit | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    allow_unsafe_pickle: bool = False,
) -> nn.Module:
    """Build a frozen, eval-mode teacher from a checkpoint.

    Args:
        checkpoint: the checkpoint to load; a Hub checkpoint's files are downloaded first
            (:func:`hf_ckd.hub.fetch_checkpoint`).
        model_init: optional callable ``() -> nn.Module`` or ``(checkpoint) -> nn.Module`` that builds the
            architecture; the checkpoint's weights are then loaded into it strictly. Without it the model
            class is read from ``config.json``.
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` (default ``fp32``).
        device: where to put it (the trainer passes ``accelerator.device``).
        trust_remote_code: allow custom modelling code shipped with the checkpoint (off by default).
        allow_unsafe_pickle: allow pickle files that ``torch.load(weights_only=True)`` refuses.

    Returns:
        The model in eval mode with ``requires_grad=False`` on every parameter.
    """
    try:
        checkpoint = fetch_checkpoint(checkpoint)
    except TrajectoryError as err:
        raise TeacherLoadError(str(err)) from err
    problems = checkpoint_problems(checkpoint, model_init is None, allow_unsafe_pickle, trust_remote_code)
    if problems:
        raise TeacherLoadError("\n".join(problems))
    torch_dtype = resolve_dtype(dtype) or torch.float32
    where = f"checkpoint '{checkpoint.name}' ({checkpoint.path})"
    try:
        if model_init is not None:
            model = _call_model_init(model_init, checkpoint)
            state: dict[str, torch.Tensor] = {}
            for file in _weight_files(checkpoint.path):
                state.update(_load_state_dict(file, allow_unsafe_pickle))
            model.load_state_dict(state, strict=True)
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(checkpoint.path, trust_remote_code=trust_remote_code)
            if is_timm_model(config) and "num_classes" in (config.model_args or {}):
                # timm's save_for_hf records num_classes in model_args too; the wrapper passes num_labels itself.
                config.model_args = {k: v for k, v in config.model_args.items() if k != "num_classes"}
            if is_timm_model(config):
                from . import models  # noqa: F401  (registers hf_ckd's CIFAR architectures with timm, by name)
            auto = _auto_class(config)
            files = _weight_files(checkpoint.path)
            has_safetensors = any(f.endswith(".safetensors") for f in files)
            loading = {"config": config, "dtype": torch_dtype, "trust_remote_code": trust_remote_code}
            if allow_unsafe_pickle and not has_safetensors:
                # The user opted in: unpickle here (transformers' own loader keeps weights_only=True for .bin files),
                # then let transformers load the tensors as safetensors, with its checks and weight tying.
                state: dict[str, torch.Tensor] = {}
                for file in files:
                    state.update(_load_state_dict(file, allow_unsafe_pickle=True))
                with tempfile.TemporaryDirectory(prefix="hf_ckd_unpickled-") as tmp:
                    config.save_pretrained(tmp)
                    tensors = {
                        k: v.detach().contiguous().clone() for k, v in state.items() if torch.is_tensor(v)
                    }
                    save_file(tensors, os.path.join(tmp, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
                    del state, tensors
                    model, info = auto.from_pretrained(
                        tmp, use_safetensors=True, output_loading_info=True, **loading
                    )
            else:
                model, info = auto.from_pretrained(
                    checkpoint.path, use_safetensors=has_safetensors, output_loading_info=True, **loading
                )
            _check_loading_info(where, info)
    except TeacherLoadError:
        raise
    except pickle.UnpicklingError as err:
        pickles = [
            os.path.basename(f) for f in _weight_files(checkpoint.path) if not f.endswith(".safetensors")
        ]
        what = f"{where}: {', '.join(pickles)}" if pickles else where
        raise TeacherLoadError(_unsafe_pickle_message(what, err)) from err
    except Exception as err:
        raise TeacherLoadError(f"{where} failed to load: {type(err).__name__}: {err}") from err
    model.to(dtype=torch_dtype)
    if device is not None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _check_loading_info(where: str, info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not cover the model: transformers would initialise what is missing
    at random (logging it only), and the teacher would teach from random weights."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if not missing and not mismatched:
        return
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} tensor(s) missing ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''})"
        )
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape ({', '.join(mismatched[:6])})")
    raise TeacherLoadError(
        f"{where} does not hold the whole model its config.json describes: {'; '.join(parts)}. Loaded as it is, "
        "those weights would be random and the teacher would teach noise. The save was incomplete or the files "
        "belong to another architecture: re-save the checkpoint, or drop it from teacher_checkpoints."
    )


def weight_signature(checkpoint: Checkpoint) -> dict[str, tuple[int, ...]] | None:
    """The tensor names and shapes of a local checkpoint's safetensors files, read from their headers (no
    tensor is loaded); ``None`` when its weights are pickles (no header to read without unpickling) or its
    files are not local yet (a Hub checkpoint before its download)."""
    if not checkpoint.path:
        return None
    files = _weight_files(checkpoint.path)
    if not files or not all(f.endswith(".safetensors") and os.path.isfile(f) for f in files):
        return None
    signature: dict[str, tuple[int, ...]] = {}
    try:
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                    signature[key] = tuple(f.get_slice(key).get_shape())
    except (SafetensorError, OSError, ValueError):
        return None  # a damaged file: checkpoint_problems reports it with the fix
    return signature


def signature_problems(checkpoints: Sequence[Checkpoint]) -> dict[str, str]:
    """Checkpoint name -> how its tensors (names and shapes) differ from the other checkpoints' of the same
    trajectory: a checkpoint missing its classifier or LM head, or a model of another size saved among them.
    The reference is the most common signature (ties: the one with the most tensors, then the last checkpoint's).
    Reads safetensors headers only."""
    signatures = {c: s for c in checkpoints if (s := weight_signature(c)) is not None}
    if len(signatures) < 2:
        return {}
    counts: dict[frozenset, int] = {}
    for signature in signatures.values():
        key = frozenset(signature.items())
        counts[key] = counts.get(key, 0) + 1
    last = frozenset(signatures[list(signatures)[-1]].items())
    # Most common first; then the most complete (an interrupted save loses tensors); then the last checkpoint.
    reference = dict(max(counts, key=lambda k: (counts[k], len(k), k == last)))
    problems = {}
    for checkpoint, signature in signatures.items():
        missing = sorted(set(reference) - set(signature))
        extra = sorted(set(signature) - set(reference))
        shapes = sorted(k for k in set(reference) & set(signature) if reference[k] != signature[k])
        found = []
        if missing:
            found.append(
                f"lacks {len(missing)} tensor(s) ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
            )
        if extra:
            found.append(
                f"has {len(extra)} extra ({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''})"
            )
        if shapes:
            k = shapes[0]
            found.append(
                f"{len(shapes)} of another shape ({k}: {list(signature[k])} vs {list(reference[k])})"
            )
        if found:
            problems[checkpoint.name] = (
                f"checkpoint '{checkpoint.name}' ({checkpoint.path}) does not hold the same model as the other "
                f"checkpoints of its trajectory: it {'; '.join(found)}. A trajectory holds the checkpoints of one "
                "training run: re-save or drop the odd checkpoint."
            )
    return problems


def check_same_signature(checkpoints: Sequence[Checkpoint], source: str) -> None:
    """Raise :class:`TeacherLoadError` listing :func:`signature_problems` (none: nothing happens)."""
    problems = signature_problems(checkpoints)
    if problems:
        raise TeacherLoadError(
            f"The teacher checkpoints of '{source}' are not one model:\n- " + "\n- ".join(problems.values())
        )


# ---- outputs ---------------------------------------------------------------------------------------


def output_size(model: nn.Module) -> int | None:
    """Size of the label space a model predicts over: vocabulary for LM heads, ``num_labels`` otherwise.

    Returns ``None`` when it cannot be told without a forward pass (plain ``nn.Module``).
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    return int(num_labels) if num_labels else None


def model_logits(outputs: Any) -> torch.Tensor:
    """Logits from whatever a model returned: a tensor, a ``ModelOutput``/dict with ``logits``, or a tuple."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(f"Model output has no 'logits' (keys: {list(outputs.keys())}).")
        return outputs["logits"]
    if isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ValueError(f"Cannot find logits in a model output of type {type(outputs).__name__}.")


def teacher_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the loss-only entries (labels are never shown to a teacher)."""
    return {k: v for k, v in inputs.items() if k not in NON_MODEL_INPUTS}


# ---- ensemble --------------------------------------------------------------------------------------


class TeacherEnsemble:
    """M frozen teacher checkpoints and how their outputs combine into one soft target.

    Args:
        models: M frozen models (see :func:`load_teacher`).
        checkpoints: the checkpoint each model was loaded from (same order).
        weights: M ensemble weights (rescaled to sum to 1); ``None`` = uniform.
        average: ``"probs"`` mixes tempered probabilities (paper), ``"logits"`` averages logits first
            (official CheckpointKD code).
        fusion: how the M forwards run. ``"loop"``: one after the other. ``"vmap"``: fused, for checkpoints of
            one architecture: their weights stacked (``torch.func.stack_module_state``, a second copy of the
            teachers' weights) and one ``vmap`` over ``functional_call``. ``"auto"``: times both on the first
            batch (after a warm-up, median of 3) and keeps the faster; falls back to the loop when the
            architectures differ or the model cannot be vmapped.

    A checkpoint listed several times (e.g. ``"0.3,0.5"`` on a short run) is loaded once and its weights
    add up.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        checkpoints: Sequence[Checkpoint],
        weights: Sequence[float] | None = None,
        average: str = "probs",
        fusion: str = "loop",
    ):
        check_choice(fusion, FUSION_MODES, "teacher_fusion")
        if len(models) != len(checkpoints):
            raise ValueError(f"Got {len(models)} teacher models for {len(checkpoints)} checkpoints.")
        check_choice(average, AVERAGE_MODES, "ensemble_average")
        self.models = list(models)
        self.checkpoints = list(checkpoints)
        self.weights = normalize_weights(weights, len(self.models))
        self.average = average
        self.fusion = fusion
        self._stacked: tuple[dict, dict, nn.Module] | None = None
        if fusion == "vmap" and not self.same_architecture():
            raise ValueError(
                "teacher_fusion='vmap' needs checkpoints of one architecture (same parameter names and shapes); "
                f"{[c.name for c in self.checkpoints]} differ. Use 'loop' or 'auto'."
            )

    @staticmethod
    def merge_duplicates(
        checkpoints: Sequence[Checkpoint], weights: Sequence[float] | None
    ) -> tuple[list[Checkpoint], list[float]]:
        """Collapse repeated checkpoints, summing their weights (normalised)."""
        normalized = normalize_weights(weights, len(checkpoints))
        merged: dict[Checkpoint, float] = {}
        for checkpoint, weight in zip(checkpoints, normalized):
            merged[checkpoint] = merged.get(checkpoint, 0.0) + weight
        return list(merged), list(merged.values())

    @classmethod
    def from_trajectory(
        cls,
        trajectory: Trajectory,
        spec: str | Sequence[str | float] = "last",
        weights: Sequence[float] | None = None,
        average: str = "probs",
        *,
        model_init: TeacherModelInit | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        allow_unsafe_pickle: bool = False,
        fusion: str = "loop",
    ) -> TeacherEnsemble:
        """Select checkpoints by ``spec`` (see :meth:`Trajectory.select`) and load them.

        Every selected checkpoint is checked and loaded before this returns; one
        :class:`TeacherLoadError` lists every checkpoint that failed. Hub checkpoints are downloaded
        (only the selected ones), after their ``config.json`` files show one architecture.
        """
        selected = trajectory.select(spec)

        def load(checkpoint: Checkpoint) -> nn.Module:
            return load_teacher(
                checkpoint,
                model_init=model_init,
                dtype=dtype,
                device=device,
                trust_remote_code=trust_remote_code,
                allow_unsafe_pickle=allow_unsafe_pickle,
            )

        return cls.from_checkpoints(
            selected,
            weights,
            average,
            load=load,
            check_architecture=model_init is None,
            source=trajectory.source,
            fusion=fusion,
        )

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[Checkpoint],
        weights: Sequence[float] | None = None,
        average: str = "probs",
        *,
        load: Callable[[Checkpoint], nn.Module] = load_teacher,
        check_architecture: bool = True,
        source: str = "",
        fusion: str = "loop",
    ) -> TeacherEnsemble:
        """Load ``checkpoints`` (repeats merged, their weights added) with ``load`` into an ensemble.

        Every checkpoint is checked and loaded before this returns; one :class:`TeacherLoadError` lists every
        checkpoint that failed. With ``check_architecture``, their ``config.json`` files must name one
        architecture (read before any Hub weights are downloaded). ``source`` names the trajectory in errors.
        """
        if weights is not None and len(weights) != len(checkpoints):
            raise OptionError(
                f"teacher_weights has {len(weights)} values but the spec selects {len(checkpoints)} checkpoints "
                f"({[c.name for c in checkpoints]}); give one weight per selected checkpoint.",
                "teacher_weights",
            )
        checkpoints, merged_weights = cls.merge_duplicates(checkpoints, weights)
        if check_architecture:
            check_same_architecture(checkpoints, source)
        problems = []
        for i, checkpoint in enumerate(checkpoints):
            try:
                checkpoints[i] = fetch_checkpoint(checkpoint)
            except TrajectoryError as err:
                problems.append(str(err))
        odd = signature_problems(checkpoints) if not problems else {}
        problems.extend(odd.values())
        models = []
        for checkpoint in checkpoints if len(problems) == len(odd) else []:
            if checkpoint.name in odd:
                continue
            try:
                models.append(load(checkpoint))
            except TeacherLoadError as err:
                problems.append(str(err))
        if problems:
            raise TeacherLoadError(
                f"{len(problems)} of {len(checkpoints)} teacher checkpoints from '{source}' cannot be used:\n- "
                + "\n- ".join(problems)
            )
        sizes = {c.name: output_size(m) for c, m in zip(checkpoints, models)}
        if len({s for s in sizes.values() if s is not None}) > 1:
            raise TeacherLoadError(
                f"The selected teacher checkpoints of '{source}' predict over different label spaces: {sizes}."
            )
        return cls(models, checkpoints, merged_weights, average, fusion=fusion)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def output_size(self) -> int | None:
        return next((s for s in map(output_size, self.models) if s is not None), None)

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> TeacherEnsemble:
        for model in self.models:
            model.to(device=device, dtype=resolve_dtype(dtype))
        self._stacked = None
        return self

    def same_architecture(self) -> bool:
        """Whether every model has the same parameter and buffer names, shapes and dtypes (fusable)."""

        def signature(model: nn.Module):
            tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
            return type(model), {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}

        first = signature(self.models[0])
        return all(signature(m) == first for m in self.models[1:])

    def _loop_logits(self, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        return [model_logits(model(**batch)) for model in self.models]

    def _vmap_logits(self, batch: Mapping[str, Any]) -> list[torch.Tensor]:
        from torch.func import functional_call, stack_module_state, vmap

        if self._stacked is None:
            params, buffers = stack_module_state(self.models)
            base = copy.deepcopy(self.models[0]).to("meta")
            self._stacked = (params, buffers, base)
        params, buffers, base = self._stacked

        def forward(p, b):
            return model_logits(functional_call(base, (p, b), args=(), kwargs=dict(batch)))

        return list(vmap(forward, in_dims=(0, 0))(params, buffers).unbind(0))

    def _choose_fusion(self, batch: Mapping[str, Any]) -> None:
        """``auto``: keep ``vmap`` if it works here and is faster than the loop on this batch."""
        choice = "loop"
        if len(self.models) > 1 and self.same_architecture():
            try:
                timings = {}
                for mode, fn in (("loop", self._loop_logits), ("vmap", self._vmap_logits)):
                    fn(batch)  # warm-up
                    runs = []
                    for _ in range(3):
                        start = time.perf_counter()
                        fn(batch)
                        if torch.cuda.is_available():
                            torch.cuda.synchronize()
                        runs.append(time.perf_counter() - start)
                    timings[mode] = sorted(runs)[1]
                choice = min(timings, key=timings.get)
                logger.info(
                    "teacher_fusion='auto': loop %.4fs, vmap %.4fs per batch -> %s", *timings.values(), choice
                )
            except Exception as err:  # a model vmap cannot trace (data-dependent control flow, .item(), ...)
                logger.info(
                    "teacher_fusion='auto': vmap failed (%s: %s); using the loop.", type(err).__name__, err
                )
        if choice == "loop":
            self._stacked = None  # free the stacked copy
        self.fusion = choice

    def logits(self, inputs: Mapping[str, Any], step: int | None = None) -> list[torch.Tensor]:
        """Each teacher's logits for a batch, ``M x [..., V]``, computed without autograd.

        Raises:
            TeacherOutputError: a teacher produced NaN/Inf; names the checkpoint, its step and ``step``
                (the student's global step), so training never proceeds on it.
        """
        batch = teacher_inputs(inputs)
        with torch.inference_mode():
            if self.fusion == "auto":
                self._choose_fusion(batch)
            outputs = self._vmap_logits(batch) if self.fusion == "vmap" else self._loop_logits(batch)
        finite = torch.stack([torch.isfinite(o).all() for o in outputs])
        if not bool(finite.all()):
            bad = [c for c, ok in zip(self.checkpoints, finite.tolist()) if not ok]
            where = f" at student step {step}" if step is not None else ""
            raise TeacherOutputError(
                "NaN/Inf in the logits of teacher checkpoint(s) "
                + ", ".join(f"'{c.name}' (teacher step {c.step}, {c.path})" for c in bad)
                + f"{where}. Training stopped; check that checkpoint (try teacher_dtype='fp32') or drop it from "
                "the spec."
            )
        return outputs

    def hidden_states(
        self, inputs: Mapping[str, Any]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
        """For LM teachers: each one's last hidden states ``[..., H]`` and LM-head weight ``[V, H]`` and bias,
        without materialising their logits (``logits_to_keep=1``); for :func:`~hf_ckd.losses.linear_distillation_loss`."""
        batch = teacher_inputs(inputs)
        hidden, heads, biases = [], [], []
        with torch.inference_mode():
            for model in self.models:
                outputs = model(**batch, output_hidden_states=True, logits_to_keep=1)
                head = getattr(model, "module", model).get_output_embeddings()
                hidden.append(outputs.hidden_states[-1].clone())
                heads.append(head.weight)
                biases.append(getattr(head, "bias", None))
        return hidden, heads, biases

    def log_targets(self, inputs: Mapping[str, Any], temperature: float = 1.0) -> torch.Tensor:
        """log P_ens^tau for a batch, ``[..., V]`` float32."""
        return ensemble_log_probs(self.logits(inputs), temperature, self.weights, self.average)

    def describe(self) -> dict[str, Any]:
        """JSON-ready lineage: which checkpoints teach, with which weights."""
        return {
            "average": self.average,
            "checkpoints": [
                {**c.describe(), "weight": round(w, 6)} for c, w in zip(self.checkpoints, self.weights)
            ],
        }
