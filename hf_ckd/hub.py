"""Teacher trajectories published on the Hugging Face Hub: discovery, step order and downloads.

Three layouts are read by :func:`hub_checkpoints` (through ``Trajectory.from_hub``):

* one branch or tag per checkpoint: Pythia's ``step1000``, ``step2000`` ..., OLMo's
  ``stage1-step1000-tokens4B``;
* ``checkpoint-<step>/`` subfolders of one revision, as ``Trainer(push_to_hub=True,
  hub_strategy="all_checkpoints")`` pushes them;
* one model at the root of a revision (a one-checkpoint trajectory).

Discovery lists refs (``HfApi.list_repo_refs``) and files (``HfApi.list_repo_files``) or, offline
(``HF_HUB_OFFLINE=1`` or ``local_files_only=True``), reads both from the local cache
(``huggingface_hub.scan_cache_dir``). Only ``trainer_state.json`` files are read then; a checkpoint's
weights are downloaded when a teacher is loaded (:func:`fetch_checkpoint`, through ``snapshot_download``
with ``allow_patterns`` naming exactly the files a teacher needs: ``config.json``, the tokenizer files and
the safetensors, or the pickle weights only when there are no safetensors). Optimizer states, RNG states
and ``training_args.bin`` (a pickle) are never downloaded.

In configs and recipes a teacher on the Hub is written ``hub:ORG/NAME`` or ``hub:ORG/NAME@PATTERN``
(:func:`hf_ckd.trajectory.load_trajectory`).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from huggingface_hub import HfApi, hf_hub_download, is_offline_mode, scan_cache_dir, snapshot_download
from huggingface_hub.constants import HF_HUB_CACHE
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ._constants import CHECKPOINT_DIR_RE, CONFIG_NAME, HUB_PREFIX, TOKENIZER_FILE_NAMES, TRAINER_STATE_NAME
from .checkpoint import Checkpoint, HubRepo, TrajectoryError, eval_metrics_at, read_trainer_state

SAFETENSORS_FILE_RE = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$|^model\.safetensors\.index\.json$")
PICKLE_FILE_RE = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$|^pytorch_model\.bin\.index\.json$")
# Small files that make a text teacher usable on its own (its tokenizer), downloaded with the weights.
# A step in a ref or folder name: step1000, global_step500, stage1-step1000-tokens4B; then checkpoint-500.
_STEP_IN_NAME_RE = re.compile(r"(?:^|[^a-z0-9])step[-_]?(\d+)", re.IGNORECASE)
_TRAILING_NUMBER_RE = re.compile(r"(\d+)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(TrajectoryError):
    """A Hub repo, revision or cached file cannot be used as a teacher trajectory."""


def step_from_name(name: str) -> int | None:
    """The training step a ref or folder name states (``step1000``, ``stage1-step1000-tokens4B``,
    ``checkpoint-500``, or trailing digits), or ``None``."""
    for pattern in (_STEP_IN_NAME_RE, CHECKPOINT_DIR_RE, _TRAILING_NUMBER_RE):
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def teacher_files(files: Sequence[str], config_only: bool = False) -> list[str]:
    """The files of one checkpoint folder a teacher is built from (names relative to the folder).

    ``config.json``, the tokenizer files, and the safetensors weights (single, or index + shards); pickle
    weights only when there are no safetensors. Never optimizer/scheduler states or ``training_args.bin``.
    """
    names = [f for f in files if "/" not in f]
    wanted = [f for f in names if f == CONFIG_NAME]
    if config_only:
        return wanted
    wanted += [f for f in names if f in TOKENIZER_FILE_NAMES]
    safe = [f for f in names if SAFETENSORS_FILE_RE.match(f)]
    return wanted + (safe or [f for f in names if PICKLE_FILE_RE.match(f)])


def _has_weights(files: Sequence[str]) -> bool:
    return any(SAFETENSORS_FILE_RE.match(f) or PICKLE_FILE_RE.match(f) for f in files)


def _model_subfolders(files: Sequence[str]) -> list[str]:
    """Top-level folders of a revision that hold model weights directly."""
    folders: dict[str, list[str]] = {}
    for f in files:
        parts = f.split("/")
        if len(parts) == 2:
            folders.setdefault(parts[0], []).append(parts[1])
    return sorted(d for d, names in folders.items() if _has_weights(names))


def _offline_reason(repo: HubRepo) -> str:
    return "HF_HUB_OFFLINE=1" if is_offline_mode() else "local_files_only=True"


def _not_cached_message(repo: HubRepo, revision: str | None, what: str = "") -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"Hub repo '{repo.repo_id}'{f' revision {revision!r}' if revision else ''}{what} is not in the local Hub "
        f"cache ({repo.cache_dir or HF_HUB_CACHE}) and downloads are off ({_offline_reason(repo)}). Download it "
        f"once with network (`hf download {repo.repo_id}{rev}`), or unset HF_HUB_OFFLINE / pass "
        "local_files_only=False."
    )


@contextmanager
def _hub_errors(repo: HubRepo, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub errors into :class:`HubError` messages that name the repo, revision and fix."""
    name = repo.repo_id
    try:
        yield
    except GatedRepoError as err:
        raise HubError(
            f"Hub repo '{name}' is gated: accept its conditions at https://huggingface.co/{name}, then log in "
            "(`hf auth login`), set HF_TOKEN, or pass token= (--hub_token in the recipes)."
        ) from err
    except RevisionNotFoundError as err:
        raise HubError(
            f"Hub repo '{name}' has no revision {revision!r}. Check the branch, tag or commit name "
            f"(https://huggingface.co/{name}/tree/main lists the branches)."
        ) from err
    except RepositoryNotFoundError as err:
        raise HubError(
            f"Hub repo '{name}' does not exist, or it is private and no valid token was given. Check the name; "
            "for a private repo log in (`hf auth login`), set HF_TOKEN, or pass token= (--hub_token in the "
            "recipes)."
        ) from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise HubError(_not_cached_message(repo, revision)) from err
    except HfHubHTTPError as err:
        raise HubError(f"Hub request for repo '{name}' (revision {revision!r}) failed: {err}") from err


