"""recipes/demo_digits.py (`make demo`) end to end with its --quick settings: 1 teacher, 2 paired student seeds."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo_digits.py"


def load_recipe():
    spec = importlib.util.spec_from_file_location("demo_digits", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return load_recipe()


@pytest.fixture(scope="module")
def quick_run(recipe, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo") / "out"
    results = recipe.main(["--output_dir", str(output_dir), "--quick"])
    return output_dir, results


@pytest.mark.slow
def test_quick_demo_writes_results(quick_run, recipe):
    output_dir, returned = quick_run
    results = json.loads((output_dir / "results.json").read_text())
    assert results["arms"] == json.loads(json.dumps(returned["arms"]))
    table = (output_dir / "results.md").read_text()

    names = [a["name"] for a in recipe.parse_args(["--output_dir", "x"]).arms()]
    assert names == ["labels only", "T^0.3", "T^0.5", "T^full", "snapshot 0.3+0.5+0.7", "T* (MI)"]
    assert [row["arm"] for row in results["arms"]] == names
    for row in results["arms"]:
        assert row["n"] >= 2
        assert 0.0 <= row["student_accuracy_mean"] <= 1.0
        assert f"| {row['arm']} |" in table
    for run in results["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0
    # Paired seeds: every arm ran on the same (teacher, student seed) pairs.
    pairs = {
        name: sorted((r["teacher_seed"], r["student_seed"]) for r in results["runs"] if r["arm"] == name)
        for name in names
    }
    assert all(p == pairs["T^full"] for p in pairs.values()) and len(pairs["T^full"]) >= 2

    (teacher,) = results["teachers"]
    final = teacher["checkpoints"][-1]
    assert final["fraction"] == 1.0
    assert final["accuracy"] > 0.5  # chance is 0.1
    assert len(teacher["checkpoints"]) >= 5  # a trajectory, not just the final model
    assert all(0.0 <= a <= 1.0 for a in teacher["arm_accuracy"].values())
    assert teacher["arm_checkpoints"]["snapshot 0.3+0.5+0.7"] == [
        teacher["arm_checkpoints"]["T^0.3"][0],
        teacher["arm_checkpoints"]["T^0.5"][0],
        teacher["checkpoints"][6]["name"],
    ]
    assert (output_dir / "teachers" / "seed-0" / "trainer_state.json").is_file()
    # The T* arm distils from the checkpoint hf_ckd.selection wrote into the teacher's selection.json.
    with open(output_dir / "teachers" / "seed-0" / "selection.json") as f:
        selection = json.load(f)
    assert teacher["arm_checkpoints"]["T* (MI)"] == selection["selected"]
    assert len(selection["checkpoints"]) == len(teacher["checkpoints"])
    full = next(r for r in results["arms"] if r["arm"] == "T^full")
    assert full["delta_vs_full_mean"] == 0.0 and full["within_2se"]
    assert "Teacher trajectory" in table and "Wall time" in table


@pytest.mark.slow
def test_refuses_an_output_dir_with_results(quick_run, recipe):
    output_dir, _ = quick_run
    before = (output_dir / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"--output_dir.*--overwrite_output_dir"):
        recipe.main(["--output_dir", str(output_dir), "--quick"])
    assert (output_dir / "results.json").read_bytes() == before


@pytest.mark.slow
def test_paired_runs_are_deterministic(quick_run, recipe):
    """The same seed and arm give the same student: arms differ only in their teacher."""
    output_dir, results = quick_run
    args = recipe.parse_args(["--output_dir", str(output_dir), "--quick"])
    train, test = recipe.load_digits_splits(args.train_size, args.split_seed)
    import torch

    from hf_ckd.metrics import classification_metrics

    arm = args.arms()[-2]  # the snapshot ensemble
    run = next(r for r in results["runs"] if r["arm"] == arm["name"])
    teacher_dir = str(output_dir / "teachers" / f"seed-{run['teacher_seed']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)  # as in the workers
    try:
        again = recipe.distill_student(
            args, arm, teacher_dir, run["student_seed"], train, test, classification_metrics()
        )
    finally:
        torch.set_num_threads(threads)
    assert again == run["accuracy"]


def test_arguments(recipe, tmp_path):
    config = tmp_path / "demo.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "quick": True, "student_seeds": 3}))
    args = recipe.parse_args([str(config)])
    assert (args.teacher_seeds, args.student_seeds) == (1, 3)  # --quick shrinks only sizes left at default
    defaults = recipe.parse_args(["--output_dir", "o"])
    assert (defaults.teacher_seeds, defaults.student_seeds, defaults.temperature) == (3, 10, 4.0)
    with pytest.raises(ValueError, match="student_seeds"):
        recipe.parse_args(["--output_dir", "o", "--student_seeds", "1"])
    arms = recipe.parse_args(
        [
            "--output_dir",
            "o",
            "--single_checkpoints",
            "0.2",
            "--snapshot_ensemble",
            "",
            "--mi_selection",
            "false",
        ]
    ).arms()
    assert [a["name"] for a in arms] == ["labels only", "T^0.2", "T^full"]


def test_help_is_fast_to_reach(tmp_path):
    """--help answers without importing torch (main() imports the heavy libraries late)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['demo_digits.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(RECIPE)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert "--output_dir" in out.stdout and "--overwrite_output_dir" in out.stdout
    assert out.stdout.strip().endswith("False")
