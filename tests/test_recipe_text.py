"""hf_ckd.scripts.distill_text (`hf-ckd distill_text`, `python recipes/distill_text.py`) end to end, offline: a word-level tokenizer, local text datasets (save_to_disk and
JSON lines), BERT classifier and GPT-2 causal-LM teacher trajectories trained with a plain Trainer, and
students built from a config.json alone. Bad input stops before anything is written to output_dir."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import trainer_args
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from hf_ckd import TeacherLoadError, TrajectoryError
from hf_ckd.data import DataError, tokenize_for_causal_lm

# The launcher kept in recipes/ (python recipes/distill_text.py ...); the recipe is hf_ckd.scripts.distill_text.
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill_text.py"

NOUNS = ["movie", "film", "plot", "story", "actor", "scene", "music", "ending", "cast", "script"]
FILLER = [
    "the",
    "a",
    "this",
    "that",
    "was",
    "is",
    "felt",
    "seemed",
    "quite",
    "very",
    "really",
    "and",
    "but",
    "so",
]
POSITIVE = ["great", "good", "excellent", "wonderful", "superb"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]
MAX_LENGTH, BLOCK = 24, 16


@pytest.fixture(scope="module")
def recipe():
    return importlib.import_module("hf_ckd.scripts.distill_text")


# ---- tokenizer and data ----------------------------------------------------------------------------


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate([*SPECIALS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        model_max_length=64,
    )


def sentiment_rows(n: int, seed: int) -> dict[str, list]:
    """Filler words plus two marker words of the label's sentiment (0 negative, 1 positive)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER + NOUNS, size=int(rng.integers(4, 10))))
        for marker in rng.choice(POSITIVE if label else NEGATIVE, size=2):
            words.insert(int(rng.integers(len(words) + 1)), str(marker))
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}


def lm_rows(n: int, seed: int) -> dict[str, list]:
    """Templated sentences: the structure is predictable, the words are not."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        adjectives = POSITIVE if rng.integers(2) else NEGATIVE
        a, b = rng.choice(NOUNS, size=2)
        x, y = rng.choice(adjectives, size=2)
        texts.append(f"the {a} was {x} and the {b} was {y} .")
    return {"text": texts}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tokenizer, datasets, student configs: everything but the teachers."""
    root = tmp_path_factory.mktemp("recipe_text")
    tokenizer = word_tokenizer([*NOUNS, *FILLER, *POSITIVE, *NEGATIVE, "."])
    tokenizer.save_pretrained(root / "tokenizer")
    other = word_tokenizer([*reversed(NOUNS), *FILLER, *POSITIVE, *NEGATIVE, "."])  # same size, other ids
    other.save_pretrained(root / "other_tokenizer")

    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    DatasetDict(
        {
            "train": Dataset.from_dict(sentiment_rows(512, seed=0), features=features),
            "validation": Dataset.from_dict(sentiment_rows(128, seed=1), features=features),
        }
    ).save_to_disk(root / "sentiment")
    rows = sentiment_rows(256, seed=2)
    with open(root / "sentiment.jsonl", "w", encoding="utf-8") as f:
        for text, label in zip(rows["text"], rows["label"]):
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    DatasetDict(
        {
            "train": Dataset.from_dict(lm_rows(600, seed=0)),
            "validation": Dataset.from_dict(lm_rows(100, seed=1)),
        }
    ).save_to_disk(root / "sentences")

    vocab = len(tokenizer)
    BertConfig(**bert_kwargs(vocab, hidden=16, layers=1)).save_pretrained(root / "student_bert")
    GPT2Config(**gpt2_kwargs(vocab, hidden=16, layers=1)).save_pretrained(root / "student_gpt2")
    return {"root": root, "tokenizer": tokenizer, "vocab": vocab}


