"""Lazy teachers driven by a :mod:`~hf_ckd.schedules` schedule, and the callback that keeps its state.

:class:`ScheduledTeachers` holds only the checkpoints a schedule has teaching at the current student step:
on a switch the checkpoints left behind are freed *before* the new ones are loaded, so peak memory is the
largest active set, not the trajectory. Loading runs under ``torch.random.fork_rng`` so a switch never
moves the training RNG (a resumed run then matches an uninterrupted one).

:class:`TeacherScheduleCallback` is a stateful ``TrainerCallback``: its ``state()`` (the schedule's identity,
the active checkpoints, the step they took over, ``max_steps``) is written into ``trainer_state.json`` at
every checkpoint, and on ``on_train_begin`` it reads the resumed ``TrainerState.stateful_callbacks`` back,
refusing a state written for another trajectory or schedule before the first step (DESIGN.md §4, §9).
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .schedules import Active, TeacherSchedule, check_resume_state
from .teachers import TeacherEnsemble, TeacherLoadError, check_same_architecture, checkpoint_problems
from .trajectory import Checkpoint

logger = logging.getLogger(__name__)


class ScheduledTeachers:
    """The active set of a schedule as a :class:`TeacherEnsemble`, loaded on demand.

    Args:
        schedule: which checkpoints teach when.
        load: builds a frozen teacher from a checkpoint (the trainer passes :func:`hf_ckd.teachers.load_teacher`
            with its dtype, ``model_init`` and safety flags).
        average: how the active checkpoints combine when several teach at once (``probs`` or ``logits``).
        validate: check every scheduled checkpoint's files (and that their configs name one architecture)
            now, so a broken checkpoint fails before the first step rather than at its switch.
    """

    def __init__(
        self,
        schedule: TeacherSchedule,
        load: Callable[[Checkpoint], nn.Module],
        average: str = "probs",
        validate: bool = True,
        needs_config: bool = True,
    ):
        self.schedule = schedule
        self.average = average
        self._load = load
        self.ensemble: TeacherEnsemble | None = None
        self._key: tuple | None = None
        if validate:
            self.validate(needs_config)

    def validate(self, needs_config: bool = True) -> None:
        """Cheap checks of every scheduled checkpoint (no model is built); one error lists every problem."""
        checkpoints = self.schedule.checkpoints
        problems = [
            p for c in checkpoints if c.path for p in checkpoint_problems(c, needs_config=needs_config)
        ]
        if problems:
            raise TeacherLoadError(
                f"{len(problems)} problem(s) with the scheduled teacher checkpoints:\n- "
                + "\n- ".join(problems)
            )
        if needs_config:
            check_same_architecture(checkpoints, checkpoints[-1].source)

    @property
    def loaded(self) -> list[Checkpoint]:
        return list(self.ensemble.checkpoints) if self.ensemble is not None else []

    def sync(
        self,
        step: int,
        max_steps: int,
        place: Callable[[nn.Module], nn.Module] | None = None,
        release: Callable[[nn.Module], None] | None = None,
    ) -> bool:
        """Make the set active at ``step`` of ``max_steps`` the loaded one. Returns whether it changed."""
        active = self.schedule.active(step, max_steps)
        key = tuple((c.name, w) for c, w in active)
        if key == self._key:
            return False
        self.switch(active, place, release)
        self._key = key
        return True

    def switch(
        self,
        active: Active,
        place: Callable[[nn.Module], nn.Module] | None = None,
        release: Callable[[nn.Module], None] | None = None,
    ) -> TeacherEnsemble:
        """Free the checkpoints ``active`` leaves behind, then load the ones it adds (``place`` puts each on its
        device; ``release`` lets the owner drop its own references, e.g. accelerate's list of models)."""
        wanted = {c.name for c, _ in active}
        kept: dict[str, nn.Module] = {}
        if self.ensemble is not None:
            released = []
            for checkpoint, model in zip(self.ensemble.checkpoints, self.ensemble.models):
                if checkpoint.name in wanted:
                    kept[checkpoint.name] = model
                else:
                    released.append(weakref.ref(model))
                    if release is not None:
                        release(model)
            # Whoever still holds the old ensemble object (the trainer) no longer holds its models.
            self.ensemble.models.clear()
            self.ensemble.checkpoints.clear()
            self.ensemble = model = None
            if any(ref() is not None for ref in released):
                gc.collect()  # prepared models can sit in reference cycles (accelerate patches forward for autocast)
            if released and torch.cuda.is_available():
                torch.cuda.empty_cache()
        models = []
        for checkpoint, _ in active:
            model = kept.get(checkpoint.name)
            if model is None:
                with torch.random.fork_rng(devices=[]):  # model construction must not move the training RNG
                    model = self._load(checkpoint)
                if place is not None:
                    model = place(model)
            models.append(model)
        self.ensemble = TeacherEnsemble(models, [c for c, _ in active], [w for _, w in active], self.average)
        return self.ensemble


class TeacherScheduleCallback(TrainerCallback, ExportableState):
    """Keeps the teacher schedule's state in every saved ``trainer_state.json`` and checks it on resume.

    The arguments are the JSON state itself (so ``restore_callback_states_from_checkpoint=True`` can rebuild
    it); :meth:`bind` attaches the trainer whose teachers it drives.
    """

    def __init__(
        self,
        schedule: dict[str, Any] | None = None,
        active: list[str] | None = None,
        since: int | None = None,
        max_steps: int | None = None,
    ):
        self.schedule = schedule
        self.active = list(active or [])
        self.since = since
        self.max_steps = max_steps
        self._trainer: Callable[[], Any] = lambda: None
        self._teachers: ScheduledTeachers | None = None
        self._checked: Any = None

    def bind(self, trainer: Any, teachers: ScheduledTeachers) -> TeacherScheduleCallback:
        self._trainer = weakref.ref(trainer)
        self._teachers = teachers
        self.schedule = teachers.schedule.identity()
        return self

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "schedule": self.schedule,
                "active": self.active,
                "since": self.since,
                "max_steps": self.max_steps,
            },
            "attributes": {},
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self.sync(state)

    def restore(self, state) -> None:
        """Check the resumed state's schedule against this run's (raises :class:`ScheduleError` on a mismatch)."""
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name)
        if isinstance(saved, list):  # several instances were saved: the last is this run's
            saved = saved[-1] if saved else None
        trainer = self._trainer()
        if isinstance(saved, dict) and saved.get("args", {}).get("schedule") is not None:
            written = saved["args"]
            check_resume_state(written, self._teachers.schedule)
            if state.global_step and written.get("max_steps") not in (None, state.max_steps):
                logger.warning(
                    "The teacher schedule was saved for max_steps=%s but this run has max_steps=%s: the schedule "
                    "is recomputed for the new length, so the checkpoints may change at other steps than before.",
                    written["max_steps"],
                    state.max_steps,
                )
        elif state.global_step:
            logger.warning(
                "Resuming at step %d from a checkpoint without a teacher-schedule state (written by a static run "
                "or an older hf_ckd): the schedule continues from the step alone.",
                state.global_step,
            )
        # Trainer saves only callbacks whose name is already a key of stateful_callbacks.
        state.stateful_callbacks[name] = self.state()
        if trainer is not None and self not in trainer.callback_handler.callbacks:
            # restore_callback_states_from_checkpoint=True put an unbound copy in our place: take it back.
            trainer.callback_handler.remove_callback(type(self))
            trainer.callback_handler.add_callback(self)

    def sync(self, state) -> None:
        """Load the checkpoints active at ``state.global_step`` (the first call per run checks the resumed
        state); on a switch, log ``teacher/step`` and ``teacher/checkpoint`` and record it."""
        trainer = self._trainer()
        if trainer is None or self._teachers is None or not state.max_steps:
            return
        if self._checked is not state:
            self.restore(state)
            self._checked = state
        step = state.global_step
        if not self._teachers.sync(step, state.max_steps, trainer._place_teacher, trainer._release_teacher):
            return
        trainer._teachers_switched(self._teachers.ensemble)
        ensemble = self._teachers.ensemble
        self.active, self.since, self.max_steps = (
            [c.name for c in ensemble.checkpoints],
            step,
            state.max_steps,
        )
        first = ensemble.checkpoints[0]
        logger.info(
            "Student step %d: teacher checkpoint(s) %s now teach (teacher step %s).",
            step,
            ", ".join(self.active),
            ", ".join(str(c.step) for c in ensemble.checkpoints),
        )
        trainer.log(
            {
                "teacher/step": first.step,
                "teacher/fraction": round(first.fraction, 6),
                "teacher/checkpoint": ",".join(self.active),
            }
        )