class _RepoListing:
    """The refs of one repo and the files of its revisions: from the Hub, or offline from the local cache."""

    def __init__(self, repo: HubRepo):
        self.repo = repo
        self._files: dict[str, list[str]] = {}
        self._cached: dict[str, list[str]] | None = None
        self._refs: dict[str, list[str]] | None = None
        if repo.local_files_only:
            self._cached = self._scan_cache()

    def _scan_cache(self) -> dict[str, list[str]]:
        """``{ref name or commit sha: files}`` of the cached revisions."""
        try:
            info = scan_cache_dir(self.repo.cache_dir)
        except CacheNotFound as err:
            raise HubError(_not_cached_message(self.repo, None)) from err
        cached: dict[str, list[str]] = {}
        for cached_repo in info.repos:
            if cached_repo.repo_id != self.repo.repo_id or cached_repo.repo_type != "model":
                continue
            for revision in cached_repo.revisions:
                files = sorted(
                    f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files
                )
                cached[revision.commit_hash] = files
                for ref in revision.refs:
                    cached[ref] = files
        if not cached:
            raise HubError(_not_cached_message(self.repo, None))
        return cached

    def refs(self) -> dict[str, list[str]]:
        """``{"branches": [...], "tags": [...]}``; offline, every cached ref name is under ``"cached refs"``."""
        if self._refs is None:
            if self._cached is not None:
                names = sorted(
                    r for r in self._cached if not _COMMIT_RE.match(r) and not r.startswith("refs/pr/")
                )
                self._refs = {"cached refs": names}
            else:
                with _hub_errors(self.repo):
                    refs = HfApi().list_repo_refs(self.repo.repo_id, token=self.repo.token)
                self._refs = {
                    "branches": sorted(b.name for b in refs.branches),
                    "tags": sorted(t.name for t in refs.tags),
                }
        return self._refs

    def ref_names(self) -> list[str]:
        return sorted({name for names in self.refs().values() for name in names})

    def describe_refs(self) -> str:
        return "; ".join(f"{kind}: {names}" for kind, names in self.refs().items())

    def files(self, revision: str) -> list[str]:
        """Every file path of ``revision`` (offline: the files cached for it)."""
        if revision not in self._files:
            if self._cached is not None:
                if revision not in self._cached:
                    raise HubError(_not_cached_message(self.repo, revision))
                self._files[revision] = self._cached[revision]
            else:
                with _hub_errors(self.repo, revision):
                    self._files[revision] = HfApi().list_repo_files(
                        self.repo.repo_id, revision=revision, token=self.repo.token
                    )
        return self._files[revision]


