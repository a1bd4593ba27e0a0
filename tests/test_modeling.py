"""hf_ckd.modeling: one set of "what kind of model is this" rules, on real tiny configs and on models built
from them (configs, models and config.json dicts must agree)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import (
    BartConfig,
    BertConfig,
    GPT2Config,
    T5Config,
    TimmWrapperConfig,
    ViTConfig,
)

from hf_ckd import modeling
from hf_ckd.modeling import auto_model_class, is_causal_lm, is_timm_model, model_task, pipeline_tag

TINY_BERT = {
    "vocab_size": 32,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
}
TINY_GPT2 = {"vocab_size": 32, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2}
TINY_T5 = {"vocab_size": 32, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 1, "num_heads": 2}
TINY_BART = {
    "vocab_size": 32,
    "d_model": 8,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 16,
    "decoder_ffn_dim": 16,
    "max_position_embeddings": 16,
}

CONFIGS = {
    "gpt2 lm head": (GPT2Config(**TINY_GPT2, architectures=["GPT2LMHeadModel"]), "causal-lm"),
    "llama": (transformers.LlamaConfig(architectures=["LlamaForCausalLM"]), "causal-lm"),
    "xlm (causal mapping)": (transformers.XLMConfig(architectures=["XLMWithLMHeadModel"]), "causal-lm"),
    "bert seq cls": (BertConfig(**TINY_BERT, architectures=["BertForSequenceClassification"]), "text-classification"),
    "bert tokens": (BertConfig(**TINY_BERT, architectures=["BertForTokenClassification"]), "token-classification"),
    "bert masked": (BertConfig(**TINY_BERT, architectures=["BertForMaskedLM"]), "masked-lm"),
    "bert decoder": (BertConfig(**TINY_BERT, architectures=["BertLMHeadModel"]), "causal-lm"),
    "bart generation": (BartConfig(**TINY_BART, architectures=["BartForConditionalGeneration"]), "seq2seq-lm"),
    "bart seq cls": (BartConfig(**TINY_BART, architectures=["BartForSequenceClassification"]), "text-classification"),
    "t5": (T5Config(**TINY_T5, architectures=["T5ForConditionalGeneration"]), "seq2seq-lm"),
    "vit": (ViTConfig(architectures=["ViTForImageClassification"]), "image-classification"),
    "timm wrapper": (TimmWrapperConfig(architecture="resnet18", num_labels=4), "image-classification"),
    "no architectures": (BertConfig(**TINY_BERT), None),
    "backbone only": (BertConfig(**TINY_BERT, architectures=["BertModel"]), None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CONFIGS))
def test_model_task_of_configs_and_their_config_json(case, tmp_path):
    config, task = CONFIGS[case]
    assert model_task(config) == task
    config.save_pretrained(tmp_path)  # the same rules on the config.json a checkpoint holds
    assert model_task(json.loads((tmp_path / "config.json").read_text())) == task
    assert model_task(transformers.AutoConfig.from_pretrained(tmp_path)) == task


def tiny_models() -> dict:
    torch.manual_seed(0)
    return {
        "gpt2": (transformers.GPT2LMHeadModel(GPT2Config(**TINY_GPT2)), "causal-lm"),
        "bert decoder": (transformers.BertLMHeadModel(BertConfig(**TINY_BERT, is_decoder=True)), "causal-lm"),
        "bert cls": (transformers.BertForSequenceClassification(BertConfig(**TINY_BERT)), "text-classification"),
        "bert masked": (transformers.BertForMaskedLM(BertConfig(**TINY_BERT)), "masked-lm"),
        "bert tokens": (transformers.BertForTokenClassification(BertConfig(**TINY_BERT)), "token-classification"),
        "t5": (transformers.T5ForConditionalGeneration(T5Config(**TINY_T5)), "seq2seq-lm"),
        "bert backbone": (transformers.BertModel(BertConfig(**TINY_BERT)), None),
        "plain module": (torch.nn.Linear(4, 2), None),
    }  # fmt: skip


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.mark.parametrize("case", list(tiny_models()))
def test_model_task_of_models_matches_their_saved_config(case, models, tmp_path):
    model, task = models[case]
    assert model_task(model) == task
    assert is_causal_lm(model) == (task == "causal-lm")
    if isinstance(model, transformers.PreTrainedModel):
        model.save_pretrained(tmp_path)  # writes architectures: the checkpoint is classified as the model
        assert model_task(transformers.AutoConfig.from_pretrained(tmp_path)) == task


def test_loss_type_decides_for_a_custom_class():
    """A class whose name says nothing is a causal LM when it declares the causal loss (rule 4)."""

    class Tiny(torch.nn.Module):
        loss_type = "ForCausalLM"

    class TinySeq2Seq(Tiny):
        loss_type = "ForConditionalGeneration"  # transformers scores it with the causal loss too

        def __init__(self, encoder_decoder):
            super().__init__()
            self.config = T5Config(**TINY_T5) if encoder_decoder else GPT2Config(**TINY_GPT2)

    assert model_task(Tiny()) == "causal-lm" and is_causal_lm(Tiny())
    assert is_causal_lm(TinySeq2Seq(encoder_decoder=False))
    assert not is_causal_lm(TinySeq2Seq(encoder_decoder=True))  # its own loss does not shift the labels
    assert model_task(TinySeq2Seq(encoder_decoder=True)) == "seq2seq-lm"
    Tiny.loss_type = "ForSequenceClassification"
    assert model_task(Tiny()) == "text-classification" and not is_causal_lm(Tiny())


def test_timm_models_wrapped_configs_and_bare(models):
    import timm

    from hf_ckd.models import timm_classifier

    student = timm_classifier("cifar_resnet20", 4)
    assert is_timm_model(student) and is_timm_model(student.config)
    assert is_timm_model({"model_type": "timm_wrapper", "architecture": "cifar_resnet20"})
    assert model_task(student) == "image-classification" and not is_causal_lm(student)
    assert not is_timm_model(student.timm_model)  # a bare timm module is not a transformers model
    assert not is_timm_model(timm.create_model("cifar_resnet20", num_classes=4))
    assert not any(is_timm_model(model) for model, _ in models.values())

    class Impostor(torch.nn.Module):  # a timm_wrapper config but no timm model inside
        config = TimmWrapperConfig(architecture="resnet18")

    assert not is_timm_model(Impostor())


def test_auto_model_class_rebuilds_each_task(models):
    for model, task in models.values():
        if task is None:
            continue
        auto = auto_model_class(model.config, task)
        assert auto.__name__ == modeling.AUTO_CLASS_NAMES[task]
        assert type(auto.from_config(model.config)) is type(model)
    gpt2, _ = models["gpt2"]
    gpt2.config.architectures = ["GPT2LMHeadModel"]
    assert auto_model_class(gpt2.config) is transformers.AutoModelForCausalLM  # task read from the config
    timm_config = TimmWrapperConfig(architecture="resnet18", num_labels=4)
    assert auto_model_class(timm_config) is transformers.AutoModelForImageClassification
    # No task: the class the architecture names, else None.
    assert auto_model_class(BertConfig(architectures=["BertModel"])) is transformers.BertModel
    assert auto_model_class(BertConfig(architectures=["NoSuchModel"])) is None
    assert auto_model_class(BertConfig()) is None


def test_pipeline_tag(models):
    assert pipeline_tag(models["gpt2"][0]) == "text-generation"
    assert pipeline_tag(models["bert masked"][0]) == "fill-mask"
    assert pipeline_tag(models["t5"][0]) == "text2text-generation"
    assert pipeline_tag(models["bert cls"][0]) == "text-classification"
    assert pipeline_tag(models["plain module"][0]) is None
    # A task outside modeling.TASKS: transformers' own model-card mapping.
    qa = transformers.BertForQuestionAnswering(BertConfig(**TINY_BERT))
    assert model_task(qa) is None and pipeline_tag(qa) == "question-answering"


def test_import_is_light():
    code = (
        "import sys, hf_ckd.modeling; "
        "heavy = [m for m in ('torch', 'transformers', 'timm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
