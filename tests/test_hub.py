"""Hub trajectories through the real huggingface_hub code, offline, against a cache layout built on disk:
branches per step (Pythia), checkpoint-* subfolders (Trainer hub_strategy="all_checkpoints"), the
``hub:`` teacher spec in the trainer, and every bad input the issue lists."""

import json
import os
import pickle
import shutil
from pathlib import Path

import httpx2
import pytest
import torch
from conftest import tiny_bert, trainer_args
from hub_cache import folder_files, repo_folder_name, write_hub_cache
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import GitRefInfo, GitRefs

import hf_ckd.hub as hub
from hf_ckd import (
    CheckpointDistillConfig,
    CheckpointDistillTrainer,
    TeacherEnsemble,
    TeacherLoadError,
    Trajectory,
)
from hf_ckd.hub import HubError, parse_hub_spec, step_from_name
from hf_ckd.trajectory import load_trajectory

REPO = "org/teacher"
TRAINING_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def checkpoint_dirs(run: str) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in Path(run).glob("checkpoint-*")}


@pytest.fixture(scope="module")
def branch_cache(tmp_path_factory, text_teacher):
    """Pythia layout: one branch per step (no trainer_state.json: steps come from the names) plus main."""
    cache = tmp_path_factory.mktemp("hub_branches")
    dirs = checkpoint_dirs(text_teacher)
    revisions = {f"step{s}": folder_files(d, skip=("trainer_state.json",)) for s, d in dirs.items()}
    revisions["main"] = folder_files(dirs[max(dirs)], skip=("trainer_state.json",))
    write_hub_cache(cache, REPO, revisions)
    return cache


@pytest.fixture(scope="module")
def subfolder_cache(tmp_path_factory, text_teacher):
    """Trainer(push_to_hub=True, hub_strategy="all_checkpoints"): checkpoint-*/ folders on main."""
    cache = tmp_path_factory.mktemp("hub_subfolders")
    files = {}
    for step, d in checkpoint_dirs(text_teacher).items():
        files.update(folder_files(d, prefix=f"checkpoint-{step}"))
    files["trainer_state.json"] = Path(text_teacher) / "trainer_state.json"
    write_hub_cache(cache, REPO, {"main": files})
    return cache


def test_step_from_name():
    assert step_from_name("step1000") == 1000
    assert step_from_name("stage1-step1000-tokens4B") == 1000
    assert step_from_name("checkpoint-500") == 500
    assert step_from_name("global_step42") == 42
    assert step_from_name("main") is None


def test_branches_per_step(branch_cache, text_teacher):
    local = Trajectory.from_local(text_teacher)
    traj = Trajectory.from_hub(REPO, cache_dir=branch_cache)
    assert traj.names == [f"step{c.step}" for c in local]
    assert [c.fraction for c in traj] == [c.fraction for c in local]
    assert all(c.revision == c.name and c.subfolder is None and c.source == REPO for c in traj)
    assert all(c.path == "" for c in traj)  # nothing downloaded at discovery
    chosen = traj.select("0.5,last")
    ensemble = TeacherEnsemble.from_trajectory(traj, "0.5,last")
    assert [c.name for c in ensemble.checkpoints] == [c.name for c in chosen]
    assert all(os.path.isfile(os.path.join(c.path, "model.safetensors")) for c in ensemble.checkpoints)
    reference = TeacherEnsemble.from_trajectory(local, "0.5,last")
    batch = {"input_ids": torch.randint(0, 32, (4, 16))}
    for hub_logits, local_logits in zip(ensemble.logits(batch), reference.logits(batch)):
        torch.testing.assert_close(hub_logits, local_logits)


def test_pattern_and_explicit_revisions(branch_cache, text_teacher):
    steps = sorted(checkpoint_dirs(text_teacher))
    traj = Trajectory.from_hub(REPO, pattern=f"step{steps[-1]}", cache_dir=branch_cache)
    assert traj.names == [f"step{steps[-1]}"]
    picked = [f"step{steps[2]}", f"step{steps[0]}"]
    traj = Trajectory.from_hub(REPO, revisions=picked, cache_dir=branch_cache)
    assert traj.names == sorted(picked, key=step_from_name)  # ordered by step, not by argument order
    assert load_trajectory(f"hub:{REPO}@step*", cache_dir=branch_cache).names == [f"step{s}" for s in steps]


