"""Checkpoint and progressive distillation of small GPT-2 language models on the Python standard library's source.

Two claims are tested on real text that ships with every Python interpreter (its own ``*.py`` standard library):

- Wang et al. 2022, "Efficient Knowledge Distillation from Model Checkpoints" (arXiv:2210.06458): an
  intermediate checkpoint of the teacher's run (T^0.3, T^0.5, T^0.7), or a snapshot ensemble of several,
  teaches a student as well as or better than the final teacher (T^full), and the snapshot ensemble of one run
  can stand in for an ensemble of independently trained teachers;
- Panigrahi et al. 2024, "Progressive distillation induces an implicit curriculum" (arXiv:2410.05464):
  distilling along the teacher's trajectory (its successive checkpoints) helps the student, and the teacher's
  checkpoints learn short-range structure before long-range structure.

It

1. lists every ``*.py`` file of ``sysconfig.get_paths()["stdlib"]`` outside test packages and
   ``site-packages``, splits them by file with a hash of the relative path (80% train, 10% validation, 10%
   test) and records the corpus fingerprint (Python version, files and bytes per split, sha256 of the sorted
   file list and of the contents);
2. trains a byte-level BPE tokenizer on the training split (``tokenizers``), saves it as a
   ``PreTrainedTokenizerFast`` in ``output_dir/tokenizer/``, and cuts each split into fixed-length blocks
   (``datasets``; causal LM, labels = input_ids). Teachers and students train on a fixed subset of the
   training files (``train_bytes``), small enough for the teacher to overfit within the budget;
3. trains ``teacher_seeds`` GPT-2-style teachers with a plain ``transformers.Trainer`` (no dropout), a
   checkpoint every 10% of the run, validation (and training-subset) loss at each evaluation; then measures
   every checkpoint's per-position cross-entropy on the test blocks;
4. distils smaller GPT-2 students with ``CheckpointDistillTrainer`` (token-level KD) in every arm, with paired
   seeds (student seed s fixes the initialisation and the batch order in every arm): labels only (alpha=1),
   T^0.3, T^0.5, T^0.7, T^full, the snapshot ensemble 0.3+0.5+0.7, the ensemble of every teacher seed's
   final checkpoint, and progressive distillation over the whole trajectory (teacher-time pace); then a
   temperature sweep (``tau_sweep``) for T^full and the arm with the best validation loss;
5. writes ``results.md`` / ``results.json`` (test cross-entropy in nats/token, perplexity and next-token
   accuracy per arm, mean +- SD, paired delta vs T^full +- SE with per-teacher-seed signs, real or noise;
   the teachers' trajectories; the position-loss summary), ``students.png`` (student validation loss against
   steps per arm), ``positions.png`` (each teacher checkpoint's test loss by position in the context) and
   ``teachers.png`` (teacher training and validation loss).

T* (MI selection, ``hf_ckd.selection``) is not an arm: it scores classifiers only (one prediction per
example) and refuses a causal LM's ``[batch, positions, vocab]`` logits.

Runs go to ``num_workers`` spawned processes (default 2, one torch thread each); every run seeds itself, so
the numbers do not depend on how the runs are spread over them. The pool, the statistics, the tables, the
plots and the output files are the experiments' shared harness (``experiments/_harness.py``).

Usage:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python experiments/text_stdlib.py --output_dir runs/demo_text
    python experiments/text_stdlib.py --output_dir runs/text_quick --quick   # a smoke test, well under a minute
    python experiments/text_stdlib.py text.yaml                              # a lone .json/.yaml is a config file

``make demo-text`` runs the first line. See docs/text_experiment.md for the measured tables and how to read them.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import platform
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the shared harness; spawned workers import this file by module name from here too
    sys.path.append(HERE)

from _harness import (  # noqa: E402
    CPU_TRAINING_ARGS,
    apply_quick,
    describe_machine,
    float_list,
    markdown_table,
    mean_std,
    paired_comparison,
    parse_dataclasses,
    prepare_output_dir,
    pyplot,
    quiet_process,
    require_positive,
    run_jobs,
    save_figure,
    seed_everything,
    split_list,
    verdict,
    worker_pool,
    write_json,
    write_text,
)

REFERENCE = "T^full"  # the arm every other arm is compared with, run for run
EOS = "<|endoftext|>"
SPLITS = ("train", "validation", "test")
EXCLUDED_DIRS = (
    "site-packages",
    "__pycache__",
    "idle_test",
)  # and every folder whose name starts with "test"
SHORT_POSITIONS, LONG_POSITIONS = 8, 64  # position-loss summary: positions < 8 vs >= 64
QUICK_SETTINGS = {
    "teacher_seeds": 2,
    "student_seeds": 1,
    "vocab_size": 384,
    "block_size": 32,
    "tokenizer_bytes": 200_000,
    "train_bytes": 20_000,
    "eval_blocks": 16,
    "test_blocks": 32,
    "teacher_layers": 1,
    "teacher_width": 32,
    "teacher_heads": 2,
    "teacher_steps": 40,
    "teacher_eval_points": 10,
    "student_layers": 1,
    "student_width": 16,
    "student_heads": 2,
    "student_steps": 10,
    "student_eval_points": 2,
    "tau_sweep": "2",
}


@dataclass
class TextArguments:
    """Settings of the standard-library text experiment. The defaults are the ones `make demo-text` runs and
    docs/text_experiment.md reports."""

    output_dir: str = field(
        metadata={
            "help": "Where results.md, results.json, the plots, the tokenizer, the tokenised data (data/) and the "
            "teacher trajectories (teachers/) are written."
        }
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the results (and teacher trajectories) of an earlier run in output_dir."},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "Tiny settings for a smoke test (well under a minute): sizes left at their defaults become "
            + ", ".join(f"{k}={v}" for k, v in QUICK_SETTINGS.items())
            + ". The numbers it prints are not meaningful."
        },
    )
    # ---- corpus and tokens
    vocab_size: int = field(
        default=1024, metadata={"help": "Byte-level BPE vocabulary size (256 byte symbols + merges + EOS)."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per block (the models' context length)."})
    tokenizer_bytes: int = field(
        default=0,
        metadata={
            "help": "Bytes of training files (in hash order) the tokenizer is trained on; 0 = the whole training "
            "split."
        },
    )
    train_bytes: int = field(
        default=400_000,
        metadata={
            "help": "Bytes of training files teachers and students train on: files of the training split in order "
            "of their path's sha256, skipping files over train_max_file_bytes, until this many bytes; 0 = the whole "
            "training split."
        },
    )
    train_max_file_bytes: int = field(
        default=65_536,
        metadata={
            "help": "Files larger than this are left out of the training subset (not of the tokenizer)."
        },
    )
    eval_blocks: int = field(
        default=128,
        metadata={
            "help": "Validation blocks (evenly spaced over the split) for the eval loss during training; as many "
            "training blocks give the teachers' training loss at each evaluation."
        },
    )
    test_blocks: int = field(
        default=512,
        metadata={"help": "Test blocks (evenly spaced over the split) every reported number is measured on."},
    )
    # ---- teachers
    teacher_seeds: int = field(
        default=3, metadata={"help": "Number of teacher training runs (seeds 0, 1, ...), each a trajectory."}
    )
    teacher_layers: int = field(default=4, metadata={"help": "Teacher GPT-2 layers (n_layer)."})
    teacher_width: int = field(default=128, metadata={"help": "Teacher GPT-2 width (n_embd)."})
    teacher_heads: int = field(default=4, metadata={"help": "Teacher GPT-2 attention heads (n_head)."})
    teacher_steps: int = field(
        default=800,
        metadata={"help": "Optimizer steps of each teacher run; a checkpoint every 10%% of them."},
    )
    teacher_eval_points: int = field(
        default=20,
        metadata={
            "help": "Evaluations (validation and training-subset loss) per teacher run, evenly spaced; a multiple "
            "of 10 so that every checkpoint carries its eval loss."
        },
    )
    teacher_learning_rate: float = field(
        default=2e-3,
        metadata={"help": "AdamW learning rate of the teachers (5%% warm-up, linear decay to 0)."},
    )
    teacher_batch_size: int = field(
        default=16, metadata={"help": "Training batch size (blocks of block_size tokens) of the teachers."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout of teachers and students (GPT-2 pdrops)."})
    # ---- students
    student_seeds: int = field(
        default=1,
        metadata={
            "help": "Student runs per teacher and arm. Run j of every arm shares the student's initialisation and "
            "batch order (paired seeds)."
        },
    )
    student_layers: int = field(default=2, metadata={"help": "Student GPT-2 layers (n_layer)."})
    student_width: int = field(default=64, metadata={"help": "Student GPT-2 width (n_embd)."})
    student_heads: int = field(default=2, metadata={"help": "Student GPT-2 attention heads (n_head)."})
    student_steps: int = field(default=300, metadata={"help": "Optimizer steps of each student run."})
    student_eval_points: int = field(
        default=10, metadata={"help": "Validation evaluations per student run (plus one at step 0)."}
    )
    student_learning_rate: float = field(
        default=5e-3,
        metadata={"help": "AdamW learning rate of the students (5%% warm-up, linear decay to 0)."},
    )
    student_batch_size: int = field(
        default=8, metadata={"help": "Training batch size (blocks of block_size tokens) of the students."}
    )
    # ---- distillation
    temperature: float = field(
        default=1.0,
        metadata={"help": "Distillation temperature tau of the main table (the KD term is scaled by tau^2)."},
    )
    alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the hard-label cross-entropy in the distilled arms: "
            "loss = alpha * CE + (1 - alpha) * tau^2 * KL. The labels-only arm uses 1."
        },
    )
    single_checkpoints: str = field(
        default="0.3,0.5,0.7",
        metadata={"help": "Fractions of teacher training whose checkpoint teaches alone, one arm each."},
    )
    snapshot_ensemble: str = field(
        default="0.3,0.5,0.7",
        metadata={"help": "Checkpoint spec of the snapshot-ensemble arm (uniform weights); empty for none."},
    )
    full_ensemble: bool = field(
        default=True,
        metadata={"help": "Add the arm taught by the ensemble of every teacher seed's final checkpoint."},
    )
    progressive: bool = field(
        default=True,
        metadata={
            "help": "Add the progressive arm: every checkpoint in trajectory order (teacher_schedule=progressive, "
            "pace teacher_time over the whole run)."
        },
    )
    tau_sweep: str = field(
        default="2,4",
        metadata={
            "help": "Further temperatures for T^full and for the distilled arm with the lowest mean validation "
            "loss at --temperature; empty for none."
        },
    )
    ensemble_average: str = field(
        default="probs",
        metadata={
            "help": "How ensembles combine their checkpoints: probs (paper) or logits (official code).",
            "choices": ["probs", "logits"],
        },
    )
    num_workers: int = field(
        default=2,
        metadata={
            "help": "Processes that train teachers and students side by side (1 = all in this process). The "
            "results do not depend on it: every run seeds itself."
        },
    )
    torch_threads: int = field(
        default=1,
        metadata={
            "help": "torch intra-op threads per process. The models are small: one thread per process and one "
            "process per core is fastest. Results can differ in the last bits between thread counts."
        },
    )

    def __post_init__(self):
        if self.quick:
            apply_quick(QUICK_SETTINGS, self)
        require_positive(
            self,
            (
                "block_size",
                "eval_blocks",
                "test_blocks",
                "teacher_seeds",
                "student_seeds",
                "teacher_layers",
                "teacher_width",
                "teacher_heads",
                "student_layers",
                "student_width",
                "student_heads",
                "student_steps",
                "student_eval_points",
                "teacher_batch_size",
                "student_batch_size",
                "num_workers",
            ),
        )
        if self.teacher_seeds * self.student_seeds < 2:
            raise ValueError(
                "teacher_seeds * student_seeds must be >= 2 (a standard deviation needs two runs), got "
                f"{self.teacher_seeds} x {self.student_seeds}."
            )
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + merges), got {self.vocab_size}.")
        if self.teacher_eval_points < 10 or self.teacher_eval_points % 10:
            raise ValueError(f"teacher_eval_points must be a multiple of 10, got {self.teacher_eval_points}.")
        if self.teacher_steps < self.teacher_eval_points or self.teacher_steps % self.teacher_eval_points:
            raise ValueError(
                f"teacher_steps ({self.teacher_steps}) must be a multiple of teacher_eval_points "
                f"({self.teacher_eval_points}): a checkpoint every 10% of the run, each evaluated."
            )
        if self.student_steps < self.student_eval_points:
            raise ValueError(
                f"student_steps ({self.student_steps}) must be >= student_eval_points ({self.student_eval_points})."
            )
        for name in ("teacher_width", "student_width"):
            heads = getattr(self, name.replace("width", "heads"))
            if getattr(self, name) % heads:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of its number of heads.")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1) for the distilled arms, got {self.alpha}.")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        self.fractions = float_list(self.single_checkpoints, "single_checkpoints", "fractions")
        if any(not 0.0 <= f < 1.0 for f in self.fractions):
            raise ValueError(
                f"single_checkpoints must be fractions in [0, 1), got {self.single_checkpoints!r}."
            )
        self.sweep = [
            t for t in float_list(self.tau_sweep, "tau_sweep", "temperatures") if t != self.temperature
        ]
        if any(not (math.isfinite(t) and t > 0) for t in self.sweep):
            raise ValueError(f"tau_sweep must hold temperatures > 0, got {self.tau_sweep!r}.")

    def arms(self) -> list[dict]:
        """The main arms in table order: name, kind (labels / static / ensemble / progressive), checkpoint spec,
        alpha, temperature."""
        tau, alpha = self.temperature, self.alpha
        arms = [{"name": "labels only", "kind": "labels", "spec": None, "alpha": 1.0, "tau": tau}]
        arms += [
            {"name": f"T^{f:g}", "kind": "static", "spec": f"{f:g}", "alpha": alpha, "tau": tau}
            for f in self.fractions
        ]
        arms.append({"name": REFERENCE, "kind": "static", "spec": "last", "alpha": alpha, "tau": tau})
        if self.snapshot_ensemble.strip():
            items = split_list(self.snapshot_ensemble)
            name = "snapshot " + "+".join(items)
            arms.append({"name": name, "kind": "static", "spec": ",".join(items), "alpha": alpha, "tau": tau})
        if self.full_ensemble and self.teacher_seeds > 1:
            name = f"ensemble of {self.teacher_seeds} finals"
            arms.append({"name": name, "kind": "ensemble", "spec": "last", "alpha": alpha, "tau": tau})
        if self.progressive:
            arms.append(
                {"name": "progressive", "kind": "progressive", "spec": "all", "alpha": alpha, "tau": tau}
            )
        return arms


def sweep_arm(arm: dict, tau: float) -> dict:
    """``arm`` at another temperature (a τ-sweep arm)."""
    return {**arm, "name": f"{arm['name']} (τ={tau:g})", "tau": tau, "base": arm["name"]}


# ---- corpus -------------------------------------------------------------------------------------------


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def skip_dir(name: str) -> bool:
    """Test packages (``test/``, ``tests/``, ``lib2to3/tests``, ``tkinter/test``, ...: every folder whose name
    starts with ``test``), ``idlelib/idle_test``, ``site-packages`` and bytecode caches."""
    return name.startswith("test") or name in EXCLUDED_DIRS


def list_corpus(root: str) -> list[str]:
    """Every ``*.py`` file under ``root`` outside the skipped folders, as sorted ``/``-separated relative paths."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not skip_dir(d))
        rel = os.path.relpath(folder, root)
        for name in names:
            if name.endswith(".py"):
                files.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return sorted(files)


