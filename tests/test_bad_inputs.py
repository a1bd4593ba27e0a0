"""The catalogue of bad input (docs/security.md#what-is-refused): every fault hf_ckd refuses, one case each.

Each case builds one bad input on tiny real models (the conftest trajectories, copied and damaged) and then
does what a user does: ``CheckpointDistillConfig(...)``, ``CheckpointDistillTrainer(...)``, ``train()``.
Every case asserts the same four things:

1. the error's class (one of hf_ckd's, never a raw ``IndexError`` / ``KeyError`` from deep inside);
2. that its message names the bad thing (the argument, file, checkpoint or value) and, where there is one,
   the fix;
3. that no optimizer step ran (a global ``torch.optim`` step hook counts them);
4. that nothing was written: ``output_dir`` is absent or empty (for a resume, exactly as it was).

Removing a check makes its case fail: ``test_a_case_fails_without_its_check`` removes a sample of the checks
and sees their cases fail. ``test_recipes_refuse_bad_input`` is the same catalogue for the command line
(``error:`` and exit status 2, no traceback), ``test_check_reports_what_the_trainer_refuses`` for
``hf-ckd check``. The faults the library handles rather than refuses (a kill during a cache build or a save,
fp64 hidden states, chunk sizes, chunked KD without labels, ``teacher_model=``) are tested where they are
handled: tests/test_cache.py, tests/test_run_folders.py, tests/test_linear_dtypes.py, tests/test_large_vocab.py,
tests/test_teacher_integrity.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import StateDict, tiny_bert, tiny_gpt2, trainer_args
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hf_ckd import (
    CacheError,
    CheckpointDistillConfig,
    CheckpointDistillTrainer,
    HubError,
    OptionError,
    ResumeError,
    ScheduleError,
    StudentOutputError,
    TeacherLoadError,
    TeacherOutputError,
    TrajectoryError,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


# ---- the user's actions ----------------------------------------------------------------------------


@dataclass
class Context:
    """What a case builds its bad input from: a fresh ``tmp`` folder and the session's trajectories."""

    tmp: Path
    text_teacher: str
    lm_teacher: str
    text_data: tuple
    lm_data: tuple
    lm_cache: str

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def copy(self, teacher: str = "text") -> Path:
        """A copy of a trajectory, to damage."""
        run = self.tmp / f"{teacher}_run"
        if not run.exists():
            shutil.copytree(self.text_teacher if teacher == "text" else self.lm_teacher, run)
        return run


def config(ctx: Context, **overrides) -> CheckpointDistillConfig:
    """A run that saves after every step (so a step that ran would leave a checkpoint in ``output_dir``)."""
    settings = {"max_steps": 2, "save_strategy": "steps", "save_steps": 1, "per_device_train_batch_size": 8}
    return CheckpointDistillConfig(**trainer_args(ctx.out, **{**settings, **overrides}))


def distill(
    ctx: Context,
    teacher: str | os.PathLike | None = "text",
    *,
    student=None,
    train=None,
    resume=None,
    trainer_kwargs: dict | None = None,
    **overrides,
):
    """Config, trainer, ``train()``: what a user runs. ``teacher="text"``/``"lm"`` is the session's
    trajectory; ``None`` configures no teacher path."""
    lm = teacher == "lm" or (isinstance(teacher, os.PathLike) and "lm_run" in str(teacher))
    if teacher in ("text", "lm"):
        teacher = ctx.text_teacher if teacher == "text" else ctx.lm_teacher
    if teacher is not None:
        overrides["teacher"] = str(teacher)
    args = config(ctx, **overrides)
    student = student if student is not None else (tiny_gpt2(16, 1) if lm else tiny_bert(16, 1))
    data = ctx.lm_data if lm else ctx.text_data
    trainer = CheckpointDistillTrainer(
        model=student,
        args=args,
        train_dataset=train if train is not None else data[0].select(range(32)),
        **(trainer_kwargs or {}),
    )
    trainer.train(resume_from_checkpoint=resume)


