"""What the recipes in ``hf_ckd.scripts`` share: the command-line entry point (:func:`run_recipe`: bad input
is one ``error:`` line and exit status 2), argument parsing (with config files), the image data arguments, the
CIFAR schedule defaults, logging, resuming from the latest complete checkpoint, and the standard ending of a
Trainer run (the transformers examples' train / save / metrics / state / eval / card / push)."""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# The hf_ckd package folder: a ValueError raised by code in it is one of hf_ckd's argument checks.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
DEBUG_ENV = "HF_CKD_DEBUG"
# transformers.debug_utils.DebugOption: `--debug VALUE` is TrainingArguments' option; a bare --debug is ours.
_TRAINING_DEBUG_VALUES = ("underflow_overflow", "tpu_metrics_debug")


class RecipeArgumentError(ValueError):
    """A recipe's command line or config file cannot be parsed: an unknown argument, a missing file."""


def _mark_bad_input(err: BaseException) -> None:
    err._hf_ckd_bad_input = True  # raised while parsing the arguments: the user's input, not a bug


def is_bad_input(err: BaseException) -> bool:
    """Whether ``err`` is one of hf_ckd's clear errors about the user's input, printed without a traceback.

    That is a ``ValueError`` which is one of hf_ckd's error classes (``TrajectoryError``, ``HubError``,
    ``TeacherLoadError``, ``ScheduleError``, ``OptionError``, ``CacheError``, ``SelectionError``, ``DataError``
    ...: every one is a ``ValueError``), or was raised by hf_ckd's own code (the recipes' argument checks and the
    helpers they call, e.g. ``hf_ckd.text``), or while the recipe's arguments were parsed (a dataclass's
    ``__post_init__``, ``TrainingArguments``' own checks). A ``ValueError`` from deeper down (torch, datasets,
    transformers at run time) and every other exception keep their traceback.
    """
    if not isinstance(err, ValueError):
        return False
    if getattr(err, "_hf_ckd_bad_input", False):
        return True
    if any(cls.__module__.split(".")[0] == "hf_ckd" for cls in type(err).__mro__):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = os.path.realpath(tb.tb_frame.f_code.co_filename)
    return where.startswith(_PACKAGE_DIR + os.sep)


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``(debug, argv without our --debug)``: a bare ``--debug`` is hf_ckd's (removed); ``--debug VALUE`` with a
    ``DebugOption`` value is ``TrainingArguments``' (kept) and shows tracebacks too; so does ``HF_CKD_DEBUG=1``."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    kept = []
    for i, arg in enumerate(argv):
        if arg == "--debug":
            debug = True
            following = argv[i + 1] if i + 1 < len(argv) else ""
            if following not in _TRAINING_DEBUG_VALUES:
                continue
        elif arg.startswith("--debug="):
            debug = True
        kept.append(arg)
    return debug, kept


