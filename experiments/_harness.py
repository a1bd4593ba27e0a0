"""The harness the experiments share: arguments, seeding, the worker pool, paired-seed statistics, markdown
tables, the machine description and the output files.

An experiment (``demo_digits.py``, ``sparse_parity.py``) is one script: a usage docstring, dataclass arguments
parsed by ``HfArgumentParser``, the task and its models, and the arms it compares. What every such script needs
besides lives here, so that two experiments compute "mean ± SD", "paired Δ ± SE" and "noise or not" the same
way. The experiments import it as ``_harness``: each puts its own folder on ``sys.path`` first, which also
lets spawned worker processes import the experiment by module name.

Nothing here imports torch, datasets or matplotlib at module level (``--help`` stays fast); the functions that
need them import them when called.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from transformers import HfArgumentParser

EPS = 1e-12  # differences of accuracies (multiples of 1/len(test)) below this are float round-off

# TrainingArguments every experiment run shares: CPU, no reporting, no progress bars, data in the main process.
CPU_TRAINING_ARGS = {"use_cpu": True, "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0}


# ---- arguments ----------------------------------------------------------------------------------------------


def parse_dataclasses(dataclass_types: Sequence[type], argv: Sequence[str] | None, description: str) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) into one instance per dataclass, in order. A lone ``.json`` or
    ``.yaml``/``.yml`` argument is a config file holding the same fields."""
    parser = HfArgumentParser(tuple(dataclass_types), description=description)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return tuple(parser.parse_json_file(os.path.abspath(argv[0])))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return tuple(parser.parse_yaml_file(os.path.abspath(argv[0])))
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def apply_quick(settings: dict[str, Any], *holders) -> None:
    """``--quick``: set each field named in ``settings`` to its quick value, in whichever of the dataclass
    instances ``holders`` has it, but only where it still holds its default (sizes given explicitly stay)."""
    for name, value in settings.items():
        holder = next(h for h in holders if name in {f.name for f in dataclasses.fields(h)})
        default = next(f.default for f in dataclasses.fields(holder) if f.name == name)
        if getattr(holder, name) == default:
            setattr(holder, name, value)


def require_positive(holder, names: Iterable[str], flag: str = "") -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value in ``holder`` is below 1 (``flag`` is
    the prefix the message puts before the name, e.g. ``"--"``)."""
    for name in names:
        if getattr(holder, name) < 1:
            raise ValueError(f"{flag}{name} must be >= 1, got {getattr(holder, name)}.")


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the comma-separated items, stripped, empty ones dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def float_list(text: str, name: str, what: str = "numbers") -> list[float]:
    """``"0.3,0.5"`` -> ``[0.3, 0.5]``; a ``ValueError`` naming the argument ``name`` if an item is no number."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a comma-separated list of {what}.") from None


# ---- processes and seeds ------------------------------------------------------------------------------------


def quiet_process(torch_threads: int) -> None:
    """Set up a process to train: transformers logs errors only, no datasets progress bars, and
    ``torch_threads`` intra-op threads (0 = torch's default)."""
    import datasets
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (``transformers.set_seed``). Called just before a
    model is built, it fixes the initialisation: the same seed gives every arm the same starting weights."""
    from transformers import set_seed

    set_seed(seed)


# ---- the worker pool ------------------------------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each submitted call at once in this process (``num_workers=1``); the future holds its result or
    its exception."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:
            future.set_exception(err)
        return future


def make_executor(num_workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Executor:
    """``num_workers`` spawned processes, each set up by ``initializer(*initargs)``; with ``num_workers <= 1``
    an :class:`InlineExecutor`, set up the same way in this process.

    Workers are spawned, never forked from a process whose torch thread pool is running. They import the
    functions they run by module name, through the parent's ``sys.path`` (the experiments put their folder on
    it), so an experiment loaded from its path (as the tests do) works too.
    """
    if num_workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        return InlineExecutor()
    import multiprocessing

    return ProcessPoolExecutor(
        max_workers=num_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


@contextmanager
def worker_pool(num_workers: int, initializer: Callable | None = None, initargs: tuple = ()):
    """:func:`make_executor` as a context: on an error (or Ctrl-C) the queued jobs are cancelled and the
    workers left to finish their current job in the background; otherwise it waits for them."""
    executor = make_executor(num_workers, initializer, initargs)
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown()


def run_jobs(
    executor: Executor, fn: Callable[[Any], Any], jobs: Iterable, on_result: Callable[[Any], Iterable | None]
) -> None:
    """Submit ``fn(job)`` for every job, and hand each result to ``on_result`` as it arrives (in completion
    order); the jobs ``on_result`` returns are submitted in their turn (e.g. a trained teacher's students).
    Returns once no job is left; a job's exception is raised here."""
    pending = {executor.submit(fn, job) for job in jobs}
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            for job in on_result(future.result()) or ():
                pending.add(executor.submit(fn, job))


def map_jobs(
    fn: Callable[[Any], Any],
    jobs: Sequence,
    num_workers: int,
    initializer: Callable | None = None,
    initargs: tuple = (),
) -> list:
    """``[fn(job) for job in jobs]``, spread over :func:`worker_pool` (``num_workers``); results in job order."""
    with worker_pool(num_workers, initializer, initargs) as executor:
        return list(executor.map(fn, jobs))


# ---- paired-seed statistics ------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; NaN for a single value), in the units of
    ``values``."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def paired_comparison(
    runs: Sequence[dict],
    arm: str,
    reference: str,
    groups: Sequence,
    *,
    value: str = "accuracy",
    pair: tuple[str, ...] = ("teacher_seed", "student_seed"),
    group: str = "teacher_seed",
) -> dict:
    """One arm against a reference arm over paired runs.

    ``runs`` holds one dict per run with ``"arm"``, the ``pair`` keys (runs of two arms with the same pair
    values differ only in the arm) and the measured ``value`` (e.g. an accuracy in [0, 1]). Every run of
    ``arm`` needs its partner in ``reference``. Returns, in the units of ``value``:

    - ``mean``, ``std``, ``n``: the arm's values over its n runs (:func:`mean_std`);
    - ``delta_mean``, ``delta_se``: Δ = value(arm) - value(reference) per pair, mean and standard error
      (SD / √n; NaN for n = 1);
    - ``delta_per_group``: {g: mean Δ over the runs whose ``group`` key is g, for g in ``groups``} (e.g. per
      teacher seed: runs that share a teacher are not independent);
    - ``within_2se``: ``|delta_mean| <= 2 * delta_se``;
    - ``sign_changes``: some group's mean Δ is above ``EPS`` and another's below ``-EPS``.
    """
    partner = {tuple(r[k] for k in pair): r[value] for r in runs if r["arm"] == reference}
    mine = [r for r in runs if r["arm"] == arm]
    values = [r[value] for r in mine]
    deltas = [r[value] - partner[tuple(r[k] for k in pair)] for r in mine]
    mean, std = mean_std(values)
    delta_mean, delta_std = mean_std(deltas)
    delta_se = delta_std / math.sqrt(len(deltas))
    per_group = {g: mean_std([d for d, r in zip(deltas, mine) if r[group] == g])[0] for g in groups}
    return {
        "mean": mean,
        "std": std,
        "n": len(values),
        "delta_mean": delta_mean,
        "delta_se": delta_se,
        "delta_per_group": per_group,
        "within_2se": abs(delta_mean) <= 2 * delta_se,
        "sign_changes": any(v > EPS for v in per_group.values())
        and any(v < -EPS for v in per_group.values()),
    }