def bert_kwargs(vocab: int, hidden: int, layers: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 32,
        "num_labels": 2,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def gpt2_kwargs(vocab: int, hidden: int, layers: int) -> dict:
    return {
        "vocab_size": vocab,
        "n_positions": 32,
        "n_embd": hidden,
        "n_layer": layers,
        "n_head": 2,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": SPECIALS.index("[CLS]"),
        "eos_token_id": SPECIALS.index("[CLS]"),
    }


# ---- teachers: plain transformers.Trainer runs that keep their checkpoints ------------------------------


def train_teacher(model, train, validation, output_dir, collator, tokenizer=None) -> str:
    args = TrainingArguments(
        **trainer_args(
            output_dir,
            max_steps=45,
            save_strategy="steps",
            save_steps=15,
            eval_strategy="steps",
            eval_steps=15,
        )
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_state()
    return str(output_dir)


@pytest.fixture(scope="module")
def bert_teacher(workspace):
    """A sequence-classification trajectory whose checkpoints carry the tokenizer."""
    import torch

    from hf_ckd.data import tokenize_for_classification

    tokenizer, root = workspace["tokenizer"], workspace["root"]
    data = DatasetDict.load_from_disk(root / "sentiment")
    train, validation = (
        tokenize_for_classification(data[s], tokenizer, "text", "label", MAX_LENGTH)
        for s in ("train", "validation")
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**bert_kwargs(workspace["vocab"], hidden=32, layers=2)))
    return train_teacher(
        model, train, validation, root / "bert_teacher", DataCollatorWithPadding(tokenizer), tokenizer
    )


@pytest.fixture(scope="module")
def gpt2_teacher(workspace):
    """A causal-LM trajectory saved without a tokenizer (the recipe gets --tokenizer_name)."""
    import torch

    tokenizer, root = workspace["tokenizer"], workspace["root"]
    data = DatasetDict.load_from_disk(root / "sentences")
    train, validation = (
        tokenize_for_causal_lm(data[s], tokenizer, "text", BLOCK) for s in ("train", "validation")
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**gpt2_kwargs(workspace["vocab"], hidden=32, layers=2)))
    return train_teacher(model, train, validation, root / "gpt2_teacher", default_data_collator)


def run_args(output_dir, **extra) -> list[str]:
    """Recipe arguments for fast, deterministic CPU runs; ``extra`` as ``--key value`` (``True``: a flag)."""
    args = {
        "output_dir": str(output_dir),
        "max_steps": 40,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": "true",
        "dataloader_num_workers": 0,
        "log_level": "warning",
    }
    args.update(extra)
    argv = []
    for key, value in args.items():
        argv += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return argv


def classification_args(workspace, teacher, output_dir, **extra) -> list[str]:
    root = workspace["root"]
    return run_args(
        output_dir,
        teacher=teacher,
        teacher_checkpoints="0.6,last",
        student_model_name_or_path=root / "student_bert",
        student_from_scratch=True,
        dataset_path=root / "sentiment",
        max_length=MAX_LENGTH,
        temperature=2.0,
        alpha=0.5,
        **extra,
    )


def lm_args(workspace, teacher, output_dir, **extra) -> list[str]:
    root = workspace["root"]
    return run_args(
        output_dir,
        teacher=teacher,
        teacher_checkpoints="0.3,last",
        tokenizer_name=root / "tokenizer",
        student_model_name_or_path=root / "student_gpt2",
        student_from_scratch=True,
        dataset_path=root / "sentences",
        block_size=BLOCK,
        temperature=1.0,
        alpha=0.5,
        **extra,
    )


def check_lineage(output_dir: Path, teacher: str, names: list[str]) -> None:
    card = ModelCard.load(output_dir / "README.md")
    assert card.data["distillation"]["teacher"] == teacher
    assert [c["name"] for c in card.data["distillation"]["checkpoints"]] == names
    assert "## Distillation" in card.text and all(n in card.text for n in names)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    lineage = state["stateful_callbacks"]["TeacherLineageCallback"]["args"]["lineage"]
    assert [c["name"] for c in lineage["checkpoints"]] == names


# ---- end to end ------------------------------------------------------------------------------------


