"""hf_ckd.scripts.train_teacher, select_teachers and distill_cifar100 end to end on a tiny local dataset
with CIFAR-100's schema (``img`` images, ``fine_label`` ClassLabel), including two CPU processes launched with
``accelerate launch -m hf_ckd.scripts.distill_cifar100``."""

import importlib
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest

from hf_ckd.selection import SelectionError

# The launchers kept in recipes/ (python recipes/distill_cifar100.py ...).
RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")


def load_recipe(name):
    """The recipe module ``hf_ckd.scripts.<name>``."""
    return importlib.import_module(f"hf_ckd.scripts.{name}")


def cifar_like(n, num_classes=4, seed=0, image_feature=True):
    """Colour-coded 32x32 images: class c brightens channel c % 3 (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = []
    for y in labels:
        image = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        image[..., y % 3] += np.uint8(120 + 40 * (y // 3))
        images.append(image)
    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(num_classes=num_classes)}
    )
    return datasets.Dataset.from_dict({"img": images, "fine_label": labels}, features=features)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar") / "data"
    datasets.DatasetDict({"train": cifar_like(96), "test": cifar_like(32, seed=1)}).save_to_disk(str(path))
    return str(path)


COMMON = ["--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "16", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def cifar_teacher(cifar_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cifar_teacher") / "run")
    metrics = load_recipe("train_teacher").main(
        ["--model_name", "cifar_resnet20", "--dataset_path", cifar_dir, "--output_dir", out,
         "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
         "--lr_decay_epochs", "", *COMMON]
    )  # fmt: skip
    assert metrics["eval_accuracy"] >= 0
    return out


def test_train_teacher_keeps_the_trajectory(cifar_teacher):
    from hf_ckd import Trajectory

    traj = Trajectory.from_local(cifar_teacher)
    assert [c.step for c in traj] == [2, 4, 6]
    with open(os.path.join(cifar_teacher, "checkpoint-2", "config.json")) as f:
        config = json.load(f)
    assert config["architecture"] == "cifar_resnet20" and config["num_classes"] == 4
    assert os.path.isfile(os.path.join(cifar_teacher, "all_results.json"))


def test_distill_cifar100_end_to_end(cifar_teacher, cifar_dir, tmp_path):
    out = str(tmp_path / "student")
    metrics = load_recipe("distill_cifar100").main(
        ["--teacher", cifar_teacher, "--teacher_checkpoints", "0.6,last", "--student_model", "cifar_resnet20",
         "--dataset_path", cifar_dir, "--output_dir", out, "--max_steps", "4", "--save_strategy", "no",
         "--eval_strategy", "no", "--temperature", "4", "--alpha", "0.5", "--logging_steps", "2", *COMMON]
    )  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    with open(os.path.join(out, "all_results.json")) as f:
        assert "eval_accuracy" in json.load(f)
    with open(os.path.join(out, "trainer_state.json")) as f:
        state = json.load(f)
    lineage = state["stateful_callbacks"]["TeacherLineageCallback"]["args"]["lineage"]
    assert [c["name"] for c in lineage["checkpoints"]] == ["checkpoint-4", "checkpoint-6"]
    assert any("loss_kd" in entry for entry in state["log_history"])
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "checkpoint-4" in card and "knowledge-distillation" in card


def test_distill_cifar100_from_yaml_and_help(cifar_teacher, cifar_dir, tmp_path):
    out = str(tmp_path / "student")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"teacher: {cifar_teacher}\nteacher_checkpoints: last\nstudent_model: cifar_resnet20\n"
        f"dataset_path: {cifar_dir}\noutput_dir: {out}\nmax_steps: 2\nsave_strategy: 'no'\neval_strategy: 'no'\n"
        "use_cpu: true\nreport_to: none\nper_device_train_batch_size: 16\nlr_decay_epochs: ''\n"
    )
    load_recipe("distill_cifar100").main([str(config)])
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    help_text = subprocess.run(
        [sys.executable, os.path.join(RECIPES, "distill_cifar100.py"), "--help"],
        capture_output=True,
        text=True,
    ).stdout
    for argument in (
        "--teacher_checkpoints",
        "--student_model",
        "--lr_decay_epochs",
        "--temperature",
        "--dataset_path",
    ):
        assert argument in help_text


def test_distill_cifar100_on_two_processes(cifar_teacher, cifar_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
        "-m", "hf_ckd.scripts.distill_cifar100", "--teacher", cifar_teacher, "--teacher_checkpoints", "0.5,last",
        "--student_model", "cifar_resnet20", "--dataset_path", cifar_dir, "--output_dir", str(out),
        "--num_train_epochs", "1", "--lr_decay_epochs", "", "--save_strategy", "no", "--eval_strategy", "no",
        "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "MULTI_CPU" in result.stderr and "2 processes" in result.stderr
    with open(out / "trainer_state.json") as f:
        state = json.load(f)
    assert state["global_step"] == 96 // (8 * 2)  # each process saw half of every global batch


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("student", "--student_model 'cifar_resnet_9000' is not a timm architecture"),
        ("teacher", "does not exist"),
        ("columns", "no image column"),
        ("not_image", "--image_column 'img' holds"),
        ("classes", "has 7 classes but the model predicts 4"),
        ("finished", "already holds a finished run"),
    ],
)
def test_distill_cifar100_bad_input(case, message, cifar_teacher, cifar_dir, tmp_path):
    out = tmp_path / "out"
    data_path, student, teacher = cifar_dir, "cifar_resnet20", cifar_teacher
    if case == "student":
        student = "cifar_resnet_9000"
    elif case == "teacher":
        teacher = str(tmp_path / "missing")
    elif case == "columns":
        data_path = str(tmp_path / "renamed")
        datasets.DatasetDict({"train": cifar_like(8).rename_column("img", "pixels")}).save_to_disk(data_path)
    elif case == "not_image":
        data_path = str(tmp_path / "strings")
        strings = datasets.Dataset.from_dict({"img": ["a.png"] * 4, "fine_label": [0, 1, 2, 3]})
        datasets.DatasetDict({"train": strings}).save_to_disk(data_path)
    elif case == "classes":
        data_path = str(tmp_path / "seven")
        datasets.DatasetDict({"train": cifar_like(8, num_classes=7)}).save_to_disk(data_path)
    elif case == "finished":
        out.mkdir()
        (out / "all_results.json").write_text("{}")
    argv = ["--teacher", teacher, "--student_model", student, "--dataset_path", data_path, "--eval_split", "",
            "--output_dir", str(out), "--max_steps", "2", *COMMON]  # fmt: skip
    with pytest.raises(ValueError, match=message):
        load_recipe("distill_cifar100").main(argv)
    assert sorted(os.listdir(out)) == ["all_results.json"] if case == "finished" else not out.exists()


def test_select_teachers_then_distill_from_the_selection(cifar_teacher, cifar_dir, tmp_path):
    selection = tmp_path / "selection.json"
    content = load_recipe("select_teachers").main(
        ["--trajectory", cifar_teacher, "--dataset_path", cifar_dir, "--probe_split", "test",
         "--probe_samples", "32", "--output", str(selection), "--batch_size", "16"]
    )  # fmt: skip
    assert selection.is_file() and (tmp_path / "selection.png").is_file()
    assert [row["name"] for row in content["checkpoints"]] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert content["probe"]["samples"] == 32 and content["estimator"] == "kde"
    assert len(content["selected"]) == 1 and content["selected"][0] in {
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    }
    out = tmp_path / "student"
    load_recipe("distill_cifar100").main(
        ["--teacher", cifar_teacher, "--teacher_selection", str(selection), "--student_model", "cifar_resnet20",
         "--dataset_path", cifar_dir, "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no",
         "--eval_strategy", "no", *COMMON]
    )  # fmt: skip
    with open(out / "trainer_state.json") as f:
        lineage = json.load(f)["stateful_callbacks"]["TeacherLineageCallback"]["args"]["lineage"]
    assert [c["name"] for c in lineage["checkpoints"]] == content["selected"]
    assert lineage["teacher_selection"] == str(selection)


def test_select_teachers_sigma_sweep_and_verdict(cifar_teacher, cifar_dir, tmp_path, capsys):
    selection = tmp_path / "selection.json"
    content = load_recipe("select_teachers").main(
        ["--trajectory", cifar_teacher, "--dataset_path", cifar_dir, "--probe_split", "test",
         "--probe_samples", "32", "--output", str(selection), "--batch_size", "16", "--sigma_sweep", "0.5,1,2"]
    )  # fmt: skip
    on_disk = json.loads(selection.read_text())
    assert on_disk["sigma_sweep"]["grid"] == [0.5, 1.0, 2.0] and len(on_disk["sigma_sweep"]["picks"]) == 3
    assert on_disk["estimator_params"] == {"seed": 0}
    assert all(len(row["sweep_scores"]) == 3 for row in on_disk["checkpoints"])
    judged = on_disk["verdict"]
    assert judged == content["verdict"] and judged["verdict"] in {
        "clear pick",
        "weak preference",
        "cannot rank",
    }
    assert f"Verdict: {judged['verdict']}: {judged['reason']}" in capsys.readouterr().out
    if not on_disk["sigma_sweep"]["pick_stable"]:
        assert any("changes with the kde noise sigma" in w for w in on_disk["warnings"])
    # the learned estimators through the recipe (images: reconstruction reads the pixels)
    content = load_recipe("select_teachers").main(
        ["--trajectory", cifar_teacher, "--dataset_path", cifar_dir, "--probe_split", "test", "--estimator",
         "infopro", "--folds", "2", "--probe_samples", "32", "--output", str(tmp_path / "i.json"),
         "--batch_size", "16"]
    )  # fmt: skip
    assert content["estimator"] == "infopro" and content["estimator_params"] == {"folds": 2, "seed": 0}
    assert all(0 <= row["i_xf"] <= row["ceiling_x"] for row in content["checkpoints"])
    with pytest.raises(SelectionError, match="sigma sweep applies to the kde estimators"):
        load_recipe("select_teachers").main(
            ["--trajectory", cifar_teacher, "--dataset_path", cifar_dir, "--probe_split", "test", "--estimator",
             "probe", "--sigma_sweep", "1", "--probe_samples", "32", "--output", str(tmp_path / "p.json")]
        )  # fmt: skip


def test_distill_cifar100_with_a_soft_target_cache(cifar_teacher, cifar_dir, tmp_path, monkeypatch):
    """The first run builds the cache (teachers loaded once); a second student with another seed reuses it
    and loads no teacher at all."""
    from hf_ckd.cache import SoftTargetCache
    from hf_ckd.teachers import TeacherEnsemble

    cache = str(tmp_path / "cache")

    def run(name, seed):
        return load_recipe("distill_cifar100").main(
            ["--teacher", cifar_teacher, "--teacher_checkpoints", "0.6,last", "--student_model", "cifar_resnet20",
             "--dataset_path", cifar_dir, "--output_dir", str(tmp_path / name), "--max_steps", "12",
             "--save_strategy", "no", "--eval_strategy", "no", "--temperature", "4", "--alpha", "0.5",
             "--logging_steps", "2", "--soft_target_cache", cache, "--cache_views", "2", "--seed", str(seed),
             *COMMON]
        )  # fmt: skip

    run("first", 0)
    built = SoftTargetCache(cache)
    assert len(built.table) == 96 * 2 and built.config["teachers"] == ["checkpoint-4", "checkpoint-6"]

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher was loaded although the cache exists")

    monkeypatch.setattr(TeacherEnsemble, "from_trajectory", refuse)
    run("second", 1)
    with open(tmp_path / "second" / "trainer_state.json") as f:
        state = json.load(f)
    assert state["epoch"] == 2  # 96 images / batch 16 = 6 steps per epoch: both views were used
    assert any("loss_kd" in entry for entry in state["log_history"])
