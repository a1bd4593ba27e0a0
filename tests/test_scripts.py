"""The `hf-ckd` command (hf_ckd.scripts): the recipe registry, dispatch, errors, the console entry point,
and the recipes/ launchers that point at the modules."""

from __future__ import annotations

import importlib
import importlib.util
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
