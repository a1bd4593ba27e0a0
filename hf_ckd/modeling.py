"""What kind of model is this: one set of rules for every part of hf_ckd that asks.

The trainer asks whether a student's labels are shifted (a causal LM), teacher loading which ``AutoModel…``
class rebuilds a checkpoint, the model card which pipeline tag and library to write, and the recipes which
task a teacher checkpoint was trained for. They all call this module, so a model is classified the same way
everywhere. Every function takes a model (``torch.nn.Module``, usually a ``PreTrainedModel``), a
``PretrainedConfig``, or a ``config.json`` loaded as a dict.

The rules, first match wins:

1. a ``timm_wrapper`` config (``TimmWrapperForImageClassification``) is ``image-classification``;
2. the architecture's name — the model's class, or a config's first ``architectures`` entry — by suffix:
   ``…ForSequenceClassification``, ``…ForTokenClassification``, ``…ForImageClassification``,
   ``…ForMaskedLM``, ``…ForCausalLM``;
3. else by transformers' own Auto mappings of class names (``GPT2LMHeadModel`` is a causal LM,
   ``BartForConditionalGeneration`` a sequence-to-sequence LM, ...);
4. models only: the ``loss_type`` transformers gave the model (a custom class that declares
   ``loss_type = "ForCausalLM"`` is a causal LM).

An encoder-decoder model is never ``causal-lm`` (its own loss does not shift the labels): its generative
tasks are ``seq2seq-lm``. Anything else (a plain ``nn.Module``, a config without ``architectures``) is
``None``. Importing this module is cheap: transformers is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CAUSAL_LM = "causal-lm"
MASKED_LM = "masked-lm"
SEQ2SEQ_LM = "seq2seq-lm"
TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
IMAGE_CLASSIFICATION = "image-classification"
TASKS = (CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, IMAGE_CLASSIFICATION)

# Class-name suffix -> task (rule 2).
SUFFIX_TASKS = (
    ("ForSequenceClassification", TEXT_CLASSIFICATION),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForImageClassification", IMAGE_CLASSIFICATION),
    ("ForMaskedLM", MASKED_LM),
    ("ForCausalLM", CAUSAL_LM),
)
# Task -> the transformers Auto class that builds it.
AUTO_CLASS_NAMES = {
    CAUSAL_LM: "AutoModelForCausalLM",
    MASKED_LM: "AutoModelForMaskedLM",
    SEQ2SEQ_LM: "AutoModelForSeq2SeqLM",
    TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    IMAGE_CLASSIFICATION: "AutoModelForImageClassification",
}
# Task -> the Hub pipeline tag of a model card.
PIPELINE_TAGS = {
    CAUSAL_LM: "text-generation",
    MASKED_LM: "fill-mask",
    SEQ2SEQ_LM: "text2text-generation",
    TEXT_CLASSIFICATION: "text-classification",
    TOKEN_CLASSIFICATION: "token-classification",
    IMAGE_CLASSIFICATION: "image-classification",
}


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "parameters") and not isinstance(obj, Mapping)


def _config(obj: Any) -> Any:
    """The config of a model, or ``obj`` itself when it is a config (object or dict)."""
    return getattr(obj, "config", None) if _is_model(obj) else obj


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def architecture(obj: Any) -> str | None:
    """The architecture's class name: a model's class, or a config's first ``architectures`` entry."""
    if _is_model(obj):
        return type(obj).__name__
    return (_get(obj, "architectures") or [None])[0]


def is_encoder_decoder(obj: Any) -> bool:
    """Whether the model (or config) is an encoder-decoder (``config.is_encoder_decoder``)."""
    return bool(_get(_config(obj), "is_encoder_decoder"))


def _task_of_name(name: str | None) -> str | None:
    if not name:
        return None
    for suffix, task in SUFFIX_TASKS:
        if name.endswith(suffix):
            return task
    return None


