"""``python -m hf_ckd.check ...``: the same as ``hf-ckd check ...`` (:mod:`hf_ckd.scripts.check`)."""

from hf_ckd.scripts.check import command, main, make_parser  # noqa: F401

if __name__ == "__main__":
    import sys

    from hf_ckd.scripts._common import run_recipe

    sys.exit(run_recipe(command))