def path_hash(rel: str) -> str:
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()


def split_of(rel: str) -> str:
    """The file's split, fixed by its relative path: sha256 mod 100 below 80 = train, below 90 = validation,
    else test."""
    bucket = int(path_hash(rel), 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def read_source(root: str, rel: str) -> tuple[str, int]:
    """A file's text (UTF-8, undecodable bytes replaced) and its size in bytes."""
    with open(os.path.join(root, rel), "rb") as f:
        raw = f.read()
    return raw.decode("utf-8", errors="replace"), len(raw)


def hash_ordered_subset(
    files: list[str], sizes: dict[str, int], budget: int, max_file: int | None
) -> list[str]:
    """Files in order of their path's sha256 (a fixed, content-blind shuffle), skipping those over ``max_file``
    bytes, until ``budget`` bytes are reached (the last file whole); ``budget=0``: every file."""
    if budget <= 0:
        return list(files)
    chosen, total = [], 0
    for rel in sorted(files, key=path_hash):
        if max_file is not None and sizes[rel] > max_file:
            continue
        chosen.append(rel)
        total += sizes[rel]
        if total >= budget:
            break
    return sorted(chosen)


def load_corpus(args: TextArguments) -> tuple[dict[str, list[str]], dict[str, str], dict]:
    """The split file lists, every file's text, and the corpus fingerprint."""
    root = stdlib_root()
    files = list_corpus(root)
    texts, sizes = {}, {}
    for rel in files:
        texts[rel], sizes[rel] = read_source(root, rel)
    splits = {name: [f for f in files if split_of(f) == name] for name in SPLITS}
    contents = hashlib.sha256()
    for rel in files:
        contents.update(rel.encode("utf-8") + b"\0" + texts[rel].encode("utf-8") + b"\0")
    subset = hash_ordered_subset(splits["train"], sizes, args.train_bytes, args.train_max_file_bytes)
    tokenizer_files = hash_ordered_subset(splits["train"], sizes, args.tokenizer_bytes, None)
    fingerprint = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": root,
        "rule": "every *.py under the stdlib folder, leaving out folders named test* (test/, tests/, "
        "lib2to3/tests, ...), idlelib/idle_test, site-packages and __pycache__; split by "
        "int(sha256(relative path), 16) % 100: < 80 train, < 90 validation, else test",
        "files": len(files),
        "bytes": sum(sizes.values()),
        "file_list_sha256": hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest(),
        "content_sha256": contents.hexdigest(),
        "splits": {
            name: {"files": len(splits[name]), "bytes": sum(sizes[f] for f in splits[name])}
            for name in SPLITS
        },
        "train_subset": {
            "files": len(subset),
            "bytes": sum(sizes[f] for f in subset),
            "rule": "training files in sha256 order, files over train_max_file_bytes skipped, until train_bytes"
            if args.train_bytes
            else "the whole training split",
            "file_list_sha256": hashlib.sha256("\n".join(subset).encode("utf-8")).hexdigest(),
        },
        "tokenizer_files": {"files": len(tokenizer_files), "bytes": sum(sizes[f] for f in tokenizer_files)},
    }
    splits["train_subset"] = subset
    splits["tokenizer"] = tokenizer_files
    return splits, texts, fingerprint


