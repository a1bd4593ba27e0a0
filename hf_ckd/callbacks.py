"""The Trainer callback that drives a teacher source and keeps its records in ``trainer_state.json``.

:class:`TeacherSourceCallback` reacts to Trainer's events only:

* ``on_train_begin`` - checks a resumed run's saved teacher-schedule state against this run (refusing another
  trajectory or schedule before the first step), loads the checkpoints active at the step training starts
  or resumes at, and completes the lineage with the run's real length;
* ``on_step_begin`` - switches the scheduled checkpoints when the schedule says so, and logs the switch
  (``teacher/step``, ``teacher/fraction``, ``teacher/checkpoint``).

Its records live in ``TrainerState.stateful_callbacks`` under the keys :data:`LINEAGE_KEY` and
:data:`SCHEDULE_KEY`, which ``Trainer`` saves with every checkpoint and loads on resume. The callback itself
is not an ``ExportableState``: ``restore_callback_states_from_checkpoint=True`` would replace such a callback
by a copy rebuilt from JSON, cut off from the teachers it drives.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from .sources import TeacherSource

logger = logging.getLogger(__name__)

# Keys of TrainerState.stateful_callbacks (the names of the callbacks that wrote them in hf_ckd <= 0.1).
LINEAGE_KEY = "TeacherLineageCallback"
SCHEDULE_KEY = "TeacherScheduleCallback"


def _record(args: dict[str, Any]) -> dict[str, Any]:
    return {"args": args, "attributes": {}}


class TeacherSourceCallback(TrainerCallback):
    """Drives ``source`` through a training run.

    Args:
        source: the run's teachers.
        lineage: the lineage record the trainer writes into model cards; updated in place once the run's
            length is known.
        log: where switches are logged (the trainer passes its ``log``; a bound method is held weakly, so the
            callback does not keep its trainer alive).
    """

    def __init__(self, source: TeacherSource, lineage: dict[str, Any], log: Callable[[dict], None]):
        self.source = source
        self.lineage = lineage
        self._log = weakref.WeakMethod(log) if hasattr(log, "__self__") else (lambda: log)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(SCHEDULE_KEY)
        if self.source.resume_state() is not None:
            self.source.check_resume(saved, state.global_step, state.max_steps)
        self.lineage.update(self.source.lineage(state.max_steps))
        state.stateful_callbacks[LINEAGE_KEY] = _record({"lineage": self.lineage})
        self._sync(state, force_record=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync(state)

    def _sync(self, state, force_record: bool = False) -> None:
        switched = bool(state.max_steps) and self.source.sync(state.global_step, state.max_steps)
        record = self.source.resume_state()
        if record is None or not (switched or force_record):
            return
        state.stateful_callbacks[SCHEDULE_KEY] = _record({**record, "max_steps": state.max_steps})
        if not switched:
            return
        checkpoints = self.source.ensemble.checkpoints
        names = [c.name for c in checkpoints]
        logger.info(
            "Student step %d: teacher checkpoint(s) %s now teach (teacher step %s).",
            state.global_step,
            ", ".join(names),
            ", ".join(str(c.step) for c in checkpoints),
        )
        log = self._log()
        if log is None:
            return
        log(
            {
                "teacher/step": checkpoints[0].step,
                "teacher/fraction": round(checkpoints[0].fraction, 6),
                "teacher/checkpoint": ",".join(names),
            }
        )
