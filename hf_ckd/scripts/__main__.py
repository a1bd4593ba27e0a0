"""``python -m hf_ckd.scripts RECIPE ARGS...``: the same as ``hf-ckd RECIPE ARGS...``."""

import sys

from hf_ckd.scripts import main

sys.exit(main())
