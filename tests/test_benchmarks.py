"""The benchmark scripts run end to end in --quick mode and write the JSON their docs describe (their
figures are measurements, not asserted)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_large_vocab_quick(tmp_path):
    out = tmp_path / "large_vocab.json"
    load("large_vocab").main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert {(r["vocab"], r["mode"]) for r in runs} == {
        (v, m)
        for v in (4096,)
        for m in ("full", "chunked", "sampled", "sampled_cached", "sampled_cached_exact")
    }
    for run in runs:
        assert run["time_s"] > 0 and run["peak_bytes"] >= 0
        if run["mode"] == "chunked":  # exact: equal to full whatever the machine
            assert run["rel_error"] < 1e-5
    assert set(result["quality"]) == {"full", "sampled", "sampled_cached", "sampled_cached_exact"}


def test_teacher_cost_quick(tmp_path):
    out = tmp_path / "teacher_cost.json"
    load("teacher_cost").main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["student_step_s"] > 0
    assert set(result["ratios"]) == {"online_loop", "online_fused", "cached"}
    for kind in result["ratios"].values():
        assert set(kind) == {"1", "2"} and all(v > 0 for v in kind.values())
    assert result["build_vs_inference"] > 0


def test_import_time_quick(tmp_path):
    out = tmp_path / "import_time.json"
    load("import_time").main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["median_s"]) == {"python", "import torch", "import hf_ckd", "import hf_ckd.losses"}
    assert all(v > 0 for v in result["median_s"].values())
    # What the figures are about: the light imports leave transformers.Trainer and timm unimported.
    assert result["loaded"]["import hf_ckd.losses"] == "trainer=0 timm=0"


def test_selection_oracle_quick(tmp_path):
    out = tmp_path / "selection_oracle.json"
    figures = tmp_path / "figures"
    load("selection_oracle").main(["--quick", "--json", str(out), "--figure_dir", str(figures)])
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"digits", "parity"}
    for name, task in result["tasks"].items():
        assert (figures / f"selection_oracle_{name}.png").is_file()
        names = [c["name"] for c in task["teachers"][0]["checkpoints"]]
        assert len(names) == 3
        # every checkpoint taught the same paired seeds
        assert all(len(task["quality"][f"0/{n}"]) == task["student_seeds"] == 2 for n in names)
        table = task["table"]
        assert {"last checkpoint", "checkpoint at 0.5", "best teacher accuracy"} <= set(table)
        assert any(s.startswith("kde swept") for s in table) and "infopro: reconstruction + probe" in table
        for selector, row in table.items():
            assert row["picks"][0] in names, selector
            assert row["regret"] >= -1e-12  # the oracle has the best mean: no pick beats it on average
            assert row["spearman"] is None or -1.0 <= row["spearman"] <= 1.0
        oracle = task["oracle"][0]["best"]
        assert all(row["regret"] == 0 for row in table.values() if row["picks"] == [oracle])


def test_chunk_size_quick(tmp_path):
    out = tmp_path / "chunk_size.json"
    load("chunk_size").main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    assert {(r["vocab"], r["chunk_size"]) for r in result["runs"]} == {(2048, 16), (2048, 256)}
    losses = [r["loss"] for r in result["runs"]]
    assert max(losses) - min(losses) < 1e-5 * abs(losses[0])  # exact at every chunk size
    assert all(r["time_s"] > 0 and r["peak_bytes"] >= 0 for r in result["runs"])
    assert result["rule"] == {"2048": 1024}


def test_trl_parity_quick(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "trl_parity.json"
    load("trl_parity").main(["--quick", "--json", str(out)])
    result = json.loads(out.read_text())
    ratio = 15 / 16  # T = 16: TRL divides by the unshifted label count
    for p in result["parity"]:
        first = p["first_step"]
        assert p["same_batches"] and p["max_abs_dw"]["same_init"] == 0
        # the loss function agrees (at any temperature) and, at tau = 1, the trainers up to the token count
        assert first["trl_function_rel_error"] < 1e-5
        assert first["chunked_rel_error"] < 1e-5
        if p["temperature"] == 1:
            assert first["gkd_over_hf"] == pytest.approx(ratio, rel=1e-5)
        else:  # GKDTrainer does not pass its temperature to the loss: its value is the tau = 1 one
            assert first["gkd_rescaled_vs_hf_tau1"] < 1e-5
    for s in result["sgd"]:
        assert s["max_abs_dw_lr_times_T_over_T_minus_1"] < 1e-6 < s["max_abs_dw_same_lr"]
    assert {(r["vocab"], r["arm"]) for r in result["runs"]} == {
        (128, "hf_full"),
        (128, "hf_chunked@1024"),
        (128, "gkd"),
    }
    assert all(r["time_s"] > 0 and r["peak_bytes"] >= 0 for r in result["runs"])
