"""Publishing a distilled student: the REAL ``trainer.push_to_hub()`` with only the network calls replaced,
the uploaded folder put into a Hub cache layout and loaded back offline with timm (``hf-hub:`` and
``local-dir:``) and transformers; the model card parsed with ``huggingface_hub.ModelCard``."""

import json
import os
import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_bert, trainer_args
from hub_cache import folder_files, write_hub_cache
from huggingface_hub import HfApi, ModelCard, ModelCardData, RepoUrl
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, TeacherEnsemble, Trajectory
from hf_ckd.export import latest_eval_metrics
from hf_ckd.selection import write_selection
from hf_ckd.teachers import load_teacher
from hf_ckd.trajectory import Checkpoint

DIGIT_NAMES = [f"digit-{i}" for i in range(10)]


class FakeHub:
    """Stands in for the two Hub calls Trainer makes (``HfApi.create_repo`` in ``init_hf_repo``,
    ``HfApi.upload_folder`` in ``push_to_hub`` / ``_push_from_checkpoint``): each upload copies the files
    the real ``upload_folder`` would send (its ignore patterns plus huggingface_hub's defaults) aside."""

    def __init__(self, monkeypatch, root: Path):
        self.root, self.repos, self.uploads = root, [], []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.repos.append(repo_id)
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, ignore_patterns=None, run_as_future=False, **kwargs):
            snapshot = hub.root / f"upload-{len(hub.uploads)}"
            files = folder_files(folder_path)
            kept = list(
                filter_repo_objects(
                    files, ignore_patterns=[*(ignore_patterns or []), *DEFAULT_IGNORE_PATTERNS]
                )
            )
            for rel in kept:
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(files[rel], snapshot / rel)
            hub.uploads.append(
                {
                    "repo_id": repo_id,
                    "folder_path": str(folder_path),
                    "ignore_patterns": list(ignore_patterns or []),
                    "path_in_repo": kwargs.get("path_in_repo"),
                    "commit_message": kwargs.get("commit_message"),
                    "snapshot": snapshot,
                    "files": sorted(kept),
                }
            )
            if run_as_future:
                done = Future()
                done.set_result(None)
                return done
            return None

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def weight_names(path) -> list[str]:
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def accuracy_metric(eval_pred):
    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def check_card_round_trip(card: ModelCard) -> None:
    """The metadata re-validates through ModelCardData (model-index included) and reads back unchanged."""
    again = ModelCardData(**card.data.to_dict())
    assert again.to_dict() == card.data.to_dict()
    assert ModelCard(str(card)).data.to_dict() == card.data.to_dict()


def check_model_index(card: ModelCard, trainer, task: str, dataset: str) -> None:
    expected = latest_eval_metrics(trainer.state.log_history)
    last_eval = next(e for e in reversed(trainer.state.log_history) if "eval_loss" in e)
    assert expected["loss"] == last_eval["eval_loss"]
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == expected
    assert {(r.task_type, r.dataset_type) for r in results} == {(task, dataset)}


# ---- a timm student ----------------------------------------------------------------------------------


def timm_student(seed: int) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    config = TimmWrapperConfig(
        architecture="test_resnet",
        num_labels=10,
        model_args={"in_chans": 1},
        id2label=dict(enumerate(DIGIT_NAMES)),
        label2id={name: i for i, name in enumerate(DIGIT_NAMES)},
    )
    return TimmWrapperForImageClassification(config)


def timm_args(output_dir, teacher, selection) -> CheckpointDistillConfig:
    return CheckpointDistillConfig(
        **trainer_args(
            output_dir,
            teacher=teacher,
            teacher_selection=str(selection),
            teacher_weights=[1.0, 3.0],
            temperature=2.0,
            alpha=0.3,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            eval_strategy="steps",
            eval_steps=3,
            push_to_hub=True,
            hub_model_id="org/student",
        )
    )


