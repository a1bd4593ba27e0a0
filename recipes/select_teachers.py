#!/usr/bin/env python
"""Score every checkpoint of a teacher trajectory by task-related mutual information and pick T*.

A launcher, so that ``python recipes/select_teachers.py ...`` and ``accelerate launch recipes/select_teachers.py ...`` work
as before. The recipe itself is the module ``hf_ckd.scripts.select_teachers``, installed with the package::

    hf-ckd select_teachers --help
    python -m hf_ckd.scripts.select_teachers ...
    accelerate launch -m hf_ckd.scripts.select_teachers ...

The names imported below stay importable from this file for code that loads it by path.
"""

from hf_ckd.scripts.select_teachers import ProbeArguments, SelectionArguments, main, make_parser

__all__ = ["ProbeArguments", "SelectionArguments", "main", "make_parser"]

if __name__ == "__main__":
    main()