def _task_from_auto_mappings(name: str, encoder_decoder: bool) -> str | None:
    from transformers.models.auto import modeling_auto as auto

    def names(mapping: Mapping[str, Any]) -> set[str]:
        return {n for v in mapping.values() for n in ((v,) if isinstance(v, str) else v)}

    if encoder_decoder and name in names(auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES):
        return SEQ2SEQ_LM
    for mapping, task in (
        (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, CAUSAL_LM),
        (auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, MASKED_LM),
        (auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, SEQ2SEQ_LM),
        (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, TEXT_CLASSIFICATION),
        (auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, TOKEN_CLASSIFICATION),
        (auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, IMAGE_CLASSIFICATION),
    ):
        if name in names(mapping):
            return task
    return None


def _task_from_loss_type(model: Any) -> str | None:
    loss_type = getattr(model, "loss_type", None)
    if not isinstance(loss_type, str):
        return None
    task = _task_of_name(loss_type)
    if task is None:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

        task = CAUSAL_LM if LOSS_MAPPING.get(loss_type) is ForCausalLMLoss else None
    return task


def model_task(obj: Any) -> str | None:
    """The task a model (or a config, or a ``config.json`` dict) is built for, or ``None``.

    One of ``causal-lm``, ``masked-lm``, ``seq2seq-lm``, ``text-classification``, ``token-classification``,
    ``image-classification`` (the rules are in the module docstring)::

        model_task(GPT2Config(architectures=["GPT2LMHeadModel"]))  # 'causal-lm'
        model_task(BertForSequenceClassification(config))  # 'text-classification'
        model_task(torch.nn.Linear(2, 2))  # None
    """
    config = _config(obj)
    if _get(config, "model_type") == "timm_wrapper":
        return IMAGE_CLASSIFICATION
    encoder_decoder = is_encoder_decoder(obj)
    name = architecture(obj)
    task = _task_of_name(name)
    if task is None and name:
        task = _task_from_auto_mappings(name, encoder_decoder)
    if task is None and _is_model(obj):
        task = _task_from_loss_type(obj)
    if task == CAUSAL_LM and encoder_decoder:
        return SEQ2SEQ_LM
    return task


def is_causal_lm(model: Any) -> bool:
    """Whether the model's own loss scores position t against label t+1 (a decoder-only language model):
    its logits and labels need the causal shift before a token-level loss."""
    return model_task(model) == CAUSAL_LM


def is_timm_model(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``TimmWrapper…`` model (it holds a timm model in ``timm_model``) or
    the ``timm_wrapper`` config of one. A bare timm ``nn.Module`` is not: hf_ckd wraps timm students
    (``hf_ckd.models.timm_classifier``) so that they save, load and push as transformers models."""
    if _get(_config(obj), "model_type") != "timm_wrapper":
        return False
    return hasattr(obj, "timm_model") if _is_model(obj) else True


def auto_model_class(obj: Any, task: str | None = None) -> type | None:
    """The transformers Auto class that rebuilds a model of this config (or ``task``, when given): its
    task's ``AutoModelFor…`` class, else the transformers class the architecture names, else ``None``."""
    import transformers

    task = task or model_task(obj)
    if task in AUTO_CLASS_NAMES:
        return getattr(transformers, AUTO_CLASS_NAMES[task])
    name = architecture(obj)
    if name and hasattr(transformers, name):
        return getattr(transformers, name)
    return None


def pipeline_tag(obj: Any) -> str | None:
    """The Hub pipeline tag of a model card (``text-generation`` for a causal LM ...); for tasks outside
    :data:`TASKS` (question answering, audio ...), the tag transformers' own model cards give the class."""
    task = model_task(obj)
    if task is not None:
        return PIPELINE_TAGS[task]
    name = architecture(obj)
    if not name:
        return None
    from transformers.modelcard import TASK_MAPPING

    for tag, mapping in TASK_MAPPING.items():
        if name in {n for v in mapping.values() for n in ((v,) if isinstance(v, str) else v)}:
            return tag
    return None


POSITION_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx")


def max_positions(config: Any) -> int | None:
    """The number of positions a config's model embeds (``max_position_embeddings``, ``n_positions`` or
    ``n_ctx``), or ``None`` when it has no such limit."""
    for name in POSITION_ATTRIBUTES:
        value = _get(config, name)
        if isinstance(value, int) and value > 0:
            return value
    return None