@pytest.fixture(scope="module")
def timm_push(timm_teacher, digits_data, tmp_path_factory):
    """A timm student distilled from two selected checkpoints and pushed with the real ``push_to_hub``."""
    train, val = digits_data
    root = tmp_path_factory.mktemp("timm_push")
    trajectory = Trajectory.from_local(timm_teacher)
    rows = [
        {
            "name": c.name,
            "step": c.step,
            "fraction": c.fraction,
            "accuracy": 0.5 + 0.1 * i,
            "i_xf": 4.0 + i,
            "i_yf": 1.0 + 0.5 * i,
            "saturation_x": 0.5,
            "saturation_y": 0.5,
            "score": 1.5 + 0.2 * i,
        }
        for i, c in enumerate(trajectory)
    ]
    selection = root / "selection.json"
    write_selection(
        str(selection), trajectory, rows, ["checkpoint-80", "checkpoint-120"], "kde", "penultimate", {"n": 64}
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = FakeHub(monkeypatch, root / "hub")
        student = timm_student(seed=1)
        trainer = CheckpointDistillTrainer(
            model=student,
            args=timm_args(root / "student", timm_teacher, selection),
            train_dataset=train,
            eval_dataset=val.select(range(128)),
            compute_metrics=accuracy_metric,
        )
        trainer.train()
        trainer.push_to_hub(dataset="org/digits")
    return {"trainer": trainer, "hub": hub, "root": root, "val": val, "selection": selection}


def test_push_uploads_the_output_dir_without_checkpoints(timm_push):
    trainer, hub = timm_push["trainer"], timm_push["hub"]
    assert hub.repos == ["org/student"]
    final = hub.uploads[-1]
    assert final["repo_id"] == "org/student" and final["commit_message"] == "End of training"
    assert final["folder_path"] == trainer.args.output_dir
    assert final["ignore_patterns"] == ["_*", "checkpoint-*"]
    assert {"README.md", "config.json", "model.safetensors"} <= set(final["files"])
    assert not any(f.startswith("checkpoint-") for f in final["files"])
    # The intermediate pushes (hub_strategy="every_save") went through the same fake.
    assert [u["commit_message"] for u in hub.uploads[:-1]] == [
        "Training in progress, step 3",
        "Training in progress, step 6",
    ]


def test_timm_student_loads_from_the_hub_with_timm_and_transformers(timm_push, tmp_path):
    trainer, val = timm_push["trainer"], timm_push["val"]
    student = trainer.model.eval()
    pixels = val[:16]["pixel_values"]
    with torch.no_grad():
        expected = student(pixel_values=pixels).logits

    cache = tmp_path / "cache"
    uploaded = timm_push["hub"].uploads[-1]
    write_hub_cache(cache, "org/student", {"main": folder_files(uploaded["snapshot"])})
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: only the cache is read

    native = timm.create_model("hf-hub:org/student", pretrained=True, cache_dir=cache).eval()
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), expected, rtol=0, atol=1e-6)
    assert list(native.pretrained_cfg["label_names"]) == DIGIT_NAMES
    assert native.pretrained_cfg["input_size"][0] == 1  # in_chans recorded for preprocessing

    wrapped = AutoModelForImageClassification.from_pretrained("org/student", cache_dir=cache).eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(pixel_values=pixels).logits, expected, rtol=0, atol=1e-6)
    assert wrapped.config.id2label == dict(enumerate(DIGIT_NAMES))
    processor = AutoImageProcessor.from_pretrained("org/student", cache_dir=cache)  # reads pretrained_cfg
    assert type(processor).__name__ == "TimmWrapperImageProcessor"


def test_timm_student_folder_formats(timm_push):
    """The final folder is in timm's format (no prefix, pretrained_cfg, model_args without num_classes);
    checkpoint folders keep Trainer's format, so resume reads them as before."""
    out = timm_push["trainer"].args.output_dir
    assert not any(k.startswith("timm_model.") for k in weight_names(out))
    assert all(k.startswith("timm_model.") for k in weight_names(os.path.join(out, "checkpoint-6")))
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "timm_wrapper" and config["architecture"] == "test_resnet"
    assert "pretrained_cfg" in config and "num_classes" not in config["model_args"]
    assert config["model_args"]["in_chans"] == 1 and config["label_names"] == DIGIT_NAMES


