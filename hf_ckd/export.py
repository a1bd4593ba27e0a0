"""Publishing a distilled student: a model card that records its teachers' lineage, and timm's own Hub
format for timm students.

``CheckpointDistillTrainer.create_model_card`` (which ``Trainer.push_to_hub`` calls) writes the card that
:func:`build_model_card` returns; ``CheckpointDistillTrainer.save_model`` calls :func:`export_timm_folder` on
the final model folder of a ``TimmWrapperForImageClassification`` student, so the one folder a push uploads
loads with ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and with
``AutoModelForImageClassification.from_pretrained("ORG/NAME")``. See ``docs/publishing.md``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ._constants import (
    CARD_TAGS,
    CHECKPOINT_DIR_RE,
    CONFIG_NAME,
    PAPER,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
)
from ._version import __version__
from .modeling import AUTO_CLASS_NAMES, PIPELINE_TAGS, is_timm_model, pipeline_tag
from .selection import SelectionError, load_selection

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm_model."
# pretrained_cfg entries that describe the weights timm's registry points at, not the distilled student.
SOURCE_WEIGHT_KEYS = ("tag", "license", "hf_hub_id", "url", "file", "source")
# Logged eval_* entries that are timings or counters, not metrics of the model.
NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "samples", "epoch", "step")
# Pipeline tag -> the Auto class the card's "How to load" uses (hf_ckd.modeling's tasks, and a few more).
AUTO_CLASSES = {
    **{PIPELINE_TAGS[task]: auto for task, auto in AUTO_CLASS_NAMES.items()},
    "question-answering": "AutoModelForQuestionAnswering",
    "audio-classification": "AutoModelForAudioClassification",
}


# ---- timm's Hub format -----------------------------------------------------------------------------


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Trainer ``checkpoint-<step>`` folder (kept in Trainer's format for resume)."""
    return bool(CHECKPOINT_DIR_RE.match(os.path.basename(os.path.normpath(os.fspath(path)))))


def timm_hub_config(model: Any, saved: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a timm student that both timm and transformers read.

    Args:
        model: the ``TimmWrapperForImageClassification`` student.
        saved: the config transformers' ``save_pretrained`` wrote (``model_type``, ``architecture``,
            ``num_classes``, ``label_names``, ``model_args`` ...).

    Returns:
        ``saved`` plus what timm's own ``save_for_hf`` writes: ``pretrained_cfg`` (input size, mean/std,
        interpolation, crop, classifier name), ``num_features``, ``global_pool`` and the reconstruction
        ``model_args`` (e.g. ``in_chans``) — without ``model_args.num_classes``, which transformers' wrapper
        passes to ``timm.create_model`` itself (a second value is a ``TypeError``).
    """
    from timm.models._hub import save_config_for_hf  # what timm.models.save_for_hf writes config.json with

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, CONFIG_NAME)
        model_config = {"label_names": list(saved["label_names"])} if saved.get("label_names") else None
        save_config_for_hf(
            model.timm_model,
            path,
            model_config=model_config,
            model_args=dict(getattr(model.config, "model_args", None) or {}),
        )
        with open(path, encoding="utf-8") as f:
            timm_config = json.load(f)
    timm_config["model_args"] = {
        k: v for k, v in (timm_config.get("model_args") or {}).items() if k != "num_classes"
    }
    for key in SOURCE_WEIGHT_KEYS:
        timm_config["pretrained_cfg"].pop(key, None)
    return {**saved, **timm_config}


def _rewrite_safetensors(path: str, rename) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    tensors = {rename(k): v for k, v in load_file(path).items()}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata=metadata or {"format": "pt"})
    os.replace(tmp, path)


def _write_json(path: str, content: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def export_timm_folder(folder: str | os.PathLike, model: Any) -> bool:
    """Rewrite a folder that ``save_pretrained`` wrote for a timm student into the format both loaders read.

    transformers saves a ``TimmWrapperForImageClassification`` built from a config with weight names
    ``timm_model.<name>`` and no ``pretrained_cfg``, which ``timm.create_model("local-dir:…"/"hf-hub:…")``
    cannot load. This strips the prefix from every weight name (``model.safetensors``, or each shard and the
    index) — transformers adds it back when loading (the ``timm/…`` repos on the Hub are stored this way) —
    and merges timm's config into ``config.json`` (:func:`timm_hub_config`). Label names survive both loaders.

    Returns ``False`` (and leaves the folder in transformers' format, with a warning) when timm cannot
    describe the model (no ``pretrained_cfg``, or model arguments that are not JSON-serialisable).
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_NAME)
    with open(config_path, encoding="utf-8") as f:
        saved = json.load(f)
    try:
        config = timm_hub_config(model, saved)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        logger.warning(
            "Saved %s in transformers' format only: timm cannot describe this %s model (%s: %s), so "
            "timm.create_model('hf-hub:...') will not load it.",
            folder,
            saved.get("architecture"),
            type(err).__name__,
            err,
        )
        return False

    def strip(key: str) -> str:
        return key.removeprefix(TIMM_PREFIX)

    index_path = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        files = sorted(set(index["weight_map"].values()))
        index["weight_map"] = {strip(k): v for k, v in index["weight_map"].items()}
    else:
        index, files = None, [SAFE_WEIGHTS_NAME]
    for name in files:
        _rewrite_safetensors(os.path.join(folder, name), strip)
    if index is not None:
        _write_json(index_path, index)
    _write_json(config_path, config)
    return True


