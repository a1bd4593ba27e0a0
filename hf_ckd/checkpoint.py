"""One saved state of a teacher's training run, and where its files come from.

The bottom of the trajectory modules: :mod:`hf_ckd.hub` (Hub discovery and downloads) and
:mod:`hf_ckd.trajectory` (ordering and selection) build on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class TrajectoryError(ValueError):
    """A teacher trajectory, or a checkpoint spec over it, cannot be used as given."""


@dataclass(frozen=True)
class HubRepo:
    """Where a Hub checkpoint's files come from, and how to reach them (see :mod:`hf_ckd.hub`).

    Attributes:
        repo_id: ``ORG/NAME`` of a model repo.
        token: Hub token for private or gated repos (``None``: the logged-in token or ``HF_TOKEN``).
        cache_dir: Hub cache folder (``None``: ``HF_HUB_CACHE``).
        local_files_only: read the local cache only, never the network (set by ``HF_HUB_OFFLINE=1`` too).
    """

    repo_id: str
    token: str | bool | None = field(default=None, repr=False, compare=False)
    cache_dir: str | None = None
    local_files_only: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """One saved state of the teacher's training run.

    Attributes:
        name: folder name (``checkpoint-500``) or, for a single model folder, its base name.
        path: local folder holding the model files.
        step: optimizer step at which it was saved (``global_step``).
        epoch: epoch at save time (fractional), or ``None`` when unknown.
        fraction: ``step / final_step`` of the run, in ``[0, 1]`` (the paper's T^fraction).
        metrics: eval metrics logged at exactly this step (``eval_loss``, ``eval_accuracy`` ...).
        source: where the trajectory came from (local output dir or Hub repo id).
        revision: Hub revision (branch, tag or commit) it is read from, or ``None`` for local folders.
        subfolder: folder inside the Hub revision (``checkpoint-500``), or ``None`` for the revision's root.
        hub: the Hub repo a checkpoint lives in; ``path`` is then empty until its files are downloaded
            (:func:`hf_ckd.hub.fetch_checkpoint`, which teacher loading calls).
    """

    name: str
    path: str
    step: int
    epoch: float | None = None
    fraction: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""
    revision: str | None = None
    subfolder: str | None = None
    hub: HubRepo | None = field(default=None, compare=False, repr=False)

    @property
    def location(self) -> str:
        """Human-readable place of the files: the local folder, or ``ORG/NAME@revision/subfolder``."""
        if self.path or self.hub is None:
            return self.path
        return f"{self.hub.repo_id}@{self.revision}" + (f"/{self.subfolder}" if self.subfolder else "")

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary used in lineage records and model cards."""
        return {
            "name": self.name,
            "step": self.step,
            "epoch": self.epoch,
            "fraction": round(self.fraction, 6),
            "source": self.source,
            "revision": self.revision,
            "subfolder": self.subfolder,
        }


def read_json_file(path: str) -> dict[str, Any]:
    """A JSON file's content; invalid JSON raises a :class:`TrajectoryError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise TrajectoryError(
            f"'{path}' is not valid JSON ({err}). Restore the file from the training run or delete it "
            "so the step is read from the folder name."
        ) from err


def eval_metrics_at(log_history: list[dict[str, Any]], step: int) -> dict[str, float]:
    """The ``eval_*`` numbers a ``trainer_state.json`` log history holds for ``step``."""
    metrics: dict[str, float] = {}
    for entry in log_history:
        if entry.get("step") == step:
            metrics.update(
                {k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, int | float)}
            )
    return metrics


def read_trainer_state(path: str) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``, with the fields hf_ckd reads checked: ``global_step`` an integer
    >= 0, ``epoch`` a number, ``log_history`` a list of objects. A file that parses but holds other types
    raises a :class:`TrajectoryError` naming the file and the field."""
    state = read_json_file(path)
    problem = None
    if not isinstance(state, dict):
        problem = f"holds a JSON {type(state).__name__}, not an object"
    else:
        step, epoch, history = state.get("global_step"), state.get("epoch"), state.get("log_history")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            problem = f"has global_step={step!r}, not an integer >= 0"
        elif epoch is not None and (not isinstance(epoch, int | float) or isinstance(epoch, bool)):
            problem = f"has epoch={epoch!r}, not a number"
        elif history is not None and (
            not isinstance(history, list) or not all(isinstance(e, dict) for e in history)
        ):
            problem = "has a log_history that is not a list of objects"
    if problem is not None:
        raise TrajectoryError(
            f"'{path}' {problem}: it was not written by transformers.Trainer or was edited. Restore it from the "
            "training run, or delete it so the step is read from the folder name."
        )
    return state
