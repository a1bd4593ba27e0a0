#!/usr/bin/env python
"""Validate a teacher trajectory (and optionally a student, a selection file, a cache) without training.

Reads only what describes the checkpoints - ``config.json``, the safetensors headers, ``trainer_state.json`` -
and never loads a model's weights, so it takes seconds on a large trajectory. It prints one row per
checkpoint (step, fraction, architecture, tensors and parameters, label space, weight files, eval metrics;
``*`` marks the selected ones), every problem hf_ckd's own checks find (each check runs; one failure does not
hide the next), and a verdict. Exit status: 0 no problem, 1 problems found (the report is still printed), 2 bad
input (e.g. a ``--teacher`` that does not exist). See docs/recipes.md.

Usage:

    hf-ckd check --teacher runs/bert_sst2
    python -m hf_ckd.check --teacher runs/bert_sst2 --teacher_selection runs/bert_sst2/selection.json \\
        --student_model_name_or_path prajjwal1/bert-tiny --json check.json
    hf-ckd check --teacher hub:EleutherAI/pythia-70m@step* --teacher_checkpoints 0.25,0.5,last
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser

from hf_ckd.scripts._common import parse_recipe_args, run_recipe


@dataclass
class CheckArguments:
    teacher: str = field(
        metadata={
            "help": "The teacher run: a Trainer output_dir with checkpoint-<step>/ folders, a model folder, or "
            "hub:ORG/NAME[@PATTERN]."
        }
    )
    teacher_checkpoints: str = field(
        default="all",
        metadata={
            "help": "The checkpoints the run would select (a checkpoint spec: all, last, 0.5,last ...)."
        },
    )
    teacher_selection: str | None = field(
        default=None,
        metadata={"help": "A selection.json (hf-ckd select_teachers): checked against the trajectory."},
    )
    teacher_revision: str = field(
        default="main", metadata={"help": "For a Hub trajectory: the revision to read."}
    )
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Hub cache folder for a Hub trajectory (default: HF_HUB_CACHE)."}
    )
    teacher_allow_unsafe_pickle: bool = field(
        default=False,
        metadata={
            "help": "As the trainer's flag: accept pickle weights that torch.load(weights_only=True) refuses "
            "(otherwise each is reported, from its opcodes, without unpickling it)."
        },
    )
    teacher_trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "As the trainer's flag: accept checkpoints whose classes are code shipped with them."
        },
    )
    student_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A student folder or Hub id with a config.json: its label space (num_labels / vocab_size) "
            "is compared with the teachers'."
        },
    )
    soft_target_cache: str | None = field(
        default=None,
        metadata={
            "help": "A soft-target cache folder: its fingerprint's teachers are compared with the selection."
        },
    )
    json: str | None = field(default=None, metadata={"help": "Also write the report as JSON to this path."})


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((CheckArguments,), description=__doc__.split("\n\n")[0])


# ---- what one checkpoint's files say ---------------------------------------------------------------


def _read_config(checkpoint) -> tuple[dict[str, Any] | None, str | None]:
    """``(config.json content, problem)`` of a checkpoint (a Hub checkpoint: only its config is fetched)."""
    from hf_ckd.hub import checkpoint_config_file

    path = checkpoint_config_file(checkpoint)
    if path is None:
        return None, None  # checkpoint_problems names a missing config.json, with the fix
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        return (
            None,
            f"checkpoint '{checkpoint.name}': {path} is not readable JSON ({err}); re-save the checkpoint.",
        )
    if not isinstance(config, dict):
        return (
            None,
            f"checkpoint '{checkpoint.name}': {path} holds a JSON {type(config).__name__}, not an object.",
        )
    return config, None


def _weights(checkpoint) -> list[dict[str, str]]:
    from hf_ckd.teachers import _weight_files

    if not checkpoint.path:
        return []
    try:
        files = _weight_files(checkpoint.path)
    except (OSError, json.JSONDecodeError):
        return []  # checkpoint_problems reports the unreadable index
    return [
        {"file": os.path.basename(f), "format": "safetensors" if f.endswith(".safetensors") else "pickle"}
        for f in files
    ]


def _row(checkpoint, selected: set[str]) -> tuple[dict[str, Any], list[str]]:
    from hf_ckd.teachers import _label_space, architecture_of, weight_signature

    config, problem = _read_config(checkpoint)
    signature = weight_signature(checkpoint)
    row = {
        "name": checkpoint.name,
        "step": checkpoint.step,
        "fraction": round(checkpoint.fraction, 6),
        "selected": checkpoint.name in selected,
        "location": checkpoint.location,
        "architecture": architecture_of(config) if config is not None else None,
        "label_space": _label_space(config) if config is not None else None,
        "tensors": len(signature) if signature is not None else None,
        "parameters": sum(math.prod(s) for s in signature.values()) if signature is not None else None,
        "weights": _weights(checkpoint),
        "metrics": dict(checkpoint.metrics),
    }
    return row, [problem] if problem else []


# ---- the report ------------------------------------------------------------------------------------


def _student_label_space(name_or_path: str) -> tuple[int | None, str | None]:
    """``(label space, problem)`` of a student's ``config.json`` (a folder, or a Hub id: only that file)."""
    from hf_ckd.teachers import _label_space

    where = f"--student_model_name_or_path '{name_or_path}'"
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "config.json")
        if not os.path.isfile(path):
            return None, f"{where} has no config.json."
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(name_or_path, "config.json")
        except Exception as err:  # not a repo id, offline and not cached, gated ...
            return None, f"{where} is not a folder, and its config.json cannot be read from the Hub ({err})."
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        return _label_space(config), None
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as err:
        return None, f"{where}: {path} is not a readable config ({err})."


