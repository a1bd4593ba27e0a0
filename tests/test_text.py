"""hf_ckd.text (and the split helpers of hf_ckd.data) on real tiny configs, tokenizers and datasets: each check
passes on good input and names the argument and the fix on bad input."""

from __future__ import annotations

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from hf_ckd import text
from hf_ckd.data import DataError, first_rows, train_eval_splits

WORDS = ["good", "bad", "movie", "plot", "was", "the", "a", "very", "."]


def word_tokenizer(words=WORDS, pad: bool = True, eos: bool = False) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[EOS]"]
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]" if pad else None,
        eos_token="[EOS]" if eos else None,
        model_max_length=64,
    )


def bert(vocab: int = 12, positions: int = 32, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=vocab,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=positions,
        **kwargs,
    )


def gpt2(vocab: int = 12, positions: int = 16, **kwargs) -> GPT2Config:
    return GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=8, n_layer=1, n_head=2, **kwargs)


@pytest.fixture
def folders(tmp_path):
    """A tokenizer folder, a student folder with only a config.json, a folder with neither."""
    word_tokenizer().save_pretrained(tmp_path / "tokenizer")
    gpt2().save_pretrained(tmp_path / "student")
    (tmp_path / "empty").mkdir()
    return tmp_path


# ---- positions, tokenizer folders ------------------------------------------------------------------


def test_max_positions_per_model_family():
    assert text.max_positions(bert(positions=32)) == 32
    assert text.max_positions(gpt2(positions=16)) == 16
    assert text.max_positions(object()) is None


def test_holds_tokenizer(folders):
    assert text.holds_tokenizer(str(folders / "tokenizer"))
    assert not text.holds_tokenizer(str(folders / "student"))
    assert not text.holds_tokenizer(str(folders / "tokenizer" / "tokenizer.json"))  # a file, not a folder


# ---- the teacher's task ------------------------------------------------------------------------------


def test_teacher_task_read_from_the_config():
    assert text.teacher_task(gpt2(architectures=["GPT2LMHeadModel"])) == "causal-lm"
    seq = bert(architectures=["BertForSequenceClassification"])
    assert text.teacher_task(seq, None, "checkpoint-5") == "text-classification"
    assert text.teacher_task(seq, "text-classification") == "text-classification"
    assert text.teacher_task(bert(), "causal-lm") == "causal-lm"  # no architectures: --task decides


def test_teacher_task_errors_name_the_argument():
    with pytest.raises(
        ValueError, match=r"--task text-classification does not match .*'ck', a causal-lm model"
    ):
        text.teacher_task(gpt2(architectures=["GPT2LMHeadModel"]), "text-classification", "ck")
    with pytest.raises(
        ValueError, match=r"Cannot tell the task .* pass --task text-classification or --task causal-lm"
    ):
        text.teacher_task(bert(), None, "ck")
    with pytest.raises(ValueError, match=r"is a masked-lm model .* this recipe distils"):
        text.teacher_task(bert(architectures=["BertForMaskedLM"]), None, "ck")


def test_load_teacher_config(tmp_path):
    gpt2(architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path / "ck")
    assert text.load_teacher_config(str(tmp_path / "ck")).n_positions == 16
    with pytest.raises(ValueError, match=r"--teacher checkpoint .* has no readable config.json"):
        text.load_teacher_config(str(tmp_path))


# ---- the student -----------------------------------------------------------------------------------


def test_load_student_config_with_overrides(folders):
    config = text.load_student_config(str(folders / "student"), "n_layer=2,n_embd=16")
    assert (config.n_layer, config.n_embd) == (2, 16)
    with pytest.raises(
        ValueError, match=r"--student_config_overrides 'no_such_key=3' does not apply to the GPT2Config"
    ):
        text.load_student_config(str(folders / "student"), "no_such_key=3")


def test_load_student_config_errors(folders):
    with pytest.raises(ValueError, match=r"--student_model_name_or_path '.*missing' does not exist locally"):
        text.load_student_config(str(folders / "missing"))
    with pytest.raises(ValueError, match=r"--student_model_name_or_path '.*empty' has no config.json"):
        text.load_student_config(str(folders / "empty"))


def test_build_student_from_scratch_or_pretrained(folders, tmp_path):
    config = text.load_student_config(str(folders / "student"))
    torch.manual_seed(0)
    model = text.build_student(str(folders / "student"), config, "causal-lm", from_scratch=True)
    assert isinstance(model, GPT2LMHeadModel)
    model.save_pretrained(tmp_path / "pretrained")
    loaded = text.build_student(str(tmp_path / "pretrained"), config, "causal-lm")
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    with pytest.raises(
        ValueError, match=r"cannot be built as a causal-lm student .* pass --student_from_scratch"
    ):
        text.build_student(str(folders / "student"), config, "causal-lm")  # a config.json, no weights
    classifier = text.build_student("unused", bert(num_labels=3), "text-classification", from_scratch=True)
    assert isinstance(classifier, BertForSequenceClassification) and classifier.num_labels == 3


# ---- tokenizer and vocabulary -------------------------------------------------------------------------


def test_load_tokenizer_order(folders):
    tokenizer_dir, student = str(folders / "tokenizer"), str(folders / "student")
    _, path, teacher = text.load_tokenizer(None, [str(folders / "empty"), tokenizer_dir], student)
    assert path == teacher == tokenizer_dir  # the first teacher folder that holds one
    _, path, teacher = text.load_tokenizer(tokenizer_dir, [str(folders / "empty")], student)
    assert path == tokenizer_dir and teacher is None
    with pytest.raises(ValueError, match=r"No tokenizer: neither the teacher .* Pass --tokenizer_name"):
        text.load_tokenizer(None, [str(folders / "empty")], student)
    with pytest.raises(ValueError, match=r"--tokenizer_name '.*empty' could not be loaded"):
        text.load_tokenizer(str(folders / "empty"), [], student)