def drop_tensors(checkpoint: Path, prefix: str) -> None:
    path = checkpoint / "model.safetensors"
    state = {k: v for k, v in load_file(path).items() if not k.startswith(prefix)}
    save_file(state, path, metadata={"format": "pt"})


def replace_weights(checkpoint: Path, model) -> None:
    """Put another model's weights and config in a checkpoint folder; its trainer_state.json (its step) stays."""
    os.remove(checkpoint / "model.safetensors")
    model.save_pretrained(checkpoint)


def poison(checkpoint: Path) -> None:
    """NaN weights in one checkpoint: every forward gives NaN logits."""
    path = checkpoint / "model.safetensors"
    state = load_file(path)
    state["classifier.bias"] = torch.full_like(state["classifier.bias"], float("nan"))
    save_file(state, path, metadata={"format": "pt"})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class RunsCode:
    """A pickle payload that creates ``marker`` when unpickled: no hf_ckd path may ever run it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def as_pickle(ctx: Context, payload) -> Path:
    """A one-checkpoint trajectory whose weights are ``pytorch_model.bin`` holding ``payload``."""
    folder = ctx.tmp / "pickled" / "checkpoint-1"
    folder.mkdir(parents=True)
    shutil.copy(Path(ctx.text_teacher) / "checkpoint-120" / "config.json", folder / "config.json")
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(payload, f) if not isinstance(payload, dict) else torch.save(payload, f)
    return folder.parent


def remote_code_checkpoint(ctx: Context) -> Path:
    run = ctx.copy()
    cfg = json.loads((run / "checkpoint-120" / "config.json").read_text())
    cfg.update(model_type="evil-bert", auto_map={"AutoConfig": "modeling_evil.EvilConfig"})
    write(run / "checkpoint-120" / "config.json", json.dumps(cfg))
    write(run / "checkpoint-120" / "modeling_evil.py", "open('code-ran', 'w')\n")
    return run


def trained_run(ctx: Context, **overrides) -> None:
    """A complete 4-step static run saving at step 2 and 4 (the run a resume case resumes)."""
    distill(ctx, max_steps=4, save_steps=2, **overrides)


def selection(ctx: Context, source: str, selected: list[str]) -> str:
    return str(write(ctx.tmp / "selection.json", json.dumps({"source": source, "selected": selected})))


def lm_batches(length: int, top_id: int) -> Dataset:
    ids = torch.randint(0, 3, (8, length))
    ids[0, -1] = top_id
    return Dataset.from_dict({"input_ids": ids, "labels": ids.clone()}).with_format("torch")


def cached(ctx: Context, **overrides) -> None:
    """A run from the session's token-level soft-target cache (built at temperature 1, kd_loss='sampled')."""
    from transformers import default_data_collator

    from hf_ckd.cache import ReplayViews, SelectColumns

    settings = {"temperature": 1.0, "alpha": 0.0, "kd_loss": "sampled", "soft_target_cache": ctx.lm_cache}
    settings.update(overrides)
    data = overrides.pop("train", None)
    settings.pop("train", None)
    distill(
        ctx,
        "lm",
        train=data if data is not None else ReplayViews(ctx.lm_data[0].select(range(64)), SelectColumns()),
        trainer_kwargs={"data_collator": default_data_collator},
        **settings,
    )


def damaged_cache(ctx: Context) -> str:
    from hf_ckd.cache import CACHE_CONFIG_NAME

    damaged = ctx.tmp / "damaged_cache"
    shutil.copytree(ctx.lm_cache, damaged)
    (damaged / CACHE_CONFIG_NAME).write_text('{"storage": "sampled",')
    return str(damaged)


