"""The options hf_ckd understands and the one validator for each kind of value.

A leaf module (standard library only): :mod:`hf_ckd.config` validates a whole run with these functions, and
the pure functions and classes that take the same values directly (losses, schedules, ensembles) call the
same functions, so a value is judged by one rule wherever it enters. Every error names the argument
(``name``) and says what would be accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

AVERAGE_MODES = ("probs", "logits")  # how ensemble members combine: tempered probabilities, or logits first
KD_LOSS_MODES = (
    "full",
    "chunked",
    "sampled",
)  # token-level KD from logits, from hidden states exactly, sampled
FUSION_MODES = ("loop", "vmap", "auto")  # how several teacher forwards run
SCHEDULE_KINDS = ("static", "progressive", "anchors")
PACES = ("teacher_time", "equal")
CACHE_STORAGE_MODES = ("probs", "topk", "sampled")
# Teacher precisions by the names a config accepts -> the torch dtype's name.
TEACHER_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}


class OptionError(ValueError):
    """An option has a value hf_ckd cannot use. ``argument`` names it (``temperature``, ``boundaries`` ...)."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_choice(
    value: Any, choices: Sequence[str], name: str, error: type[OptionError] = OptionError
) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise error(f"{name} must be one of {tuple(choices)}, got {value!r}.", name)
    return value


def check_temperature(value: Any, name: str = "temperature") -> float:
    """A softmax temperature: a finite number > 0."""
    if not (_finite_number(value) and value > 0):
        raise OptionError(f"{name} must be a finite number > 0, got {value!r}; the paper uses 4.0.", name)
    return float(value)


def check_beta(value: Any, name: str = "beta") -> float:
    """The generalized Jensen-Shannon weight (TRL's ``beta``), in [0, 1]: 0 forward KL, 1 reverse KL."""
    if not (_finite_number(value) and 0.0 <= value <= 1.0):
        raise OptionError(
            f"{name} must lie in [0, 1] (the divergence: 0 forward KL, 1 reverse KL, in between the generalized "
            f"Jensen-Shannon divergence with that mixture weight), got {value!r}.",
            name,
        )
    return float(value)


def check_alpha(value: Any, name: str = "alpha") -> float:
    """The weight of the hard-label cross-entropy, in [0, 1]."""
    if not (_finite_number(value) and 0.0 <= value <= 1.0):
        raise OptionError(
            f"{name} must lie in [0, 1] (weight of the hard-label cross-entropy), got {value!r}; "
            f"{name}=1 is plain training, {name}=0 pure distillation.",
            name,
        )
    return float(value)


def check_positive(value: Any, name: str, error: type[OptionError] = OptionError) -> float:
    """A finite number > 0."""
    if not (_finite_number(value) and value > 0):
        raise error(f"{name} must be a finite number > 0, got {value!r}.", name)
    return float(value)


