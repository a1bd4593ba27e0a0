"""Teacher schedules: which checkpoints teach, with which weights, at each student step (docs/progressive.md).

A schedule is a pure function of the student's progress: ``schedule.active(step, max_steps)`` returns the
``(Checkpoint, weight)`` pairs that teach the optimizer step being taken after ``step`` steps (Trainer's
``state.global_step``) of a ``max_steps`` run; the weights sum to 1. Nothing here loads a model: the trainer
loads the active checkpoints lazily (:class:`hf_ckd.sources.ScheduledTeachers`) and saves the schedule's :meth:`identity` in
its ``TrainerState`` so a resumed run continues the same schedule.

* :class:`StaticSchedule` - the same checkpoint(s) for the whole run (one checkpoint or a snapshot ensemble).
* :class:`ProgressiveSchedule` - checkpoints ``c_1 ... c_n`` one after the other in trajectory order, ending
  on the last (Panigrahi et al. 2024, arXiv:2410.05464). The pace is ``"teacher_time"`` (the official code's rule:
  the first checkpoint whose step is >= the teacher time the student has reached), ``"equal"`` shares, or
  explicit ``boundaries``. A "k-shot" schedule is a progressive one over k hand-picked checkpoints.
* :class:`AnchorSchedule` - route-constrained optimisation (RCO, Jin et al. 2019): ``num_anchors`` anchors at
  equal intervals along the given checkpoints (or all of them), each teaching an equal share by default.

Imports: :mod:`hf_ckd.checkpoint` and the shared validators of :mod:`hf_ckd._options`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from fractions import Fraction
from itertools import pairwise
from typing import Any

from ._options import (
    PACES,
    SCHEDULE_KINDS,
    OptionError,
    check_boundaries,
    check_choice,
    check_int,
    check_positive,
    normalize_weights,
)
from .checkpoint import Checkpoint

# Config field behind each constructor argument, for errors raised through schedule_from_args.
CONFIG_FIELDS = {
    "checkpoints": "teacher_checkpoints",
    "weights": "teacher_weights",
    "pace": "teacher_schedule_pace",
    "boundaries": "teacher_schedule_boundaries",
    "time_scale": "teacher_schedule_time_scale",
    "num_anchors": "teacher_num_anchors",
}

Active = list[tuple[Checkpoint, float]]


class ScheduleError(OptionError):
    """A schedule cannot be built from its arguments, or a saved schedule state does not match this run.

    ``argument`` names the offending argument (``boundaries``, ``num_anchors``, ...).
    """


def _names(checkpoints: Sequence[Checkpoint]) -> str:
    return ", ".join(f"{c.name} (step {c.step})" for c in checkpoints)


def _checkpoint_list(checkpoints: Sequence[Checkpoint], kind: str) -> list[Checkpoint]:
    items = list(checkpoints)
    if not items or not all(isinstance(c, Checkpoint) for c in items):
        raise ScheduleError(
            f"{kind} needs a non-empty list of Checkpoint objects as `checkpoints` (e.g. trajectory.select('all')), "
            f"got {checkpoints!r}.",
            "checkpoints",
        )
    return items


def _check_step(step: int, max_steps: int) -> None:
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ScheduleError(f"max_steps must be a positive integer, got {max_steps!r}.", "max_steps")
    if not isinstance(step, int) or step < 0:
        raise ScheduleError(f"step must be an integer >= 0, got {step!r}.", "step")


class TeacherSchedule:
    """Base class: subclasses set ``kind`` and ``checkpoints`` and implement :meth:`active` and :meth:`options`.

    A custom schedule subclasses this; the trainer only calls :meth:`active`, :meth:`identity` and
    :meth:`describe`.
    """

    kind: str = "custom"
    checkpoints: list[Checkpoint]

    def active(self, step: int, max_steps: int) -> Active:
        """The ``(Checkpoint, weight)`` pairs teaching optimizer step ``step + 1`` of ``max_steps``."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """JSON-ready options that, with the kind and the checkpoints, define the schedule."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What a resumed run must match: kind, checkpoint names and steps, options (JSON types only)."""
        return {
            "kind": self.kind,
            "checkpoints": [[c.name, c.step] for c in self.checkpoints],
            "options": self.options(),
        }

    def segments(self, max_steps: int) -> list[tuple[int, int, Active]]:
        """The run cut into ``(first_step, end_step, active)`` pieces: ``active`` teaches the optimizer steps
        taken after ``first_step`` up to ``end_step`` (``end_step - first_step`` steps). This generic version
        calls :meth:`active` once per step; the built-in schedules compute it directly."""
        _check_step(0, max_steps)
        pieces: list[tuple[int, int, Active]] = []
        for step in range(max_steps):
            current = self.active(step, max_steps)
            if pieces and [(c, w) for c, w in pieces[-1][2]] == current:
                pieces[-1] = (pieces[-1][0], step + 1, pieces[-1][2])
            else:
                pieces.append((step, step + 1, current))
        return pieces

    def shares(self, max_steps: int) -> dict[str, float]:
        """Each checkpoint's share of the run: the weight it teaches with, averaged over all ``max_steps`` steps."""
        shares = {c.name: 0.0 for c in self.checkpoints}
        for start, end, current in self.segments(max_steps):
            for checkpoint, weight in current:
                shares[checkpoint.name] += weight * (end - start) / max_steps
        return shares

    def describe(self, max_steps: int | None = None) -> dict[str, Any]:
        """JSON-ready record for lineage and model cards; with ``max_steps``, the steps each piece covers."""
        record = self.identity()
        if max_steps:
            record["max_steps"] = max_steps
            record["segments"] = [
                {"from_step": start, "to_step": end, "checkpoints": {c.name: round(w, 6) for c, w in current}}
                for start, end, current in self.segments(max_steps)
            ]
        return record

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}([{', '.join(c.name for c in self.checkpoints)}]{', ' if options else ''}{options})"


