#!/usr/bin/env python
"""Train a teacher with a plain ``transformers.Trainer`` and keep its whole trajectory.

A launcher, so that ``python recipes/train_teacher.py ...`` and ``accelerate launch recipes/train_teacher.py ...`` work
as before. The recipe itself is the module ``hf_ckd.scripts.train_teacher``, installed with the package::

    hf-ckd train_teacher --help
    python -m hf_ckd.scripts.train_teacher ...
    accelerate launch -m hf_ckd.scripts.train_teacher ...

Bad input is one ``error:`` line and exit status 2 (``--debug`` or ``HF_CKD_DEBUG=1``: with the
traceback), as with ``hf-ckd``. The names imported below stay importable from this file for code that loads it by path.
"""

import sys

from hf_ckd.scripts._common import run_recipe
from hf_ckd.scripts.train_teacher import (
    DataArguments,
    ModelArguments,
    TeacherTrainingArguments,
    main,
    make_parser,
)

__all__ = ["DataArguments", "ModelArguments", "TeacherTrainingArguments", "main", "make_parser"]

if __name__ == "__main__":
    sys.exit(run_recipe(main))
