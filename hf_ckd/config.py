"""``CheckpointDistillConfig``: ``TrainingArguments`` plus the teacher trajectory and the KD loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import AVERAGE_MODES
from .teachers import resolve_dtype


@dataclass
class CheckpointDistillConfig(TrainingArguments):
    r"""
    Configuration class for [`CheckpointDistillTrainer`]: every `transformers.TrainingArguments` field plus
    the ones below. One class is the Python API, the `--help` text of the recipes (through
    `HfArgumentParser`) and the docs.

    Parameters:
        > Parameters that control the teachers

        teacher (`str` or `None`, *optional*, defaults to `None`):
            Where the teacher trajectory lives: the `output_dir` of a `transformers.Trainer` run (it holds
            `checkpoint-<step>/` folders) or a single saved model folder. Required unless the trainer is given
            `teachers=` directly.
        teacher_checkpoints (`str`, *optional*, defaults to `"last"`):
            Which checkpoints teach, comma-separated: fractions of training in [0, 1] (`0.5` is the checkpoint
            nearest the middle of the run, the paper's T^0.5), `last`, `first`, `all`, checkpoint names
            (`checkpoint-500`) or `step:500`. Several items make a snapshot ensemble.
        teacher_selection (`str` or `None`, *optional*, defaults to `None`):
            A `selection.json` written by `recipes/select_teachers.py`: its selected checkpoint(s) teach,
            replacing `teacher_checkpoints`. Refused when it names checkpoints the trajectory does not have.
        teacher_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One non-negative ensemble weight per selected checkpoint (rescaled to sum to 1). `None` is a
            uniform ensemble.
        ensemble_average (`str`, *optional*, defaults to `"probs"`):
            How the checkpoints' outputs combine: `probs` averages tempered probabilities (the paper's
            formula), `logits` averages logits and then softens them (the official CheckpointKD code).
        teacher_dtype (`str` or `None`, *optional*, defaults to `None`):
            Precision of the teachers: `bf16`, `fp16` or `fp32`. `None` loads them in fp32.
        teacher_trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow custom modelling code shipped with the teacher checkpoints. Only for authors you trust.
        teacher_allow_unsafe_pickle (`bool`, *optional*, defaults to `False`):
            Allow pickle weight files that `torch.load(weights_only=True)` refuses; unpickling can run
            arbitrary code. Only for files you trust.

        > Parameters that control the loss

        temperature (`float`, *optional*, defaults to `4.0`):
            Softmax temperature tau > 0 of the distillation term; the KD term is scaled by tau^2.
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the hard-label cross-entropy, in [0, 1]: loss = alpha * CE + (1 - alpha) * tau^2 * KL.
            `1` is plain training, `0` pure distillation (no labels needed).
    """

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Where the teacher trajectory lives: the output_dir of a transformers.Trainer run (it holds "
            "checkpoint-<step>/ folders) or a single saved model folder. Required unless the trainer is given "
            "teachers= directly."
        },
    )
    teacher_checkpoints: str = field(
        default="last",
        metadata={
            "help": "Which checkpoints teach, comma-separated: fractions of training in [0, 1] (0.5 is the "
            "checkpoint nearest the middle of the run, the paper's T^0.5), last, first, all, checkpoint names "
            "(checkpoint-500) or step:500. Several items make a snapshot ensemble."
        },
    )
    teacher_selection: str | None = field(
        default=None,
        metadata={
            "help": "A selection.json written by recipes/select_teachers.py: its selected checkpoint(s) teach, "
            "replacing teacher_checkpoints. Refused when it names checkpoints the trajectory does not have."
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "One non-negative ensemble weight per selected checkpoint (rescaled to sum to 1). None is a "
            "uniform ensemble."
        },
    )
    ensemble_average: str = field(
        default="probs",
        metadata={
            "help": "How the checkpoints' outputs combine: probs averages tempered probabilities (the paper's "
            "formula), logits averages logits and then softens them (the official CheckpointKD code).",
            "choices": list(AVERAGE_MODES),
        },
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Precision of the teachers: bf16, fp16 or fp32. None loads them in fp32.",
            "choices": ["bf16", "fp16", "fp32"],
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow custom modelling code shipped with the teacher checkpoints. Only for authors you trust."
        },
    )
    teacher_allow_unsafe_pickle: bool = field(
        default=False,
        metadata={
            "help": "Allow pickle weight files that torch.load(weights_only=True) refuses; unpickling can run "
            "arbitrary code. Only for files you trust."
        },
    )
    temperature: float = field(
        default=4.0,
        metadata={
            "help": "Softmax temperature tau > 0 of the distillation term; the KD term is scaled by tau^2."
        },
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the hard-label cross-entropy, in [0, 1]: loss = alpha * CE + (1 - alpha) * tau^2 * KL. "
            "1 is plain training, 0 pure distillation (no labels needed)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not (
            isinstance(self.temperature, int | float)
            and math.isfinite(self.temperature)
            and self.temperature > 0
        ):
            raise ValueError(
                f"temperature must be a finite number > 0, got {self.temperature!r}; the paper uses 4.0."
            )
        if not (isinstance(self.alpha, int | float) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(
                f"alpha must lie in [0, 1] (weight of the hard-label cross-entropy), got {self.alpha!r}; "
                "alpha=1 is plain training, alpha=0 pure distillation."
            )
        if self.ensemble_average not in AVERAGE_MODES:
            raise ValueError(
                f"ensemble_average must be one of {AVERAGE_MODES}, got {self.ensemble_average!r}."
            )
        if self.teacher_dtype is not None:
            try:
                resolve_dtype(self.teacher_dtype)
            except ValueError:
                raise ValueError(
                    f"teacher_dtype must be one of bf16, fp16, fp32 (or None), got {self.teacher_dtype!r}."
                ) from None
        if isinstance(self.teacher_weights, str):
            try:
                self.teacher_weights = [float(w) for w in self.teacher_weights.split(",") if w.strip()]
            except ValueError:
                raise ValueError(
                    f"teacher_weights {self.teacher_weights!r} is not a comma-separated list of numbers."
                ) from None
        if self.teacher_weights is not None:
            weights = [float(w) for w in self.teacher_weights]
            if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"teacher_weights must be finite, >= 0 and not all zero, got {self.teacher_weights}."
                )
            self.teacher_weights = weights
        if not str(self.teacher_checkpoints).strip():
            raise ValueError("teacher_checkpoints is empty; use e.g. 'last', '0.5' or '0.3,0.5,0.7'.")
        if self.label_smoothing_factor != 0:
            raise ValueError(
                "label_smoothing_factor is not supported by CheckpointDistillConfig: the distillation term already "
                "softens the targets. Set it to 0."
            )