def build_report(args: CheckArguments) -> dict[str, Any]:
    """Check ``args.teacher``'s trajectory and what else ``args`` names; returns the report (no printing).

    Problems touching the selected checkpoints (or the run as a whole) are ``problems``; those of checkpoints
    the run would not select are ``warnings`` (listed, but they do not fail the check)."""
    from hf_ckd.cache import CacheError, SoftTargetCache
    from hf_ckd.checkpoint import TrajectoryError
    from hf_ckd.selection import SelectionError
    from hf_ckd.sources import resolve_trajectory, selected_checkpoints
    from hf_ckd.teachers import (
        TeacherEnsemble,
        TeacherLoadError,
        check_same_architecture,
        checkpoint_problems,
        signature_problems,
    )

    caught = (TeacherLoadError, TrajectoryError, CacheError, SelectionError)
    trajectory = resolve_trajectory(args)  # a teacher that does not exist: bad input, exit status 2
    problems: list[dict[str, Any]] = []

    def record(check: str, message: str, checkpoint: str | None = None) -> None:
        problems.append({"check": check, "checkpoint": checkpoint, "message": message})

    try:
        selected = selected_checkpoints(args, trajectory)
    except caught as err:
        selected = []
        record("teacher_selection" if args.teacher_selection else "teacher_checkpoints", str(err))
    names = {c.name for c in selected}

    rows = []
    for checkpoint in trajectory:
        row, found = _row(checkpoint, names)
        rows.append(row)
        for message in found:
            record("config", message, checkpoint.name)
        if checkpoint.path:
            for message in checkpoint_problems(
                checkpoint, allow_unsafe_pickle=args.teacher_allow_unsafe_pickle
            ):
                record("files", message, checkpoint.name)
    for name, message in signature_problems(list(trajectory)).items():
        record("signature", message, name)

    # One architecture and label space: the selection's (what the run would refuse), then the whole trajectory.
    unique = list(dict.fromkeys(selected))
    try:
        check_same_architecture(unique, trajectory.source)
    except caught as err:
        record("architecture", str(err))
    else:
        try:
            check_same_architecture(list(trajectory), trajectory.source)
        except caught as err:
            record("architecture", str(err), checkpoint="(trajectory)")

    spaces = [r["label_space"] for r in rows if r["selected"] and r["label_space"] is not None]
    spaces = spaces or [r["label_space"] for r in rows if r["label_space"] is not None]
    teacher_space = Counter(spaces).most_common(1)[0][0] if spaces else None

    student_space = None
    if args.student_model_name_or_path:
        student_space, problem = _student_label_space(args.student_model_name_or_path)
        if problem:
            record("student", problem)
        elif student_space is not None and teacher_space is not None and student_space != teacher_space:
            record(
                "student",
                f"The student '{args.student_model_name_or_path}' predicts over {student_space} classes/tokens but "
                f"the teachers over {teacher_space} (num_labels / vocab_size): build the student with the "
                "teacher's label space.",
            )

    cache = None
    if args.soft_target_cache:
        try:
            opened = SoftTargetCache(args.soft_target_cache)
        except caught as err:
            record("soft_target_cache", str(err))
        else:
            expected = [c.name for c in TeacherEnsemble.merge_duplicates(selected, None)[0]]
            built_for = opened.config.get("teachers")
            cache = {"path": args.soft_target_cache, "teachers": built_for, "num_classes": opened.num_classes}
            if selected and built_for != expected:
                record(
                    "soft_target_cache",
                    f"Soft-target cache '{args.soft_target_cache}' was built from teachers {built_for}, but the "
                    f"selection is {expected}: rebuild it for these checkpoints (or select the ones it was built "
                    "from).",
                )
            if teacher_space is not None and opened.num_classes not in (None, teacher_space):
                record(
                    "soft_target_cache",
                    f"Soft-target cache '{args.soft_target_cache}' holds targets over {opened.num_classes} "
                    f"classes/tokens, the teachers predict over {teacher_space}.",
                )

    errors = [p for p in problems if p["checkpoint"] is None or p["checkpoint"] in names]
    warnings = [p for p in problems if p not in errors]
    if errors:
        verdict = f"FAILED: {len(errors)} problem(s)" + (f", {len(warnings)} warning(s)" if warnings else "")
    else:
        verdict = f"OK: {len(selected)} of {len(trajectory)} checkpoint(s) selected, no problem found" + (
            f" ({len(warnings)} warning(s) about checkpoints not selected)" if warnings else ""
        )
    return {
        "teacher": trajectory.source,
        "teacher_checkpoints": args.teacher_checkpoints,
        "teacher_selection": args.teacher_selection,
        "selected": [c.name for c in selected],
        "label_space": teacher_space,
        "student": (
            {"name_or_path": args.student_model_name_or_path, "label_space": student_space}
            if args.student_model_name_or_path
            else None
        ),
        "soft_target_cache": cache,
        "checkpoints": rows,
        "problems": errors,
        "warnings": warnings,
        "ok": not errors,
        "verdict": verdict,
        "exit_status": 1 if errors else 0,
    }