def test_text_classification_from_scratch(recipe, workspace, bert_teacher, tmp_path):
    out = tmp_path / "student"
    results = recipe.main(classification_args(workspace, bert_teacher, out))

    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_accuracy"] == pytest.approx(results["eval_accuracy"])
    assert saved["eval_accuracy"] > 0.75, saved  # chance is 0.5
    assert {"train_loss", "eval_loss", "train_samples", "eval_samples"} <= set(saved)
    student = AutoModelForSequenceClassification.from_pretrained(out)
    assert student.config.id2label == {0: "negative", 1: "positive"}  # from the ClassLabel names
    assert (out / "tokenizer.json").is_file()
    check_lineage(out, bert_teacher, ["checkpoint-30", "checkpoint-45"])
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss_kd" in entry and "loss_ce" in entry for entry in logged)


def test_causal_lm_task_detected_from_teacher(recipe, workspace, gpt2_teacher, tmp_path):
    out = tmp_path / "student_lm"
    recipe.main(lm_args(workspace, gpt2_teacher, out))  # no --task: read from GPT2LMHeadModel

    saved = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "eval_loss", "perplexity"} <= set(saved)
    assert saved["eval_accuracy"] > 3 / workspace["vocab"], saved  # well above a uniform guess
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == workspace["vocab"]
    check_lineage(out, gpt2_teacher, ["checkpoint-15", "checkpoint-45"])
    assert "causal-lm" in ModelCard.load(out / "README.md").data["tags"]


def test_causal_lm_with_soft_target_cache(recipe, workspace, gpt2_teacher, tmp_path, monkeypatch):
    """--soft_target_cache for a causal LM: the first run builds the token-level cache (teacher samples per
    position) and trains with kd_loss='sampled'; a second student trains from it without loading a teacher."""
    import hf_ckd.teachers
    from hf_ckd.cache import SoftTargetCache

    cache = tmp_path / "lm-cache"
    extra = dict(soft_target_cache=cache, kd_loss="sampled", cache_k=8, cache_num_uniform=4)
    recipe.main(lm_args(workspace, gpt2_teacher, tmp_path / "first", **extra))
    stored = SoftTargetCache(str(cache))
    assert stored.token_level and stored.num_uniform == 4 and stored.config["k"] == 8
    saved = json.loads((tmp_path / "first" / "all_results.json").read_text())
    assert saved["eval_accuracy"] > 3 / workspace["vocab"], saved
    check_lineage(tmp_path / "first", gpt2_teacher, ["checkpoint-15", "checkpoint-45"])

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher model was loaded")

    monkeypatch.setattr(hf_ckd.teachers, "load_teacher", refuse)
    recipe.main(lm_args(workspace, gpt2_teacher, tmp_path / "second", **extra))
    assert (tmp_path / "second" / "model.safetensors").is_file()


