#!/usr/bin/env python
"""Distil a transformers text model from a teacher's checkpoints.

A launcher, so that ``python recipes/distill_text.py ...`` and ``accelerate launch recipes/distill_text.py ...`` work
as before. The recipe itself is the module ``hf_ckd.scripts.distill_text``, installed with the package::

    hf-ckd distill_text --help
    python -m hf_ckd.scripts.distill_text ...
    accelerate launch -m hf_ckd.scripts.distill_text ...

Bad input is one ``error:`` line and exit status 2 (``--debug`` or ``HF_CKD_DEBUG=1``: with the
traceback), as with ``hf-ckd``. The names imported below stay importable from this file for code that loads it by path.
"""

import sys

from hf_ckd.scripts._common import run_recipe
from hf_ckd.scripts.distill_text import DataArguments, ModelArguments, main, make_parser, parse_args

__all__ = ["DataArguments", "ModelArguments", "main", "make_parser", "parse_args"]

if __name__ == "__main__":
    sys.exit(run_recipe(main))