def _download(repo: HubRepo, revision: str, filename: str) -> str | None:
    """Local path of one (small) file of a revision, or ``None`` when the revision has no such file."""
    try:
        with _hub_errors(repo, revision):
            return hf_hub_download(
                repo.repo_id,
                filename,
                revision=revision,
                cache_dir=repo.cache_dir,
                token=repo.token,
                local_files_only=repo.local_files_only,
            )
    except HubError as err:
        if isinstance(err.__cause__, EntryNotFoundError) and not isinstance(
            err.__cause__, LocalEntryNotFoundError
        ):
            return None
        raise


def _entries(
    listing: _RepoListing,
    revisions: str | Sequence[str] | None,
    subfolders: str | Sequence[str] | None,
    pattern: str | None,
    revision: str,
) -> tuple[str, list[tuple[str, str | None]]]:
    """``(layout, [(revision, subfolder or None)])`` of the checkpoints to read."""
    repo_id = listing.repo.repo_id
    if revisions is not None:
        names = [revisions] if isinstance(revisions, str) else list(revisions)
        if not names:
            raise HubError(f"revisions= is empty; name at least one branch or tag of '{repo_id}'.")
        known = set(listing.ref_names())
        missing = [r for r in names if r not in known and not _COMMIT_RE.match(r)]
        if missing:
            raise HubError(
                f"Revision(s) {missing} not found in Hub repo '{repo_id}' ({listing.describe_refs()}). Check the "
                "names, or pass pattern= (e.g. 'step*') to take every matching branch or tag."
            )
        return "revisions", [(r, None) for r in names]
    if subfolders is not None:
        names = [subfolders] if isinstance(subfolders, str) else list(subfolders)
        available = _model_subfolders(listing.files(revision))
        missing = [s for s in names if s.strip("/") not in available]
        if missing or not names:
            raise HubError(
                f"Subfolder(s) {missing or names} of Hub repo '{repo_id}' at revision {revision!r} hold no model "
                f"weights; the subfolders with weights are {available}."
            )
        return "subfolders", [(revision, s.strip("/")) for s in names]

    refs = listing.ref_names()
    if pattern is not None:
        matched = fnmatch.filter(refs, pattern)
        if matched:
            return "revisions", [(r, None) for r in matched]
        folders = fnmatch.filter(_model_subfolders(listing.files(revision)), pattern)
        if folders:
            return "subfolders", [(revision, d) for d in folders]
        raise HubError(
            f"Pattern {pattern!r} matches no branch or tag of Hub repo '{repo_id}' ({listing.describe_refs()}) "
            f"and no subfolder with weights at revision {revision!r} "
            f"({_model_subfolders(listing.files(revision))}). Use a glob such as 'step*' or 'checkpoint-*'."
        )
    step_refs = [r for r in refs if _STEP_IN_NAME_RE.search(r) or CHECKPOINT_DIR_RE.match(r)]
    if step_refs:
        return "revisions", [(r, None) for r in step_refs]
    files = listing.files(revision)
    folders = [d for d in _model_subfolders(files) if CHECKPOINT_DIR_RE.match(d)]
    if folders:
        return "subfolders", [(revision, d) for d in folders]
    if _has_weights([f for f in files if "/" not in f]):
        return "single", [(revision, None)]
    raise HubError(
        f"Hub repo '{repo_id}' holds no teacher checkpoints: no branch or tag named like 'step1000' "
        f"({listing.describe_refs()}), no checkpoint-<step>/ subfolder at revision {revision!r}, and no model "
        f"weights at its root (files: {files[:12]}). Pass pattern=, revisions= or subfolders= to say where they are."
    )


