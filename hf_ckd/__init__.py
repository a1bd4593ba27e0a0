"""hf_ckd: checkpoint knowledge distillation for the Hugging Face ecosystem.

Distil a student from a teacher's intermediate checkpoints or a snapshot ensemble of them, with
``transformers.Trainer`` and ``accelerate``.
"""

from . import models  # noqa: F401  (registers the CIFAR architectures with timm, so saved teachers load by name)
from .config import CheckpointDistillConfig
from .hub import HubError, load_trajectory
from .losses import ensemble_kd_loss, kd_loss
from .schedules import AnchorSchedule, ProgressiveSchedule, StaticSchedule
from .teachers import TeacherEnsemble, TeacherLoadError, TeacherOutputError, load_teacher
from .trainer import CheckpointDistillTrainer
from .trajectory import Checkpoint, Trajectory, TrajectoryError

__version__ = "0.1.0"

__all__ = [
    "AnchorSchedule",
    "Checkpoint",
    "CheckpointDistillConfig",
    "CheckpointDistillTrainer",
    "HubError",
    "ProgressiveSchedule",
    "StaticSchedule",
    "TeacherEnsemble",
    "TeacherLoadError",
    "TeacherOutputError",
    "Trajectory",
    "TrajectoryError",
    "__version__",
    "ensemble_kd_loss",
    "kd_loss",
    "load_teacher",
    "load_trajectory",
]