# ---- model card ------------------------------------------------------------------------------------


def _listify(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id (``ORG/NAME`` or a bare name) rather than a local path."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def teacher_repo_id(checkpoint: Any) -> str | None:
    """The Hub repo a teacher checkpoint (a ``Checkpoint`` or its ``describe()`` record) was read from, or
    ``None`` for a local checkpoint."""
    hub = getattr(checkpoint, "hub", None)
    if hub is not None:
        return hub.repo_id
    source = (
        checkpoint.get("source") if isinstance(checkpoint, Mapping) else getattr(checkpoint, "source", "")
    )
    return source if is_hub_id(source) and source.count("/") == 1 else None


def latest_eval_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The last evaluation's metrics in a Trainer ``log_history``, without the ``eval_`` prefix
    (``{"loss": 0.41, "accuracy": 0.87}``); timings and sample counts are left out."""
    for entry in reversed(log_history):
        metrics = {
            key.removeprefix("eval_"): float(value)
            for key, value in entry.items()
            if key.startswith("eval_")
            and key.removeprefix("eval_") not in NOT_METRICS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        }
        if metrics:
            return metrics
    return {}


def selection_summary(path: str) -> dict[str, Any]:
    """What a ``selection.json`` says, compactly: estimator, representation, selected names, warnings, and
    one row per scored checkpoint (name, step, fraction, accuracy, I(X;F), I(Y;F), score)."""
    content = load_selection(path)
    keys = ("name", "step", "fraction", "accuracy", "i_xf", "i_yf", "score")
    return {
        "file": os.path.basename(path),
        "estimator": content.get("estimator"),
        "representation": content.get("representation"),
        "selected": list(content["selected"]),
        "scores": [{k: row.get(k) for k in keys} for row in content.get("checkpoints", [])],
        "warnings": list(content.get("warnings", [])),
    }


def library_name(model: Any) -> str | None:
    """``timm`` for timm students, ``transformers`` for other transformers models, ``None`` otherwise."""
    if is_timm_model(model):
        return "timm"
    from transformers import PreTrainedModel

    return "transformers" if isinstance(model, PreTrainedModel) else None


def _round(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _checkpoint_entry(described: Mapping[str, Any], repo_id: str | None) -> dict[str, Any]:
    entry = {k: described.get(k) for k in ("name", "step", "fraction", "weight")}
    entry["source"] = repo_id or described.get("source")
    for key in ("revision", "subfolder"):
        if described.get(key) is not None:
            entry[key] = described[key]
    return entry


def _lineage_section(
    lineage: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], repos: list[str]
) -> str:
    teacher = ", ".join(f"[{r}](https://huggingface.co/{r})" for r in repos) or f"`{lineage['teacher']}`"
    with_subfolder = any("subfolder" in e for e in entries)
    header = "| checkpoint | step | fraction of training | weight | revision |" + (
        " subfolder |" if with_subfolder else ""
    )
    lines = [
        "## Distillation",
        "",
        f"Distilled with hf_ckd from teacher {teacher} (temperature {lineage['temperature']}, alpha "
        f"{lineage['alpha']}, ensemble average `{lineage['average']}`).",
        "",
        header + " source |",
        "|---" * (6 + with_subfolder) + "|",
    ]
    for e in entries:
        row = f"| {e['name']} | {e['step']} | {e['fraction']:.3f} | {e['weight']:.3f} | {_cell(e.get('revision'))} |"
        if with_subfolder:
            row += f" {_cell(e.get('subfolder'))} |"
        lines.append(row + f" `{e['source']}` |")
    schedule = lineage.get("schedule") or {}
    if schedule.get("kind", "static") != "static":
        options = ", ".join(f"{k}={v}" for k, v in (schedule.get("options") or {}).items())
        lines += [
            "",
            f"Teacher schedule `{schedule['kind']}`{f' ({options})' if options else ''}: a checkpoint's weight is "
            "its share of the student's steps.",
        ]
        if schedule.get("segments"):
            lines += ["", "| student steps | teaching checkpoints (weight) |", "|---|---|"]
            for seg in schedule["segments"]:
                active = ", ".join(f"{name} ({w:.3f})" for name, w in seg["checkpoints"].items())
                lines.append(f"| ({seg['from_step']}, {seg['to_step']}] | {active} |")
    return "\n".join(lines) + "\n"


def _selection_section(summary: Mapping[str, Any] | None, path: str | None) -> str:
    if path is None:
        return ""
    if summary is None:
        return (
            f"\n### Teacher selection\n\nThe checkpoints were chosen by `{path}`, which could not be read.\n"
        )
    chosen = ", ".join(f"**{name}**" for name in summary["selected"])
    lines = [
        "",
        "### Teacher selection",
        "",
        f"Chosen by MI-based selection (`{summary['file']}`, estimator `{summary['estimator']}` on "
        f"`{summary['representation']}` features; score = I(X;F)/max + I(Y;F)/max over the candidates): {chosen}.",
        "",
        "| checkpoint | step | fraction | teacher accuracy | I(X;F) | I(Y;F) | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["scores"]:
        cells = [row["name"], row["step"], *(_cell(row[k]) for k in ("fraction", "accuracy", "i_xf", "i_yf"))]
        lines.append("| " + " | ".join(map(str, cells)) + f" | {_cell(row['score'])} |")
    lines += [f"\n> {warning}" for warning in summary["warnings"]]
    return "\n".join(lines) + "\n"


def _load_section(model: Any, repo_id: str, task: str | None, processing_class: Any) -> str:
    if is_timm_model(model):
        architecture = model.config.architecture
        from timm.models import model_entrypoint

        registered_here = model_entrypoint(architecture).__module__.startswith("hf_ckd")
        register = (
            "import hf_ckd.models  # registers hf_ckd's CIFAR architectures with timm\n"
            if registered_here
            else ""
        )
        return (
            "## How to load\n\nWith timm (the weights and `config.json` are in timm's own Hub format):\n\n"
            f"```python\nimport timm\n{register}\n"
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()\n'
            "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))\n```\n\n"
            "With transformers:\n\n"
            "```python\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
            f'model = AutoModelForImageClassification.from_pretrained("{repo_id}")\n'
            f'processor = AutoImageProcessor.from_pretrained("{repo_id}")\n```\n'
        )
    if library_name(model) == "transformers":
        auto = AUTO_CLASSES.get(task or "", type(model).__name__)
        lines = [f"from transformers import {auto}", "", f'model = {auto}.from_pretrained("{repo_id}")']
        kind = type(processing_class).__name__ if processing_class is not None else ""
        if "Tokenizer" in kind:
            lines[0] += ", AutoTokenizer"
            lines.append(f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")')
        return "## How to load\n\n```python\n" + "\n".join(lines) + "\n```\n"
    return (
        "## How to load\n\n`model.safetensors` holds the state dict of a plain PyTorch module "
        f"(`{type(model).__name__}`): build the architecture, then\n"
        "`model.load_state_dict(safetensors.torch.load_file(path))`.\n"
    )


def build_model_card(
    trainer: Any,
    *,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    dataset_name: str | list[str] | None = None,
) -> ModelCard:
    """The model card of a student trained by a ``CheckpointDistillTrainer``, lineage included.

    The keyword arguments are those of ``transformers.Trainer.create_model_card`` (``dataset_name`` is an
    alias of ``dataset``): ``dataset`` names the data in the text, ``dataset_tags`` (or a ``dataset`` that is
    a Hub id, not a local path) fills the ``datasets`` metadata, ``tasks`` overrides the task read from the
    model class, ``finetuned_from`` is the Hub model the student started from.

    Metadata: ``library_name`` (``timm`` / ``transformers``), ``tags`` (``hf-ckd``, ``knowledge-distillation``
    ...), ``pipeline_tag``, ``datasets``, ``base_model`` (the teachers' Hub repos, and ``finetuned_from``;
    absent for local teachers), ``model-index`` (the last evaluation's metrics, when a dataset and a task are
    known) and ``distillation`` (teacher, checkpoints with name/step/fraction/weight/revision/source, averaging,
    temperature, alpha, selection). No ``base_model_relation`` is written: the Hub accepts only ``adapter``,
    ``merge``, ``quantized`` and ``finetune``, and none of them is distillation.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    lineage, args = trainer.lineage, trainer.args
    model_name = model_name or os.path.basename(os.path.normpath(args.output_dir))
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id or f"<user>/{model_name}"
    task = (_listify(tasks) or [None])[0] or pipeline_tag(model)
    library = library_name(model)

    # lineage["checkpoints"] lists every checkpoint that taught (all of a schedule's, not only the active set),
    # as the teacher source does.
    by_name = {c.name: c for c in trainer.teacher_source.checkpoints}
    repos_by_checkpoint = [teacher_repo_id(by_name.get(d["name"], d)) for d in lineage["checkpoints"]]
    teacher_repos = list(dict.fromkeys(r for r in repos_by_checkpoint if r))
    entries = [
        _checkpoint_entry(described, repo)
        for described, repo in zip(lineage["checkpoints"], repos_by_checkpoint)
    ]
    if finetuned_from is None:
        name_or_path = getattr(getattr(model, "config", None), "_name_or_path", "")
        finetuned_from = name_or_path if is_hub_id(name_or_path) else None
    base_models = list(dict.fromkeys(_listify(finetuned_from) + teacher_repos))

    names = _listify(dataset) or _listify(dataset_name)
    hub_datasets = _listify(dataset_tags) or [d for d in names if is_hub_id(d)]
    names = names or hub_datasets

    selection, selection_path = None, lineage.get("teacher_selection")
    if selection_path:
        try:
            selection = selection_summary(selection_path)
        except SelectionError as err:
            logger.warning("The model card cannot list the teacher selection: %s", err)

    distillation: dict[str, Any] = {
        "teacher": lineage["teacher"],
        "checkpoints": entries,
        "ensemble_average": lineage["average"],
        "temperature": lineage["temperature"],
        "alpha": lineage["alpha"],
    }
    if teacher_repos:
        distillation["teacher_repos"] = teacher_repos
    if lineage.get("schedule"):
        distillation["schedule"] = lineage["schedule"]
    if selection is not None:
        distillation["selection"] = {
            "estimator": selection["estimator"],
            "representation": selection["representation"],
            "selected": selection["selected"],
            "scores": {row["name"]: _round(row["score"]) for row in selection["scores"]},
        }

    metrics = latest_eval_metrics(trainer.state.log_history)
    eval_results = None
    if metrics and names and task:
        dataset_type = (hub_datasets or [os.path.basename(os.path.normpath(names[0]))])[0]
        eval_results = [
            EvalResult(
                task_type=task,
                dataset_type=dataset_type,
                dataset_name=names[0],
                dataset_config=(_listify(dataset_args) or [None])[0],
                metric_type=metric,
                metric_name=metric,
                metric_value=value,
            )
            for metric, value in metrics.items()
        ]
    model_tags = list(getattr(model, "model_tags", None) or [])
    card_tags = list(dict.fromkeys([*_listify(tags), *model_tags, *CARD_TAGS, *([task] if task else [])]))
    data = ModelCardData(
        language=language,
        license=license,
        library_name=library,
        pipeline_tag=task,
        tags=card_tags,
        datasets=hub_datasets or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        distillation=distillation,
    )
    text = _card_text(model, model_name, names, metrics, lineage, entries, teacher_repos)
    text += _selection_section(selection, selection_path)
    text += "\n" + _load_section(model, repo_id, task, trainer.processing_class)
    text += "\n" + _training_section(trainer, lineage)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def _describe_model(model: Any) -> str:
    """``A timm `cifar_wrn_16_2` image classifier`` / ``A `GPT2LMHeadModel` model``: the card's subject."""
    if is_timm_model(model):
        return f"A timm `{model.config.architecture}` image classifier"
    return f"A `{type(model).__name__}` model"


def _card_text(model, model_name, names, metrics, lineage, entries, repos) -> str:
    schedule = lineage.get("schedule") or {}
    if schedule.get("kind", "static") != "static":
        teachers = f"a `{schedule['kind']}` schedule over {len(entries)} checkpoints"
    elif len(entries) > 1:
        teachers = f"a snapshot ensemble of {len(entries)} checkpoints"
    elif entries[0]["fraction"] == 1:
        teachers = "the final checkpoint"
    else:
        teachers = f"checkpoint `{entries[0]['name']}` (at {entries[0]['fraction']:.0%} of training)"
    what = _describe_model(model)
    on = f"the `{names[0]}` dataset" if names else "an unspecified dataset"
    text = [
        f"\n# {model_name}\n",
        f"{what} distilled with hf_ckd (checkpoint knowledge distillation, [{PAPER[0]}]"
        f"(https://arxiv.org/abs/{PAPER[1]})) from {teachers} of its teacher's training run, on {on}. "
        "Loss: alpha * CE + (1 - alpha) * tau^2 * KL(P_ens^tau || p_S^tau).",
        "",
    ]
    if metrics:
        text += ["## Evaluation", "", "The student at the end of training:", "", "| metric | value |"]
        text += ["|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in metrics.items()), ""]
    return "\n".join(text) + "\n" + _lineage_section(lineage, entries, repos)


def _training_section(trainer, lineage) -> str:
    import torch
    import transformers
    from transformers.modelcard import (
        extract_hyperparameters_from_trainer,
        make_markdown_table,
        parse_log_history,
    )

    hyperparameters = {
        **extract_hyperparameters_from_trainer(trainer),
        "temperature": lineage["temperature"],
        "alpha": lineage["alpha"],
        "ensemble_average": lineage["average"],
    }
    lines = ["## Training hyperparameters", ""]
    lines += [f"- {name}: {str(value).replace(chr(10), ' ')}" for name, value in hyperparameters.items()]
    _, eval_lines, _ = parse_log_history(trainer.state.log_history)
    if eval_lines:
        lines += ["", "## Training results", "", make_markdown_table(eval_lines).rstrip("\n")]
    lines += ["", "## Framework versions", "", f"- hf_ckd {__version__}"]
    lines += [f"- Transformers {transformers.__version__}", f"- PyTorch {torch.__version__}"]
    if is_timm_model(trainer.accelerator.unwrap_model(trainer.model)):
        import timm

        lines.append(f"- timm {timm.__version__}")
    return "\n".join(lines) + "\n"