def test_yaml_config_with_jsonl_dataset(recipe, workspace, bert_teacher, tmp_path):
    root, out = workspace["root"], tmp_path / "from_yaml"
    config = {
        "task": "text-classification",
        "teacher": bert_teacher,
        "teacher_checkpoints": "last",
        "student_model_name_or_path": str(root / "student_bert"),
        "student_from_scratch": True,
        "dataset_path": str(root / "sentiment.jsonl"),
        "validation_split_percentage": 25,
        "max_length": MAX_LENGTH,
        "max_train_samples": 128,
        "output_dir": str(out),
        "max_steps": 4,
        "per_device_train_batch_size": 32,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "log_level": "warning",
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    results = recipe.main([str(path)])
    assert results["train_samples"] == 128 and results["eval_samples"] == 64  # 25% of 256 held out
    assert "eval_accuracy" in json.loads((out / "all_results.json").read_text())


def test_json_config_file(recipe, tmp_path):
    path = tmp_path / "distill.json"
    path.write_text(
        json.dumps(
            {
                "student_model_name_or_path": "s",
                "dataset_path": "d",
                "output_dir": "o",
                "teacher": "t",
                "alpha": 0.2,
            }
        )
    )
    model_args, data_args, training_args = recipe.parse_args([str(path)])
    assert model_args.student_model_name_or_path == "s" and data_args.dataset_path == "d"
    assert training_args.teacher == "t" and training_args.alpha == 0.2


@pytest.mark.parametrize(
    "command",
    [[str(RECIPE)], ["-m", "hf_ckd.scripts.distill_text"], ["-m", "hf_ckd.scripts", "distill_text"]],
    ids=["launcher", "module", "hf-ckd"],
)
def test_help_in_a_subprocess(command):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for argument in (
        "--student_model_name_or_path",
        "--student_from_scratch",
        "--teacher_checkpoints",
        "--block_size",
    ):
        assert argument in result.stdout


# ---- bad input: one clear error naming the argument, nothing written to output_dir ------------------


def test_finished_output_dir_is_refused_unless_overwrite(recipe, workspace, bert_teacher, tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    (out / "all_results.json").write_text("{}")
    with pytest.raises(DataError, match=r"--output_dir.*--overwrite_output_dir"):
        recipe.main(classification_args(workspace, bert_teacher, out))
    assert sorted(os.listdir(out)) == ["all_results.json"]
    # With --overwrite_output_dir the guard lets it through (here to the next error, so nothing trains).
    bad_student = tmp_path / "missing_student"
    args = classification_args(workspace, bert_teacher, out, overwrite_output_dir=True)
    args[args.index("--student_model_name_or_path") + 1] = str(bad_student)
    with pytest.raises(ValueError, match="--student_model_name_or_path"):
        recipe.main(args)
    assert sorted(os.listdir(out)) == ["all_results.json"]


def _replace(args: list[str], key: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(f"--{key}") + 1] = value
    return args


BAD_INPUT = {
    "no teacher": ("cls", lambda root: {"teacher": ""}, ValueError, "--teacher is required"),
    "missing teacher": (
        "cls",
        lambda root: {"teacher": str(root / "no_such_teacher")},
        TrajectoryError,
        "Teacher path .*no_such_teacher' does not exist",
    ),
    "unknown student": (
        "cls",
        lambda root: {"student_model_name_or_path": str(root / "no_such_student")},
        ValueError,
        r"--student_model_name_or_path '.*no_such_student' does not exist",
    ),
    "student config overrides": (
        "cls",
        lambda root: {"student_config_overrides": "no_such_key=3"},
        ValueError,
        "--student_config_overrides",
    ),
    "missing text column": (
        "cls",
        lambda root: {"text_column": "review"},
        DataError,
        "--text_column 'review'",
    ),
    "missing label column": (
        "cls",
        lambda root: {"label_column": "stars"},
        DataError,
        "--label_column 'stars'",
    ),
    "label classes vs num_labels": (
        "cls",
        lambda root: {"student_config_overrides": "num_labels=3"},
        DataError,
        "--label_column 'label' has 2 classes but the student",
    ),
    "label space vs teacher": (  # integer labels 0..1 fit 3 outputs; the teacher predicts 2 classes
        "cls",
        lambda root: {
            "student_config_overrides": "num_labels=3",
            "dataset_path": str(root / "sentiment.jsonl"),
            "validation_split_percentage": 25,
        },
        TeacherLoadError,
        "predict over 2 classes/tokens but the student over 3",
    ),
    "tokenizer vs teacher's": (
        "cls",
        lambda root: {"tokenizer_name": str(root / "other_tokenizer")},
        ValueError,
        r"--tokenizer_name .* another vocabulary than the teacher's tokenizer",
    ),
    "task vs teacher": (
        "cls",
        lambda root: {"task": "causal-lm"},
        ValueError,
        "--task causal-lm does not match",
    ),
    "missing eval split": (
        "cls",
        lambda root: {"dataset_path": str(root / "sentiment.jsonl")},
        DataError,
        r"--eval_split 'validation'.*--validation_split_percentage",
    ),
    "max_length vs positions": (
        "cls",
        lambda root: {"max_length": 64},
        ValueError,
        "--max_length 64 exceeds",
    ),
    "vocabulary vs teacher": (
        "lm",
        lambda root: {"student_config_overrides": "vocab_size=64"},
        TeacherLoadError,
        r"predict over .* classes/tokens but the student over 64",
    ),
    "no tokenizer anywhere": (  # the GPT-2 teacher saved none and the student folder holds only config.json
        "lm",
        lambda root: {"tokenizer_name": None},
        ValueError,
        "No tokenizer: .* Pass --tokenizer_name",
    ),
    "block_size vs positions": ("lm", lambda root: {"block_size": 48}, ValueError, "--block_size 48 exceeds"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_before_output_dir(recipe, workspace, bert_teacher, gpt2_teacher, tmp_path, case):
    task, changes, error, message = BAD_INPUT[case]
    root, out = workspace["root"], tmp_path / "out"
    make = classification_args if task == "cls" else lm_args
    args = make(workspace, bert_teacher if task == "cls" else gpt2_teacher, out)
    for key, value in changes(root).items():
        if value is None:  # drop the argument
            i = args.index(f"--{key}")
            args = args[:i] + args[i + 2 :]
        else:
            args = _replace(args, key, str(value)) if f"--{key}" in args else [*args, f"--{key}", str(value)]
    with pytest.raises(error, match=message):
        recipe.main(args)
    assert not out.exists()


def test_missing_argument_and_bad_values_are_refused_by_the_parser(recipe, tmp_path):
    no_data = ["--output_dir", str(tmp_path / "x"), "--student_model_name_or_path", "s"]
    with pytest.raises(SystemExit):  # argparse: the following arguments are required
        recipe.main(["--output_dir", str(tmp_path / "x"), "--dataset_path", "d"])
    with pytest.raises(ValueError, match=r"--dataset_name .* or --dataset_path"):
        recipe.main(no_data)
    with pytest.raises(ValueError, match="--validation_split_percentage"):
        recipe.main([*no_data, "--dataset_path", "d", "--validation_split_percentage", "100"])
    assert not (tmp_path / "x").exists()


def test_train_teacher_text_trajectory_feeds_distill_text(recipe, workspace, tmp_path):
    """hf_ckd.scripts.train_teacher (text branch) writes a trajectory that distill_text distils from."""
    root = workspace["root"]
    train_teacher_recipe = importlib.import_module("hf_ckd.scripts.train_teacher")
    teacher_dir = tmp_path / "teacher"
    metrics = train_teacher_recipe.main(
        ["--model_name", str(root / "student_bert"), "--from_scratch", "--task", "text-classification",
         "--tokenizer_name", str(root / "tokenizer"), "--dataset_path", str(root / "sentiment"),
         "--eval_split", "validation", "--max_length", "16", "--output_dir", str(teacher_dir),
         "--max_steps", "40", "--save_strategy", "steps", "--save_steps", "20", "--eval_strategy", "no",
         "--lr_decay_epochs", "", "--optim", "adamw_torch", "--optim_args", "", "--learning_rate", "3e-3",
         "--per_device_train_batch_size", "32", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true"]
    )  # fmt: skip
    assert metrics["eval_accuracy"] > 0.75
    from hf_ckd import Trajectory

    assert [c.step for c in Trajectory.from_local(str(teacher_dir))] == [20, 40]
    out = tmp_path / "student"
    recipe.main(classification_args(workspace, str(teacher_dir), out))
    check_lineage(out, str(teacher_dir), ["checkpoint-20", "checkpoint-40"])


def test_teacher_from_the_hub(recipe, workspace, bert_teacher, tmp_path):
    """--teacher hub:ORG/NAME@PATTERN: the trajectory, its weights and its tokenizer come from a Hub cache
    (one branch per step), read offline by the real huggingface_hub code."""
    from hub_cache import folder_files, write_hub_cache

    checkpoints = sorted(Path(bert_teacher).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    revisions = {f"step{p.name.split('-')[1]}": folder_files(p, skip=("optimizer.pt",)) for p in checkpoints}
    write_hub_cache(tmp_path / "cache", "org/bert", revisions)
    out = tmp_path / "student"
    teacher = "hub:org/bert@step*"
    results = recipe.main(
        classification_args(workspace, teacher, out, teacher_cache_dir=tmp_path / "cache", save_strategy="no")
    )
    assert results["eval_accuracy"] > 0.75, results
    check_lineage(out, teacher, ["step30", "step45"])
    assert (out / "tokenizer.json").is_file()  # the teacher's tokenizer, downloaded with its weights
