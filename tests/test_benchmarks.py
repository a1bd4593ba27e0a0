"""The benchmark scripts run end to end in --quick mode and write the JSON their docs describe (their
figures are measurements, not asserted)."""

import importlib.util
import json
import sys
from pathlib import Path

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
