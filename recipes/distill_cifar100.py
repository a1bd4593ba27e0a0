#!/usr/bin/env python
"""Distil a CIFAR-100 student from a teacher's checkpoints.

A launcher, so that ``python recipes/distill_cifar100.py ...`` and ``accelerate launch recipes/distill_cifar100.py ...`` work
as before. The recipe itself is the module ``hf_ckd.scripts.distill_cifar100``, installed with the package::

    hf-ckd distill_cifar100 --help
    python -m hf_ckd.scripts.distill_cifar100 ...
    accelerate launch -m hf_ckd.scripts.distill_cifar100 ...

Bad input is one ``error:`` line and exit status 2 (``--debug`` or ``HF_CKD_DEBUG=1``: with the
traceback), as with ``hf-ckd``. The names imported below stay importable from this file for code that loads it by path.
"""

import sys

from hf_ckd.scripts._common import run_recipe
from hf_ckd.scripts.distill_cifar100 import (
    CifarDistillConfig,
    ImageDataArguments,
    StudentArguments,
    main,
    make_parser,
)

__all__ = ["CifarDistillConfig", "ImageDataArguments", "StudentArguments", "main", "make_parser"]

if __name__ == "__main__":
    sys.exit(run_recipe(main))
