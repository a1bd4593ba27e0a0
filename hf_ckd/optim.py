"""Learning-rate schedules that ``transformers`` does not ship, installed on a ``Trainer``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim.lr_scheduler import MultiStepLR


def parse_epochs(spec: str | Sequence[int] | None) -> list[int]:
    """``"150,180,210"`` -> ``[150, 180, 210]`` (empty or ``None`` -> ``[]``)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else spec
    try:
        epochs = [int(e) for e in items if str(e).strip()]
    except ValueError:
        raise ValueError(f"lr_decay_epochs {spec!r} is not a comma-separated list of epochs.") from None
    if epochs != sorted(epochs) or any(e <= 0 for e in epochs):
        raise ValueError(f"lr_decay_epochs {spec!r} must be positive and increasing.")
    return epochs


def install_multistep_lr(trainer, decay_epochs: Sequence[int], gamma: float = 0.1) -> MultiStepLR:
    """Multiply the learning rate by ``gamma`` at each epoch in ``decay_epochs`` (the CIFAR schedule:
    x0.1 at 150/180/210 of 240 epochs). Creates the trainer's optimizer and sets ``trainer.lr_scheduler``
    so ``Trainer`` uses, saves and resumes it; call before ``trainer.train()``."""
    if not 0 < gamma <= 1:
        raise ValueError(f"lr_decay_rate must be in (0, 1], got {gamma}.")
    steps_per_epoch = math.ceil(
        len(trainer.get_train_dataloader()) / trainer.args.gradient_accumulation_steps
    )
    optimizer = trainer.create_optimizer()
    trainer.lr_scheduler = MultiStepLR(optimizer, [e * steps_per_epoch for e in decay_epochs], gamma=gamma)
    return trainer.lr_scheduler
