"""hf_ckd: checkpoint knowledge distillation for the Hugging Face ecosystem.

Distil a student from a teacher's intermediate checkpoints or a snapshot ensemble of them, with
``transformers.Trainer`` and ``accelerate``.

The public names below are imported on first use (PEP 562, as TRL's lazy module does): ``import hf_ckd`` and
``import hf_ckd.losses`` cost about what ``import torch`` costs, and ``transformers.Trainer`` and timm are
imported only when the trainer or the models are used (measured by ``benchmarks/import_time.py``). The CIFAR
architectures register with timm when :mod:`hf_ckd.models` is imported, which loading a teacher does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "AnchorSchedule": "schedules",
    "CacheError": "cache",
    "CachedTargets": "sources",
    "Checkpoint": "trajectory",
    "CheckpointDistillConfig": "config",
    "CheckpointDistillTrainer": "trainer",
    "HubError": "hub",
    "LiveTeachers": "sources",
    "OptionError": "_options",
    "ProgressiveSchedule": "schedules",
    "ResumeError": "run_folders",
    "ScheduleError": "schedules",
    "ScheduledTeachers": "sources",
    "SelectionError": "selection",
    "StaticSchedule": "schedules",
    "StudentOutputError": "trainer",
    "TeacherEnsemble": "teachers",
    "TeacherLoadError": "teachers",
    "TeacherOutputError": "teachers",
    "TeacherSamples": "losses",
    "TeacherSource": "sources",
    "Trajectory": "trajectory",
    "TrajectoryError": "trajectory",
    "build_teacher_source": "sources",
    "ensemble_kd_loss": "losses",
    "kd_loss": "losses",
    "last_complete_checkpoint": "run_folders",
    "load_teacher": "teachers",
    "load_trajectory": "trajectory",
}

__all__ = [
    "AnchorSchedule",
    "CacheError",
    "CachedTargets",
    "Checkpoint",
    "CheckpointDistillConfig",
    "CheckpointDistillTrainer",
    "HubError",
    "LiveTeachers",
    "OptionError",
    "ProgressiveSchedule",
    "ResumeError",
    "ScheduleError",
    "ScheduledTeachers",
    "SelectionError",
    "StaticSchedule",
    "StudentOutputError",
    "TeacherEnsemble",
    "TeacherLoadError",
    "TeacherOutputError",
    "TeacherSamples",
    "TeacherSource",
    "Trajectory",
    "TrajectoryError",
    "__version__",
    "build_teacher_source",
    "ensemble_kd_loss",
    "kd_loss",
    "last_complete_checkpoint",
    "load_teacher",
    "load_trajectory",
]

if TYPE_CHECKING:
    from ._options import OptionError
    from .cache import CacheError
    from .config import CheckpointDistillConfig
    from .hub import HubError
    from .losses import TeacherSamples, ensemble_kd_loss, kd_loss
    from .run_folders import ResumeError, last_complete_checkpoint
    from .schedules import AnchorSchedule, ProgressiveSchedule, ScheduleError, StaticSchedule
    from .selection import SelectionError
    from .sources import (
        CachedTargets,
        LiveTeachers,
        ScheduledTeachers,
        TeacherSource,
        build_teacher_source,
    )
    from .teachers import TeacherEnsemble, TeacherLoadError, TeacherOutputError, load_teacher
    from .trainer import CheckpointDistillTrainer, StudentOutputError
    from .trajectory import Checkpoint, Trajectory, TrajectoryError, load_trajectory


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_ckd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
