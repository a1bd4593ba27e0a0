#!/usr/bin/env python
"""Validate a teacher trajectory (and optionally a student, a selection file, a cache) without training.

A launcher, so that ``python recipes/check.py ...`` works from a checkout. The recipe itself is the module
``hf_ckd.scripts.check``, installed with the package::

    hf-ckd check --teacher runs/teacher --teacher_checkpoints 0.3,0.5,last
    python -m hf_ckd.check ...

Exit status 0 when no problem is found, 1 when the report lists problems, 2 for bad input. The names
imported below stay importable from this file for code that loads it by path.
"""

import sys

from hf_ckd.scripts._common import run_recipe
from hf_ckd.scripts.check import CheckArguments, command, main, make_parser

__all__ = ["CheckArguments", "main", "make_parser"]

if __name__ == "__main__":
    sys.exit(run_recipe(command))