# Trainer's timing numbers: in the JSON report, not in the printed table.
_TIMING_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as the command prints it: the table, the problems, the verdict."""
    header = (
        "",
        "checkpoint",
        "step",
        "fraction",
        "architecture",
        "tensors",
        "params",
        "labels",
        "weights",
        "eval",
    )
    table = [header]
    for row in report["checkpoints"]:
        metrics = " ".join(
            f"{k.removeprefix('eval_')}={v:.4g}"
            for k, v in sorted(row["metrics"].items())
            if not k.endswith(_TIMING_METRICS)
        )
        weights = ", ".join(f"{w['file']} ({w['format']})" for w in row["weights"]) or (
            "(remote)" if not row["location"] or "@" in row["location"] else "-"
        )
        table.append(
            (
                "*" if row["selected"] else "",
                row["name"],
                str(row["step"]),
                f"{row['fraction']:.2f}",
                row["architecture"] or "-",
                "-" if row["tensors"] is None else str(row["tensors"]),
                _count(row["parameters"]),
                "-" if row["label_space"] is None else str(row["label_space"]),
                weights,
                metrics or "-",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [f"Teacher trajectory '{report['teacher']}': {len(report['checkpoints'])} checkpoint(s)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.append(f"(* selected: {', '.join(report['selected']) or 'none'})")
    for title, entries in (("Problems", report["problems"]), ("Warnings", report["warnings"])):
        if entries:
            lines += ["", f"{title} ({len(entries)}):"]
            for entry in entries:
                text = entry["message"].replace("\n", "\n    ")
                lines.append(f"- [{entry['check']}] {text}")
    lines += ["", report["verdict"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` (default: ``sys.argv[1:]``), check, print the report (and write ``--json``); returns the
    report, whose ``exit_status`` is 1 when problems were found (the command line exits with it)."""
    (args,) = parse_recipe_args(make_parser(), sys.argv[1:] if argv is None else argv)
    report = build_report(args)
    print(format_report(report))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return report


def command(argv: list[str] | None = None) -> dict:
    """:func:`main` for the command line: raises ``SystemExit(1)`` after the report when problems were found."""
    report = main(argv)
    if report["exit_status"]:
        raise SystemExit(report["exit_status"])
    return report


if __name__ == "__main__":
    sys.exit(run_recipe(command))
