"""File names and name patterns: one constant per fact, transformers' own where it has one.

Imported by the modules that read or write checkpoints (trajectory, hub, teachers, cache, export); the
losses and the config do not need it.
"""

from __future__ import annotations

import re

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

# transformers defines this in transformers.trainer, whose import costs seconds; the value is the same.
TRAINER_STATE_NAME = "trainer_state.json"
# Weight files in the order they are preferred: safetensors (single file, then sharded), then pickles.
WEIGHT_FILE_NAMES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
# Files whose presence makes a folder look like a saved model (transformers, timm hub format, custom models).
MODEL_FILE_NAMES = (CONFIG_NAME, *WEIGHT_FILE_NAMES)
TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
# The folders transformers.Trainer saves: checkpoint-<global step>.
CHECKPOINT_DIR_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# CIFAR-100's per-channel pixel mean and std (the recipes' normalisation and the CIFAR models' default cfg).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# The soft-target cache's fingerprint and layout file.
CACHE_CONFIG_NAME = "hf_ckd_cache.json"
HUB_PREFIX = "hub:"
# Model-card metadata of every distilled student.
CARD_TAGS = ("hf-ckd", "knowledge-distillation", "checkpoint-distillation")
PAPER = ("Efficient Knowledge Distillation from Model Checkpoints", "2210.06458")