def run_recipe(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` from the command line; returns the exit status.

    Every command-line entry point goes through here: ``hf-ckd RECIPE`` (and ``python -m hf_ckd.scripts``),
    ``python -m hf_ckd.scripts.RECIPE`` and ``python recipes/RECIPE.py``. Bad input (:func:`is_bad_input`) prints
    ``error: <message>`` to stderr, without a traceback, and returns 2; ``--debug`` on the command line or
    ``HF_CKD_DEBUG=1`` in the environment prints the traceback before it. Any other exception propagates with
    its traceback. ``main()`` called from Python is not wrapped: it raises as it always did.
    """
    debug, argv = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    try:
        result = main(argv)
    except Exception as err:
        if not is_bad_input(err):
            raise
        if debug:
            traceback.print_exception(err)
        print(f"error: {err}", file=sys.stderr)
        return 2
    # A recipe that reports rather than trains (hf-ckd check) says its own exit status.
    status = result.get("exit_status") if isinstance(result, dict) else None
    return status if isinstance(status, int) else 0


def _short_parser_errors(parser) -> None:
    """argparse's own errors (a missing required argument, a bad choice) as one ``error:`` line, not the
    hundred-line usage of ``TrainingArguments``; still ``SystemExit(2)``."""

    def error(message: str):
        parser.exit(2, f"error: {message} ('{parser.prog} --help' lists the arguments)\n")

    parser.error = error


def _check_unknown_arguments(parser, argv: list[str]) -> None:
    """Name unknown arguments before anything else: argparse reports missing required arguments first, and
    ``HfArgumentParser`` the unknown ones only once every required one is there."""
    required = [action for action in parser._actions if action.required]
    for action in required:
        action.required = False
    try:
        _, unknown = parser.parse_known_args(argv)
    finally:
        for action in required:
            action.required = True
    if not unknown:
        return
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if not flags:
        raise RecipeArgumentError(
            f"unexpected argument{'s' if len(unknown) > 1 else ''} {' '.join(unknown)} (arguments are --name value "
            "pairs, or a lone .json/.yaml config file)"
        )
    known = [option for action in parser._actions for option in action.option_strings]
    hints = []
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1)
        if close:
            hints.append(
                f"did you mean {close[0]}?" if len(flags) == 1 else f"{flag}: did you mean {close[0]}?"
            )
    raise RecipeArgumentError(
        f"unknown argument{'s' if len(flags) > 1 else ''} {', '.join(flags)}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f"; '{parser.prog} --help' lists the arguments"
    )


def _parse_config_file(parser, path: str) -> tuple[Any, ...]:
    if not os.path.isfile(path):
        raise RecipeArgumentError(f"config file '{path}' does not exist")
    try:
        if path.endswith(".json"):
            return parser.parse_json_file(os.path.abspath(path))
        return parser.parse_yaml_file(os.path.abspath(path))
    except ValueError as err:  # unknown keys, a value a dataclass refuses (JSONDecodeError is one too)
        if type(err).__module__.startswith("json"):
            raise RecipeArgumentError(f"config file '{path}' is not valid JSON: {err}") from err
        _mark_bad_input(err)
        raise
    except TypeError as err:  # a required argument missing: the dataclass's __init__ says which
        raise RecipeArgumentError(f"config file '{path}': {err}") from err
    except Exception as err:
        if type(err).__module__.startswith("yaml"):
            raise RecipeArgumentError(f"config file '{path}' is not valid YAML: {err}") from err
        raise


def parse_recipe_args(parser, argv: Sequence[str]) -> tuple[Any, ...]:
    """Parse ``argv`` with an ``HfArgumentParser``; a lone ``.json``/``.yaml`` argument is a config file.

    An unknown argument is a :class:`RecipeArgumentError` that names it (and the closest known one), even when
    required arguments are missing too; argparse's own errors are one ``error:`` line (``SystemExit(2)``); a
    ``ValueError`` of the arguments' checks is raised as it is, marked as bad input for :func:`run_recipe`.
    """
    argv = list(argv)
    _short_parser_errors(parser)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        return _parse_config_file(parser, argv[0])
    _check_unknown_arguments(parser, argv)
    try:
        return parser.parse_args_into_dataclasses(argv)
    except ValueError as err:
        _mark_bad_input(err)
        raise


@dataclass
class ImageDataArguments:
    """Where the images come from and which columns hold them (the recipes' data arguments)."""

    dataset_name: str | None = field(
        default="uoft-cs/cifar100",
        metadata={"help": "A dataset on the Hub (ignored when --dataset_path is set)."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of the Hub dataset."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "A local dataset with the same columns: a save_to_disk folder, a data folder (imagefolder, "
            "parquet, csv, json) or a data file."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (empty: none)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column. Default: img or image."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column. Default: fine_label (CIFAR-100), label or labels."}
    )
    crop_padding: int = field(
        default=4, metadata={"help": "Images: padding of the random crop (0: no crop)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training rows."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many eval rows."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train even if --output_dir already holds a finished run."}
    )

    def transformed_splits(self, timm_model, raw_train, raw_eval, num_labels: int | None):
        """Check the splits and attach train/eval transforms with ``timm_model``'s input size, mean and std.
        Returns ``(train, eval_or_None, num_labels)``."""
        import timm

        from ..data import image_classification_splits

        data_config = timm.data.resolve_data_config({}, model=timm_model)
        return image_classification_splits(
            raw_train,
            raw_eval,
            self.image_column,
            self.label_column,
            num_labels,
            data_config["mean"],
            data_config["std"],
            data_config["input_size"][-1],
            self.crop_padding,
        )

    def load_splits(self):
        """``(train, eval_or_None)`` raw splits, truncated to ``max_*_samples``."""
        from ..data import get_split, load_dataset_from_args

        raw = load_dataset_from_args(self.dataset_name, self.dataset_config_name, self.dataset_path)
        train = get_split(raw, self.train_split, "train_split")
        evaluation = get_split(raw, self.eval_split, "eval_split") if self.eval_split else None
        if self.max_train_samples is not None:
            train = train.select(range(min(self.max_train_samples, len(train))))
        if evaluation is not None and self.max_eval_samples is not None:
            evaluation = evaluation.select(range(min(self.max_eval_samples, len(evaluation))))
        return train, evaluation


@dataclass
class CifarScheduleDefaults:
    """Mixin for a ``TrainingArguments`` subclass: the standard CIFAR schedule as defaults (SGD momentum
    0.9, lr 0.05, weight decay 5e-4, 240 epochs, batch 64, lr x0.1 at epochs 150/180/210, a checkpoint and
    an evaluation every epoch). Put it before the ``TrainingArguments`` class in the bases."""

    learning_rate: float = field(default=0.05, metadata={"help": "Initial learning rate (SGD)."})
    num_train_epochs: float = field(default=240, metadata={"help": "Epochs to train."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (transformers OptimizerNames)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Trainer's scheduler, used when --lr_decay_epochs is empty."}
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to save a checkpoint: no, epoch or steps."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, epoch or steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw columns for the transforms."}
    )
    lr_decay_epochs: str = field(
        default="150,180,210",
        metadata={"help": "Epochs at which the learning rate is multiplied by lr_decay_rate."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Learning-rate decay factor."})


def log_distributed_setup(trainer) -> None:
    """One line per process: distributed type, process count, device (so a wrong launch shows at once)."""
    accelerator = trainer.accelerator
    logger.info(
        "Distributed type %s, %d processes, device %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device,
    )


def setup_logging(training_args) -> None:
    """Logging as the transformers examples set it up: to stdout, at the process's log level (info on the
    main process unless ``--log_level`` says otherwise), and one line per process on where it runs."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # log_level defaults to "passive", which keeps transformers' level: make it info, as the examples do.
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in ("hf_ckd", "__main__"):  # the library and the recipe (also when run with python -m)
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        "Process rank: %s, device: %s, n_gpu: %s, distributed training: %s, 16-bits training: %s",
        training_args.local_process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.fp16 or training_args.bf16,
    )
    logger.info("Training/evaluation parameters %s", training_args)


def last_checkpoint(output_dir: str, overwrite: bool) -> str | None:
    """The latest complete checkpoint an interrupted run left in ``output_dir`` (resumed as the transformers
    examples do, but skipping, with a warning, the ``checkpoint-N/`` a kill during a save left incomplete:
    ``hf_ckd.data.last_complete_checkpoint``), or ``None`` with ``overwrite`` or when there is none."""
    from hf_ckd.run_folders import last_complete_checkpoint

    if overwrite or not os.path.isdir(output_dir):
        return None
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info("Resuming from %s; pass --overwrite_output_dir to start from scratch.", checkpoint)
    return checkpoint


def resolve_resume(output_dir: str, requested: str | bool | None) -> str | None:
    """``--resume_from_checkpoint`` as the Trainer should get it: ``true`` is the latest complete checkpoint
    of ``output_dir``, a folder must be a complete checkpoint (``hf_ckd.run_folders.resolve_resume_checkpoint``;
    a ``ResumeError`` names the folder and what is missing)."""
    from hf_ckd.run_folders import resolve_resume_checkpoint

    return resolve_resume_checkpoint(output_dir, requested, argument="--resume_from_checkpoint")


def train_and_report(
    trainer, resume_from_checkpoint: str | None = None, perplexity: bool = False, **card_kwargs
) -> dict[str, float]:
    """Train, then save the model, the train and eval metrics (``all_results.json``), the state, and the
    model card, or push to the Hub with ``args.push_to_hub``. Returns the metrics."""
    checkpoint = resolve_resume(
        trainer.args.output_dir, trainer.args.resume_from_checkpoint or resume_from_checkpoint
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = dict(result.metrics)
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = len(trainer.eval_dataset)
        if perplexity and "eval_loss" in eval_metrics:
            try:
                eval_metrics["perplexity"] = math.exp(eval_metrics["eval_loss"])
            except OverflowError:
                eval_metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    card_kwargs.setdefault("model_name", os.path.basename(os.path.normpath(trainer.args.output_dir)))
    if trainer.args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    else:
        trainer.create_model_card(**card_kwargs)
    return metrics