def verdict(
    arm: str,
    comparison: dict,
    reference: str,
    groups_name: str = "teacher seeds",
    *,
    lower_is_better: bool = False,
) -> str:
    """The "real or noise" reading of a :func:`paired_comparison`: noise unless Δ lies beyond 2 SE *and* has
    the same sign in every group (the SE treats all runs as independent; the groups show whether they are).
    ``lower_is_better`` reads a negative Δ as better (a loss rather than an accuracy)."""
    if arm == reference:
        return "reference"
    if comparison["within_2se"]:
        return "noise (within 2 SE)"
    if comparison["sign_changes"]:
        return f"noise (sign changes across {groups_name})"
    delta = comparison["delta_mean"]
    side = "better" if (delta < 0 if lower_is_better else delta > 0) else "worse"
    return f"{side} than {reference} (> 2 SE)"


# ---- tables -----------------------------------------------------------------------------------------------------


def pct(x: float | None, signed: bool = False) -> str:
    """A fraction as percent with 2 decimals (``+`` sign if ``signed``); "—" for None or NaN; |x| < ``EPS``
    prints as 0 (no "-0.00" from float round-off)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = 0.0 if abs(x) < EPS else x
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """The lines of a markdown table: ``| a | b |``, ``|---|---|``, then one line per row (cells ``str``-ed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


# ---- the machine -----------------------------------------------------------------------------------------------


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe_machine(workers: int, torch_threads: int, gpu: str = "none used (use_cpu=True)") -> dict:
    """Where the numbers were measured: platform, processor, cores, GPU, worker processes x torch threads each
    (``torch_threads`` 0 = torch's default in this process), Python, torch and transformers versions."""
    import torch
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_cores": cpu_cores(),
        "gpu": gpu,
        "workers": workers,
        "torch_threads_per_worker": torch_threads if torch_threads > 0 else torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ---- output files ----------------------------------------------------------------------------------------------


def prepare_output_dir(
    output_dir: str, overwrite: bool, outputs: Sequence[str], folders: Sequence[str] = (), refusal: str = ""
) -> None:
    """Make ``output_dir`` ready for a new run.

    ``outputs[0]`` is the file that marks finished results (``results.json``): if it exists and ``overwrite``
    is false, raise ``FileExistsError`` (``--output_dir ... already holds results (path)`` + ``refusal``)
    before anything is touched. Otherwise create the folder and delete every file in ``outputs`` and every
    folder in ``folders`` (names relative to ``output_dir``), so no earlier run's results sit beside the new one.
    """
    marker = os.path.join(output_dir, outputs[0])
    if os.path.exists(marker) and not overwrite:
        raise FileExistsError(f"--output_dir {output_dir} already holds results ({marker}){refusal}")
    os.makedirs(output_dir, exist_ok=True)
    for name in folders:
        if os.path.isdir(os.path.join(output_dir, name)):
            shutil.rmtree(os.path.join(output_dir, name))
    for name in outputs:
        if os.path.exists(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to a temporary name, then rename: an interrupted run never leaves a half file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, data, indent: int = 2) -> None:
    """``data`` as JSON (keys kept in order, a final newline), written as :func:`write_text` does."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int) -> None:
    """Lay out ``fig`` tightly, save it to ``path`` (PNG at ``dpi`` dots per inch) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
