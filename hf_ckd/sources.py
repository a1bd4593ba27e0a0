"""Teacher sources: everything that supplies a run's distillation targets, behind one interface.

:func:`build_teacher_source` is the one factory the trainer and every recipe use. From a
:class:`~hf_ckd.config.CheckpointDistillConfig` (plus, optionally, a ready ensemble or schedule) it resolves
the trajectory once, selects the checkpoints (``teacher_checkpoints`` or ``teacher_selection``), validates
them before anything trains, and returns one of three kinds:

* :class:`LiveTeachers` - a static ensemble (one checkpoint or a snapshot ensemble), loaded up front;
* :class:`ScheduledTeachers` - a progressive or anchor schedule: only the checkpoints teaching at the current
  step are in memory, swapped when :meth:`TeacherSource.sync` is called (by
  :class:`~hf_ckd.callbacks.TeacherSourceCallback` on Trainer's step events);
* :class:`CachedTargets` - a soft-target cache (:mod:`hf_ckd.cache`): no teacher model is loaded.

The trainer asks each the same questions - the label space, the lineage, ``log_targets`` for a batch, the
inputs of linear (chunked / sampled) KD - and never which kind it holds. A new kind of source subclasses
:class:`TeacherSource` and is returned by the factory; see docs/architecture.md.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from .cache import CacheError, ReplayViews, SoftTargetCache, run_fingerprint
from .hub import fetch_checkpoint
from .losses import ensemble_log_probs
from .schedules import StaticSchedule, TeacherSchedule, check_resume_state, schedule_from_args
from .selection import teacher_spec
from .teachers import (
    TeacherEnsemble,
    TeacherLoadError,
    TeacherModelInit,
    check_same_architecture,
    check_same_signature,
    checkpoint_problems,
    load_teacher,
    output_size,
)
from .trajectory import Checkpoint, Trajectory, load_trajectory

logger = logging.getLogger(__name__)

Placer = Callable[[nn.Module], nn.Module]


class TeacherSource:
    """What the trainer asks of a run's teachers. Subclasses: :class:`LiveTeachers`,
    :class:`ScheduledTeachers`, :class:`CachedTargets`.

    Attributes:
        checkpoints: every checkpoint that teaches during the run, in the order it teaches.
        weights: their ensemble weights (static) or shares (filled in by :meth:`lineage`).
        average: how simultaneously active checkpoints combine (``probs`` or ``logits``).
        origin: where the checkpoints came from, for the lineage: ``teacher`` (path or Hub spec),
            ``teacher_checkpoints`` (the spec), ``teacher_selection`` (a ``selection.json`` or ``None``).
        trajectory: the resolved trajectory (``None`` when a ready ensemble was given).
    """

    kind = "base"

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        weights: Sequence[float],
        average: str,
        origin: Mapping[str, Any],
        trajectory: Trajectory | None = None,
    ):
        self.checkpoints = list(checkpoints)
        self.weights = list(weights)
        self.average = average
        self.origin = dict(origin)
        self.trajectory = trajectory
        self._student_size: int | None = None
        self._autocast: Callable[[], AbstractContextManager] = nullcontext

    # ---- what the run is taught by ------------------------------------------------------------------

    @property
    def ensemble(self) -> TeacherEnsemble | None:
        """The models teaching now (``None`` when no model is loaded, e.g. a cache)."""
        return None

    @property
    def output_size(self) -> int | None:
        """The label space (classes, or vocabulary) the teachers predict over; ``None`` if unknown."""
        ensemble = self.ensemble
        return ensemble.output_size if ensemble is not None else None

    def check_student(self, model: nn.Module) -> None:
        """Refuse a student whose label space (``num_labels`` / vocabulary) differs from the teachers'."""
        self._student_size = output_size(model)
        self._check_label_space()

    def _check_label_space(self) -> None:
        student, teacher = self._student_size, self.output_size
        if student is not None and teacher is not None and student != teacher:
            names = ", ".join(c.name for c in self.checkpoints)
            raise TeacherLoadError(
                f"The teacher checkpoints ({names}) predict over {teacher} classes/tokens but the student over "
                f"{student} (num_labels / vocabulary size). Build the student with the teacher's label space "
                f"(num_labels={teacher}, or the teacher's tokenizer and vocab_size)."
            )

    def teacher_config(self) -> Any:
        """The transformers config of the first teaching checkpoint (``None`` for a model without one). Its
        files are local afterwards (``checkpoints[0].path``: a Hub checkpoint is fetched), e.g. for its
        tokenizer."""
        self.checkpoints[0] = fetch_checkpoint(self.checkpoints[0])
        ensemble = self.ensemble
        if (
            ensemble is not None
            and ensemble.models
            and ensemble.checkpoints[0].name == self.checkpoints[0].name
        ):
            return getattr(getattr(ensemble.models[0], "module", ensemble.models[0]), "config", None)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.checkpoints[0].path)

    def lineage(self, max_steps: int | None = None) -> dict[str, Any]:
        """JSON-ready record of who teaches: origin, averaging, and every checkpoint with its weight."""
        return {
            **self.origin,
            "average": self.average,
            "checkpoints": [
                {**c.describe(), "weight": round(w, 6)} for c, w in zip(self.checkpoints, self.weights)
            ],
        }

    # ---- placement and the run's progress -----------------------------------------------------------

    def place(self, placer: Placer, autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """Put the loaded teachers (and the ones loaded later) where ``placer`` says; their forwards run
        under ``autocast`` (the trainer passes ``accelerator.autocast``)."""
        self._autocast = autocast

    def sync(self, step: int, max_steps: int) -> bool:
        """Make the checkpoints that teach optimizer step ``step + 1`` the loaded ones; ``True`` on a switch."""
        return False

    def check_run(self, args: Any, train_dataset: Any) -> None:
        """Refuse settings or training data these targets cannot serve (before ``Trainer.__init__``)."""

    @property
    def schedule(self) -> TeacherSchedule:
        """Who teaches when; for a static source, its checkpoints and weights for the whole run."""
        return StaticSchedule(self.checkpoints, self.weights)

    def resume_state(self) -> dict[str, Any]:
        """What a resumed run must match and continue (saved in ``trainer_state.json``): the schedule's
        identity (kind, checkpoint names and steps, options such as the ensemble weights)."""
        return {
            "schedule": self.schedule.identity(),
            "active": [c.name for c in self.checkpoints],
            "since": 0,
        }

    def check_resume(self, saved: Any, global_step: int, max_steps: int) -> None:
        """Refuse a saved state (from :meth:`resume_state` of the run being resumed) written for other
        teachers, checkpoints or schedule options, before the first step: a resumed run that continued with
        them would name teachers in its lineage that never taught its first steps."""
        if isinstance(saved, list):  # several states were saved (older hf_ckd): the last is the run's
            saved = saved[-1] if saved else None
        if isinstance(saved, dict) and "args" in saved:  # the TrainerCallback state layout of older hf_ckd
            saved = saved["args"]
        if isinstance(saved, dict) and saved.get("schedule") is not None:
            check_resume_state(saved, self.schedule)
            if global_step and saved.get("max_steps") not in (None, max_steps):
                logger.warning(
                    "The teacher schedule was saved for max_steps=%s but this run has max_steps=%s: the schedule "
                    "is recomputed for the new length, so the checkpoints may change at other steps than before.",
                    saved["max_steps"],
                    max_steps,
                )
        elif global_step:
            logger.warning(
                "Resuming at step %d from a checkpoint without a teacher-schedule state (written by a static run "
                "or an older hf_ckd): the schedule continues from the step alone.",
                global_step,
            )

    # ---- targets ------------------------------------------------------------------------------------

    def log_targets(
        self, inputs: Mapping[str, Any], temperature: float, step: int | None = None
    ) -> torch.Tensor:
        """log P_ens^tau for a batch, ``[B, V]`` or ``[B, T, V]``, float32 (``-inf`` where there is no mass).

        Raises:
            TeacherOutputError: a teacher produced NaN/Inf (names the checkpoint and ``step``).
        """
        ensemble = self.ensemble
        with self._autocast():
            logits = ensemble.logits(inputs, step=step)
        return ensemble_log_probs(logits, temperature, ensemble.weights, ensemble.average)

    def linear_inputs(self, inputs: Mapping[str, Any], device: torch.device, seq_len: int) -> dict[str, Any]:
        """Keyword arguments of :func:`hf_ckd.losses.linear_distillation_loss` for a batch: the teachers'
        last hidden states and LM heads (or, from a cache, their samples)."""
        ensemble = self.ensemble
        with self._autocast():
            hidden, heads, biases = ensemble.hidden_states(inputs)
        return {
            "teacher_hidden": hidden,
            "teacher_head_weight": heads,
            "teacher_head_bias": biases if any(b is not None for b in biases) else None,
            "weights": ensemble.weights,
            "average": ensemble.average,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(c.name for c in self.checkpoints)}])"


