"""experiments/demo_digits.py (`make demo`) end to end with --quick and 2 teachers (2 paired student seeds each, so
that the full-ensemble arm runs), and the experiments' shared harness (experiments/_harness.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "demo_digits.py"
QUICK = ["--quick", "--teacher_seeds", "2"]  # --quick alone has one teacher, hence no full ensemble
ARMS = [
    "labels only",
    "T^0.3",
    "T^0.5",
    "T^0.7",
    "T^full",
    "snapshot 0.3+0.5+0.7",
    "full ensemble",
    "T* (MI)",
]


def load_experiment():
    spec = importlib.util.spec_from_file_location("demo_digits", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment():
    return load_experiment()


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo") / "out"
    results = experiment.main(["--output_dir", str(output_dir), *QUICK])
    return output_dir, results


@pytest.mark.slow
def test_quick_demo_writes_results(quick_run, experiment):
    output_dir, returned = quick_run
    results = json.loads((output_dir / "results.json").read_text())
    assert results["arms"] == json.loads(json.dumps(returned["arms"]))
    table = (output_dir / "results.md").read_text()

    names = [a["name"] for a in experiment.parse_args(["--output_dir", "x"]).arms()]
    assert names == ARMS
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
    assert all(p == pairs["T^full"] for p in pairs.values()) and len(pairs["T^full"]) == 4

    teachers = results["teachers"]
    assert [t["seed"] for t in teachers] == [0, 1]
    for teacher in teachers:
        final = teacher["checkpoints"][-1]
        assert final["fraction"] == 1.0
        assert final["accuracy"] > 0.5  # chance is 0.1
        assert len(teacher["checkpoints"]) >= 5  # a trajectory, not just the final model
        assert all(0.0 <= a <= 1.0 for a in teacher["arm_accuracy"].values())
        assert teacher["checkpoints"][6]["fraction"] == pytest.approx(0.7)
        assert teacher["arm_checkpoints"]["T^0.7"] == [teacher["checkpoints"][6]["name"]]
        assert teacher["arm_checkpoints"]["snapshot 0.3+0.5+0.7"] == [
            teacher["arm_checkpoints"][name][0] for name in ("T^0.3", "T^0.5", "T^0.7")
        ]
        assert "full ensemble" not in teacher["arm_checkpoints"]  # not a per-teacher arm
        folder = output_dir / "teachers" / f"seed-{teacher['seed']}"
        assert (folder / "trainer_state.json").is_file()
        # The T* arm distils from the checkpoint hf_ckd.selection wrote into the teacher's selection.json.
        with open(folder / "selection.json") as f:
            selection = json.load(f)
        assert teacher["arm_checkpoints"]["T* (MI)"] == selection["selected"]
        assert len(selection["checkpoints"]) == len(teacher["checkpoints"])
        # with the estimator the oracle supports (docs/selection.md), and its verdict reported
        assert selection["estimator"] == results["config"]["mi_estimator"] == "probe"
        assert teacher["selection_verdict"] == selection["verdict"]["verdict"]
        assert teacher["selection_verdict"] in table.split("its verdicts: ")[1].split(".")[0]
    full = next(r for r in results["arms"] if r["arm"] == "T^full")
    assert full["delta_vs_full_mean"] == 0.0 and full["within_2se"]
    assert "Teacher trajectory" in table and "Wall time" in table

    # The full ensemble: the final checkpoint of every teacher run, in one ensemble, weighted uniformly.
    ensemble = results["full_ensemble"]
    finals = [f"seed-{t['seed']}/{t['checkpoints'][-1]['name']}" for t in teachers]
    assert ensemble["checkpoints"] == finals
    assert ensemble["checkpoint_paths"] == [
        os.path.abspath(output_dir / "teachers" / name) for name in finals
    ]
    assert ensemble["weights"] == pytest.approx([0.5, 0.5]) and ensemble["average"] == "probs"
    row = next(r for r in results["arms"] if r["arm"] == "full ensemble")
    assert row["teacher_accuracy_mean"] == ensemble["accuracy"] and row["teacher_accuracy_std"] is None
    assert 0.5 < ensemble["accuracy"] <= 1.0
    # Its runs use every group's student seeds (paired with that group's other arms).
    assert sorted(r["student_seed"] for r in results["runs"] if r["arm"] == "full ensemble") == [0, 1, 2, 3]
    assert ", ".join(finals) in table
    claim = results["snapshot_vs_full_ensemble"]
    assert (claim["arm"], claim["reference"], claim["n"]) == ("snapshot 0.3+0.5+0.7", "full ensemble", 4)
    assert (claim["snapshot_size"], claim["full_ensemble_size"]) == (3, 2)
    runs = {(r["arm"], r["student_seed"]): r["accuracy"] for r in results["runs"]}
    deltas = [runs["snapshot 0.3+0.5+0.7", s] - runs["full ensemble", s] for s in range(4)]
    assert claim["delta_mean"] == pytest.approx(sum(deltas) / 4)
    assert "**Snapshot vs full ensemble**" in table and "**The sizes differ:**" in table


@pytest.mark.slow
def test_refuses_an_output_dir_with_results(quick_run, experiment):
    output_dir, _ = quick_run
    before = (output_dir / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"--output_dir.*--overwrite_output_dir"):
        experiment.main(["--output_dir", str(output_dir), *QUICK])
    assert (output_dir / "results.json").read_bytes() == before


@pytest.mark.slow
def test_paired_runs_are_deterministic(quick_run, experiment):
    """The same seed and arm give the same student: arms differ only in their teacher."""
    output_dir, results = quick_run
    args = experiment.parse_args(["--output_dir", str(output_dir), *QUICK])
    train, test = experiment.load_digits_splits(args.train_size, args.split_seed)
    import torch

    from hf_ckd.metrics import classification_metrics

    arms = {arm["name"]: arm for arm in args.arms()}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)  # as in the workers
    try:
        for name in ("snapshot 0.3+0.5+0.7", "full ensemble"):
            run = next(r for r in results["runs"] if r["arm"] == name and r["teacher_seed"] == 1)
            teacher_dir = (
                args.teacher_dirs()
                if name == "full ensemble"
                else str(output_dir / "teachers" / f"seed-{run['teacher_seed']}")
            )
            again = experiment.distill_student(
                args, arms[name], teacher_dir, run["student_seed"], train, test, classification_metrics()
            )
            assert again == run["accuracy"], name
    finally:
        torch.set_num_threads(threads)


def test_arguments(experiment, tmp_path):
    config = tmp_path / "demo.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "quick": True, "student_seeds": 3}))
    args = experiment.parse_args([str(config)])
    assert (args.teacher_seeds, args.student_seeds) == (1, 3)  # --quick shrinks only sizes left at default
    # One teacher: the full ensemble would be T^full itself, so the arm is skipped and results.md says why.
    assert "full ensemble" not in [a["name"] for a in args.arms()]
    assert experiment.ensemble_notes(args, {}, None)[0].startswith("Full ensemble: skipped.")
    defaults = experiment.parse_args(["--output_dir", "o"])
    assert (defaults.teacher_seeds, defaults.student_seeds, defaults.temperature) == (3, 10, 4.0)
    with pytest.raises(ValueError, match="student_seeds"):
        experiment.parse_args(["--output_dir", "o", "--student_seeds", "1"])
    arms = experiment.parse_args(
        [
            "--output_dir",
            "o",
            "--single_checkpoints",
            "0.2",
            "--snapshot_ensemble",
            "",
            "--mi_selection",
            "false",
            "--full_ensemble",
            "false",
        ]
    ).arms()
    assert [a["name"] for a in arms] == ["labels only", "T^0.2", "T^full"]
    arms = experiment.parse_args(["--output_dir", "o", "--teacher_seeds", "2"]).arms()
    assert [a["name"] for a in arms if a.get("across_teachers")] == ["full ensemble"]


def test_help_is_fast_to_reach(tmp_path):
    """--help answers without importing torch (main() imports the heavy libraries late)."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['demo_digits.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(EXPERIMENT)!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert "--output_dir" in out.stdout and "--overwrite_output_dir" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_harness_paired_statistics(experiment):
    """Paired Δ ± SE against the reference arm, per teacher seed, and the "real or noise" reading."""
    import _harness  # on sys.path once an experiment is imported

    def runs(arm, values):  # two teacher seeds x two student seeds
        pairs = [(0, 0), (0, 1), (1, 2), (1, 3)]
        return [
            {"arm": arm, "teacher_seed": t, "student_seed": s, "accuracy": v}
            for (t, s), v in zip(pairs, values)
        ]

    data = (
        runs("ref", [0.5, 0.6, 0.7, 0.8])
        + runs("up", [0.6, 0.7, 0.8, 0.9])
        + runs("mixed", [0.6, 0.7, 0.6, 0.7])
    )
    up = _harness.paired_comparison(data, "up", "ref", [0, 1])
    assert up["n"] == 4 and up["mean"] == pytest.approx(0.75) and up["std"] == pytest.approx(0.1291, abs=1e-4)
    assert up["delta_mean"] == pytest.approx(0.1) and up["delta_se"] == pytest.approx(0.0, abs=1e-9)
    assert up["delta_per_group"] == {0: pytest.approx(0.1), 1: pytest.approx(0.1)}
    assert _harness.verdict("up", up, "ref") == "better than ref (> 2 SE)"
    mixed = _harness.paired_comparison(data, "mixed", "ref", [0, 1])
    assert (
        mixed["delta_per_group"] == {0: pytest.approx(0.1), 1: pytest.approx(-0.1)} and mixed["sign_changes"]
    )
    assert _harness.verdict("mixed", mixed, "ref").startswith("noise")
    assert (
        _harness.verdict("ref", _harness.paired_comparison(data, "ref", "ref", [0, 1]), "ref") == "reference"
    )
    assert _harness.markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    assert _harness.pct(-1e-15, signed=True) == "+0.00" and _harness.pct(None) == "—"