# ---- the catalogue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(ctx)`` prepares it and returns the user's action, which must raise ``error``
    with a message matching ``message`` (a regex searched in it)."""

    id: str
    run: Callable[[Context], Callable[[], None]]
    error: type[BaseException]
    message: str


def case(id: str, error: type[BaseException], message: str):
    def register(build):
        CASES.append(Case(id, build, error, message))
        return build

    return register


CASES: list[Case] = []


def simple(id: str, error: type[BaseException], message: str, **overrides):
    """A case that is one call of :func:`distill` with ``overrides``."""
    CASES.append(Case(id, lambda ctx: lambda: distill(ctx, **overrides), error, message))


# Teacher location and checkpoint spec: refused when the trainer is built, before Trainer.__init__.
simple(
    "teacher-path-missing",
    TrajectoryError,
    r"Teacher path '.*nowhere' does not exist",
    teacher=Path("/nowhere"),
)
CASES.append(
    Case(
        "teacher-folder-without-checkpoints",
        lambda ctx: lambda: distill(ctx, (ctx.tmp / "empty").mkdir() or ctx.tmp / "empty"),
        TrajectoryError,
        r"No checkpoints in '.*empty': expected checkpoint-<step>/ folders",
    )
)
CASES.append(
    Case(
        "teacher-path-is-a-file",
        lambda ctx: lambda: distill(ctx, write(ctx.tmp / "teacher.txt", "x")),
        TrajectoryError,
        r"Teacher path '.*teacher.txt' is a file",
    )
)
simple("hub-spec-malformed", HubError, r"hub:ORG/NAME|not a Hub repo id", teacher="hub:not a repo")
CASES.append(
    Case(
        "hub-repo-not-cached-offline",
        lambda ctx: lambda: distill(ctx, "hub:org/missing", teacher_cache_dir=str(ctx.tmp / "hub")),
        HubError,
        r"'org/missing'.*not in the local Hub cache.*HF_HUB_OFFLINE=1",
    )
)
simple(
    "checkpoint-name-unknown",
    TrajectoryError,
    r"Checkpoint spec item 'checkpoint-999' matches nothing.*checkpoint-30",
    teacher_checkpoints="checkpoint-999",
)
simple(
    "checkpoint-fraction-out-of-range",
    TrajectoryError,
    r"'1.5' is not a fraction in \[0, 1\]; for a step use 'step:1.5'",
    teacher_checkpoints="1.5",
)
simple(
    "checkpoint-step-unknown",
    TrajectoryError,
    r"No checkpoint at step 7 .*available steps: \[30, 60, 90, 120\]",
    teacher_checkpoints="step:7",
)
simple("checkpoint-spec-empty", OptionError, r"teacher_checkpoints is empty", teacher_checkpoints=" ")


@case("trainer-state-not-json", TrajectoryError, r"checkpoint-60/trainer_state.json.*(not valid JSON|parse)")
def _(ctx):
    write(ctx.copy() / "checkpoint-60" / "trainer_state.json", '{"global_step": 6')
    return lambda: distill(ctx, ctx.copy())


@case("trainer-state-wrong-types", TrajectoryError, r"checkpoint-60/trainer_state.json' (has|holds) .*'ten'")
def _(ctx):
    write(ctx.copy() / "checkpoint-60" / "trainer_state.json", '{"global_step": "ten"}')
    return lambda: distill(ctx, ctx.copy())


# Teacher files: every checkpoint that can teach is checked before Trainer.__init__ (weights' headers, configs).
@case("config-not-json", TeacherLoadError, r"checkpoint-120.*config.json")
def _(ctx):
    write(ctx.copy() / "checkpoint-120" / "config.json", "{")
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="last")


@case("weights-missing", (TeacherLoadError, TrajectoryError), r"checkpoint-120.*(no model weights|weights)")
def _(ctx):
    os.remove(ctx.copy() / "checkpoint-120" / "model.safetensors")
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="last")


@case("weights-truncated", TeacherLoadError, r"checkpoint-120.*model.safetensors")
def _(ctx):
    path = ctx.copy() / "checkpoint-120" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="last")


@case(
    "tensors-missing",
    TeacherLoadError,
    r"'checkpoint-120'.*2 tensor\(s\).*classifier.bias, classifier.weight",
)
def _(ctx):
    drop_tensors(ctx.copy() / "checkpoint-120", "classifier.")
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="last")


@case(
    "tensors-missing-in-a-later-scheduled-checkpoint",
    TeacherLoadError,
    r"'checkpoint-120'.*lacks 2 tensor\(s\) \(classifier.bias, classifier.weight\)",
)
def _(ctx):
    drop_tensors(ctx.copy() / "checkpoint-120", "classifier.")
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="all", teacher_schedule="progressive")


@case("checkpoint-of-another-shape", TeacherLoadError, r"'checkpoint-90'.*of another shape")
def _(ctx):
    replace_weights(ctx.copy() / "checkpoint-90", tiny_bert(hidden=32, layers=1))
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="checkpoint-90,last")


@case("checkpoint-of-another-shape-scheduled", TeacherLoadError, r"'checkpoint-90'.*of another shape")
def _(ctx):
    replace_weights(ctx.copy() / "checkpoint-90", tiny_bert(hidden=32, layers=1))
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="all", teacher_schedule="progressive")


def _other_label_space(ctx: Context) -> None:
    other = tiny_bert(hidden=16, layers=1)
    other.config.num_labels = 7
    replace_weights(ctx.copy() / "checkpoint-120", type(other)(other.config))


@case("label-spaces-differ", TeacherLoadError, r"different label spaces.*'checkpoint-120': 7")
def _(ctx):
    _other_label_space(ctx)
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="0.5,last")


@case("label-spaces-differ-scheduled", TeacherLoadError, r"different label spaces.*'checkpoint-120': 7")
def _(ctx):
    _other_label_space(ctx)
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="all", teacher_schedule="progressive")


@case("architectures-differ", TeacherLoadError, r"not one architecture: 'checkpoint-120'.* is GPT2")
def _(ctx):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    gpt = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, num_labels=4)
    )
    replace_weights(ctx.copy() / "checkpoint-120", gpt)
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="all")


@case(
    "pickle-that-runs-code",
    TeacherLoadError,
    r"checkpoint-1.*pytorch_model.bin needs full unpickling, which can run arbitrary code, so it was refused",
)
def _(ctx):
    marker = ctx.tmp / "code-ran"
    run = as_pickle(ctx, {"weight": RunsCode(str(marker))})

    def action():
        try:
            distill(ctx, run)
        finally:
            assert not marker.exists(), "the pickle ran"

    return action


@case(
    "pickle-outside-weights-only",
    TeacherLoadError,
    r"pytorch_model.bin needs full unpickling.*allow_unsafe_pickle=True \(teacher_allow_unsafe_pickle\)",
)
def _(ctx):
    state = load_file(Path(ctx.text_teacher) / "checkpoint-120" / "model.safetensors")
    return lambda: distill(ctx, as_pickle(ctx, StateDict(state)))


@case(
    "remote-code-not-trusted",
    TeacherLoadError,
    r"checkpoint-120.*auto_map: modeling_evil.*'evil-bert'.*teacher_trust_remote_code",
)
def _(ctx):
    run = remote_code_checkpoint(ctx)

    def action():
        try:
            distill(ctx, run, teacher_checkpoints="last")
        finally:
            assert not (Path.cwd() / "code-ran").exists(), "the checkpoint's code ran"

    return action


# Settings: refused by CheckpointDistillConfig itself, naming the field.
simple("temperature-zero", OptionError, r"temperature must be a finite number > 0, got 0", temperature=0.0)
simple(
    "temperature-nan",
    OptionError,
    r"temperature must be a finite number > 0, got nan",
    temperature=float("nan"),
)
simple("alpha-out-of-range", OptionError, r"alpha must lie in \[0, 1\].*got 1.5", alpha=1.5)
simple("kd-loss-unknown", OptionError, r"kd_loss must be one of .*got 'fast'", kd_loss="fast")
simple("ensemble-average-unknown", OptionError, r"ensemble_average must be one of", ensemble_average="median")
simple("teacher-dtype-unknown", OptionError, r"teacher_dtype must be one of", teacher_dtype="int8")
simple("teacher-fusion-unknown", OptionError, r"teacher_fusion must be one of", teacher_fusion="magic")
simple(
    "teacher-weights-negative",
    OptionError,
    r"teacher_weights must be finite, >= 0 and not all zero",
    teacher_checkpoints="0.5,last",
    teacher_weights=[-1.0, 2.0],
)
simple(
    "teacher-weights-count",
    OptionError,
    r"teacher_weights has 1 values but the spec selects 2 checkpoints",
    teacher_checkpoints="0.5,last",
    teacher_weights=[1.0],
)
simple("schedule-unknown", OptionError, r"teacher_schedule must be one of", teacher_schedule="cosine")
simple(
    "schedule-option-on-a-static-run",
    OptionError,
    r"teacher_schedule_pace applies to teacher_schedule='progressive'",
    teacher_schedule_pace="equal",
)
simple(
    "schedule-boundaries-not-increasing",
    OptionError,
    r"teacher_schedule_boundaries must be strictly increasing",
    teacher_checkpoints="all",
    teacher_schedule="progressive",
    teacher_schedule_boundaries=[0.5, 0.2, 0.7],
)
simple(
    "schedule-boundaries-count",
    ScheduleError,
    r"boundaries has 2 values for 4 checkpoints.*teacher_schedule_boundaries",
    teacher_checkpoints="all",
    teacher_schedule="progressive",
    teacher_schedule_boundaries=[0.3, 0.6],
)
simple("kd-chunk-size-zero", OptionError, r"kd_chunk_size must be an integer >= 1", kd_chunk_size=0)
simple(
    "sampled-without-samples", OptionError, r"kd_loss='sampled' needs kd_num_samples >= 1", kd_loss="sampled"
)
simple("label-smoothing", OptionError, r"label_smoothing_factor is not supported", label_smoothing_factor=0.1)
simple(
    "cache-with-a-schedule",
    OptionError,
    r"soft_target_cache .* cannot follow teacher_schedule='progressive'",
    soft_target_cache="/nowhere",
    teacher_checkpoints="all",
    teacher_schedule="progressive",
)

# Teachers and students that do not fit together: refused when the trainer is built.
simple("no-teacher", ValueError, r"(No teacher|teacher=)", teacher=None)
CASES.append(
    Case(
        "two-teachers",
        lambda ctx: lambda: distill(ctx, trainer_kwargs={"teacher_model": "elsewhere"}),
        ValueError,
        r"name two teachers",
    )
)
CASES.append(
    Case(
        "teacher-model-of-a-wrong-type",
        lambda ctx: lambda: distill(ctx, None, trainer_kwargs={"teacher_model": 42}),
        TypeError,
        r"teacher_model.*int",
    )
)
CASES.append(
    Case(
        "args-not-training-arguments",
        lambda ctx: (
            lambda: CheckpointDistillTrainer(
                model=tiny_bert(16, 1), args=trainer_args(ctx.out), train_dataset=ctx.text_data[0]
            )
        ),
        TypeError,
        r"needs args=CheckpointDistillConfig\(...\) \(or TrainingArguments, converted .*\), got dict",
    )
)


@case("student-label-space-differs", TeacherLoadError, r"(3|4) (classes|outputs|labels).*(3|4)")
def _(ctx):
    student = tiny_bert(16, 1)
    student = type(student)(student.config.__class__(**{**student.config.to_dict(), "num_labels": 3}))
    return lambda: distill(ctx, student=student)


@case("student-vocabulary-differs", TeacherLoadError, r"(16|20).*(16|20)")
def _(ctx):
    student = tiny_gpt2(16, 1)
    student.resize_token_embeddings(20)
    return lambda: distill(ctx, "lm", student=student)


simple(
    "chunked-kd-for-a-classifier",
    ValueError,
    r"kd_loss='chunked' is token-level KD of causal LMs.*BertForSequenceClassification.*use kd_loss='full'",
    kd_loss="chunked",
)


@case(
    "sampled-kd-more-samples-than-the-vocabulary",
    ValueError,
    r"kd_num_samples=64 exceeds the vocabulary \(16\)",
)
def _(ctx):
    return lambda: distill(ctx, "lm", kd_loss="sampled", kd_num_samples=64)


# selection.json: read and checked against this run's trajectory when the trainer is built.
simple(
    "selection-file-missing",
    (TrajectoryError, ValueError),
    r"nowhere.json",
    teacher_selection="/nowhere.json",
)


@case("selection-file-not-json", (TrajectoryError, ValueError), r"selection.json.*(JSON|parse)")
def _(ctx):
    return lambda: distill(ctx, teacher_selection=str(write(ctx.tmp / "selection.json", "{")))


@case("selection-of-unknown-checkpoints", TrajectoryError, r"checkpoint-7")
def _(ctx):
    return lambda: distill(ctx, teacher_selection=selection(ctx, ctx.text_teacher, ["checkpoint-7"]))


@case(
    "selection-of-another-trajectory",
    TrajectoryError,
    r"written for trajectory '.*other_run', but this run's",
)
def _(ctx):
    other = ctx.tmp / "other_run"
    shutil.copytree(ctx.text_teacher, other)  # the same checkpoint names, another run
    return lambda: distill(ctx, teacher_selection=selection(ctx, str(other), ["checkpoint-90"]))


# The data: checked on each batch before the forward (the first batch: before step 1).
CASES.append(
    Case(
        "positions-beyond-the-models",
        lambda ctx: lambda: distill(ctx, "lm", train=lm_batches(20, 3)),
        ValueError,
        r"sequences of 20 tokens but the (student|teachers) embed\(s\) only 12 positions",
    )
)
CASES.append(
    Case(
        "token-ids-beyond-the-vocabulary",
        lambda ctx: lambda: distill(ctx, "lm", train=lm_batches(12, 16)),
        ValueError,
        r"token id 16 but the (student|teachers) embed\(s\) ids 0..15",
    )
)
CASES.append(
    Case(
        "labels-missing-with-a-label-term",
        lambda ctx: (
            lambda: distill(
                ctx,
                "lm",
                train=lm_batches(12, 3).remove_columns("labels"),
                alpha=0.5,
                remove_unused_columns=False,
            )
        ),
        ValueError,
        r"alpha=0.5 weights a hard-label term but no labels were given; pass labels or alpha=0",
    )
)


# Training that would learn garbage: stopped in the first step, before its optimizer step.
@case(
    "teacher-gives-nan",
    TeacherOutputError,
    r"NaN/Inf in the logits of teacher checkpoint\(s\) 'checkpoint-120'",
)
def _(ctx):
    poison(ctx.copy() / "checkpoint-120")
    return lambda: distill(ctx, ctx.copy(), teacher_checkpoints="last")


@case("student-gives-nan", StudentOutputError, r"The student's loss is nan at step 0")
def _(ctx):
    student = tiny_bert(16, 1)
    with torch.no_grad():
        student.classifier.bias.fill_(float("nan"))
    return lambda: distill(ctx, student=student)


# Resumes: checked when train() starts, before the first resumed step.
@case(
    "static-resume-with-another-checkpoint",
    ValueError,
    r"resume_from_checkpoint.*another teacher schedule or",
)
def _(ctx):
    trained_run(ctx, teacher_checkpoints="last")
    return lambda: distill(ctx, teacher_checkpoints="0.5", max_steps=4, save_steps=2, resume=True)


@case(
    "static-resume-with-another-ensemble", ValueError, r"resume_from_checkpoint.*another teacher schedule or"
)
def _(ctx):
    trained_run(ctx, teacher_checkpoints="last")
    return lambda: distill(ctx, teacher_checkpoints="0.5,last", max_steps=4, save_steps=2, resume=True)


@case(
    "progressive-resume-with-another-schedule",
    ValueError,
    r"resume_from_checkpoint.*another teacher schedule",
)
def _(ctx):
    trained_run(ctx, teacher_checkpoints="all", teacher_schedule="progressive")
    return lambda: distill(
        ctx,
        teacher_checkpoints="0.5,last",
        teacher_schedule="progressive",
        max_steps=4,
        save_steps=2,
        resume=True,
    )


@case(
    "resume-from-an-incomplete-checkpoint",
    ResumeError,
    r"checkpoint-4' is incomplete: it is empty.*checkpoint-2",
)
def _(ctx):
    trained_run(ctx, teacher_checkpoints="last")
    shutil.rmtree(ctx.out / "checkpoint-4")
    (ctx.out / "checkpoint-4").mkdir()  # what a kill during the save leaves
    return lambda: distill(
        ctx, teacher_checkpoints="last", max_steps=6, save_steps=2, resume=ctx.out / "checkpoint-4"
    )


@case("resume-from-a-folder-that-does-not-exist", ResumeError, r"'.*checkpoint-9' is not a folder")
def _(ctx):
    return lambda: distill(ctx, resume=str(ctx.tmp / "checkpoint-9"))


# Soft-target caches: the metadata, the fingerprint of the run, the loss mode.
CASES.append(
    Case(
        "cache-missing",
        lambda ctx: lambda: cached(ctx, soft_target_cache=str(ctx.tmp / "no_cache")),
        CacheError,
        r"no_cache.*does not exist",
    )
)
CASES.append(
    Case(
        "cache-metadata-not-json",
        lambda ctx: (lambda path: lambda: cached(ctx, soft_target_cache=path))(damaged_cache(ctx)),
        CacheError,
        r"metadata '.*damaged_cache/.*' is not valid JSON.*Delete the cache folder",
    )
)
CASES.append(
    Case(
        "cache-of-another-temperature",
        lambda ctx: lambda: cached(ctx, temperature=2.0),
        CacheError,
        r"temperature: cache has 1.0, the run has 2.0",
    )
)
CASES.append(
    Case(
        "cache-for-another-loss-mode",
        lambda ctx: lambda: cached(ctx, kd_loss="chunked"),
        CacheError,
        r"train with kd_loss='sampled'",
    )
)
CASES.append(
    Case(
        "cache-without-replayed-views",
        lambda ctx: lambda: cached(ctx, train=ctx.lm_data[0].select(range(64))),
        CacheError,
        r"needs train_dataset=hf_ckd.cache.ReplayViews",
    )
)


# ---- the tests -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_cache(tmp_path_factory, lm_teacher, lm_data):
    from transformers import default_data_collator

    from hf_ckd import TeacherEnsemble, Trajectory
    from hf_ckd.cache import SelectColumns, build_soft_target_cache

    teachers = TeacherEnsemble.from_trajectory(Trajectory.from_local(lm_teacher), "last")
    cache = build_soft_target_cache(
        teachers, lm_data[0].select(range(64)), str(tmp_path_factory.mktemp("cache") / "lm"),
        transform=SelectColumns(), collate_fn=default_data_collator, temperature=1.0, storage="sampled", k=8,
        progress=False,
    )  # fmt: skip
    return cache.path


@pytest.fixture
def ctx(tmp_path, text_teacher, lm_teacher, text_data, lm_data, lm_cache) -> Context:
    return Context(tmp_path, text_teacher, lm_teacher, text_data, lm_data, lm_cache)


@pytest.fixture
def optimizer_steps():
    """How many optimizer steps ran, over every torch optimizer."""
    count = [0]
    handle = register_optimizer_step_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    yield count
    handle.remove()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def check_case(case: Case, ctx: Context, optimizer_steps: list[int]) -> None:
    action = case.run(ctx)
    before, steps_before = _listing(ctx.out), optimizer_steps[0]
    with pytest.raises(case.error) as info:
        action()
    message = str(info.value)
    assert re.search(case.message, message, flags=re.S), f"{case.id}: {message}"
    assert optimizer_steps[0] == steps_before, f"{case.id}: an optimizer step ran"
    assert _listing(ctx.out) == before, f"{case.id}: wrote {sorted(set(_listing(ctx.out)) - set(before))}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_step_one_with_nothing_written(case, ctx, optimizer_steps):
    check_case(case, ctx, optimizer_steps)


def test_the_catalogue_is_documented():
    """docs/security.md lists every case of the catalogue by its id, and nothing that is not one."""
    text = (DOCS / "security.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))
    assert documented == {c.id for c in CASES}


# Removing a check makes its case fail: each patch below removes one check (the rest stay).
REMOVED_CHECKS = [
    (
        "tensors-missing-in-a-later-scheduled-checkpoint",
        "hf_ckd.teachers",
        "signature_problems",
        lambda *a, **k: [],
    ),
    ("checkpoint-of-another-shape", "hf_ckd.teachers", "signature_problems", lambda *a, **k: []),
    ("selection-of-another-trajectory", "hf_ckd.selection", "_same_source", lambda *a, **k: True),
    (
        "positions-beyond-the-models",
        "hf_ckd.trainer.CheckpointDistillTrainer",
        "_check_inputs",
        lambda *a: None,
    ),
    ("student-gives-nan", "hf_ckd.trainer.CheckpointDistillTrainer", "_check_finite", lambda *a: None),
    ("kd-chunk-size-zero", "hf_ckd.config", "check_int", lambda *a, **k: None),
    ("resume-from-an-incomplete-checkpoint", "hf_ckd.trainer", "resolve_resume_checkpoint", lambda d, r: r),
]


@pytest.mark.parametrize(
    ("case_id", "where", "name", "replacement"), REMOVED_CHECKS, ids=[r[0] for r in REMOVED_CHECKS]
)
def test_a_case_fails_without_its_check(case_id, where, name, replacement, ctx, optimizer_steps, monkeypatch):
    import importlib

    module = where.removesuffix(".CheckpointDistillTrainer")
    target = importlib.import_module(module)
    if where != module:
        target = target.CheckpointDistillTrainer
    assert hasattr(target, name), f"{where}.{name} is gone: update REMOVED_CHECKS"
    monkeypatch.setattr(target, name, replacement)
    case = next(c for c in CASES if c.id == case_id)
    with pytest.raises((pytest.fail.Exception, Exception)):  # any failure of the case's four assertions
        check_case(case, ctx, optimizer_steps)


# `hf-ckd check` finds, without training or loading a model, what the trainer refuses about the teacher.
CHECKED = {
    "teacher-path-missing": r"error: Teacher path '/nowhere' does not exist",
    "checkpoint-name-unknown": r"checkpoint-999",
    "trainer-state-wrong-types": r"checkpoint-60/trainer_state.json",
    "config-not-json": r"checkpoint-120",
    "weights-missing": r"checkpoint-120",
    "weights-truncated": r"checkpoint-120.*model.safetensors",
    "tensors-missing": r"checkpoint-120.*classifier.bias, classifier.weight",
    "tensors-missing-in-a-later-scheduled-checkpoint": r"checkpoint-120.*classifier.bias, classifier.weight",
    "checkpoint-of-another-shape": r"checkpoint-90.*another shape",
    "label-spaces-differ": r"checkpoint-120.*7",
    "architectures-differ": r"checkpoint-120.*GPT2",
    "pickle-that-runs-code": r"checkpoint-1.*pytorch_model.bin",
    "selection-of-another-trajectory": r"other_run",
    "remote-code-not-trusted": r"checkpoint-120.*trust_remote_code",
}


@pytest.mark.parametrize("case_id", sorted(CHECKED))
def test_check_reports_what_the_trainer_refuses(case_id, ctx, capsys, monkeypatch):
    """The case's input given to ``hf-ckd check`` (recorded from its call of :func:`distill`): exit status 1
    (problems found) or 2 (unusable input), a report naming the same thing, nothing written."""
    from hf_ckd.scripts import check
    from hf_ckd.scripts._common import run_recipe

    calls = []
    monkeypatch.setattr(
        __import__(__name__), "distill", lambda ctx, teacher="text", **kw: calls.append((teacher, kw))
    )
    next(c for c in CASES if c.id == case_id).run(ctx)()
    ((teacher, options),) = calls
    teacher = ctx.text_teacher if teacher == "text" else teacher
    argv = ["--teacher", str(teacher)]
    for name in ("teacher_checkpoints", "teacher_selection"):
        if name in options:
            argv += [f"--{name}", str(options[name])]
    capsys.readouterr()
    status = run_recipe(check.main, argv)
    captured = capsys.readouterr()
    assert status in (1, 2), captured.out[-2000:]
    assert re.search(CHECKED[case_id], captured.out + captured.err, flags=re.S), captured.out + captured.err
    assert not ctx.out.exists()
    if case_id == "pickle-that-runs-code":
        assert not (ctx.tmp / "code-ran").exists()