def test_checkpoint_subfolders(subfolder_cache, text_teacher):
    local = Trajectory.from_local(text_teacher)
    traj = Trajectory.from_hub(REPO, cache_dir=subfolder_cache)
    assert traj.names == local.names and traj.final_step == local.final_step
    assert [c.epoch for c in traj] == [c.epoch for c in local]  # read from each trainer_state.json
    assert [c.metrics["eval_loss"] for c in traj] == [c.metrics["eval_loss"] for c in local]
    assert all(c.revision == "main" and c.subfolder == c.name for c in traj)
    (checkpoint,) = TeacherEnsemble.from_trajectory(traj, "0.5").checkpoints
    assert checkpoint.path.endswith(
        os.path.join("snapshots", checkpoint.path.split(os.sep)[-2], "checkpoint-60")
    )


def test_distill_from_hub_spec(subfolder_cache, text_data, tmp_path):
    train, _ = text_data
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "student",
            teacher=f"hub:{REPO}@checkpoint-*",
            teacher_cache_dir=str(subfolder_cache),
            teacher_checkpoints="0.5,last",
            max_steps=3,
            logging_steps=1,
            alpha=0.5,
        )
    )
    trainer = CheckpointDistillTrainer(model=tiny_bert(), args=args, train_dataset=train.select(range(96)))
    trainer.train()
    lineage = trainer.lineage
    assert lineage["teacher"] == f"hub:{REPO}@checkpoint-*"
    assert [(c["source"], c["revision"], c["subfolder"]) for c in lineage["checkpoints"]] == [
        (REPO, "main", "checkpoint-60"),
        (REPO, "main", "checkpoint-120"),
    ]
    assert any("loss_kd" in entry for entry in trainer.state.log_history)


def test_only_teacher_files_are_downloaded(subfolder_cache, monkeypatch):
    """Online path: refs and files come from the Hub API; snapshot_download is asked for the teacher's
    files only (never optimizer states or the pickled training_args.bin)."""
    files = [
        p.relative_to(snapshot(subfolder_cache)).as_posix() for p in snapshot(subfolder_cache).rglob("*")
    ]
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(
        hub.HfApi,
        "list_repo_refs",
        lambda self, repo_id, **kw: GitRefs(
            branches=[GitRefInfo("main", "refs/heads/main", "0" * 40)], converts=[], tags=[]
        ),
    )
    monkeypatch.setattr(hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None, **kw: files)
    requested = []
    real_snapshot_download = hub.snapshot_download

    def recording_snapshot_download(repo_id, **kwargs):
        requested.extend(kwargs["allow_patterns"])
        return real_snapshot_download(repo_id, **{k: v for k, v in kwargs.items() if k != "token"})

    monkeypatch.setattr(hub, "snapshot_download", recording_snapshot_download)
    traj = Trajectory.from_hub(REPO, cache_dir=subfolder_cache)
    assert not traj[0].hub.local_files_only
    TeacherEnsemble.from_trajectory(traj, "last")
    assert sorted(requested) == ["checkpoint-120/config.json", "checkpoint-120/model.safetensors"]
    assert not any(name in p for p in requested for name in TRAINING_ONLY)


def snapshot(cache) -> Path:
    (path,) = (Path(cache) / repo_folder_name(REPO) / "snapshots").iterdir()
    return path


# ---- bad input ------------------------------------------------------------------------------------


def test_repo_not_in_cache_offline(tmp_path):
    write_hub_cache(tmp_path, "org/other", {"main": {"config.json": b"{}"}})
    with pytest.raises(
        HubError, match=r"'org/missing'.*not in the local Hub cache.*HF_HUB_OFFLINE=1.*hf download"
    ):
        Trajectory.from_hub("org/missing", cache_dir=tmp_path)