def test_timm_student_loads_from_local_dir_and_teaches(timm_push):
    trainer, val = timm_push["trainer"], timm_push["val"]
    out = trainer.args.output_dir
    pixels = val[:16]["pixel_values"]
    with torch.no_grad():
        expected = trainer.model.eval()(pixel_values=pixels).logits
        native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(native(pixels), expected, rtol=0, atol=1e-6)
        teacher = load_teacher(Checkpoint(name="student", path=out, step=6))  # a distilled student can teach
        torch.testing.assert_close(teacher(pixel_values=pixels).logits, expected, rtol=0, atol=1e-6)


def test_resume_from_a_checkpoint_of_a_pushed_timm_run(timm_push, timm_teacher, digits_data, tmp_path):
    trainer = timm_push["trainer"]
    train, _ = digits_data
    resumed = timm_student(seed=7)  # different init: everything must come from checkpoint-3
    args = timm_args(tmp_path / "resumed", timm_teacher, timm_push["selection"])
    args.push_to_hub, args.eval_strategy = False, "no"
    again = CheckpointDistillTrainer(model=resumed, args=args, train_dataset=train)
    again.train(resume_from_checkpoint=os.path.join(trainer.args.output_dir, "checkpoint-3"))
    assert again.state.global_step == 6
    final = trainer.model.state_dict()
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_timm_model_card_records_the_lineage(timm_push, timm_teacher):
    trainer = timm_push["trainer"]
    card = ModelCard.load(os.path.join(timm_push["hub"].uploads[-1]["snapshot"], "README.md"))
    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert {"knowledge-distillation", "hf-ckd", "timm"} <= set(data.tags)
    assert data.datasets == ["org/digits"]
    assert data.base_model is None  # a local teacher is not a Hub repo
    distillation = data["distillation"]
    assert distillation["teacher"] == timm_teacher
    assert [(c["name"], c["step"], c["fraction"], c["weight"]) for c in distillation["checkpoints"]] == [
        ("checkpoint-80", 80, pytest.approx(2 / 3, abs=1e-6), 0.25),
        ("checkpoint-120", 120, 1.0, 0.75),
    ]
    assert distillation["temperature"] == 2.0 and distillation["alpha"] == 0.3
    assert distillation["ensemble_average"] == "probs"
    selection = distillation["selection"]
    assert selection["estimator"] == "kde" and selection["selected"] == ["checkpoint-80", "checkpoint-120"]
    assert selection["scores"] == {"checkpoint-40": 1.5, "checkpoint-80": 1.7, "checkpoint-120": 1.9}
    check_model_index(card, trainer, "image-classification", "org/digits")
    assert {"loss", "accuracy"} <= {r.metric_type for r in data.eval_results}
    check_card_round_trip(card)
    text = card.text
    assert "| checkpoint-80 | 80 | 0.667 | 0.250 |" in text
    assert "### Teacher selection" in text and "| checkpoint-40 | 40 |" in text
    assert 'timm.create_model("hf-hub:org/student", pretrained=True)' in text
    assert 'AutoModelForImageClassification.from_pretrained("org/student")' in text
    assert "import hf_ckd" not in text  # test_resnet is timm's own architecture


# ---- a text student whose teacher came from the Hub ----------------------------------------------------