# ---- tokenizer and blocks -----------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, block_size: int, folder: str):
    """A byte-level BPE (``tokenizers``) trained on ``texts``, saved to ``folder`` as a
    ``PreTrainedTokenizerFast`` (EOS = ``<|endoftext|>``) and returned."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=block_size
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def tokenize_blocks(tokenizer, texts: list[str], block_size: int):
    """``texts`` (one per file, each followed by EOS) tokenised, concatenated and cut into ``block_size``
    blocks (the remainder dropped), as a ``datasets.Dataset`` of ``input_ids`` and ``labels`` (= input_ids: the
    model shifts them)."""
    from datasets import Dataset

    eos = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer

    def tokenize(batch):
        return {"ids": [[*e.ids, eos] for e in backend.encode_batch(batch["text"])]}

    def group(batch):
        stream = [t for ids in batch["ids"] for t in ids]
        cut = len(stream) // block_size * block_size
        blocks = [stream[i : i + block_size] for i in range(0, cut, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    ds = Dataset.from_dict({"text": texts})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"])
    tokens = sum(len(ids) for ids in ds["ids"])
    # one group over everything: a fixed stream whatever map's batch size
    ds = ds.map(group, batched=True, batch_size=len(ds), remove_columns=["ids"])
    return ds, tokens


def evenly_spaced(ds, n: int):
    """``n`` blocks at evenly spaced positions of ``ds`` (all of them when it has no more)."""
    if len(ds) <= n:
        return ds
    return ds.select(sorted({round(i * (len(ds) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0])


def prepare_data(args: TextArguments, data_dir: str, tokenizer_dir: str) -> dict:
    """Corpus -> tokenizer -> blocks, saved with ``save_to_disk`` in ``data_dir`` (train, train_probe,
    validation, test). Returns the fingerprint and the token and block counts."""
    splits, texts, fingerprint = load_corpus(args)
    tokenizer = train_tokenizer(
        [texts[f] for f in splits["tokenizer"]], args.vocab_size, args.block_size, tokenizer_dir
    )
    counts = {}
    parts = {
        "train": splits["train_subset"],
        "validation": splits["validation"],
        "test": splits["test"],
    }
    for name, files in parts.items():
        ds, tokens = tokenize_blocks(tokenizer, [texts[f] for f in files], args.block_size)
        chosen = ds
        if name == "validation":
            chosen = evenly_spaced(ds, args.eval_blocks)
        elif name == "test":
            chosen = evenly_spaced(ds, args.test_blocks)
        chosen.save_to_disk(os.path.join(data_dir, name))
        counts[name] = {"tokens": tokens, "blocks": len(ds), "blocks_used": len(chosen)}
        if name == "train":
            probe = evenly_spaced(ds, args.eval_blocks)
            probe.save_to_disk(os.path.join(data_dir, "train_probe"))
            counts["train_probe"] = {"blocks_used": len(probe)}
    fingerprint["bytes_per_token"] = {
        name: round(
            fingerprint["train_subset" if name == "train" else "splits"][name]["bytes"] / c["tokens"], 3
        )
        if name != "train"
        else round(fingerprint["train_subset"]["bytes"] / c["tokens"], 3)
        for name, c in counts.items()
        if "tokens" in c
    }
    return {"fingerprint": fingerprint, "tokens": counts, "vocab_size": len(tokenizer)}


def load_data(data_dir: str) -> dict:
    from datasets import load_from_disk

    return {
        name: load_from_disk(os.path.join(data_dir, name)).with_format("torch")
        for name in ("train", "train_probe", "validation", "test")
    }


# ---- models and evaluation ----------------------------------------------------------------------------


def gpt2(vocab_size: int, block_size: int, layers: int, width: int, heads: int, dropout: float):
    """A fresh GPT-2-style causal LM (tied embeddings); seed first to fix its initialisation."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def teacher_model(args: TextArguments, vocab_size: int):
    return gpt2(
        vocab_size, args.block_size, args.teacher_layers, args.teacher_width, args.teacher_heads, args.dropout
    )


def student_model(args: TextArguments, vocab_size: int):
    return gpt2(
        vocab_size, args.block_size, args.student_layers, args.student_width, args.student_heads, args.dropout
    )


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lm_eval(log_probs, dataset, batch_size: int = 64) -> dict:
    """Next-token cross-entropy (nats/token), perplexity and top-1 accuracy of ``log_probs(input_ids) ->
    [B, T, V]`` over the blocks of ``dataset``, overall and by position: ``position_ce[p]`` is the loss of
    predicting token p + 1 from tokens 0..p, averaged over the blocks."""
    import torch

    loss_sum = correct_sum = None
    blocks = 0
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            ids = dataset[start : start + batch_size]["input_ids"]
            logp = log_probs(ids)[:, :-1].float()
            target = ids[:, 1:]
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [B, T - 1]
            hit = (logp.argmax(-1) == target).float()
            loss_sum = nll.sum(0) if loss_sum is None else loss_sum + nll.sum(0)
            correct_sum = hit.sum(0) if correct_sum is None else correct_sum + hit.sum(0)
            blocks += ids.shape[0]
    position_ce = (loss_sum / blocks).tolist()
    ce = float(loss_sum.sum() / (blocks * len(position_ce)))
    return {
        "ce": ce,
        "perplexity": math.exp(ce),
        "accuracy": float(correct_sum.sum() / (blocks * len(position_ce))),
        "position_ce": [round(v, 5) for v in position_ce],
    }