class StaticSchedule(TeacherSchedule):
    """The same checkpoint(s) for the whole run: one checkpoint, or a snapshot ensemble with ``weights``.

    A checkpoint listed several times is kept once and its weights add up (as in ``TeacherEnsemble``).
    """

    kind = "static"

    def __init__(self, checkpoints: Sequence[Checkpoint], weights: Sequence[float] | None = None):
        items = _checkpoint_list(checkpoints, "StaticSchedule")
        normalized = normalize_weights(weights, len(items), "weights", ScheduleError)
        merged: dict[Checkpoint, float] = {}
        for checkpoint, weight in zip(items, normalized):
            merged[checkpoint] = merged.get(checkpoint, 0.0) + weight
        self.checkpoints = list(merged)
        self.weights = list(merged.values())

    def active(self, step: int, max_steps: int) -> Active:
        _check_step(step, max_steps)
        return list(zip(self.checkpoints, self.weights))

    def segments(self, max_steps: int) -> list[tuple[int, int, Active]]:
        return [(0, max_steps, self.active(0, max_steps))]

    def options(self) -> dict[str, Any]:
        return {"weights": [round(w, 12) for w in self.weights]}


class ProgressiveSchedule(TeacherSchedule):
    """Checkpoints one after the other, in trajectory order, ending on the last (progressive distillation).

    Args:
        checkpoints: at least 2 checkpoints with strictly increasing steps, e.g. ``trajectory.select("all")``
            (full progressive) or k hand-picked ones (k-shot, e.g. a phase-transition checkpoint then the last).
        pace: how the run is shared out. ``"teacher_time"`` (default): the official code's rule - step
            ``s + 1`` of the student corresponds to teacher time ``(s + 1) * time_scale`` and the first
            checkpoint whose step is >= that teaches (the last one once the teacher time passes it), so the
            student meets the checkpoints at the pace the teacher reached them. ``"equal"``: ``n`` equal
            shares of the run.
        boundaries: instead of ``pace``, ``n - 1`` strictly increasing fractions of the run in (0, 1):
            checkpoint ``i`` teaches while the fraction ``(s + 1) / max_steps`` is <= ``boundaries[i]``.
        time_scale: teacher steps per student step for ``"teacher_time"``. ``None`` stretches the
            checkpoints over the whole run (``last_checkpoint.step / max_steps``); ``1.0`` is the teacher's own
            pace, after which the last checkpoint teaches to the end.
    """

    kind = "progressive"
    default_pace = "teacher_time"

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        pace: str | None = None,
        boundaries: Sequence[float] | None = None,
        time_scale: float | None = None,
    ):
        items = _checkpoint_list(checkpoints, type(self).__name__)
        if len(items) < 2:
            raise ScheduleError(
                f"A {self.kind} schedule needs at least 2 checkpoints in `checkpoints`, got {len(items)} "
                f"({_names(items)}); select several (e.g. 'all'), or use a static schedule for one.",
                "checkpoints",
            )
        steps = [c.step for c in items]
        if any(a >= b for a, b in pairwise(steps)):
            raise ScheduleError(
                f"`checkpoints` of a {self.kind} schedule must be in trajectory order with strictly increasing "
                f"steps and no repeats, got {_names(items)}.",
                "checkpoints",
            )
        if boundaries is not None and pace is not None:
            raise ScheduleError(
                f"Give either `pace` ({pace!r}) or `boundaries` ({list(boundaries)}), not both.", "pace"
            )
        if boundaries is None:
            pace = self.default_pace if pace is None else pace
            check_choice(pace, PACES, "pace", ScheduleError)
        if time_scale is not None:
            if pace != "teacher_time":
                raise ScheduleError(
                    f"`time_scale` applies to pace='teacher_time' only (this schedule uses "
                    f"{'boundaries' if boundaries is not None else repr(pace)}).",
                    "time_scale",
                )
            check_positive(time_scale, "time_scale", ScheduleError)
        self.checkpoints = items
        self.pace = None if boundaries is not None else pace
        self.boundaries = check_boundaries(boundaries, "boundaries", len(items), ScheduleError)
        self.time_scale = None if time_scale is None else float(time_scale)
        self._steps = steps

    def index(self, step: int, max_steps: int) -> int:
        """Position in ``checkpoints`` of the checkpoint teaching optimizer step ``step + 1`` of ``max_steps``."""
        _check_step(step, max_steps)
        n, taken = len(self.checkpoints), min(step, max_steps - 1) + 1  # the step being taken, from 1
        if self.boundaries is not None:
            position = taken / max_steps
            return sum(b < position for b in self.boundaries)
        if self.pace == "equal":
            return min(n - 1, -(-taken * n // max_steps) - 1)  # ceil(taken * n / max_steps) - 1
        scale = Fraction(self._steps[-1], max_steps) if self.time_scale is None else Fraction(self.time_scale)
        teacher_time = math.ceil(taken * scale)  # steps are integers: step >= t  <=>  step >= ceil(t)
        return min(n - 1, bisect_left(self._steps, teacher_time))

    def active(self, step: int, max_steps: int) -> Active:
        return [(self.checkpoints[self.index(step, max_steps)], 1.0)]

    def segments(self, max_steps: int) -> list[tuple[int, int, Active]]:
        # index() never decreases with the step: find where each checkpoint takes over by bisection.
        pieces: list[tuple[int, int, Active]] = []
        step = 0
        while step < max_steps:
            current = self.index(step, max_steps)
            lo, hi = step + 1, max_steps
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if self.index(mid, max_steps) == current else (lo, mid)
            pieces.append((step, lo, [(self.checkpoints[current], 1.0)]))
            step = lo
        return pieces

    def options(self) -> dict[str, Any]:
        return {"pace": self.pace, "boundaries": self.boundaries, "time_scale": self.time_scale}


class AnchorSchedule(ProgressiveSchedule):
    """Route-constrained optimisation (RCO): anchor checkpoints taught one after the other.

    Args:
        checkpoints: the candidates in trajectory order, e.g. ``trajectory.select("all")``.
        num_anchors: how many anchors to take at equal intervals along ``checkpoints`` - anchor ``i`` of
            ``n`` is checkpoint ``ceil(i * N / n) - 1`` of the ``N`` given (equal teacher-time intervals when
            checkpoints were saved every ``save_steps``), the last anchor being the last checkpoint. ``None``:
            every given checkpoint is an anchor (pass the list, e.g. ``trajectory.select("0.25,0.5,0.75,last")``).
        pace, boundaries, time_scale: as for :class:`ProgressiveSchedule`, but ``pace`` defaults to
            ``"equal"`` (each anchor teaches the same number of steps, as in RCO).
    """

    kind = "anchors"
    default_pace = "equal"

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        num_anchors: int | None = None,
        pace: str | None = None,
        boundaries: Sequence[float] | None = None,
        time_scale: float | None = None,
    ):
        candidates = _checkpoint_list(checkpoints, "AnchorSchedule")
        if num_anchors is not None:
            check_int(num_anchors, 2, "num_anchors", ScheduleError)
            if num_anchors > len(candidates):
                raise ScheduleError(
                    f"`num_anchors`={num_anchors} is more anchors than the {len(candidates)} checkpoints given "
                    f"({_names(candidates)}); use at most {len(candidates)} or select more checkpoints.",
                    "num_anchors",
                )
            count = len(candidates)
            candidates = [candidates[-(-i * count // num_anchors) - 1] for i in range(1, num_anchors + 1)]
        self.num_anchors = num_anchors
        super().__init__(candidates, pace=pace, boundaries=boundaries, time_scale=time_scale)

    def options(self) -> dict[str, Any]:
        return {"num_anchors": self.num_anchors, **super().options()}


def check_resume_state(saved: Any, schedule: TeacherSchedule) -> None:
    """Refuse a saved schedule state (``TeacherScheduleCallback`` args in ``trainer_state.json``) written for
    another trajectory or schedule. ``saved`` is the dict read back from JSON."""
    identity = schedule.identity()
    written = saved.get("schedule") if isinstance(saved, dict) else None
    if written is None:
        raise ScheduleError(
            f"The checkpoint's saved teacher-schedule state is unreadable ({saved!r}); resume from a checkpoint "
            "written by a scheduled run, or start a new run.",
            "resume_from_checkpoint",
        )
    written, identity = _json_normal(written), _json_normal(identity)
    if written != identity:
        differences = "; ".join(
            f"{key}: saved {written.get(key)!r}, this run {identity.get(key)!r}"
            for key in ("kind", "checkpoints", "options")
            if written.get(key) != identity.get(key)
        )
        raise ScheduleError(
            "resume_from_checkpoint: the checkpoint was written by a run with another teacher schedule or "
            f"trajectory ({differences}). Resume with the same teacher, teacher_checkpoints and teacher_schedule "
            "options, or start a new run in another output_dir.",
            "resume_from_checkpoint",
        )


def _json_normal(value: Any) -> Any:
    """Tuples to lists and keys to strings, as a JSON round trip leaves them."""
    if isinstance(value, dict):
        return {str(k): _json_normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_normal(v) for v in value]
    return value


def schedule_from_args(args: Any, checkpoints: Sequence[Checkpoint]) -> TeacherSchedule:
    """The schedule a ``CheckpointDistillConfig`` describes over the selected ``checkpoints``.

    Errors name the config field (``teacher_schedule_boundaries`` ...) as well as the argument.
    """
    kind = getattr(args, "teacher_schedule", "static") or "static"
    pace = getattr(args, "teacher_schedule_pace", None)
    boundaries = getattr(args, "teacher_schedule_boundaries", None)
    time_scale = getattr(args, "teacher_schedule_time_scale", None)
    try:
        if kind == "static":
            return StaticSchedule(checkpoints, getattr(args, "teacher_weights", None))
        if kind == "progressive":
            return ProgressiveSchedule(checkpoints, pace=pace, boundaries=boundaries, time_scale=time_scale)
        if kind == "anchors":
            return AnchorSchedule(
                checkpoints,
                num_anchors=getattr(args, "teacher_num_anchors", None),
                pace=pace,
                boundaries=boundaries,
                time_scale=time_scale,
            )
    except ScheduleError as err:
        field = CONFIG_FIELDS.get(err.argument or "")
        hint = f" [config field {field}]" if field else ""
        raise ScheduleError(f"teacher_schedule={kind!r}: {err}{hint}", err.argument) from None
    raise ScheduleError(
        f"teacher_schedule must be one of {SCHEDULE_KINDS}, got {kind!r}.", "teacher_schedule"
    )
