"""The `hf-ckd` command (hf_ckd.scripts): the recipe registry, dispatch, errors, the console entry point,
and the recipes/ launchers that point at the modules."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import hf_ckd.scripts as scripts

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = ROOT / "hf_ckd" / "scripts"
# One argument each recipe's --help must show.
SAMPLE_ARGUMENT = {
    "train_teacher": "--model_name",
    "select_teachers": "--trajectory",
    "distill_cifar100": "--student_model",
    "distill_text": "--student_model_name_or_path",
    "check": "--teacher",
}


def test_every_script_module_is_registered():
    modules = sorted(p.stem for p in SCRIPTS_DIR.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(scripts.RECIPES) == modules == sorted(SAMPLE_ARGUMENT)
    for name, (module, description) in scripts.RECIPES.items():
        assert module == f"hf_ckd.scripts.{name}" and description and "\n" not in description


@pytest.mark.parametrize("name", list(SAMPLE_ARGUMENT))
def test_recipe_module_shape(name, capsys):
    module = importlib.import_module(f"hf_ckd.scripts.{name}")
    assert module.__doc__ and "Usage:" in module.__doc__
    assert SAMPLE_ARGUMENT[name] in module.make_parser().format_help()
    with pytest.raises(SystemExit) as exit_info:  # through the dispatcher: argparse prints the recipe's help
        scripts.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hf-ckd {name} ") and SAMPLE_ARGUMENT[name] in out
    assert sys.argv[0] != f"hf-ckd {name}"  # restored after the recipe ran


def test_help_lists_the_recipes(capsys):
    assert scripts.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in scripts.RECIPES)
    assert all(description in out for _, description in scripts.RECIPES.values())
    assert scripts.main([]) == 2  # no recipe: the same listing, as a usage error
    assert "distill_cifar100" in capsys.readouterr().out
    assert scripts.main(["--version"]) == 0 and "hf_ckd" in capsys.readouterr().out


def test_unknown_recipe_is_an_error_listing_the_recipes(capsys):
    assert scripts.main(["distil_text", "--help"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'distil_text'" in err and "Did you mean 'distill_text'?" in err
    assert all(name in err for name in scripts.RECIPES)
    with pytest.raises(KeyError, match="choose one of: train_teacher, select_teachers"):
        scripts.recipe_module("nope")
    assert scripts.recipe_module("distill-cifar100") == "hf_ckd.scripts.distill_cifar100"


def test_dispatch_passes_the_arguments(monkeypatch):
    seen = {}

    def fake_main(argv):
        seen.update(argv=argv, prog=sys.argv[0])
        return {"eval_accuracy": 1.0}  # a recipe returns its metrics; the command still exits 0

    module = types.ModuleType("fake_recipe")
    module.main = fake_main
    monkeypatch.setitem(sys.modules, "fake_recipe", module)
    monkeypatch.setitem(scripts.RECIPES, "fake", ("fake_recipe", "a fake recipe"))
    assert scripts.main(["fake", "--alpha", "0.5", "run.yaml"]) == 0
    assert seen == {"argv": ["--alpha", "0.5", "run.yaml"], "prog": "hf-ckd fake"}


def test_listing_imports_nothing_heavy():
    code = (
        "import sys; from hf_ckd.scripts import main; main(['--help']); "
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distill_text" in result.stdout


def test_console_command_and_python_m(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\nhf-ckd = "hf_ckd\.scripts:main"$', pyproject, re.MULTILINE)
    console = Path(sys.executable).with_name("hf-ckd")
    if not console.exists():
        pytest.skip("hf-ckd is not installed in this environment: pip install -e .")
    for command in ([str(console)], [sys.executable, "-m", "hf_ckd.scripts"]):
        listing = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
        assert listing.returncode == 0 and "distill_cifar100" in listing.stdout, listing.stderr[-2000:]
        unknown = subprocess.run([*command, "nope"], capture_output=True, text=True, timeout=120)
        assert unknown.returncode == 2 and "unknown recipe 'nope'" in unknown.stderr


@pytest.mark.parametrize("name", list(SAMPLE_ARGUMENT))
def test_launchers_run_the_module(name):
    """recipes/<name>.py (python / accelerate launch by path) is the module's main, and keeps its names."""
    spec = importlib.util.spec_from_file_location(f"launcher_{name}", ROOT / "recipes" / f"{name}.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    module = importlib.import_module(f"hf_ckd.scripts.{name}")
    assert launcher.main is module.main and launcher.make_parser is module.make_parser
    assert f"hf_ckd.scripts.{name}" in launcher.__doc__
    assert all(getattr(launcher, n) is getattr(module, n) for n in launcher.__all__)


# ---- bad input on the command line: one `error:` line, status 2; --debug / HF_CKD_DEBUG=1 show the traceback


def test_run_recipe_prints_hf_ckd_errors_without_a_traceback(capsys, monkeypatch):
    from hf_ckd.cache import CacheError
    from hf_ckd.data import DataError
    from hf_ckd.scripts._common import run_recipe

    monkeypatch.delenv("HF_CKD_DEBUG", raising=False)
    seen = []

    def failing(error):
        def main(argv):
            seen.append(argv)
            raise error

        return main

    assert run_recipe(failing(DataError("--dataset_path 'd' does not exist.")), ["--x", "1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --dataset_path 'd' does not exist.\n" and seen[-1] == ["--x", "1"]
    assert run_recipe(failing(CacheError("two\nlines")), []) == 2
    assert capsys.readouterr().err == "error: two\nlines\n"  # the message's own lines, nothing more
    # A bare --debug is ours (removed from the recipe's arguments) and shows the traceback; so does the env var.
    assert run_recipe(failing(DataError("bad")), ["--debug", "--alpha", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("error: bad\n") and seen[-1] == ["--alpha", "0.5"]
    # --debug VALUE is TrainingArguments' option: kept for the recipe.
    run_recipe(failing(DataError("bad")), ["--debug", "underflow_overflow"])
    assert seen[-1] == ["--debug", "underflow_overflow"] and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("HF_CKD_DEBUG", "1")
    assert run_recipe(failing(DataError("bad")), []) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("HF_CKD_DEBUG", "0")
    assert run_recipe(failing(DataError("bad")), []) == 2 and "Traceback" not in capsys.readouterr().err
    assert run_recipe(lambda argv: {"eval_accuracy": 1.0}, []) == 0


def test_run_recipe_keeps_the_traceback_of_unexpected_errors():
    from hf_ckd.scripts._common import run_recipe

    def crashes(argv):
        raise RuntimeError("a bug")

    def value_error_elsewhere(argv):
        int("not a number")  # a ValueError, but not raised by hf_ckd: unexpected

    with pytest.raises(RuntimeError, match="a bug"):
        run_recipe(crashes, [])
    with pytest.raises(ValueError, match="invalid literal"):
        run_recipe(value_error_elsewhere, [])


def test_an_unknown_argument_is_named_even_with_required_ones_missing():
    from hf_ckd.scripts import distill_text, select_teachers
    from hf_ckd.scripts._common import RecipeArgumentError

    # distill_text needs --student_model_name_or_path and --output_dir: neither is given.
    with pytest.raises(
        RecipeArgumentError, match=r"^unknown argument --tempratur \(did you mean --temperature\?\)"
    ):
        distill_text.main(["--tempratur", "4", "--dataset_path", "d"])
    with pytest.raises(RecipeArgumentError, match=r"^unknown arguments --foo, --bar"):
        select_teachers.main(["--foo", "--bar=1"])
    with pytest.raises(SystemExit):  # argparse's: the required ones, once nothing is unknown
        select_teachers.main(["--output", "x.json"])


def recipe_command(entry: str, name: str) -> list[str]:
    return {
        "hf-ckd": [sys.executable, "-m", "hf_ckd.scripts", name],
        "module": [sys.executable, "-m", f"hf_ckd.scripts.{name}"],
        "launcher": [sys.executable, str(ROOT / "recipes" / f"{name}.py")],
    }[entry]


def run_command(command: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HF_CKD_DEBUG"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **env)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)


@pytest.mark.parametrize(
    ("entry", "name"),
    [("hf-ckd", "distill_text"), ("module", "select_teachers"), ("launcher", "distill_cifar100")],
)
def test_a_missing_teacher_is_one_error_line_and_status_2(entry, name, tmp_path):
    missing = str(tmp_path / "no_such_teacher")
    argv = {
        "distill_text": ["--teacher", missing, "--student_model_name_or_path", "s", "--dataset_path", "d"],
        "select_teachers": ["--trajectory", missing, "--output", str(tmp_path / "selection.json")],
        "distill_cifar100": ["--teacher", missing, "--dataset_path", "d"],
    }[name]
    if name != "select_teachers":
        argv += ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu"]
    result = run_command([*recipe_command(entry, name), *argv], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and missing in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # The same with the traceback: HF_CKD_DEBUG=1, or --debug on the command line.
    debug = run_command([*recipe_command(entry, name), *argv], tmp_path, HF_CKD_DEBUG="1")
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "TrajectoryError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")
    if entry == "hf-ckd":
        flag = run_command([*recipe_command(entry, name), *argv, "--debug"], tmp_path)
        assert flag.returncode == 2 and "Traceback" in flag.stderr


def test_an_unknown_flag_on_the_command_line(tmp_path):
    result = run_command([*recipe_command("module", "distill_text"), "--foo", "3"], tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown argument --foo")
    assert "Traceback" not in result.stderr and "required" not in result.stderr
    missing = run_command([*recipe_command("hf-ckd", "train_teacher"), "--output_dir", "x"], tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: the following arguments are required: --model_name")
    assert len(missing.stderr.strip().splitlines()) == 1  # not the hundred-line usage
