#!/usr/bin/env python
"""Score every checkpoint of a teacher trajectory by task-related mutual information and pick T*.

A launcher, so that ``python recipes/select_teachers.py ...`` and ``accelerate launch recipes/select_teachers.py ...`` work
as before. The recipe itself is the module ``hf_ckd.scripts.select_teachers``, installed with the package::

    hf-ckd select_teachers --help
    python -m hf_ckd.scripts.select_teachers ...
    accelerate launch -m hf_ckd.scripts.select_teachers ...

Bad input is one ``error:`` line and exit status 2 (``--debug`` or ``HF_CKD_DEBUG=1``: with the
traceback), as with ``hf-ckd``. The names imported below stay importable from this file for code that loads it by path.
"""

import sys

from hf_ckd.scripts._common import run_recipe
from hf_ckd.scripts.select_teachers import ProbeArguments, SelectionArguments, main, make_parser

__all__ = ["ProbeArguments", "SelectionArguments", "main", "make_parser"]

if __name__ == "__main__":
    sys.exit(run_recipe(main))
