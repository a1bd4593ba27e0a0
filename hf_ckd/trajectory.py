"""Checkpoints of one training run: discovery, ordering and selection.

A *trajectory* is the ordered list of checkpoints one training run left behind. The usual source is
the ``output_dir`` of a ``transformers.Trainer`` run, which holds ``checkpoint-<step>/`` folders, each
with the model files and a ``trainer_state.json`` (global step, epoch and the log history with eval
metrics).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from ._constants import CHECKPOINT_DIR_RE, MODEL_FILE_NAMES, PREFIX_CHECKPOINT_DIR, TRAINER_STATE_NAME
from .checkpoint import Checkpoint, HubRepo, TrajectoryError, eval_metrics_at, read_trainer_state
from .hub import HubError, hub_checkpoints, looks_like_hub_id, parse_hub_spec

logger = logging.getLogger(__name__)

_TRAILING_STEP_RE = re.compile(r"(\d+)$")
__all__ = ["Checkpoint", "HubRepo", "Trajectory", "TrajectoryError", "load_trajectory"]


def _looks_like_model_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in MODEL_FILE_NAMES)


class Trajectory(Sequence[Checkpoint]):
    """Checkpoints of one training run, sorted by step.

    Build one with :meth:`from_local` (a Trainer ``output_dir``, a single model folder, or an explicit
    list of checkpoint folders) or :meth:`from_hub` (branches, tags or ``checkpoint-*`` subfolders of a Hub
    repo). ``fraction`` is ``step / final_step`` where ``final_step`` is the last
    step the run reached (the largest of the checkpoints' steps and the run's own ``trainer_state.json``).
    """

    def __init__(self, checkpoints: Sequence[Checkpoint], source: str = "", final_step: int | None = None):
        if not checkpoints:
            raise TrajectoryError(f"Trajectory '{source}' has no checkpoints.")
        ordered = sorted(checkpoints, key=lambda c: c.step)
        steps = [c.step for c in ordered]
        duplicates = sorted({s for s in steps if steps.count(s) > 1})
        if duplicates:
            raise TrajectoryError(
                f"Trajectory '{source}' has several checkpoints at step(s) {duplicates}: "
                f"{[c.location for c in ordered if c.step in duplicates]}. Keep one checkpoint per step."
            )
        self.source = source
        self.final_step = max(final_step or 0, steps[-1])
        self.checkpoints: list[Checkpoint] = [
            Checkpoint(
                name=c.name,
                path=c.path,
                step=c.step,
                epoch=c.epoch,
                fraction=c.step / self.final_step if self.final_step > 0 else 1.0,
                metrics=dict(c.metrics),
                source=c.source or source,
                revision=c.revision,
                subfolder=c.subfolder,
                hub=c.hub,
            )
            for c in ordered
        ]

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def from_local(cls, path: str | os.PathLike | Sequence[str | os.PathLike]) -> Trajectory:
        """Discover the checkpoints of a local run.

        Args:
            path: a Trainer ``output_dir`` (``checkpoint-<step>/`` folders inside), a single saved model
                folder (a one-checkpoint trajectory, fraction 1.0), or a list of checkpoint folders.
        """
        if not isinstance(path, str | os.PathLike):
            return cls._from_paths([os.fspath(p) for p in path])
        root = os.fspath(path)
        if not os.path.exists(root):
            raise TrajectoryError(
                f"Teacher path '{root}' does not exist. Pass the output_dir of a transformers Trainer run "
                "(it holds checkpoint-<step>/ folders) or a saved model folder."
            )
        if not os.path.isdir(root):
            raise TrajectoryError(
                f"Teacher path '{root}' is a file; pass the folder that holds the checkpoints."
            )
        dirs = [
            d for d in os.listdir(root) if CHECKPOINT_DIR_RE.match(d) and os.path.isdir(os.path.join(root, d))
        ]
        if not dirs:
            if _looks_like_model_dir(root):
                return cls._from_paths([root], source=root)
            raise TrajectoryError(
                f"No checkpoints in '{root}': expected {PREFIX_CHECKPOINT_DIR}-<step>/ folders as written by "
                "transformers.Trainer (train the teacher with save_strategy='steps' or 'epoch' and leave "
                "save_total_limit unset to keep the whole trajectory), or a folder with config.json and weights."
            )
        run_state_path = os.path.join(root, TRAINER_STATE_NAME)
        run_state = read_trainer_state(run_state_path) if os.path.isfile(run_state_path) else {}
        return cls._from_paths(
            [os.path.join(root, d) for d in dirs],
            source=root,
            final_step=run_state.get("global_step"),
            log_history=run_state.get("log_history", []),
        )

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        revisions: str | Sequence[str] | None = None,
        subfolders: str | Sequence[str] | None = None,
        pattern: str | None = None,
        revision: str = "main",
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> Trajectory:
        """The checkpoints a Hub repo publishes, ordered by step; see :func:`hf_ckd.hub.hub_checkpoints` for
        the arguments and the layouts read. No weights are downloaded here."""
        checkpoints, final_step = hub_checkpoints(
            repo_id,
            revisions=revisions,
            subfolders=subfolders,
            pattern=pattern,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        return cls(checkpoints, source=repo_id, final_step=final_step)

    @classmethod
    def _from_paths(
        cls,
        paths: Sequence[str],
        source: str | None = None,
        final_step: int | None = None,
        log_history: list[dict[str, Any]] | None = None,
    ) -> Trajectory:
        if not paths:
            raise TrajectoryError("An empty list of checkpoint folders was given; pass at least one folder.")
        checkpoints = []
        for p in paths:
            if not os.path.isdir(p):
                raise TrajectoryError(f"Checkpoint folder '{p}' does not exist or is not a folder.")
            name = os.path.basename(os.path.normpath(p))
            state_path = os.path.join(p, TRAINER_STATE_NAME)
            state = read_trainer_state(state_path) if os.path.isfile(state_path) else {}
            step = state.get("global_step")
            if step is None:
                match = CHECKPOINT_DIR_RE.match(name) or _TRAILING_STEP_RE.search(name)
                if match is None and len(paths) > 1:
                    raise TrajectoryError(
                        f"Cannot tell the step of checkpoint '{p}': it has no {TRAINER_STATE_NAME} and its name "
                        f"does not end in a step number. Rename it {PREFIX_CHECKPOINT_DIR}-<step>."
                    )
                step = int(match.group(1)) if match else 0
            metrics = eval_metrics_at(state.get("log_history", []) or (log_history or []), step)
            checkpoints.append(
                Checkpoint(
                    name=name,
                    path=os.path.abspath(p),
                    step=int(step),
                    epoch=state.get("epoch"),
                    metrics=metrics,
                )
            )
        if source is None:
            source = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else paths[0]
        return cls(checkpoints, source=source, final_step=final_step)

    # ---- sequence protocol -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.checkpoints)

    def __getitem__(self, index):  # type: ignore[override]
        return self.checkpoints[index]

    def __iter__(self) -> Iterator[Checkpoint]:
        return iter(self.checkpoints)

    def __repr__(self) -> str:
        names = ", ".join(f"{c.name}@{c.fraction:.2f}" for c in self.checkpoints)
        return f"Trajectory(source={self.source!r}, final_step={self.final_step}, [{names}])"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    # ---- selection ---------------------------------------------------------------------------------

    def at(self, fraction: float) -> Checkpoint:
        """The checkpoint nearest ``fraction`` of training (ties go to the earlier one)."""
        if not (isinstance(fraction, int | float) and math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise TrajectoryError(
                f"Training fraction {fraction!r} is outside [0, 1]; use e.g. 0.3 for T^0.3."
            )
        # Rounded distance: ties that are exact on paper (0.4 between 0.3 and 0.5) must not be decided by float error.
        return min(self.checkpoints, key=lambda c: (round(abs(c.fraction - fraction), 9), c.step))

    def select(self, spec: str | Sequence[str | float]) -> list[Checkpoint]:
        """Resolve a checkpoint spec to checkpoints, in spec order.

        ``spec`` is a comma-separated string or a list of items, each one of: a fraction in ``[0, 1]``
        (nearest checkpoint, e.g. ``0.3``), ``last``/``final``, ``first``, ``all`` (every checkpoint), a
        checkpoint name (``checkpoint-500``) or ``step:500``. Items that resolve to the same checkpoint
        are kept (their ensemble weights add up); ``all`` expands in place.
        """
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
        items = [s for s in items if not (isinstance(s, str) and not s)]
        if not items:
            raise TrajectoryError("Empty checkpoint spec; use e.g. 'last', '0.5' or '0.3,0.5,last'.")
        by_name = {c.name: c for c in self.checkpoints}
        by_step = {c.step: c for c in self.checkpoints}
        selected: list[Checkpoint] = []
        for item in items:
            key = item.lower() if isinstance(item, str) else item
            if key in ("last", "final"):
                selected.append(self.checkpoints[-1])
            elif key == "first":
                selected.append(self.checkpoints[0])
            elif key == "all":
                selected.extend(self.checkpoints)
            elif isinstance(item, str) and item in by_name:
                selected.append(by_name[item])
            elif isinstance(key, str) and key.startswith("step:"):
                try:
                    step = int(key[len("step:") :])
                except ValueError:
                    raise TrajectoryError(
                        f"Bad checkpoint spec item '{item}': expected step:<integer>."
                    ) from None
                if step not in by_step:
                    raise TrajectoryError(
                        f"No checkpoint at step {step} in '{self.source}'; available steps: {sorted(by_step)}."
                    )
                selected.append(by_step[step])
            else:
                try:
                    fraction = float(item)
                except (TypeError, ValueError):
                    raise TrajectoryError(
                        f"Checkpoint spec item '{item}' matches nothing in '{self.source}'. Use a fraction in "
                        f"[0, 1], 'last', 'first', 'all', 'step:<n>' or one of {self.names}."
                    ) from None
                if not 0.0 <= fraction <= 1.0:
                    raise TrajectoryError(
                        f"Checkpoint spec item '{item}' is not a fraction in [0, 1]; for a step use 'step:{item}'."
                    )
                selected.append(self.at(fraction))
        return selected


def load_trajectory(
    teacher: str | os.PathLike,
    *,
    revision: str = "main",
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Trajectory:
    """A teacher trajectory from a local path (:meth:`Trajectory.from_local`), a Hub spec
    ``hub:ORG/NAME[@PATTERN]`` (:meth:`Trajectory.from_hub`, with the other arguments), or, as TRL takes
    teachers, a Hub model id without the prefix (``gpt2``, ``ORG/NAME``) when no local path has that name: the
    repo's step branches, its ``checkpoint-*`` subfolders, or its one model, whichever it publishes (a warning
    says which was found)."""
    spec = os.fspath(teacher)
    hub = parse_hub_spec(spec)
    hub_options = {
        "revision": revision,
        "token": token,
        "cache_dir": cache_dir,
        "local_files_only": local_files_only,
    }
    if hub is None:
        if os.path.exists(spec) or not looks_like_hub_id(spec):
            return Trajectory.from_local(teacher)
        try:
            trajectory = Trajectory.from_hub(spec, **hub_options)
        except HubError as err:
            raise HubError(
                f"Teacher '{spec}' is not a local path (no such file or folder) and was read as a Hub model id, but: "
                f"{err} For a local folder, check the path (relative to {os.getcwd()})."
            ) from err
        logger.warning(
            "Teacher '%s' is no local path: read as the Hub model repo %s.", spec, _layout(trajectory)
        )
        return trajectory
    repo_id, pattern = hub
    return Trajectory.from_hub(repo_id, pattern=pattern, **hub_options)


def _layout(trajectory: Trajectory) -> str:
    """What a Hub trajectory was made of, for the message that names it."""
    checkpoints = trajectory.checkpoints
    first = checkpoints[0]
    if len(checkpoints) == 1 and not first.subfolder:
        return (
            f"'{first.source}' (one model: revision {first.revision or 'main'}, a one-checkpoint trajectory)"
        )
    if first.subfolder:
        return f"'{first.source}': {len(checkpoints)} checkpoint subfolders ({first.subfolder} ... {checkpoints[-1].subfolder})"
    return f"'{first.source}': {len(checkpoints)} step branches/tags ({first.revision} ... {checkpoints[-1].revision})"