def test_check_vocabulary(tmp_path):
    tokenizer = word_tokenizer()
    tokenizer.save_pretrained(tmp_path / "teacher")
    word_tokenizer(list(reversed(WORDS))).save_pretrained(tmp_path / "other")  # same size, other ids
    configs = {"the teacher": gpt2(vocab=12), "the student": gpt2(vocab=12)}
    text.check_vocabulary(tokenizer, str(tmp_path / "teacher"), str(tmp_path / "teacher"), configs)
    other = PreTrainedTokenizerFast.from_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="another vocabulary than the teacher's tokenizer"):
        text.check_vocabulary(other, str(tmp_path / "other"), str(tmp_path / "teacher"), configs)
    with pytest.raises(ValueError, match=r"has 12 tokens but the student embeds only 8 \(vocab_size\)"):
        text.check_vocabulary(tokenizer, "t", None, {"the student": gpt2(vocab=8)})


def test_lengths_and_default_block():
    configs = {"the teacher": gpt2(positions=16), "the student": bert(positions=32)}
    text.check_length(16, "block_size", configs)
    with pytest.raises(
        ValueError, match="--max_length 20 exceeds the 16 positions of the teacher; lower --max_length"
    ):
        text.check_length(20, "max_length", configs)
    assert text.default_block_size(word_tokenizer(), configs) == 16
    assert text.default_block_size(word_tokenizer(), {}) == 64  # the tokenizer's model_max_length


def test_ensure_pad_token():
    tokenizer = word_tokenizer(pad=False, eos=True)
    text.ensure_pad_token(tokenizer, "t")
    assert tokenizer.pad_token == "[EOS]"
    with pytest.raises(ValueError, match=r"has no pad token .* Pass --tokenizer_name with a pad token"):
        text.ensure_pad_token(word_tokenizer(pad=False), "t")


# ---- data ------------------------------------------------------------------------------------------


def sentiment(n: int) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    rows = {"text": [("the movie was very good" if i % 2 else "a bad plot .") for i in range(n)]}
    return Dataset.from_dict({**rows, "label": [i % 2 for i in range(n)]}, features=features)


def test_classification_data():
    student = bert(num_labels=2)
    data = text.classification_data(
        sentiment(10), sentiment(4), text="text", label=None, tokenizer=word_tokenizer(), tokenizer_path="t",
        student_config=student, configs={"the student": student}, max_length=8, max_train_samples=6,
    )  # fmt: skip
    assert len(data.train_dataset) == 6 and len(data.eval_dataset) == 4
    assert student.id2label == {0: "negative", 1: "positive"} and student.pad_token_id == 0
    assert (
        isinstance(data.data_collator, DataCollatorWithPadding) and data.preprocess_logits_for_metrics is None
    )
    batch = data.data_collator([data.train_dataset[i] for i in range(2)])
    assert batch["input_ids"].shape == (2, 5) and batch["labels"].tolist() == [0, 1]
    with pytest.raises(DataError, match="--label_column 'label' has 2 classes but the student"):
        text.classification_data(
            sentiment(4), None, text="text", label="label", tokenizer=word_tokenizer(), tokenizer_path="t",
            student_config=bert(num_labels=3), configs={}, max_length=8,
        )  # fmt: skip
    with pytest.raises(ValueError, match="--max_length 40 exceeds"):
        text.classification_data(
            sentiment(4), None, text="text", label=None, tokenizer=word_tokenizer(), tokenizer_path="t",
            student_config=student, configs={"the student": student}, max_length=40,
        )  # fmt: skip


def test_causal_lm_data_cuts_blocks():
    data = text.causal_lm_data(
        sentiment(20), sentiment(8), text="text", tokenizer=word_tokenizer(), configs={"the student": gpt2(positions=4)},
        max_eval_samples=2,
    )  # fmt: skip
    blocks = data.train_dataset["input_ids"]
    assert {len(b) for b in blocks} == {4} and len(blocks) == (10 * 5 + 10 * 4) // 4  # the default block: 4
    assert data.train_dataset["labels"] == blocks and len(data.eval_dataset) == 2
    assert data.preprocess_logits_for_metrics is not None
    with pytest.raises(ValueError, match="--block_size 8 exceeds the 4 positions of the student"):
        text.causal_lm_data(
            sentiment(4), None, text="text", tokenizer=word_tokenizer(), configs={"the student": gpt2(positions=4)},
            block_size=8,
        )  # fmt: skip


def test_train_eval_splits():
    raw = DatasetDict({"train": sentiment(20), "validation": sentiment(4)})
    train, evaluation = train_eval_splits(raw, "train", "validation", None, seed=0)
    assert (len(train), len(evaluation)) == (20, 4)
    assert train_eval_splits(raw, "train", None, None, seed=0)[1] is None
    train, evaluation = train_eval_splits(DatasetDict({"train": sentiment(20)}), "train", "test", 25, seed=0)
    assert (len(train), len(evaluation)) == (15, 5)
    with pytest.raises(
        DataError, match=r"--eval_split 'test' is not a split .* --validation_split_percentage"
    ):
        train_eval_splits(raw, "train", "test", None, seed=0)
    with pytest.raises(DataError, match="--train_split 'nope'"):
        train_eval_splits(raw, "nope", None, None, seed=0)
    assert len(first_rows(sentiment(5), 3)) == 3 and len(first_rows(sentiment(5), 9)) == 5
    assert first_rows(None, 3) is None