def hub_checkpoints(
    repo_id: str,
    revisions: str | Sequence[str] | None = None,
    subfolders: str | Sequence[str] | None = None,
    pattern: str | None = None,
    revision: str = "main",
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> tuple[list[Checkpoint], int | None]:
    """The checkpoints a Hub model repo publishes, and the run's final step when the repo records it (what
    :meth:`hf_ckd.trajectory.Trajectory.from_hub` orders into a trajectory). No weights are downloaded here.

    Args:
        repo_id: ``ORG/NAME``.
        revisions: branches, tags or commits, one checkpoint each (Pythia's ``step1000`` ...).
        subfolders: folders of ``revision`` holding one checkpoint each (``checkpoint-500`` ...).
        pattern: a glob over branch/tag names, or else over subfolder names of ``revision``
            (``"step*"``, ``"checkpoint-*"``). Without ``revisions``, ``subfolders`` or ``pattern`` the layout
            is detected: branches or tags with a step in their name, else ``checkpoint-<step>/`` subfolders of
            ``revision``, else the model at its root.
        revision: the revision whose subfolders (or root) are read.
        token: for private or gated repos (default: the logged-in token or ``HF_TOKEN``).
        cache_dir: Hub cache folder (default ``HF_HUB_CACHE``).
        local_files_only: read the local cache only; ``HF_HUB_OFFLINE=1`` does the same.

    Each checkpoint's step comes from its ``trainer_state.json`` when the repo has one for it (the
    ``checkpoint-*`` layout), else from its name (``step1000``, ``stage1-step1000-tokens4B``,
    ``checkpoint-500``), else from a ``trainer_state.json`` fetched for it. ``fraction`` is relative to the
    largest step, or to the run's final ``global_step`` when ``revision`` has a ``trainer_state.json``.

    Raises:
        HubError: a repo that does not exist or is private without a token, a revision or pattern that
            matches nothing, a repo not in the cache when offline, checkpoints whose steps cannot be told.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(
            f"{repo_id!r} is not a Hub repo id ({err}). Use ORG/NAME, e.g. EleutherAI/pythia-70m."
        ) from err
    if revisions is not None and subfolders is not None:
        raise HubError("Pass revisions= (one checkpoint per branch/tag) or subfolders=, not both.")
    if pattern is not None and (revisions is not None or subfolders is not None):
        raise HubError(
            "pattern= selects branches or subfolders itself; drop it when listing revisions=/subfolders=."
        )
    repo = HubRepo(
        repo_id,
        token=token,
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        local_files_only=bool(local_files_only or is_offline_mode()),
    )
    listing = _RepoListing(repo)
    layout, entries = _entries(listing, revisions, subfolders, pattern, revision)

    states: dict[tuple[str, str | None], dict[str, Any]] = {}
    if layout == "subfolders":
        files = set(listing.files(revision))
        for entry in entries:
            if f"{entry[1]}/{TRAINER_STATE_NAME}" in files:
                states[entry] = _read_state(repo, entry[0], f"{entry[1]}/{TRAINER_STATE_NAME}")
    names = {
        entry: entry[1] or (entry[0] if layout == "revisions" else repo_id.split("/")[-1])
        for entry in entries
    }
    steps = {
        entry: states.get(entry, {}).get("global_step", step_from_name(names[entry])) for entry in entries
    }
    stated = [s for s in steps.values() if s is not None]
    if layout != "single" and (None in steps.values() or len(set(stated)) < len(stated)):
        # Names do not order the checkpoints: ask each one's trainer_state.json.
        for entry in entries:
            if entry not in states:
                path = f"{entry[1]}/{TRAINER_STATE_NAME}" if entry[1] else TRAINER_STATE_NAME
                cached = not repo.local_files_only or path in listing.files(entry[0])
                states[entry] = (_read_state(repo, entry[0], path) if cached else None) or {}
            steps[entry] = states[entry].get("global_step")
            if steps[entry] is None:
                raise HubError(
                    f"Cannot tell the training step of checkpoint '{names[entry]}' of Hub repo '{repo_id}': its name "
                    f"holds no step number that orders it among {sorted(names.values())} and it has no "
                    f"{TRAINER_STATE_NAME}{' in the local cache' if repo.local_files_only else ''}. Name "
                    "checkpoints like 'step1000' or 'checkpoint-1000'."
                )
    run_state: dict[str, Any] = {}
    if layout == "subfolders" and TRAINER_STATE_NAME in listing.files(revision):
        run_state = _read_state(repo, revision, TRAINER_STATE_NAME) or {}
    checkpoints = [
        Checkpoint(
            name=names[entry],
            path="",
            step=int(steps[entry] or 0),
            epoch=states.get(entry, {}).get("epoch"),
            metrics=eval_metrics_at(
                states.get(entry, {}).get("log_history") or run_state.get("log_history", []),
                int(steps[entry] or 0),
            ),
            source=repo_id,
            revision=entry[0],
            subfolder=entry[1],
            hub=repo,
        )
        for entry in entries
    ]
    return checkpoints, run_state.get("global_step")


def _read_state(repo: HubRepo, revision: str, filename: str) -> dict[str, Any] | None:
    path = _download(repo, revision, filename)
    return read_trainer_state(path) if path is not None else None


def fetch_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """Download the files a teacher needs from a Hub checkpoint; returns it with ``path`` set.

    Local checkpoints (and Hub checkpoints already fetched) are returned unchanged. Downloads go through
    ``snapshot_download(allow_patterns=...)`` into the Hub cache, so a second call costs nothing and works
    offline.

    Raises:
        HubError: the revision or subfolder holds no model weights, or (offline) they are not in the cache.
    """
    if checkpoint.hub is None or checkpoint.path:
        return checkpoint
    repo, revision, subfolder = checkpoint.hub, checkpoint.revision or "main", checkpoint.subfolder
    prefix = f"{subfolder}/" if subfolder else ""
    where = f"checkpoint '{checkpoint.name}' of Hub repo '{repo.repo_id}' (revision {revision!r}" + (
        f", subfolder '{subfolder}')" if subfolder else ")"
    )
    if repo.local_files_only:
        with _hub_errors(repo, revision):
            snapshot = snapshot_download(
                repo.repo_id, revision=revision, cache_dir=repo.cache_dir, local_files_only=True
            )
        folder = os.path.join(snapshot, subfolder) if subfolder else snapshot
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        wanted = teacher_files(present)
        if not _has_weights(wanted):
            raise HubError(
                f"The weights of {where} are not in the local Hub cache ({repo.cache_dir or HF_HUB_CACHE}; cached "
                f"there: {present}) and downloads are off ({_offline_reason(repo)}). Download them once with "
                f"network (`hf download {repo.repo_id} --revision {revision}"
                + (f" --include '{subfolder}/*'" if subfolder else "")
                + "`), or unset HF_HUB_OFFLINE."
            )
        return replace(checkpoint, path=folder)
    files = [f[len(prefix) :] for f in _RepoListing(repo).files(revision) if f.startswith(prefix)]
    wanted = teacher_files(files)
    if not _has_weights(wanted):
        raise HubError(
            f"{where} is not a model: it has no model.safetensors or pytorch_model.bin (files: "
            f"{[f for f in files if '/' not in f][:12]}). Point the trajectory at revisions or subfolders that "
            "hold saved models."
        )
    with _hub_errors(repo, revision):
        snapshot = snapshot_download(
            repo.repo_id,
            revision=revision,
            cache_dir=repo.cache_dir,
            token=repo.token,
            allow_patterns=[prefix + f for f in wanted],
        )
    return replace(checkpoint, path=os.path.join(snapshot, subfolder) if subfolder else snapshot)


def checkpoint_config_file(checkpoint: Checkpoint) -> str | None:
    """Local path of a checkpoint's ``config.json`` (downloading only that file for a Hub checkpoint), or
    ``None`` when it has none."""
    if checkpoint.hub is None or checkpoint.path:
        path = os.path.join(checkpoint.path, CONFIG_NAME)
        return path if os.path.isfile(path) else None
    filename = f"{checkpoint.subfolder}/{CONFIG_NAME}" if checkpoint.subfolder else CONFIG_NAME
    try:
        return _download(checkpoint.hub, checkpoint.revision or "main", filename)
    except HubError:
        return None  # offline and not cached: fetch_checkpoint reports it with the fix


# ---- teacher specs ---------------------------------------------------------------------------------


def looks_like_hub_id(teacher: str) -> bool:
    """Whether ``teacher``, which is no local path, can be a Hub model id written without the ``hub:`` prefix,
    TRL-style (``gpt2``, ``ORG/NAME``): a valid repo id that does not start like a path (``/``, ``.``, ``~``)."""
    if not teacher or teacher[0] in "/.~" or teacher.count("/") > 1 or (os.sep != "/" and os.sep in teacher):
        return False
    try:
        validate_repo_id(teacher)
    except HFValidationError:
        return False
    return True


def parse_hub_spec(teacher: str) -> tuple[str, str | None] | None:
    """``hub:ORG/NAME[@PATTERN]`` to ``(repo_id, pattern)``; ``None`` for anything else (a local path)."""
    if not teacher.startswith(HUB_PREFIX):
        return None
    repo_id, at, pattern = teacher[len(HUB_PREFIX) :].partition("@")
    if not repo_id or (at and not pattern):
        raise HubError(
            f"Teacher spec {teacher!r} is not hub:ORG/NAME or hub:ORG/NAME@PATTERN (e.g. "
            "hub:EleutherAI/pythia-70m@step*)."
        )
    return repo_id, pattern or None
