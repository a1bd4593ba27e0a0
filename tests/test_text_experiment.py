"""experiments/text_stdlib.py (`make demo-text`) end to end with --quick (2 teachers, 1 paired student seed each),
and its corpus rules: the standard library's *.py files without test packages, split by path hash."""

from __future__ import annotations

import importlib.util
import json
import math
import platform
import sys
from pathlib import Path

import pytest

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "text_stdlib.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_experiment():
    spec = importlib.util.spec_from_file_location("text_stdlib", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def experiment():
    return load_experiment()


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("text") / "out"
    results = experiment.main(["--output_dir", str(output_dir), "--quick"])
    return output_dir, results


def test_corpus_leaves_out_tests_and_splits_by_path(experiment):
    files = experiment.list_corpus(experiment.stdlib_root())
    assert len(files) > 200 and files == sorted(files)
    assert all(f.endswith(".py") and "\\" not in f for f in files)
    for f in files:
        folders = f.split("/")[:-1]
        assert not any(d.startswith("test") for d in folders), f
        assert "site-packages" not in folders and "idle_test" not in folders, f
    assert "os.py" in files and "json/decoder.py" in files
    splits = [experiment.split_of(f) for f in files]
    assert splits == [experiment.split_of(f) for f in files]  # a function of the path alone
    shares = {name: splits.count(name) / len(files) for name in experiment.SPLITS}
    assert 0.7 < shares["train"] < 0.9 and 0.05 < shares["validation"] < 0.15 and 0.05 < shares["test"] < 0.15


def test_training_subset_follows_the_hash_order_and_the_budget(experiment):
    files = [f"f{i}.py" for i in range(20)]
    sizes = {f: 100 for f in files}
    sizes["f3.py"] = 10_000  # over max_file: skipped
    chosen = experiment.hash_ordered_subset(files, sizes, 450, max_file=1000)
    assert len(chosen) == 5 and "f3.py" not in chosen and chosen == sorted(chosen)
    first = sorted((f for f in files if f != "f3.py"), key=experiment.path_hash)[:5]
    assert set(chosen) == set(first)
    assert experiment.hash_ordered_subset(files, sizes, 0, max_file=1000) == files


def test_verdict_reads_a_lower_loss_as_better():
    sys.path.insert(0, str(EXPERIMENT.parent))
    from _harness import verdict

    real = {"within_2se": False, "sign_changes": False, "delta_mean": -0.1}
    assert verdict("a", real, "ref", lower_is_better=True) == "better than ref (> 2 SE)"
    assert verdict("a", real, "ref") == "worse than ref (> 2 SE)"
    assert verdict("a", {**real, "delta_mean": 0.1}, "ref", lower_is_better=True) == "worse than ref (> 2 SE)"


def test_help_lists_the_arguments(experiment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiment.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--student_batch_size" in capsys.readouterr().out


def test_bad_settings_are_refused(experiment):
    with pytest.raises(ValueError, match="teacher_eval_points"):
        experiment.parse_args(["--output_dir", "x", "--teacher_eval_points", "15"])
    with pytest.raises(ValueError, match="teacher_steps"):
        experiment.parse_args(["--output_dir", "x", "--teacher_steps", "1010"])
    with pytest.raises(ValueError, match="standard deviation"):
        experiment.parse_args(["--output_dir", "x", "--teacher_seeds", "1", "--student_seeds", "1"])


@pytest.mark.slow
def test_quick_run_writes_sane_results(quick_run, experiment):
    output_dir, returned = quick_run
    results = json.loads((output_dir / "results.json").read_text())
    assert results["arms"] == json.loads(json.dumps(returned["arms"]))
    table = (output_dir / "results.md").read_text()

    names = [a["name"] for a in experiment.parse_args(["--output_dir", "x", "--quick"]).arms()]
    assert names == [
        "labels only",
        "T^0.3",
        "T^0.5",
        "T^0.7",
        "T^full",
        "snapshot 0.3+0.5+0.7",
        "ensemble of 2 finals",
        "progressive",
    ]
    assert [row["arm"] for row in results["arms"]] == names
    vocab = results["data"]["vocab_size"]
    for row in results["arms"]:
        assert row["n"] == 2
        assert 0.0 < row["test_ce_mean"] < math.log(vocab) + 1.0
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0
        assert f"| {row['arm']} |" in table
    for run in results["runs"]:
        assert math.isfinite(run["test_ce"]) and run["test_ce"] > 0
        assert run["test_perplexity"] == pytest.approx(math.exp(run["test_ce"]))
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert run["curve"][0][0] == 0 and all(math.isfinite(v) for _, v in run["curve"])
    # Paired seeds: every arm (and every τ-sweep arm) ran on the same (teacher, student seed) pairs.
    pairs: dict[str, list] = {}
    for r in results["runs"]:
        pairs.setdefault(r["arm"], []).append((r["teacher_seed"], r["student_seed"]))
    assert all(sorted(p) == sorted(pairs["T^full"]) for p in pairs.values()) and len(pairs["T^full"]) == 2
    full = next(r for r in results["arms"] if r["arm"] == "T^full")
    assert full["delta_ce_vs_full_mean"] == 0.0 and full["reading"] == "reference"
    # Labels only never runs a teacher; the distilled arms do, so their students differ from it.
    labels = {
        (r["teacher_seed"], r["student_seed"]): r["test_ce"]
        for r in results["runs"]
        if r["arm"] == "labels only"
    }
    assert all(
        r["test_ce"] != labels[(r["teacher_seed"], r["student_seed"])]
        for r in results["runs"]
        if r["arm"] == "T^full"
    )
    # Progressive walked the trajectory: it switched teachers and ended on the last checkpoint.
    progressive = [r for r in results["runs"] if r["arm"] == "progressive"]
    assert all(len({name for _, name in r["teacher_switches"]}) >= 2 for r in progressive)
    assert all(r["teacher_switches"][-1][1] == "checkpoint-40" for r in progressive)

    fp = results["data"]["fingerprint"]
    assert fp["python"] == platform.python_version()
    assert sum(s["files"] for s in fp["splits"].values()) == fp["files"] > 200
    assert sum(s["bytes"] for s in fp["splits"].values()) == fp["bytes"]
    files = experiment.list_corpus(experiment.stdlib_root())
    import hashlib

    assert fp["file_list_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest()
    assert 0 < fp["train_subset"]["bytes"] < fp["splits"]["train"]["bytes"]
    assert fp["file_list_sha256"][:16] in table and "--quick" in table and "Wall time" in table

    assert len(results["teachers"]) == 2
    for teacher in results["teachers"]:
        rows = teacher["checkpoints"]
        assert [r["name"] for r in rows[:2]] == ["init", "checkpoint-4"] and len(rows) == 11
        assert [round(r["fraction"], 2) for r in rows[1:]] == [round(0.1 * i, 2) for i in range(1, 11)]
        assert all(math.isfinite(r["validation_loss"]) and math.isfinite(r["train_loss"]) for r in rows[1:])
        assert len(rows[-1]["position_ce"]) == results["config"]["block_size"] - 1
        assert rows[-1]["ce"] < rows[0]["ce"]  # training lowered the test loss
        assert (output_dir / "teachers" / f"seed-{teacher['seed']}" / "trainer_state.json").is_file()
    assert results["teacher_trajectory"][0]["fraction"] == 0.0
    assert results["full_ensemble_teacher"]["ce"] > 0

    sweep = {(s["arm"], s["tau"]) for s in results["tau_sweep"]}
    assert ("T^full", 1.0) in sweep and ("T^full", 2.0) in sweep and len(sweep) == 4
    assert results["sweep_best_arm"] in names

    for name in ("students.png", "positions.png", "teachers.png"):
        image = (output_dir / name).read_bytes()
        assert image.startswith(PNG_SIGNATURE) and len(image) > 10_000

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(output_dir / "tokenizer")
    assert len(tokenizer) == vocab
    code = "def f(x):\n    return x + 1\n"
    assert tokenizer.decode(tokenizer(code)["input_ids"]) == code


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten(quick_run, experiment):
    output_dir, _ = quick_run
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        experiment.main(["--output_dir", str(output_dir), "--quick"])
