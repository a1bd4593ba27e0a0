"""Shared tasks for the tests: small real datasets, tiny models built from configs, and teacher
trajectories trained with a plain ``transformers.Trainer`` (session-scoped, so each is trained once)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    Trainer,
    TrainingArguments,
)

from hf_ckd.teachers import model_logits

torch.set_num_threads(2)

# ---- data ------------------------------------------------------------------------------------------

TEXT_VOCAB, TEXT_LEN, TEXT_CLASSES = 32, 16, 4
LM_VOCAB, LM_LEN = 16, 12


def digits_dataset(split: str = "train", size: int = 16) -> Dataset:
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), upsampled to ``size`` x ``size``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - 0.3) / 0.4
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = 1400
    index = order[:cut] if split == "train" else order[cut:]
    ds = Dataset.from_dict({"pixel_values": images[index].numpy(), "labels": labels[index].numpy()})
    return ds.with_format("torch")


def marker_text_dataset(n: int, seed: int) -> Dataset:
    """Token sequences whose class is the marker token that occurs most (3 times vs a 1-time distractor)."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(TEXT_CLASSES + 2, TEXT_VOCAB, size=(n, TEXT_LEN))
    labels = rng.integers(0, TEXT_CLASSES, size=n)
    for i, y in enumerate(labels):
        positions = rng.choice(np.arange(1, TEXT_LEN), size=4, replace=False)
        distractor = (y + rng.integers(1, TEXT_CLASSES)) % TEXT_CLASSES
        input_ids[i, positions[:3]] = 2 + y
        input_ids[i, positions[3]] = 2 + distractor
    input_ids[:, 0] = 1  # [CLS]
    ds = Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "labels": labels.astype(np.int64)}
    )
    return ds.with_format("torch")


def progression_lm_dataset(n: int, seed: int) -> Dataset:
    """Arithmetic progressions mod ``LM_VOCAB``: x_{t+1} = x_t + k, k in {1, 2, 3} read off the first tokens."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, LM_VOCAB, size=(n, 1))
    step = rng.integers(1, 4, size=(n, 1))
    input_ids = (start + step * np.arange(LM_LEN)[None, :]) % LM_VOCAB
    ds = Dataset.from_dict(
        {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "labels": input_ids.copy()}
    )
    return ds.with_format("torch")


# ---- models ----------------------------------------------------------------------------------------


def tiny_bert(hidden: int = 32, layers: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=TEXT_LEN,
        num_labels=TEXT_CLASSES,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def tiny_gpt2(hidden: int = 32, layers: int = 2, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=LM_VOCAB,
        n_positions=LM_LEN,
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def tiny_timm(architecture: str = "test_resnet", seed: int = 0) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    config = TimmWrapperConfig(architecture=architecture, num_labels=10, model_args={"in_chans": 1})
    return TimmWrapperForImageClassification(config)


def trainer_args(output_dir, **overrides) -> dict:
    """TrainingArguments defaults for fast, deterministic CPU runs."""
    args = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 128,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    args.update(overrides)
    return args


def train_teacher(
    model, train, eval_dataset, output_dir, max_steps: int, save_steps: int, **overrides
) -> str:
    """Train with a plain transformers.Trainer, keeping every checkpoint (the trajectory)."""
    args = TrainingArguments(
        **trainer_args(
            output_dir,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=save_steps,
            eval_strategy="steps",
            eval_steps=save_steps,
            **overrides,
        )
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=eval_dataset)
    trainer.train()
    trainer.save_state()
    return str(output_dir)


def accuracy(model, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy (per position for LMs, skipping the causal shift's last position)."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            labels = batch.pop("labels")
            logits = model_logits(model(**batch))
            if logits.dim() == 3:
                predictions, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
            else:
                predictions, targets = logits.argmax(-1), labels
            correct += (predictions == targets).sum().item()
            total += targets.numel()
    return correct / total


# ---- session fixtures: teacher trajectories -------------------------------------------------------


@pytest.fixture(scope="session")
def text_data():
    return marker_text_dataset(1024, seed=0), marker_text_dataset(256, seed=1)


@pytest.fixture(scope="session")
def text_teacher(tmp_path_factory, text_data):
    train, val = text_data
    out = tmp_path_factory.mktemp("text_teacher")
    return train_teacher(tiny_bert(hidden=48), train, val, out, max_steps=120, save_steps=30)


@pytest.fixture(scope="session")
def digits_data():
    return digits_dataset("train"), digits_dataset("val")


@pytest.fixture(scope="session")
def timm_teacher(tmp_path_factory, digits_data):
    train, val = digits_data
    out = tmp_path_factory.mktemp("timm_teacher")
    return train_teacher(tiny_timm("test_resnet"), train, val, out, max_steps=120, save_steps=40)


@pytest.fixture(scope="session")
def lm_data():
    return progression_lm_dataset(1024, seed=0), progression_lm_dataset(256, seed=1)


@pytest.fixture(scope="session")
def lm_teacher(tmp_path_factory, lm_data):
    train, val = lm_data
    out = tmp_path_factory.mktemp("lm_teacher")
    return train_teacher(tiny_gpt2(hidden=48), train, val, out, max_steps=150, save_steps=50)


class StateDict(dict):
    """A state dict that ``torch.load(weights_only=True)`` refuses (an unlisted class): tests of the
    pickle opt-in (tests/test_teacher_integrity.py)."""