def test_text_student_from_hub_teacher_push(text_teacher, text_data, tmp_path, monkeypatch):
    """Teacher checkpoints that carry a Hub repo id as their source (as Hub trajectories do) make the card's
    ``base_model``; the pushed folder loads with AutoModelForSequenceClassification from a Hub cache."""
    train, val = text_data
    local = Trajectory.from_local(text_teacher)
    hub_checkpoints = [
        Checkpoint(
            name=f"step{c.step}", path=c.path, step=c.step, source="org/teacher", revision=f"step{c.step}"
        )
        for c in local
    ]
    teachers = TeacherEnsemble.from_trajectory(Trajectory(hub_checkpoints, source="org/teacher"), "0.5,last")
    hub = FakeHub(monkeypatch, tmp_path / "hub")
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "text_student",
            temperature=3.0,
            alpha=0.5,
            max_steps=4,
            save_strategy="no",
            eval_strategy="no",
            push_to_hub=True,
            hub_model_id="org/text-student",
        )
    )
    student = tiny_bert(hidden=16, layers=1, seed=1)
    trainer = CheckpointDistillTrainer(
        model=student,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        teachers=teachers,
        compute_metrics=accuracy_metric,
    )
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub(dataset_tags="org/markers", dataset="org/markers")

    uploaded = hub.uploads[-1]
    assert uploaded["ignore_patterns"] == ["_*", "checkpoint-*"]
    cache = tmp_path / "cache"
    write_hub_cache(cache, "org/text-student", {"main": folder_files(uploaded["snapshot"])})
    loaded = AutoModelForSequenceClassification.from_pretrained("org/text-student", cache_dir=cache).eval()
    batch = val[:32]
    with torch.no_grad():
        expected = student.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

    card = ModelCard.load(uploaded["snapshot"] / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.base_model == "org/teacher"
    assert "base_model_relation" not in data.to_dict()  # no Hub-accepted relation means distillation
    assert data.datasets == ["org/markers"]
    assert {"knowledge-distillation", "hf-ckd"} <= set(data.tags)
    distillation = data["distillation"]
    assert distillation["teacher"] == "org/teacher" and distillation["teacher_repos"] == ["org/teacher"]
    assert [(c["name"], c["revision"], c["step"], c["fraction"], c["weight"], c["source"]) for c in
            distillation["checkpoints"]] == [
        ("step60", "step60", 60, 0.5, 0.5, "org/teacher"),
        ("step120", "step120", 120, 1.0, 0.5, "org/teacher"),
    ]  # fmt: skip
    assert distillation["temperature"] == 3.0 and distillation["alpha"] == 0.5
    assert "selection" not in distillation
    check_model_index(card, trainer, "text-classification", "org/markers")
    check_card_round_trip(card)
    assert "[org/teacher](https://huggingface.co/org/teacher)" in card.text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/text-student")' in card.text


def test_cifar_student_saved_without_push(timm_teacher, tmp_path):
    """An hf_ckd CIFAR architecture: ``save_model`` + ``create_model_card`` (no push) give a folder that
    timm (after ``import hf_ckd``) and transformers load, and a card that says to import hf_ckd first."""
    from hf_ckd.models import timm_classifier

    student = timm_classifier("cifar_resnet20", num_labels=10).eval()
    args = CheckpointDistillConfig(**trainer_args(tmp_path / "cifar", teacher=timm_teacher))
    trainer = CheckpointDistillTrainer(model=student, args=args)
    trainer.save_model()
    local_data = tmp_path / "digits_on_disk"
    local_data.mkdir()
    trainer.create_model_card(dataset=str(local_data))
    out = args.output_dir
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = student(pixel_values=pixels).logits
        native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(native(pixels), expected, rtol=0, atol=1e-6)
        wrapped = AutoModelForImageClassification.from_pretrained(out).eval()
        torch.testing.assert_close(wrapped(pixel_values=pixels).logits, expected, rtol=0, atol=1e-6)
    card = ModelCard.load(os.path.join(out, "README.md"))
    assert (
        "import hf_ckd" in card.text
        and 'timm.create_model("hf-hub:<user>/cifar", pretrained=True)' in card.text
    )
    assert card.data.eval_results is None  # nothing evaluated yet: no model-index
    assert card.data.datasets is None and f"`{local_data}`" in card.text  # a local path is no Hub dataset id
    check_card_round_trip(card)


def test_card_lists_every_checkpoint_of_a_schedule(timm_teacher, tmp_path):
    """With a progressive schedule only the active checkpoint is loaded, but the card lists all of them."""
    args = CheckpointDistillConfig(
        **trainer_args(
            tmp_path / "progressive",
            teacher=timm_teacher,
            teacher_checkpoints="all",
            teacher_schedule="progressive",
            teacher_schedule_pace="equal",
            max_steps=6,
        )
    )
    trainer = CheckpointDistillTrainer(model=timm_student(seed=1), args=args)
    trainer.create_model_card()
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    distillation = card.data["distillation"]
    assert [c["name"] for c in distillation["checkpoints"]] == [
        "checkpoint-40",
        "checkpoint-80",
        "checkpoint-120",
    ]
    assert [c["weight"] for c in distillation["checkpoints"]] == [pytest.approx(1 / 3, abs=1e-6)] * 3
    assert distillation["schedule"]["kind"] == "progressive"
    assert (
        "a `progressive` schedule over 3 checkpoints" in card.text and "| (0, 2] | checkpoint-40" in card.text
    )
    check_card_round_trip(card)