class LiveTeachers(TeacherSource):
    """A static ensemble whose models are loaded for the whole run."""

    kind = "live"

    def __init__(
        self, ensemble: TeacherEnsemble, origin: Mapping[str, Any], trajectory: Trajectory | None = None
    ):
        super().__init__(ensemble.checkpoints, ensemble.weights, ensemble.average, origin, trajectory)
        self._ensemble = ensemble

    @property
    def ensemble(self) -> TeacherEnsemble:
        return self._ensemble

    def place(self, placer: Placer, autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        super().place(placer, autocast)
        self._ensemble.models[:] = [placer(m) for m in self._ensemble.models]


class ScheduledTeachers(TeacherSource):
    """A schedule's active checkpoints, loaded on demand.

    On a switch the checkpoints left behind are freed *before* the new ones are loaded, so peak memory is the
    largest active set, not the trajectory. Loading runs under ``torch.random.fork_rng`` so a switch never
    moves the training RNG (a resumed run then matches an uninterrupted one).

    Args:
        schedule: which checkpoints teach when.
        load: builds a frozen teacher from a checkpoint (:func:`hf_ckd.teachers.load_teacher` with the run's
            dtype, ``model_init`` and safety flags).
        average: how the active checkpoints combine when several teach at once.
        needs_config: the checkpoints are transformers models (a ``config.json`` each), not a ``model_init``'s.
        max_steps: the run's expected length; the set active at step 0 of it is loaded now (so the label space
            is checked before training), and :meth:`sync` takes over from the first step.
        allow_unsafe_pickle: the user's opt-in to pickles ``weights_only=True`` refuses (else every scheduled
            checkpoint's pickles are checked up front, from their opcodes).
    """

    kind = "scheduled"

    def __init__(
        self,
        schedule: TeacherSchedule,
        load: Callable[[Checkpoint], nn.Module],
        average: str,
        origin: Mapping[str, Any],
        trajectory: Trajectory | None = None,
        needs_config: bool = True,
        max_steps: int = 1,
        allow_unsafe_pickle: bool = False,
        trust_remote_code: bool = False,
    ):
        count = len(schedule.checkpoints)
        super().__init__(schedule.checkpoints, [1 / count] * count, average, origin, trajectory)
        self._schedule = schedule
        self._load = load
        self._placer: Placer | None = None
        self._ensemble: TeacherEnsemble | None = None
        self._key: tuple | None = None
        self.since: int | None = None
        self._validate(needs_config, allow_unsafe_pickle, trust_remote_code)
        self._switch(schedule.active(0, max(max_steps, 1)))

    def _validate(self, needs_config: bool, allow_unsafe_pickle: bool, trust_remote_code: bool) -> None:
        """Cheap checks of every scheduled checkpoint (no model is built, no pickle unpickled); one error lists
        every problem."""
        problems = [
            problem
            for c in self.checkpoints
            if c.path
            for problem in checkpoint_problems(c, needs_config, allow_unsafe_pickle, trust_remote_code)
        ]
        if problems:
            raise TeacherLoadError(
                f"{len(problems)} problem(s) with the scheduled teacher checkpoints:\n- "
                + "\n- ".join(problems)
            )
        if needs_config:
            check_same_architecture(self.checkpoints, self.checkpoints[-1].source)
        # One shape signature across the schedule, so a later checkpoint cannot fail (or teach with random
        # weights) when it becomes active; the first one loaded is checked against its config when loaded.
        check_same_signature(self.checkpoints, self.checkpoints[-1].source)

    @property
    def ensemble(self) -> TeacherEnsemble | None:
        return self._ensemble

    @property
    def schedule(self) -> TeacherSchedule:
        return self._schedule

    @property
    def active(self) -> list[str]:
        return [c.name for c in self._ensemble.checkpoints] if self._ensemble is not None else []

    def place(self, placer: Placer, autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        super().place(placer, autocast)
        self._placer = placer
        if self._ensemble is not None:
            self._ensemble.models[:] = [placer(m) for m in self._ensemble.models]

    def sync(self, step: int, max_steps: int) -> bool:
        active = self.schedule.active(step, max_steps)
        key = tuple((c.name, w) for c, w in active)
        if key == self._key:
            return False
        self._switch(active)
        self._key, self.since = key, step
        self._check_label_space()
        return True

    def _switch(self, active: list[tuple[Checkpoint, float]]) -> None:
        """Free the checkpoints ``active`` leaves behind, then load the ones it adds."""
        wanted = {c.name for c, _ in active}
        kept: dict[str, nn.Module] = {}
        if self._ensemble is not None:
            released = []
            for checkpoint, model in zip(self._ensemble.checkpoints, self._ensemble.models):
                if checkpoint.name in wanted:
                    kept[checkpoint.name] = model
                else:
                    released.append(weakref.ref(model))
            # Whoever still holds the old ensemble object no longer holds its models.
            self._ensemble.models.clear()
            self._ensemble.checkpoints.clear()
            self._ensemble = model = None
            if any(ref() is not None for ref in released):
                gc.collect()  # modules can sit in reference cycles (forward hooks, patched forwards)
            if released and torch.cuda.is_available():
                torch.cuda.empty_cache()
        models = []
        for checkpoint, _ in active:
            model = kept.get(checkpoint.name)
            if model is None:
                with torch.random.fork_rng(devices=[]):  # model construction must not move the training RNG
                    model = self._load(checkpoint)
                if self._placer is not None:
                    model = self._placer(model)
            models.append(model)
        self._ensemble = TeacherEnsemble(models, [c for c, _ in active], [w for _, w in active], self.average)

    def lineage(self, max_steps: int | None = None) -> dict[str, Any]:
        """Every scheduled checkpoint with its share of the student's steps as ``weight`` (uniform until the
        run's length is known), and the schedule with its segments."""
        known = max_steps is not None and max_steps > 0
        shares = (
            self.schedule.shares(max_steps)
            if known
            else {c.name: w for c, w in zip(self.checkpoints, self.weights)}
        )
        self.weights = [shares[c.name] for c in self.checkpoints]
        return {**super().lineage(), "schedule": self.schedule.describe(max_steps if known else None)}

    def resume_state(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.identity(),
            "active": self.active,
            "since": self.since,
        }


class CachedTargets(TeacherSource):
    """Targets read from a soft-target cache built for these teachers; no teacher model is loaded.

    Args:
        cache: the opened cache.
        checkpoints, weights, average: the teachers it was built from (checked against its fingerprint).
        temperature: the run's temperature (checked against the cache's).
    """

    kind = "cached"

    def __init__(
        self,
        cache: SoftTargetCache,
        checkpoints: Sequence[Checkpoint],
        weights: Sequence[float],
        average: str,
        temperature: float,
        origin: Mapping[str, Any],
        trajectory: Trajectory | None = None,
    ):
        super().__init__(checkpoints, weights, average, origin, trajectory)
        self.cache = cache
        self.temperature = temperature

    @property
    def output_size(self) -> int | None:
        return self.cache.num_classes

    def check_run(self, args: Any, train_dataset: Any) -> None:
        """The training data must be the ``ReplayViews`` the cache was built from (same data, transform,
        views and seed): targets are looked up by example index and view. A token-level cache holds the
        teachers' samples per position, which only ``kd_loss="sampled"`` reads."""
        if self.cache.token_level and args.kd_loss != "sampled":
            raise CacheError(
                f"Soft-target cache '{self.cache.path}' holds teacher draws per position (storage='sampled' over a "
                f"causal LM's tokens); train with kd_loss='sampled' (got kd_loss={args.kd_loss!r})."
            )
        if not isinstance(train_dataset, ReplayViews):
            raise CacheError(
                "soft_target_cache needs train_dataset=hf_ckd.cache.ReplayViews(dataset, transform, views, seed), "
                f"the one the cache was built with (got {type(train_dataset).__name__}): the targets are looked up "
                "by example index and view."
            )
        expected = run_fingerprint(
            self.checkpoints, self.weights, self.average, self.temperature, train_dataset
        )
        self.cache.check(
            expected,
            rebuild_hint=f"hf_ckd.cache.build_soft_target_cache(teachers, dataset, {self.cache.path!r}, "
            f"temperature={self.temperature}, views={train_dataset.views}, seed={train_dataset.seed}, "
            "transform=..., overwrite=True)",
        )

    @staticmethod
    def _keys(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "cache_index" not in inputs:
            raise CacheError(
                "The batch has no cache_index/cache_view: train on the ReplayViews the cache was built with, "
                "and let the trainer wrap your data_collator (or use hf_ckd.cache.collate_with_cache_keys)."
            )
        return inputs["cache_index"].cpu(), inputs["cache_view"].cpu()

    def log_targets(
        self, inputs: Mapping[str, Any], temperature: float, step: int | None = None
    ) -> torch.Tensor:
        return self.cache.log_targets(*self._keys(inputs))

    def linear_inputs(self, inputs: Mapping[str, Any], device: torch.device, seq_len: int) -> dict[str, Any]:
        index, view = self._keys(inputs)
        samples = self.cache.token_samples(index, view, inputs.get("attention_mask"), seq_len)
        return {
            "teacher_hidden": None,
            "teacher_head_weight": None,
            "teacher_samples": samples.to(device),
            "num_samples": self.cache.num_uniform,
            "weights": self.weights,
            "average": self.average,
        }


# ---- the factory -----------------------------------------------------------------------------------


def resolve_trajectory(args: Any) -> Trajectory:
    """The trajectory ``args.teacher`` names (a local run, a model folder, or ``hub:ORG/NAME[@PATTERN]``),
    read with ``teacher_revision``, ``teacher_cache_dir`` and ``hub_token``."""
    if not getattr(args, "teacher", None):
        raise ValueError(
            "No teacher: set CheckpointDistillConfig(teacher='path/to/teacher/output_dir') (or hub:ORG/NAME), or "
            "pass teachers= / teacher_source= to the trainer."
        )
    return load_trajectory(
        args.teacher,
        revision=getattr(args, "teacher_revision", "main"),
        token=getattr(args, "hub_token", None),
        cache_dir=getattr(args, "teacher_cache_dir", None),
    )


def selected_checkpoints(args: Any, trajectory: Trajectory) -> list[Checkpoint]:
    """The checkpoints a run selects: the names in ``args.teacher_selection`` when set (checked against the
    trajectory), else ``args.teacher_checkpoints``; in spec order, repeats kept."""
    return trajectory.select(teacher_spec(args, trajectory))


def _origin(args: Any, given: Sequence[Checkpoint] = ()) -> dict[str, Any]:
    """The lineage's ``teacher`` / ``teacher_checkpoints`` / ``teacher_selection``: the config's, or, when
    the checkpoints were ``given`` (a ready ensemble or schedule without ``args.teacher``), theirs."""
    from_config = bool(args.teacher) or not given
    return {
        "teacher": args.teacher if from_config else given[0].source,
        "teacher_checkpoints": args.teacher_checkpoints if from_config else ",".join(c.name for c in given),
        "teacher_selection": getattr(args, "teacher_selection", None),
    }


def build_teacher_source(
    args: Any,
    *,
    teachers: TeacherEnsemble | None = None,
    schedule: TeacherSchedule | None = None,
    model_init: TeacherModelInit | None = None,
    use_cache: bool = True,
    trajectory: Trajectory | None = None,
) -> TeacherSource:
    """The teachers of a run, resolved and validated once.

    Args:
        args: a :class:`~hf_ckd.config.CheckpointDistillConfig` (``teacher``, ``teacher_checkpoints``,
            ``teacher_selection``, ``teacher_weights``, ``teacher_schedule*``, ``teacher_dtype``, safety flags,
            ``soft_target_cache``).
        teachers: a ready, static :class:`~hf_ckd.teachers.TeacherEnsemble` instead of ``args.teacher``.
        schedule: a ready :class:`~hf_ckd.schedules.TeacherSchedule` instead of ``args.teacher_schedule``.
        model_init: builds the architecture of checkpoints without a transformers ``config.json``.
        use_cache: read ``args.soft_target_cache`` when set; ``False`` loads the teachers (e.g. to build it).
        trajectory: ``args.teacher``'s trajectory when already resolved (e.g. ``source.trajectory`` of an
            earlier source of the same run), so a Hub repo is not listed twice.

    Returns:
        :class:`CachedTargets` when ``args.soft_target_cache`` is set (and ``use_cache``);
        :class:`ScheduledTeachers` for a schedule that is not static; :class:`LiveTeachers` otherwise.

    Raises:
        TrajectoryError, TeacherLoadError, ScheduleError, CacheError, ValueError: before any model trains,
        naming the argument, file or checkpoint.
    """
    cached = use_cache and getattr(args, "soft_target_cache", None) is not None
    if cached and (teachers is not None or schedule is not None):
        raise ValueError(
            "soft_target_cache replaces the teachers: do not pass teachers= or teacher_schedule=."
        )
    if teachers is not None:
        if schedule is not None or args.teacher_schedule != "static":
            raise ValueError(
                "teachers= is a ready, static ensemble, but this run has a teacher schedule "
                f"(teacher_schedule={schedule if schedule is not None else args.teacher_schedule!r}), whose "
                "checkpoints are loaded lazily. Pass teacher_schedule= (or args.teacher) instead of teachers=."
            )
        if args.teacher_dtype is not None:
            teachers.to(dtype=args.teacher_dtype)
        return LiveTeachers(teachers, _origin(args, teachers.checkpoints))

    def load(checkpoint: Checkpoint) -> nn.Module:
        return load_teacher(
            checkpoint,
            model_init=model_init,
            dtype=args.teacher_dtype,
            trust_remote_code=args.teacher_trust_remote_code,
            allow_unsafe_pickle=args.teacher_allow_unsafe_pickle,
        )

    if schedule is None:
        if cached and not getattr(args, "teacher", None):
            raise ValueError(
                "soft_target_cache needs teacher= too: the fingerprint is checked against its files."
            )
        trajectory = trajectory or resolve_trajectory(args)
        selected = selected_checkpoints(args, trajectory)
        if cached:
            return _cached_targets(args, selected, trajectory)
        if args.teacher_schedule != "static":
            schedule = schedule_from_args(args, selected)
    if schedule is not None:  # only the active checkpoints are ever in memory
        return ScheduledTeachers(
            schedule,
            load,
            args.ensemble_average,
            _origin(args, schedule.checkpoints),
            trajectory,
            needs_config=model_init is None,
            max_steps=args.max_steps,
            allow_unsafe_pickle=args.teacher_allow_unsafe_pickle,
            trust_remote_code=args.teacher_trust_remote_code,
        )
    ensemble = TeacherEnsemble.from_checkpoints(
        selected,
        args.teacher_weights,
        args.ensemble_average,
        load=load,
        check_architecture=model_init is None,
        source=trajectory.source,
        fusion=args.teacher_fusion,
    )
    return LiveTeachers(ensemble, _origin(args), trajectory)


def _cached_targets(args: Any, selected: Sequence[Checkpoint], trajectory: Trajectory) -> CachedTargets:
    cache = SoftTargetCache(args.soft_target_cache)
    checkpoints, merged = TeacherEnsemble.merge_duplicates(selected, args.teacher_weights)
    checkpoints = [fetch_checkpoint(c) for c in checkpoints]  # the fingerprint hashes their weight files
    return CachedTargets(
        cache, checkpoints, merged, args.ensemble_average, args.temperature, _origin(args), trajectory
    )