def model_eval(model, dataset) -> dict:
    model.eval()
    return lm_eval(lambda ids: model(input_ids=ids).logits.log_softmax(-1), dataset)


def ensemble_eval(ensemble, dataset) -> dict:
    """A ``TeacherEnsemble`` (probabilities or logits averaged as configured) at tau = 1."""
    return lm_eval(lambda ids: ensemble.log_targets({"input_ids": ids}, temperature=1.0), dataset)


def position_summary(position_ce: list[float]) -> dict:
    """Mean loss at positions < SHORT_POSITIONS and >= LONG_POSITIONS (of the predicting token)."""
    short = position_ce[:SHORT_POSITIONS]
    long = position_ce[LONG_POSITIONS:] or position_ce[len(position_ce) // 2 :]
    return {"short": sum(short) / len(short), "long": sum(long) / len(long)}


# ---- training -------------------------------------------------------------------------------------------


def common_args() -> dict:
    """TrainingArguments shared by teachers and students: CPU, quiet, no reporting, loss-only evaluation."""
    return {
        **CPU_TRAINING_ARGS,
        "log_level": "error",
        "per_device_eval_batch_size": 64,
        "prediction_loss_only": True,  # never gather [blocks, positions, vocab] eval logits
        "weight_decay": 0.0,
        "lr_scheduler_type": "linear",
    }


def quiet(trainer):
    """Drop the callback that prints every log dict (Trainer adds it when ``disable_tqdm=True``)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def train_teacher(args: TextArguments, seed: int, folder: str, data: dict, vocab_size: int) -> None:
    """A plain ``transformers.Trainer`` run: a checkpoint every 10% of ``teacher_steps`` (weights only, none
    deleted), validation and training-subset loss at ``teacher_eval_points`` evenly spaced steps."""
    import shutil

    from transformers import Trainer, TrainingArguments

    if os.path.isdir(folder):  # this experiment's own folder, left by an earlier or interrupted run
        shutil.rmtree(folder)
    every = args.teacher_steps // args.teacher_eval_points
    targs = TrainingArguments(
        output_dir=folder,
        seed=seed,
        max_steps=args.teacher_steps,
        per_device_train_batch_size=args.teacher_batch_size,
        learning_rate=args.teacher_learning_rate,
        warmup_steps=max(1, args.teacher_steps // 20),
        save_strategy="steps",
        save_steps=args.teacher_steps // 10,
        save_only_model=True,  # weights + trainer_state.json: the trajectory, without optimizer states
        eval_strategy="steps",
        eval_steps=every,
        eval_on_start=True,
        logging_steps=every,
        **common_args(),
    )  # save_total_limit stays unset: no checkpoint is deleted
    seed_everything(seed)
    trainer = Trainer(
        model=teacher_model(args, vocab_size),
        args=targs,
        train_dataset=data["train"],
        eval_dataset={"validation": data["validation"], "train": data["train_probe"]},
    )
    quiet(trainer).train()
    trainer.save_state()  # folder/trainer_state.json: the run's final step, for the fractions


def analyse_teacher(args: TextArguments, seed: int, folder: str, data: dict, vocab_size: int) -> dict:
    """The teacher's logged curves, every checkpoint's test metrics by position (and of the untrained model,
    fraction 0), and the snapshot ensemble's test metrics."""
    from transformers import GPT2LMHeadModel

    from hf_ckd import TeacherEnsemble, Trajectory

    trajectory = Trajectory.from_local(folder)
    history = trajectory_log(folder)
    seed_everything(seed)
    init = model_eval(teacher_model(args, vocab_size), data["test"])
    checkpoints = [
        {"name": "init", "step": 0, "fraction": 0.0, **init, **position_summary(init["position_ce"])}
    ]
    for c in trajectory:
        test = model_eval(GPT2LMHeadModel.from_pretrained(c.path), data["test"])
        checkpoints.append(
            {
                "name": c.name,
                "step": c.step,
                "fraction": c.fraction,
                "validation_loss": c.metrics.get("eval_validation_loss"),
                "train_loss": c.metrics.get("eval_train_loss"),
                **test,
                **position_summary(test["position_ce"]),
            }
        )
    ensembles = {}
    for arm in args.arms():
        if arm["kind"] == "static" and "," in arm["spec"]:
            ensemble = TeacherEnsemble.from_trajectory(trajectory, arm["spec"], average=args.ensemble_average)
            result = ensemble_eval(ensemble, data["test"])
            ensembles[arm["name"]] = {k: result[k] for k in ("ce", "perplexity", "accuracy")}
            ensembles[arm["name"]]["checkpoints"] = [c.name for c in ensemble.checkpoints]
    return {
        "seed": seed,
        "path": folder,
        "history": history,
        "checkpoints": checkpoints,
        "ensembles": ensembles,
    }


def trajectory_log(folder: str) -> list[dict]:
    """Per evaluation step of the teacher run: validation loss, training-subset loss (eval mode) and the
    logged training loss (running mean since the previous log)."""
    import json

    with open(os.path.join(folder, "trainer_state.json")) as f:
        log = json.load(f)["log_history"]
    rows: dict[int, dict] = {}
    for entry in log:
        row = rows.setdefault(entry["step"], {"step": entry["step"]})
        for key, name in (
            ("eval_validation_loss", "validation_loss"),
            ("eval_train_loss", "train_eval_loss"),
            ("loss", "train_running_loss"),
        ):
            if key in entry:
                row[name] = entry[key]
    return [rows[s] for s in sorted(rows) if "validation_loss" in rows[s]]


def distill_student(
    args: TextArguments, arm: dict, teacher_dirs: list[str], k: int, seed: int, data: dict, vocab_size: int
) -> dict:
    """One student run of one arm (teacher seed ``k``, student ``seed``); returns its test metrics, its
    validation curve and its training log. The same ``seed`` gives every arm the same initialisation and batch
    order. The labels-only arm goes through the same trainer with alpha=1 (the teacher is never run)."""
    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer, TeacherEnsemble, Trajectory

    every = max(1, args.student_steps // args.student_eval_points)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="hf_ckd_text_student_") as scratch:
        config = {
            "output_dir": scratch,
            "seed": seed,
            "temperature": arm["tau"],
            "alpha": arm["alpha"],
            "ensemble_average": args.ensemble_average,
            "max_steps": args.student_steps,
            "per_device_train_batch_size": args.student_batch_size,
            "learning_rate": args.student_learning_rate,
            "warmup_steps": max(1, args.student_steps // 20),
            "save_strategy": "no",
            "eval_strategy": "steps",
            "eval_steps": every,
            "eval_on_start": True,
            "logging_steps": every,
            **common_args(),
        }
        teachers = None
        if (
            arm["kind"] == "ensemble"
        ):  # final checkpoints of several runs: not one trajectory, so a ready ensemble
            finals = [Trajectory.from_local(d).select("last")[0] for d in teacher_dirs]
            teachers = TeacherEnsemble.from_checkpoints(finals, average=args.ensemble_average)
        else:
            config.update(teacher=teacher_dirs[k], teacher_checkpoints=arm["spec"] or "last")
            if arm["kind"] == "progressive":
                config.update(teacher_schedule="progressive", teacher_schedule_pace="teacher_time")
        seed_everything(seed)
        student = student_model(args, vocab_size)
        trainer = CheckpointDistillTrainer(
            model=student,
            args=CheckpointDistillConfig(**config),
            train_dataset=data["train"],
            eval_dataset=data["validation"],
            teachers=teachers,
        )
        quiet(trainer).train()
        log = trainer.state.log_history
        test = model_eval(trainer.model, data["test"])
    curve = [(e["step"], round(e["eval_loss"], 5)) for e in log if "eval_loss" in e]
    switches = [(e["step"], e["teacher/checkpoint"]) for e in log if "teacher/checkpoint" in e]
    return {
        "test_ce": test["ce"],
        "test_perplexity": test["perplexity"],
        "test_accuracy": test["accuracy"],
        "validation_loss": curve[-1][1],
        "curve": curve,
        "train_log": [
            {
                k: round(e[k], 5) if isinstance(e[k], float) else e[k]
                for k in ("step", "loss", "loss_ce", "loss_kd")
                if k in e
            }
            for e in log
            if "loss" in e
        ],
        "teacher_switches": switches,
        "seconds": round(time.time() - start, 1),
    }


# ---- running the runs: in worker processes or inline ----------------------------------------------------

_WORKER: dict = {}  # per process: the arguments and the data


def init_worker(args: TextArguments, data_dir: str, vocab_size: int) -> None:
    """Set up a process (a pool worker, or the main process with num_workers=1) to train teachers and students."""
    quiet_process(args.torch_threads)
    no_progress_bars()
    _WORKER.update(args=args, data=load_data(data_dir), vocab_size=vocab_size)
    # Trainer runs gc.collect() at the start of every train(); with the libraries' objects frozen out of the
    # collector's reach it costs milliseconds instead of a large fraction of a second per run.
    gc.freeze()


def no_progress_bars() -> None:
    """No weight-loading / shard-writing bars from transformers (one per checkpoint otherwise)."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def run_task(task: dict) -> dict:
    """Train and analyse one teacher, evaluate the ensemble of final teachers, or train one student."""
    w = _WORKER
    if task["kind"] == "teacher":
        start = time.time()
        train_teacher(w["args"], task["teacher_seed"], task["teacher_dir"], w["data"], w["vocab_size"])
        trained = time.time() - start
        result = analyse_teacher(
            w["args"], task["teacher_seed"], task["teacher_dir"], w["data"], w["vocab_size"]
        )
        return {
            **task,
            "teacher": {
                **result,
                "train_seconds": round(trained, 1),
                "seconds": round(time.time() - start, 1),
            },
        }
    if task["kind"] == "finals":
        from hf_ckd import TeacherEnsemble, Trajectory

        finals = [Trajectory.from_local(d).select("last")[0] for d in task["teacher_dirs"]]
        ensemble = TeacherEnsemble.from_checkpoints(finals, average=w["args"].ensemble_average)
        result = ensemble_eval(ensemble, w["data"]["test"])
        return {**task, "result": {k: result[k] for k in ("ce", "perplexity", "accuracy")}}
    result = distill_student(
        w["args"],
        task["arm"],
        task["teacher_dirs"],
        task["teacher_seed"],
        task["student_seed"],
        w["data"],
        w["vocab_size"],
    )
    return {**task, **result}


# ---- statistics and reporting -------------------------------------------------------------------------


def teacher_ce(teacher: dict, arm: dict) -> float | None:
    """Test cross-entropy of the arm's teacher (a checkpoint, or the snapshot ensemble, at tau = 1)."""
    if arm["kind"] in ("labels", "ensemble", "progressive"):
        return None
    if arm["name"] in teacher["ensembles"]:
        return teacher["ensembles"][arm["name"]]["ce"]
    spec = arm["spec"]
    rows = teacher["checkpoints"][1:]
    if spec == "last":
        return rows[-1]["ce"]
    return min(rows, key=lambda r: (round(abs(r["fraction"] - float(spec)), 9), r["step"]))["ce"]


def summarise(arms: list[dict], teachers: list[dict], runs: list[dict], finals: dict | None) -> list[dict]:
    """Per arm: test CE / perplexity / accuracy mean and SD, paired Δ to T^full (mean, SE, per teacher seed)."""
    rows = []
    groups = [t["seed"] for t in teachers]
    for arm in arms:
        c = paired_comparison(runs, arm["name"], REFERENCE, groups, value="test_ce")
        acc = paired_comparison(runs, arm["name"], REFERENCE, groups, value="test_accuracy")
        ppl = paired_comparison(runs, arm["name"], REFERENCE, groups, value="test_perplexity")
        val = mean_std([r["validation_loss"] for r in runs if r["arm"] == arm["name"]])
        if arm["kind"] == "ensemble":
            teacher = [finals["ce"]] if finals else []
        else:
            teacher = [v for v in (teacher_ce(t, arm) for t in teachers) if v is not None]
        rows.append(
            {
                "arm": arm["name"],
                "kind": arm["kind"],
                "teacher_checkpoints": arm["spec"],
                "alpha": arm["alpha"],
                "tau": arm["tau"],
                "teacher_test_ce_mean": mean_std(teacher)[0] if teacher else None,
                "teacher_test_ce_std": mean_std(teacher)[1] if teacher else None,
                "test_ce_mean": c["mean"],
                "test_ce_std": c["std"],
                "test_perplexity_mean": ppl["mean"],
                "test_perplexity_std": ppl["std"],
                "test_accuracy_mean": acc["mean"],
                "test_accuracy_std": acc["std"],
                "validation_loss_mean": val[0],
                "n": c["n"],
                "delta_ce_vs_full_mean": c["delta_mean"],
                "delta_ce_vs_full_se": c["delta_se"],
                "delta_ce_vs_full_per_teacher_seed": c["delta_per_group"],
                "delta_accuracy_vs_full_mean": acc["delta_mean"],
                "delta_accuracy_vs_full_se": acc["delta_se"],
                "within_2se": c["within_2se"],
                "sign_changes_across_teacher_seeds": c["sign_changes"],
                "reading": verdict(arm["name"], c, REFERENCE, lower_is_better=True),
            }
        )
    return rows


def fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = 0.0 if abs(x) < 0.5 * 10**-digits else x
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def students_table(rows: list[dict], teacher_seeds: int) -> list[str]:
    cells = []
    for row in rows:
        teacher = fmt(row["teacher_test_ce_mean"])
        if row["teacher_test_ce_mean"] is not None and teacher_seeds > 1 and row["kind"] != "ensemble":
            teacher += f" ± {fmt(row['teacher_test_ce_std'])}"
        per_teacher = " / ".join(
            fmt(v, 4, signed=True) for v in row["delta_ce_vs_full_per_teacher_seed"].values()
        )
        delta = f"{fmt(row['delta_ce_vs_full_mean'], 4, signed=True)} ± {fmt(row['delta_ce_vs_full_se'], 4)}"
        delta_acc = (
            f"{fmt(100 * row['delta_accuracy_vs_full_mean'], 2, signed=True)} ± "
            f"{fmt(100 * row['delta_accuracy_vs_full_se'], 2)}"
        )
        if row["arm"] == REFERENCE:
            delta = per_teacher = delta_acc = "—"
        cells.append(
            [
                row["arm"],
                teacher,
                f"{fmt(row['test_ce_mean'])} ± {fmt(row['test_ce_std'])}",
                f"{fmt(row['test_perplexity_mean'], 2)} ± {fmt(row['test_perplexity_std'], 2)}",
                f"{fmt(100 * row['test_accuracy_mean'], 2)} ± {fmt(100 * row['test_accuracy_std'], 2)}",
                row["n"],
                delta,
                per_teacher,
                delta_acc,
                row["reading"],
            ]
        )
    header = [
        "arm",
        "teacher CE",
        "student CE (mean ± SD)",
        "perplexity",
        "next-token acc. %",
        "n",
        "Δ CE vs T^full (± SE)",
        "Δ CE per teacher seed",
        "Δ acc. vs T^full (points ± SE)",
        "reading",
    ]
    return markdown_table(header, cells)


def trajectory_rows(teachers: list[dict]) -> list[dict]:
    """Per checkpoint fraction (0 = the untrained model): each metric averaged over the teacher seeds."""
    rows = []
    for i, first in enumerate(teachers[0]["checkpoints"]):
        row = {"name": first["name"], "step": first["step"], "fraction": first["fraction"]}
        for key in ("validation_loss", "train_loss", "ce", "accuracy", "short", "long"):
            values = [t["checkpoints"][i].get(key) for t in teachers]
            values = [v for v in values if v is not None]
            row[key] = mean_std(values) if values else (None, None)
            row[key + "_per_seed"] = values
        rows.append(row)
    return rows


def overfitting(teacher: dict) -> dict:
    """Where the teacher's validation loss is lowest, and how its training loss moves from there to the end."""
    history = teacher["history"]
    best = min(history, key=lambda r: r["validation_loss"])
    last = history[-1]
    final_step = last["step"]
    return {
        "best_step": best["step"],
        "best_fraction": best["step"] / final_step,
        "best_validation_loss": best["validation_loss"],
        "final_validation_loss": last["validation_loss"],
        "train_loss_at_best": best.get("train_eval_loss"),
        "final_train_loss": last.get("train_eval_loss"),
        "validation_rise_after_best": last["validation_loss"] - best["validation_loss"],
        "train_drop_after_best": (best.get("train_eval_loss") or 0) - (last.get("train_eval_loss") or 0),
    }


def position_progress(rows: list[dict]) -> list[dict]:
    """Per checkpoint: the share of the drop from the untrained model to the best checkpoint already made at
    short and at long positions (mean over teacher seeds)."""
    init = rows[0]
    best_short = min(r["short"][0] for r in rows)
    best_long = min(r["long"][0] for r in rows)
    out = []
    for r in rows:
        out.append(
            {
                "short_share": (init["short"][0] - r["short"][0]) / max(init["short"][0] - best_short, 1e-9),
                "long_share": (init["long"][0] - r["long"][0]) / max(init["long"][0] - best_long, 1e-9),
            }
        )
    return out


def sweep_table(
    args: TextArguments, sweep_arms: list[dict], rows: list[dict], runs: list[dict], groups: list[int]
) -> list[dict]:
    """τ sweep: per base arm and temperature, the student's test CE and the paired Δ to T^full at the main τ."""
    out = []
    by_name = {r["arm"]: r for r in rows}
    bases = []
    for arm in sweep_arms:
        if arm["base"] not in bases:
            bases.append(arm["base"])
    for base in bases:
        for tau in sorted([args.temperature, *args.sweep]):
            name = base if tau == args.temperature else f"{base} (τ={tau:g})"
            if name == REFERENCE:
                row = by_name[REFERENCE]
                c = {
                    "mean": row["test_ce_mean"],
                    "std": row["test_ce_std"],
                    "n": row["n"],
                    "delta_mean": 0.0,
                    "delta_se": 0.0,
                    "delta_per_group": dict.fromkeys(groups, 0.0),
                    "within_2se": True,
                    "sign_changes": False,
                }
            else:
                c = paired_comparison(runs, name, REFERENCE, groups, value="test_ce")
            acc = mean_std([r["test_accuracy"] for r in runs if r["arm"] == name])
            out.append(
                {
                    "arm": base,
                    "tau": tau,
                    "run_name": name,
                    "test_ce_mean": c["mean"],
                    "test_ce_std": c["std"],
                    "test_accuracy_mean": acc[0],
                    "n": c["n"],
                    "delta_ce_vs_full_mean": c["delta_mean"],
                    "delta_ce_vs_full_se": c["delta_se"],
                    "delta_ce_vs_full_per_teacher_seed": c["delta_per_group"],
                    "reading": verdict(name, c, REFERENCE, lower_is_better=True),
                }
            )
    return out


def markdown(
    args: TextArguments,
    meta: dict,
    rows: list[dict],
    sweep: list[dict],
    teachers: list[dict],
    traj: list[dict],
    overfit: list[dict],
) -> str:
    fp = meta["data"]["fingerprint"]
    tokens = meta["data"]["tokens"]
    split_text = ", ".join(
        f"{name} {fp['splits'][name]['files']} files / {fp['splits'][name]['bytes'] / 1e6:.2f} MB"
        for name in SPLITS
    )
    sub = fp["train_subset"]
    lines = [
        "# hf_ckd text experiment: the Python standard library",
        "",
        *(["**--quick: smoke-test settings; these numbers are not meaningful.**", ""] if args.quick else []),
        "## Corpus",
        "",
        f"Python {fp['python']} ({fp['implementation']}) standard library, {fp['files']} `*.py` files, "
        f"{fp['bytes'] / 1e6:.2f} MB ({split_text}); test packages and site-packages left out, split by "
        f"sha256 of the relative path. sha256 of the sorted file list `{fp['file_list_sha256'][:16]}…`, of the "
        f"contents `{fp['content_sha256'][:16]}…` (full hashes in results.json).",
        "",
        f"Tokenizer: byte-level BPE, {meta['data']['vocab_size']} tokens, trained on "
        f"{fp['tokenizer_files']['files']} training files ({fp['tokenizer_files']['bytes'] / 1e6:.2f} MB). "
        f"Teachers and students train on a fixed subset of {sub['files']} training files "
        f"({sub['bytes'] / 1e3:.0f} kB, {tokens['train']['tokens']:,} tokens, {tokens['train']['blocks']} blocks "
        f"of {args.block_size}). Validation: {tokens['validation']['blocks_used']} of "
        f"{tokens['validation']['blocks']} blocks; test: {tokens['test']['blocks_used']} of "
        f"{tokens['test']['blocks']} blocks ({tokens['test']['blocks_used'] * (args.block_size - 1):,} scored "
        "tokens), evenly spaced over each split.",
        "",
        f"Teacher: GPT-2, {args.teacher_layers} layers x {args.teacher_width} wide, {meta['teacher_parameters']:,} "
        f"parameters, {args.teacher_seeds} seed(s), {args.teacher_steps} steps of {args.teacher_batch_size} "
        f"blocks ({args.teacher_steps * args.teacher_batch_size / tokens['train']['blocks']:.0f} epochs), lr "
        f"{args.teacher_learning_rate:g}, a checkpoint every {args.teacher_steps // 10} steps. Student: GPT-2, "
        f"{args.student_layers} layers x {args.student_width} wide, {meta['student_parameters']:,} parameters, "
        f"{args.student_steps} steps of {args.student_batch_size} blocks "
        f"({args.student_steps * args.student_batch_size / tokens['train']['blocks']:.1f} epochs), lr {args.student_learning_rate:g}, {args.student_seeds} paired seed(s) per teacher. KD at "
        f"τ = {args.temperature:g}, alpha = {args.alpha:g}, ensembles average `{args.ensemble_average}`.",
        "",
        "## Students",
        "",
        "Test cross-entropy in nats/token (lower is better), perplexity = exp(CE), next-token top-1 accuracy. "
        "Δ CE vs T^full is the paired difference (same teacher seed, same student seed), mean ± standard error "
        "over all runs; negative = the arm's students are better. Δ per teacher seed shows whether its sign holds "
        "across teachers.",
        "",
        *students_table(rows, args.teacher_seeds),
        "",
        "Teacher CE: the arm's checkpoint (or ensemble, probabilities averaged at τ = 1) on the test blocks, mean ± "
        "SD over teacher seeds. Reading: a Δ within 2 SE is noise; the SE treats every run as independent, but runs "
        "that share a teacher are not, so a Δ whose sign changes across teacher seeds is read as noise too. T* (MI "
        "selection) is not an arm: hf_ckd.selection scores classifiers only (one prediction per example), not a "
        "causal LM's per-position predictions.",
        "",
    ]
    best = meta.get("sweep_best_arm")
    if sweep:
        lines += [
            "## Temperature sweep",
            "",
            f"T^full and the arm with the lowest mean validation loss at τ = {args.temperature:g} "
            f"(`{best}`), at τ ∈ {{{', '.join(f'{t:g}' for t in sorted([args.temperature, *args.sweep]))}}}; Δ "
            f"against T^full at τ = {args.temperature:g}, paired.",
            "",
        ]
        cells = [
            [
                s["arm"],
                f"{s['tau']:g}",
                f"{fmt(s['test_ce_mean'])} ± {fmt(s['test_ce_std'])}",
                fmt(100 * s["test_accuracy_mean"], 2),
                s["n"],
                "—"
                if s["run_name"] == REFERENCE
                else f"{fmt(s['delta_ce_vs_full_mean'], 4, signed=True)} ± {fmt(s['delta_ce_vs_full_se'], 4)}",
                "—"
                if s["run_name"] == REFERENCE
                else " / ".join(
                    fmt(v, 4, signed=True) for v in s["delta_ce_vs_full_per_teacher_seed"].values()
                ),
                s["reading"],
            ]
            for s in sweep
        ]
        header = [
            "arm",
            "τ",
            "student CE (mean ± SD)",
            "acc. %",
            "n",
            "Δ CE vs T^full",
            "per teacher seed",
            "reading",
        ]
        lines += [*markdown_table(header, cells), ""]
    lines += [
        "## Teacher trajectory",
        "",
        "Mean over teacher seeds. Validation and training loss: Trainer's eval loss on the validation blocks and on "
        "as many training blocks, logged at the checkpoint. Test CE and accuracy on the test blocks. Fraction 0 is "
        "the untrained model.",
        "",
    ]
    cells = []
    for r in traj:
        cells.append(
            [
                f"{r['fraction']:.2f}",
                r["step"],
                fmt(r["train_loss"][0]),
                fmt(r["validation_loss"][0]),
                " / ".join(fmt(v) for v in r["validation_loss_per_seed"]) or "—",
                fmt(r["ce"][0]),
                fmt(100 * r["accuracy"][0], 2),
            ]
        )
    header = [
        "fraction",
        "step",
        "train loss",
        "validation loss",
        "validation per seed",
        "test CE",
        "test acc. %",
    ]
    lines += [*markdown_table(header, cells), ""]
    cells = [
        [
            t["seed"],
            f"{o['best_step']} ({o['best_fraction']:.2f})",
            fmt(o["best_validation_loss"]),
            fmt(o["final_validation_loss"]),
            fmt(o["validation_rise_after_best"], 3, signed=True),
            fmt(o["train_loss_at_best"]),
            fmt(o["final_train_loss"]),
        ]
        for t, o in zip(teachers, overfit)
    ]
    header = [
        "teacher seed",
        "lowest validation loss at step (fraction)",
        "lowest val.",
        "final val.",
        "val. rise after",
        "train loss there",
        "final train loss",
    ]
    lines += [
        f"Where overfitting starts (evaluations every {args.teacher_steps // args.teacher_eval_points} steps):",
        "",
        *markdown_table(header, cells),
        "",
        "## Loss by position in the context",
        "",
        f"Test CE of each teacher checkpoint at positions < {SHORT_POSITIONS} (predicting tokens 1-"
        f"{SHORT_POSITIONS} from at most {SHORT_POSITIONS} tokens of context) and >= {LONG_POSITIONS} (at least "
        f"{LONG_POSITIONS + 1} tokens of context), mean over teacher seeds; gap = short - long (what the longer "
        "context is worth); share = the part of the drop from the untrained model to the best checkpoint already "
        "made. Plot: positions.png.",
        "",
    ]
    progress = position_progress(traj)
    cells = [
        [
            f"{r['fraction']:.2f}",
            fmt(r["short"][0]),
            fmt(r["long"][0]),
            fmt(r["short"][0] - r["long"][0], 3, signed=True),
            f"{100 * p['short_share']:.0f}%",
            f"{100 * p['long_share']:.0f}%",
        ]
        for r, p in zip(traj, progress)
    ]
    header = [
        "fraction",
        f"CE pos < {SHORT_POSITIONS}",
        f"CE pos >= {LONG_POSITIONS}",
        "gap",
        "share (short)",
        "share (long)",
    ]
    lines += [*markdown_table(header, cells), ""]
    machine = meta["machine"]
    lines += [
        f"Wall time {meta['wall_time_s']:.0f} s ({meta['wall_time_s'] / 60:.1f} min) on {machine['cpu_cores']} CPU "
        f"core(s), no GPU ({machine['platform']}, Python {machine['python']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}, {machine['workers']} worker process(es) x "
        f"{machine['torch_threads_per_worker']} torch thread(s)). Plots: students.png, positions.png, teachers.png.",
        "",
    ]
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------------------------------------


def plot_students(path: str, arms: list[dict], sweep_arms: list[dict], runs: list[dict]) -> None:
    """Mean validation loss against student steps, one line per arm (τ-sweep arms dashed, in a second panel)."""
    plt = pyplot()
    panels = [arms] + ([sweep_arms] if sweep_arms else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, panel in zip(axes[0], panels):
        members = (
            panel if panel is arms else [a for a in arms if a["name"] in {s["base"] for s in panel}] + panel
        )
        for i, arm in enumerate(members):
            curves = [r["curve"] for r in runs if r["arm"] == arm["name"]]
            if not curves:
                continue
            steps = [s for s, _ in curves[0]]
            mean = [sum(c[j][1] for c in curves) / len(curves) for j in range(len(steps))]
            points = [
                (s, m) for s, m in zip(steps, mean) if s > 0
            ]  # step 0: the untrained student, off scale
            color = (
                cmap(i % 10)
                if panel is arms
                else cmap([a["name"] for a in arms].index(arm.get("base", arm["name"])) % 10)
            )
            style = "--" if "base" in arm else "-"
            ax.plot(*zip(*points), style, color=color, lw=1.4, label=f"{arm['name']} (n={len(curves)})")
        ax.set_xlabel("student step")
        ax.set_ylabel("validation loss (nats/token), mean over runs")
        ax.set_title("students: main arms" if panel is arms else "students: temperature sweep")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def plot_positions(path: str, traj: list[dict], teachers: list[dict]) -> None:
    """Each teacher checkpoint's test loss by position (mean over teacher seeds), and short/long vs fraction."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(traj):
        curves = [t["checkpoints"][i]["position_ce"] for t in teachers]
        mean = [sum(c[p] for c in curves) / len(curves) for p in range(len(curves[0]))]
        if row["fraction"] == 0:
            continue  # the untrained model: ~log(V) everywhere, off scale
        ax.plot(range(len(mean)), mean, color=cmap(row["fraction"]), lw=1.2, label=f"{row['fraction']:.1f}")
    ax.set_xscale("symlog", linthresh=8)
    ax.axvline(SHORT_POSITIONS, color="k", lw=0.5, ls=":")
    ax.axvline(LONG_POSITIONS, color="k", lw=0.5, ls=":")
    ax.set_xlabel("position p (predicting token p + 1 from tokens 0..p)")
    ax.set_ylabel("test CE (nats/token)")
    ax.set_title("teacher checkpoints: loss by position (colour = fraction of training)")
    ax.legend(fontsize=7, ncol=2, title="fraction")
    fractions = [r["fraction"] for r in traj[1:]]
    ax2.plot(fractions, [r["short"][0] for r in traj[1:]], "o-", label=f"positions < {SHORT_POSITIONS}")
    ax2.plot(fractions, [r["long"][0] for r in traj[1:]], "o-", label=f"positions >= {LONG_POSITIONS}")
    ax2.plot(fractions, [r["ce"][0] for r in traj[1:]], "k.--", lw=0.8, label="all positions")
    ax2.set_xlabel("fraction of teacher training")
    ax2.set_ylabel("test CE (nats/token)")
    ax2.set_title("short- vs long-range loss along the trajectory")
    ax2.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_teachers(path: str, teachers: list[dict]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(teachers):
        rows = [r for r in t["history"] if r["step"] > 0]
        steps = [r["step"] for r in rows]
        ax.plot(
            steps,
            [r["validation_loss"] for r in rows],
            "-",
            color=cmap(i),
            label=f"seed {t['seed']}: validation",
        )
        ax.plot(
            steps,
            [r.get("train_eval_loss") for r in rows],
            ":",
            color=cmap(i),
            label=f"seed {t['seed']}: train",
        )
    ax.set_xlabel("teacher step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("teachers: training-subset and validation loss")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


# ---- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> TextArguments:
    (args,) = parse_dataclasses([TextArguments], argv, description=__doc__.split("\n\n")[0])
    return args


OUTPUTS = ["results.json", "results.md", "students.png", "positions.png", "teachers.png"]


def main(argv: list[str] | None = None) -> dict:
    """Run the experiment; returns what it writes to ``output_dir/results.json``."""
    args = parse_args(argv)
    prepare_output_dir(
        args.output_dir,
        args.overwrite_output_dir,
        OUTPUTS,  # never leave an earlier run's results beside a new run
        folders=["teachers", "data", "tokenizer"] if args.overwrite_output_dir else [],
        refusal=". Pass --overwrite_output_dir to replace them, or choose another --output_dir.",
    )
    start = time.time()
    quiet_process(args.torch_threads)
    no_progress_bars()
    data_dir = os.path.join(args.output_dir, "data")
    data_meta = prepare_data(args, data_dir, os.path.join(args.output_dir, "tokenizer"))
    vocab_size = data_meta["vocab_size"]
    arms = args.arms()
    meta: dict[str, Any] = {
        "data": data_meta,
        "teacher_parameters": parameters(teacher_model(args, vocab_size)),
        "student_parameters": parameters(student_model(args, vocab_size)),
        "data_seconds": round(time.time() - start, 1),
    }
    fp = data_meta["fingerprint"]
    split_counts = ", ".join(f"{name} {fp['splits'][name]['files']}" for name in SPLITS)
    print(
        f"hf_ckd text experiment: Python {fp['python']} stdlib, {fp['files']} files "
        f"({split_counts}), training subset "
        f"{data_meta['tokens']['train']['tokens']:,} tokens; {args.teacher_seeds} teacher(s) x "
        f"{args.student_seeds} student seed(s) x {len(arms)} arms + τ sweep {args.sweep or 'none'}, "
        f"{args.num_workers} worker(s) -> {args.output_dir}",
        flush=True,
    )
    teacher_dirs = [os.path.join(args.output_dir, "teachers", f"seed-{k}") for k in range(args.teacher_seeds)]
    teachers: dict[int, dict] = {}
    runs: list[dict] = []
    finals: dict = {}
    state = {"main_left": args.teacher_seeds * args.student_seeds * len(arms), "sweep": []}

    def student_jobs(k: int, members: list[dict]) -> list[dict]:
        return [
            {
                "kind": "student",
                "teacher_seed": k,
                "teacher_dirs": teacher_dirs,
                # distinct across teachers, shared by the arms (paired runs)
                "student_seed": k * args.student_seeds + j,
                "arm": arm,
            }
            for j in range(args.student_seeds)
            for arm in members
        ]

    def sweep_jobs() -> list[dict]:
        """Once every main run is in: the τ sweep of T^full and of the best arm by validation loss."""
        if not args.sweep:
            return []
        distilled = [a for a in arms if a["kind"] != "labels" and a["name"] != REFERENCE]
        val = {
            a["name"]: mean_std([r["validation_loss"] for r in runs if r["arm"] == a["name"]])[0]
            for a in distilled
        }
        best = min(distilled, key=lambda a: val[a["name"]])
        meta["sweep_best_arm"] = best["name"]
        meta["sweep_best_arm_validation_loss"] = val
        bases = [a for a in arms if a["name"] == REFERENCE] + [best]
        state["sweep"] = [sweep_arm(a, tau) for a in bases for tau in args.sweep]
        print(f"τ sweep {args.sweep} for {REFERENCE} and {best['name']} (best validation loss)", flush=True)
        return [job for k in range(args.teacher_seeds) for job in student_jobs(k, state["sweep"])]

    def collect(task: dict) -> list[dict]:
        if task["kind"] == "student":
            run = {k: task[k] for k in ("teacher_seed", "student_seed")}
            run["arm"] = task["arm"]["name"]
            run.update(
                {
                    k: task[k]
                    for k in (
                        "test_ce",
                        "test_perplexity",
                        "test_accuracy",
                        "validation_loss",
                        "curve",
                        "train_log",
                        "teacher_switches",
                        "seconds",
                    )
                }
            )
            runs.append(run)
            print(
                f"  student {run['arm']:<28} teacher {run['teacher_seed']} seed {run['student_seed']:>2}: test CE "
                f"{run['test_ce']:.4f} ({run['seconds']:.0f} s, {len(runs)} done, {time.time() - start:.0f} s)",
                flush=True,
            )
            if "base" not in task["arm"]:
                state["main_left"] -= 1
                if state["main_left"] == 0:
                    return sweep_jobs()
            return []
        if task["kind"] == "finals":
            finals.update(task["result"])
            return []
        k = task["teacher_seed"]
        teachers[k] = task["teacher"]
        o = overfitting(teachers[k])
        print(
            f"teacher {k}: trained in {teachers[k]['train_seconds']:.0f} s, final validation loss "
            f"{o['final_validation_loss']:.3f}, lowest {o['best_validation_loss']:.3f} at step {o['best_step']}, "
            f"test CE {teachers[k]['checkpoints'][-1]['ce']:.3f} ({time.time() - start:.0f} s)",
            flush=True,
        )
        jobs = student_jobs(k, [a for a in arms if a["kind"] != "ensemble"])
        if (
            len(teachers) == args.teacher_seeds
        ):  # every final checkpoint exists: the ensemble of finals can teach
            ensemble_arms = [a for a in arms if a["kind"] == "ensemble"]
            if ensemble_arms:
                jobs.append({"kind": "finals", "teacher_dirs": teacher_dirs})
                jobs += [job for j in range(args.teacher_seeds) for job in student_jobs(j, ensemble_arms)]
        return jobs

    teacher_jobs = [
        {"kind": "teacher", "teacher_seed": k, "teacher_dir": teacher_dirs[k]}
        for k in range(args.teacher_seeds)
    ]
    with worker_pool(args.num_workers, init_worker, (args, data_dir, vocab_size)) as executor:
        run_jobs(executor, run_task, teacher_jobs, collect)

    teachers_list = [teachers[k] for k in sorted(teachers)]
    all_arms = arms + state["sweep"]
    order = {arm["name"]: i for i, arm in enumerate(all_arms)}
    runs.sort(key=lambda r: (r["teacher_seed"], r["student_seed"], order[r["arm"]]))
    rows = summarise(arms, teachers_list, runs, finals or None)
    groups = [t["seed"] for t in teachers_list]
    sweep = sweep_table(args, state["sweep"], rows, runs, groups) if state["sweep"] else []
    traj = trajectory_rows(teachers_list)
    overfit = [overfitting(t) for t in teachers_list]
    meta["wall_time_s"] = round(time.time() - start, 1)
    meta["machine"] = describe_machine(args.num_workers, args.torch_threads)
    progress = position_progress(traj)
    results = {
        "config": asdict(args),
        **meta,
        "arms": rows,
        "tau_sweep": sweep,
        "full_ensemble_teacher": finals,
        "teacher_trajectory": [
            {
                "fraction": r["fraction"],
                "step": r["step"],
                **{
                    key: r[key][0]
                    for key in ("validation_loss", "train_loss", "ce", "accuracy", "short", "long")
                },
                "short_share": p["short_share"],
                "long_share": p["long_share"],
            }
            for r, p in zip(traj, progress)
        ],
        "overfitting": overfit,
        "teachers": teachers_list,
        "runs": runs,
    }
    table = markdown(args, meta, rows, sweep, teachers_list, traj, overfit)
    plot_students(os.path.join(args.output_dir, "students.png"), arms, state["sweep"], runs)
    plot_positions(os.path.join(args.output_dir, "positions.png"), traj, teachers_list)
    plot_teachers(os.path.join(args.output_dir, "teachers.png"), teachers_list)
    results_json = os.path.join(args.output_dir, "results.json")
    write_text(os.path.join(args.output_dir, "results.md"), table)
    write_json(results_json, results, indent=1)
    print("\n" + table)
    print(f"Wrote {results_json}, results.md and the plots.")
    return results


if __name__ == "__main__":
    try:
        main()
    except FileExistsError as err:
        sys.exit(f"error: {err}")