def test_pattern_matching_nothing(branch_cache):
    with pytest.raises(HubError, match=r"Pattern 'step7\*'.*'org/teacher'.*step30"):
        Trajectory.from_hub(REPO, pattern="step7*", cache_dir=branch_cache)
    with pytest.raises(HubError, match=r"Revision\(s\) \['step7'\] not found in Hub repo 'org/teacher'"):
        Trajectory.from_hub(REPO, revisions=["step7"], cache_dir=branch_cache)


def test_weights_not_cached_offline(tmp_path, text_teacher):
    """A branch whose config is cached but whose weights are not: refused before any model is built."""
    dirs = checkpoint_dirs(text_teacher)
    write_hub_cache(
        tmp_path,
        REPO,
        {
            "step30": folder_files(dirs[30], skip=("trainer_state.json",)),
            "step60": {"config.json": dirs[60] / "config.json"},
        },
    )
    traj = Trajectory.from_hub(REPO, cache_dir=tmp_path)
    with pytest.raises(
        TeacherLoadError, match=r"checkpoint 'step60'.*revision 'step60'.*not in the local Hub cache"
    ):
        TeacherEnsemble.from_trajectory(traj, "all")


def test_branch_that_is_not_a_model(tmp_path, text_teacher, monkeypatch):
    write_hub_cache(tmp_path, REPO, {"step30": folder_files(checkpoint_dirs(text_teacher)[30])})
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    refs = [GitRefInfo(n, f"refs/heads/{n}", "0" * 40) for n in ("main", "step30", "step60")]
    monkeypatch.setattr(
        hub.HfApi, "list_repo_refs", lambda self, r, **kw: GitRefs(branches=refs, converts=[], tags=[])
    )
    monkeypatch.setattr(
        hub.HfApi,
        "list_repo_files",
        lambda self, r, revision=None, **kw: (
            ["README.md", "notes.txt"] if revision == "step60" else ["config.json"]
        ),
    )
    traj = Trajectory.from_hub(REPO, cache_dir=tmp_path)
    with pytest.raises(
        TeacherLoadError, match=r"'step60' of Hub repo 'org/teacher' \(revision 'step60'\) is not a model"
    ):
        TeacherEnsemble.from_trajectory(traj, "last")


def http_error(cls, status: int):
    response = httpx2.Response(
        status, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}")
    )
    return cls(f"{status} error", response=response)


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (
            http_error(RepositoryNotFoundError, 401),
            r"'org/teacher' does not exist, or it is private.*hf auth login",
        ),
        (http_error(GatedRepoError, 403), r"'org/teacher' is gated: accept its conditions"),
    ],
)
def test_repo_missing_private_or_gated(error, match, monkeypatch):
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)

    def raise_error(self, repo_id, **kwargs):
        raise error

    monkeypatch.setattr(hub.HfApi, "list_repo_refs", raise_error)
    with pytest.raises(HubError, match=match):
        Trajectory.from_hub(REPO)


