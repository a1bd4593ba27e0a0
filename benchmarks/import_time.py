#!/usr/bin/env python
"""Import cost of hf_ckd's public modules, each in a fresh interpreter.

Every statement runs in its own ``python -c`` process (nothing cached in memory between runs; the OS file
cache is warm after the warm-up round), rounds interleaved so drift on a shared machine spreads over every
statement alike; the figure is the median wall time of a round. ``python -c pass`` is measured too: the
interpreter's own start-up, included in every other figure. The lines also say whether the statement
pulled in ``transformers.trainer`` or ``timm``, the two costly imports hf_ckd defers to first use.

    python benchmarks/import_time.py --repeats 7 --json benchmarks/import_time.json
"""

from __future__ import annotations

import argparse
import json
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


def run_once(statement: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", statement + PROBE], check=True, capture_output=True, text=True
    ).stdout.split()
    return time.perf_counter() - start, f"trainer={out[0]} timm={out[1]}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--quick", action="store_true", help="2 repeats (for the tests).")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    for statement in STATEMENTS.values():  # warm-up: the OS file cache, .pyc files
        run_once(statement)
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    loaded: dict[str, str] = {}
    for _ in range(repeats):
        for name, statement in STATEMENTS.items():
            seconds, loaded[name] = run_once(statement)
            times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "repeats": repeats,
        "median_s": {name: round(value, 3) for name, value in medians.items()},
        "loaded": loaded,
    }
    print(f"{'statement':48s} {'median s':>9s}  deferred imports pulled in")
    for name, value in medians.items():
        print(f"{name:48s} {value:9.2f}  {loaded[name]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
