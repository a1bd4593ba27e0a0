"""The recipes shipped with hf_ckd, and the ``hf-ckd`` command that runs them.

Each recipe is a module with a ``main(argv=None)``, runnable three ways::

    hf-ckd distill_cifar100 --teacher runs/wrn40_2 ...              # the console command
    python -m hf_ckd.scripts.distill_text --teacher runs/bert ...   # the module
    accelerate launch -m hf_ckd.scripts.distill_cifar100 ...        # several processes / GPUs

``hf-ckd --help`` lists the recipes and ``hf-ckd RECIPE --help`` a recipe's arguments. Listing them imports
nothing heavy: a recipe's module (and torch, transformers) is imported only when it runs.

Every command-line entry point (these three and the ``recipes/*.py`` launchers) goes through
``hf_ckd.scripts._common.run_recipe``: bad input (hf_ckd's own errors, the arguments' checks, an unknown
argument) prints ``error: <message>`` without a traceback and exits with status 2; ``--debug`` or
``HF_CKD_DEBUG=1`` shows the traceback. A recipe's ``main(argv)`` called from Python raises as usual.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

PROG = "hf-ckd"

# Recipe name -> (module, one-line description). Add a recipe here to make it an `hf-ckd` command.
RECIPES: dict[str, tuple[str, str]] = {
    "train_teacher": (
        "hf_ckd.scripts.train_teacher",
        "train a teacher with a plain transformers.Trainer, keeping every checkpoint",
    ),
    "select_teachers": (
        "hf_ckd.scripts.select_teachers",
        "score every checkpoint of a trajectory by I(X;F) + I(Y;F) and pick T* (selection.json)",
    ),
    "distill_cifar100": (
        "hf_ckd.scripts.distill_cifar100",
        "distil a timm image student from a teacher's checkpoints (CIFAR-100 or the same schema)",
    ),
    "distill_text": (
        "hf_ckd.scripts.distill_text",
        "distil a transformers text student: sequence classification or causal LM (token level)",
    ),
    "check": (
        "hf_ckd.scripts.check",
        "validate a teacher trajectory (and optionally a student, a selection file, a cache) without training",
    ),
}


def usage() -> str:
    """What ``hf-ckd --help`` prints."""
    width = max(map(len, RECIPES))
    lines = [
        f"usage: {PROG} RECIPE [ARGS ...]   (or: python -m hf_ckd.scripts RECIPE [ARGS ...])",
        "",
        "Checkpoint knowledge distillation recipes. RECIPE is one of:",
        "",
        *(f"  {name:<{width}}  {description}" for name, (_, description) in RECIPES.items()),
        "",
        f"'{PROG} RECIPE --help' lists a recipe's arguments; a lone .json/.yaml argument is a config file.",
        "Several processes or GPUs: accelerate launch -m hf_ckd.scripts.RECIPE [ARGS ...]",
        "",
        "options:",
        "  -h, --help  show this message and exit",
        "  --version   show hf_ckd's version and exit",
    ]
    return "\n".join(lines)


def recipe_module(name: str) -> str:
    """The module of recipe ``name`` (``distill-text`` is ``distill_text``), or a ``KeyError`` that lists
    the recipes there are."""
    key = name.replace("-", "_")
    if key not in RECIPES:
        close = difflib.get_close_matches(key, RECIPES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}.{hint}")
    return RECIPES[key][0]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_ckd")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """``hf-ckd RECIPE ARGS...``: run ``RECIPE``'s ``main(ARGS)`` through ``run_recipe``. Returns the exit
    status (2 for bad input, printed as one ``error:`` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"{PROG} (hf_ckd) {_version()}")
        return 0
    try:
        module = recipe_module(argv[0])
    except KeyError as err:
        print(f"{PROG}: error: {err.args[0]}\n\n{usage()}", file=sys.stderr)
        return 2
    from ._common import run_recipe

    # argparse names the program after sys.argv[0]: `hf-ckd distill_text --help` shows that usage line.
    saved, sys.argv = sys.argv, [f"{PROG} {argv[0]}", *argv[1:]]
    try:
        # Bad input: one `error:` line and status 2 (--debug or HF_CKD_DEBUG=1: with the traceback).
        return run_recipe(importlib.import_module(module).main, argv[1:])
    finally:
        sys.argv = saved