def test_revision_missing_online(monkeypatch):
    monkeypatch.setattr(hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(
        hub.HfApi, "list_repo_refs", lambda self, r, **kw: GitRefs(branches=[], converts=[], tags=[])
    )

    def raise_error(self, repo_id, revision=None, **kwargs):
        raise http_error(RevisionNotFoundError, 404)

    monkeypatch.setattr(hub.HfApi, "list_repo_files", raise_error)
    with pytest.raises(HubError, match=r"'org/teacher' has no revision 'v2'"):
        Trajectory.from_hub(REPO, revision="v2")


def test_architecture_differs(tmp_path, text_teacher):
    dirs = checkpoint_dirs(text_teacher)
    odd = tmp_path / "odd"
    shutil.copytree(dirs[60], odd)
    config = json.loads((odd / "config.json").read_text())
    config.update(architectures=["RobertaForSequenceClassification"], model_type="roberta")
    (odd / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "cache"
    write_hub_cache(
        cache,
        REPO,
        {"step30": folder_files(dirs[30]), "step60": folder_files(odd), "step90": folder_files(dirs[90])},
    )
    traj = Trajectory.from_hub(REPO, cache_dir=cache)
    with pytest.raises(
        TeacherLoadError, match=r"'step60' \(org/teacher@step60\) is RobertaForSequenceClassification"
    ):
        TeacherEnsemble.from_trajectory(traj, "all")


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, text_teacher):
    marker = tmp_path / "code-ran"
    payload = tmp_path / "pytorch_model.bin"
    with open(payload, "wb") as f:
        pickle.dump({"weight": _RunsCode(str(marker))}, f)
    config = checkpoint_dirs(text_teacher)[30] / "config.json"
    write_hub_cache(
        tmp_path / "cache", REPO, {"step30": {"config.json": config, "pytorch_model.bin": payload}}
    )
    traj = Trajectory.from_hub(REPO, cache_dir=tmp_path / "cache")
    with pytest.raises(
        TeacherLoadError, match=r"needs full unpickling, which can run arbitrary code, so it was refused"
    ):
        TeacherEnsemble.from_trajectory(traj, "last")
    assert not marker.exists()


def test_steps_from_trainer_state_when_names_hold_none(tmp_path, text_teacher):
    dirs = checkpoint_dirs(text_teacher)
    write_hub_cache(tmp_path, REPO, {"late": folder_files(dirs[120]), "early": folder_files(dirs[30])})
    traj = Trajectory.from_hub(REPO, revisions=["late", "early"], cache_dir=tmp_path)
    assert [(c.name, c.step) for c in traj] == [("early", 30), ("late", 120)]
    bare = tmp_path / "bare"
    write_hub_cache(
        bare,
        REPO,
        {n: folder_files(dirs[s], skip=("trainer_state.json",)) for n, s in (("a", 30), ("b", 60))},
    )
    with pytest.raises(
        HubError, match=r"Cannot tell the training step of checkpoint '(a|b)' of Hub repo 'org/teacher'"
    ):
        Trajectory.from_hub(REPO, revisions=["a", "b"], cache_dir=bare)


@pytest.mark.parametrize("spec", ["hub:", "hub:org/teacher@", "hub:not a repo"])
def test_bad_hub_specs(spec):
    with pytest.raises(HubError, match=r"hub:ORG/NAME|not a Hub repo id"):
        load_trajectory(spec)


def test_parse_hub_spec():
    assert parse_hub_spec("hub:org/name@step*") == ("org/name", "step*")
    assert parse_hub_spec("hub:org/name") == ("org/name", None)
    assert parse_hub_spec("runs/teacher") is None


def test_a_plain_hub_id_is_a_teacher_the_trl_way(
    subfolder_cache, branch_cache, text_teacher, tmp_path, caplog
):
    """teacher='ORG/NAME' without the hub: prefix: the repo's layout is detected and named in a warning; a
    single-model repo is a one-checkpoint trajectory; a name that is neither a path nor a repo is refused with
    both facts."""
    import logging

    with caplog.at_level(logging.WARNING, logger="hf_ckd.trajectory"):
        traj = load_trajectory(REPO, cache_dir=subfolder_cache)
    assert [c.subfolder for c in traj] == [
        "checkpoint-30",
        "checkpoint-60",
        "checkpoint-90",
        "checkpoint-120",
    ]
    assert "read as the Hub model repo 'org/teacher': 4 checkpoint subfolders" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ckd.trajectory"):
        branches = load_trajectory(REPO, cache_dir=branch_cache)
    assert [c.revision for c in branches] == ["step30", "step60", "step90", "step120"]
    assert "4 step branches/tags (step30 ... step120)" in caplog.text
    single = tmp_path / "single"
    write_hub_cache(single, "gpt2", {"main": folder_files(checkpoint_dirs(text_teacher)[120])})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ckd.trajectory"):
        one = load_trajectory("gpt2", cache_dir=single)
    assert len(one.checkpoints) == 1 and one.checkpoints[0].revision == "main"
    assert "'gpt2' (one model" in caplog.text
    with pytest.raises(HubError, match=r"Teacher 'runs/typo' is not a local path .* read as a Hub model id"):
        load_trajectory("runs/typo", cache_dir=single)
    with pytest.raises(Exception, match="does not exist"):  # a path-like name stays a local path
        load_trajectory("./runs/typo")
