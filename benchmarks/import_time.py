#!/usr/bin/env python
"""Import cost of hf_ckd's public modules, each in a fresh interpreter.

Every statement runs in its own ``python -c`` process (nothing cached in memory between runs; the OS file
cache is warm after the warm-up round), rounds interleaved so drift on a shared machine spreads over every
statement alike; the figure is the median wall time of a round. ``python -c pass`` is measured too: the
interpreter's own start-up, included in every other figure. The lines also say whether the statement
pulled in ``transformers.trainer`` or ``timm``, the two costly imports hf_ckd defers to first use.

    python benchmarks/import_time.py --repeats 7 --json benchmarks/import_time.json
    # the same statements against another checkout (e.g. a git worktree of an older commit), same interpreter
    python benchmarks/import_time.py --checkout /tmp/before --json /tmp/import_time_before.json

``--checkout`` runs every statement with that folder as the working directory, so its ``hf_ckd`` is the one
imported (the interpreter puts the working directory first on ``sys.path`` for ``-c``). A statement the
checkout cannot run (a module it does not have) is reported as ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "python": "pass",
    "import torch": "import torch",
    "import hf_ckd": "import hf_ckd",
    "import hf_ckd.losses": "import hf_ckd.losses",
    "from hf_ckd import CheckpointDistillConfig": "from hf_ckd import CheckpointDistillConfig",
    "from hf_ckd import CheckpointDistillTrainer": "from hf_ckd import CheckpointDistillTrainer",
    "hf-ckd --help (registry only)": "import hf_ckd.scripts",
}
PROBE = "; import sys; print(int('transformers.trainer' in sys.modules), int('timm' in sys.modules))"


def run_once(statement: str, cwd: str) -> tuple[float | None, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", statement + PROBE], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        return None, "fails: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    out = done.stdout.split()
    return time.perf_counter() - start, f"trainer={out[0]} timm={out[1]}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument(
        "--quick", action="store_true", help="The light statements once, no warm-up (for the tests)."
    )
    parser.add_argument(
        "--checkout", default=None, help="Import hf_ckd from this checkout (default: this one)."
    )
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    statements = dict(list(STATEMENTS.items())[:4]) if args.quick else STATEMENTS
    cwd = os.path.abspath(args.checkout or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    for statement in [] if args.quick else statements.values():  # warm-up: the OS file cache, .pyc files
        run_once(statement, cwd)
    times: dict[str, list[float]] = {name: [] for name in statements}
    loaded: dict[str, str] = {}
    for _ in range(repeats):
        for name, statement in statements.items():
            seconds, loaded[name] = run_once(statement, cwd)
            if seconds is not None:
                times[name].append(seconds)
    medians = {name: statistics.median(values) if values else None for name, values in times.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "checkout": cwd,
        "repeats": repeats,
        "median_s": {name: None if value is None else round(value, 3) for name, value in medians.items()},
        "loaded": loaded,
    }
    print(f"{'statement':48s} {'median s':>9s}  deferred imports pulled in")
    for name, value in medians.items():
        print(f"{name:48s} {'n/a' if value is None else f'{value:.2f}':>9s}  {loaded[name]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