def check_int(value: Any, minimum: int, name: str, error: type[OptionError] = OptionError) -> int:
    """An integer (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}.", name)
    return value


def parse_floats(value: Any, name: str, error: type[OptionError] = OptionError) -> list[float] | None:
    """A list of numbers from a list or a comma-separated string (as the command line gives it)."""
    if value is None:
        return None
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    try:
        return [float(v) for v in (items.tolist() if hasattr(items, "tolist") else items)]
    except (TypeError, ValueError):
        raise error(f"{name} {value!r} is not a comma-separated list of numbers.", name) from None


def normalize_weights(
    weights: Any,
    count: int | None = None,
    name: str = "weights",
    error: type[OptionError] = OptionError,
) -> list[float]:
    """Ensemble weights rescaled to sum to 1: the one rule for every ensemble hf_ckd builds.

    Args:
        weights: non-negative numbers (a list, a tensor or a comma-separated string); ``None`` is a uniform
            ensemble of ``count``.
        count: how many ensemble members there are; ``None`` skips the length check.
        name: the argument's name for errors (``teacher_weights`` in a config).
    """
    if weights is None:
        if count is None or count < 1:
            raise error(f"A uniform ensemble needs at least one member, got {count!r}.", name)
        return [1.0 / count] * count
    values = parse_floats(weights, name, error)
    if count is not None and len(values) != count:
        raise error(
            f"{name} has {len(values)} values for {count} teacher checkpoints; give one weight per checkpoint "
            "(or none for a uniform ensemble).",
            name,
        )
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise error(f"{name} must be finite, >= 0 and not all zero, got {values}.", name)
    total = sum(values)
    return [w / total for w in values]


def check_boundaries(
    boundaries: Any,
    name: str = "boundaries",
    count: int | None = None,
    error: type[OptionError] = OptionError,
) -> list[float] | None:
    """Fractions of the student's run, strictly increasing inside (0, 1); with ``count`` (scheduled
    checkpoints), exactly ``count - 1`` of them."""
    values = parse_floats(boundaries, name, error)
    if values is None:
        return None
    if not values or any(not (0.0 < b < 1.0) for b in values):
        raise error(
            f"{name} must lie strictly inside (0, 1) (fractions of the student's run), got {values}.", name
        )
    if any(a >= b for a, b in pairwise(values)):
        raise error(f"{name} must be strictly increasing, got {values}.", name)
    if count is not None and len(values) != count - 1:
        raise error(
            f"{name} has {len(values)} values for {count} checkpoints; give one fewer boundary than checkpoints "
            f"({count - 1}): checkpoint i teaches until boundary i.",
            name,
        )
    return values


# Positions per chunk of the chunked KD losses when ``kd_chunk_size`` is None (benchmarks/chunk_size.py,
# benchmarks/RESULTS.md "Chunk size"): as many as keep one [chunk, V] float32 buffer within KD_CHUNK_BUDGET
# elements, but at least the head's hidden size H when it is known (each chunk reads the [V, H] head weights and
# adds into their gradient, so fewer positions per chunk leave that traffic unamortised), within
# [KD_CHUNK_MIN, KD_CHUNK_MAX].
KD_CHUNK_BUDGET = 2**22  # elements of one [chunk, V] buffer (16 MiB in float32)
KD_CHUNK_MIN, KD_CHUNK_MAX = 16, 1024


def default_chunk_size(vocab: int, hidden: int | None = None, budget: int = KD_CHUNK_BUDGET) -> int:
    """Positions per chunk for a head of ``vocab`` ids and ``hidden`` features (its weight is
    ``[vocab, hidden]``): ``clamp(max(budget // vocab, hidden), 16, 1024)``; without ``hidden``,
    ``clamp(budget // vocab, 16, 1024)``.

    One ``[chunk, vocab]`` float32 buffer then holds at most ``max(budget, vocab * hidden)`` elements: 16 MiB by
    default, or the size of the head's float32 weight gradient when that is larger. E.g. 1024 positions up to
    V = 4,096; 512 at V = 8,192 and H <= 512; at V = 32,768, 128 for H <= 128 and H itself above (512 for
    H = 512); 1024 from H = 1024 up. Without ``hidden``: 128 at V = 32,768, 32 at 131,072, 16 from 262,144.
    """
    check_int(vocab, 1, "vocab")
    check_int(budget, 1, "budget")
    floor = 0 if hidden is None else check_int(hidden, 1, "hidden")
    return max(KD_CHUNK_MIN, min(KD_CHUNK_MAX, max(budget // vocab, floor)))


def resolve_chunk_size(
    chunk_size: int | None, vocab: int, name: str = "kd_chunk_size", *, hidden: int | None = None
) -> int:
    """``chunk_size`` when given (an integer >= 1, else an error naming ``name``), else
    :func:`default_chunk_size` of ``vocab`` and ``hidden``."""
    if chunk_size is None:
        return default_chunk_size(vocab, hidden)
    return check_int(chunk_size, 1, name)
