#!/usr/bin/env python
"""hf_ckd's ``CheckpointDistillTrainer`` against TRL's ``GKDTrainer`` on the same causal-LM distillation task:
equal values, equal students, step time and peak memory.

The task: a GPT-2 student (from a config, seeded) distilled from a fixed GPT-2 teacher (from a config,
random but fixed, with a wider initialisation so its next-token distributions are not flat) on random
token sequences of one length (no padding: every label is real), batch size and seed the same on both
sides. TRL runs off-policy and without sequence-level KD (``lmbda=0``, ``seq_kd=False``: no generation), so
both trainers see the dataset's tokens; both get the same collator (``default_data_collator`` on
``input_ids``/``attention_mask``/``labels``), which records a fingerprint of every batch so the data order is
checked, not assumed. hf_ckd runs pure distillation (``alpha=0``), its loss ``tau^2 * D_beta``; its
``kd_divergence`` (= loss / tau^2, read unrounded from the logged loss) is TRL's number. GKDConfig inherits
SFTConfig's ``bf16=True`` and ``gradient_checkpointing=True``; both are turned off here (fp32 on both sides).

* Parity (``--parity_vocab``): for each beta and temperature, ``parity_steps`` AdamW steps of hf_ckd
  ``kd_loss=full``, hf_ckd ``kd_loss=chunked`` (``--parity_chunk_size``) and GKD from the same student
  initialisation: the first step's values, the loss curves and the final max |w_a - w_b|. Then plain SGD,
  where a constant factor in the loss is a factor in every update: GKD with hf_ckd's learning rate, and with
  it times T / (T - 1) (the token-count ratio found below).
* Function check: TRL's ``GKDTrainer.generalized_jsd_loss`` called directly, with the temperature, on the
  first batch's logits, against hf_ckd's first ``kd_divergence``.
* Time (``--vocabs``): hf_ckd ``full``, ``chunked`` (each of ``--chunk_sizes``; ``rule`` is
  ``hf_ckd._options.default_chunk_size(V, H)``, H the student's n_embd) and GKD, beta 0, temperature 1, AdamW. Each arm's trainer is built
  once and trained ``steps_per_call`` steps per call; a ``TrainerCallback`` times each optimizer step
  (``on_step_begin`` to ``on_step_end``: forward, teacher forward, loss, backward, clipping, optimizer step;
  not data loading). The first step of each call is dropped (a fresh optimizer), one call per arm is a
  warm-up, and the calls are interleaved over the arms in rotating order; median of the kept steps. Ratios
  are hf_ckd / GKD within the run.
* Peak memory: a fresh subprocess per (V, arm), which trains 2 steps; over the second, on CPU, the growth of
  the resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` at ``on_step_begin``) over
  the RSS then, with ``MALLOC_MMAP_THRESHOLD_=131072`` (as benchmarks/large_vocab.py); on a GPU,
  ``torch.cuda.max_memory_allocated`` minus the memory allocated at ``on_step_begin``.

    python benchmarks/trl_parity.py --json benchmarks/trl_parity.json
    python benchmarks/trl_parity.py --parity false --memory false --vocabs 512 --repeats 8    # time only
    python benchmarks/trl_parity.py --quick
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings

import torch
import transformers
from datasets import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    TrainerCallback,
    default_data_collator,
)
from transformers.trainer_callback import PrinterCallback

from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer
from hf_ckd._options import default_chunk_size


@dataclass
class BenchmarkArguments:
    vocabs: str = field(default="512,32768", metadata={"help": "Comma-separated V of the time/memory runs."})
    chunk_sizes: str = field(
        default="1024,rule",
        metadata={
            "help": "hf_ckd kd_loss=chunked arms of the time/memory runs: positions per chunk, 'rule' for "
            "default_chunk_size(V, n_embd) (1024 was the old default)."
        },
    )
    parity_vocab: int = field(default=512, metadata={"help": "V of the parity runs."})
    parity_steps: int = field(default=50, metadata={"help": "Optimizer steps of each parity run."})
    parity_chunk_size: int = field(default=64, metadata={"help": "kd_chunk_size of the chunked parity arm."})
    betas: str = field(default="0,1", metadata={"help": "Comma-separated beta of the parity runs."})
    temperatures: str = field(
        default="1,2", metadata={"help": "Comma-separated temperature of the parity runs."}
    )
    hidden: int = field(default=64, metadata={"help": "Student n_embd."})
    teacher_hidden: int = field(default=128, metadata={"help": "Teacher n_embd."})
    layers: int = field(default=2, metadata={"help": "n_layer of student and teacher."})
    teacher_init: float = field(
        default=0.2, metadata={"help": "Teacher initializer_range (GPT-2's 0.02 gives near-uniform outputs)."}
    )
    seq_len: int = field(default=64, metadata={"help": "T, tokens per sequence."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant)."})
    sgd_learning_rate: float = field(default=0.3, metadata={"help": "Learning rate of the SGD parity runs."})
    repeats: int = field(default=3, metadata={"help": "Timed train() calls per arm, after one warm-up call."})
    steps_per_call: int = field(
        default=3, metadata={"help": "Steps per train() call (the first is dropped)."}
    )
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    seed: int = field(default=0, metadata={"help": "Seed (data order, student initialisation)."})
    parity: bool = field(default=True, metadata={"help": "Run the parity runs (--parity false: time only)."})
    memory: bool = field(default=True, metadata={"help": "Measure peak memory (a subprocess per V and arm)."})
    quick: bool = field(default=False, metadata={"help": "Small sizes (about a minute), for the tests."})
    json: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    measure_memory: str | None = field(
        default=None, metadata={"help": "Internal: 'V,arm' in a child process."}
    )

    def apply_quick(self) -> None:
        if self.quick:
            self.vocabs, self.parity_vocab, self.parity_steps, self.parity_chunk_size = "128", 64, 4, 8
            self.betas = "0"
            self.hidden, self.teacher_hidden, self.seq_len, self.batch_size = 16, 24, 16, 4
            self.repeats, self.steps_per_call = 1, 2

    @property
    def vocab_sizes(self) -> list[int]:
        return [int(v) for v in self.vocabs.split(",") if v.strip()]

    def arms(self, vocab: int) -> list[str]:
        chunks = []
        for item in self.chunk_sizes.split(","):
            item = item.strip()
            if item:
                size = default_chunk_size(vocab, self.hidden) if item == "rule" else int(item)
                if size not in chunks:
                    chunks.append(size)
        return ["hf_full", *(f"hf_chunked@{c}" for c in chunks), "gkd"]


# ---- the task ----------------------------------------------------------------------------------------


def gpt2(args: BenchmarkArguments, vocab: int, hidden: int, seed: int, init: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=args.seq_len,
        n_embd=hidden,
        n_layer=args.layers,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=init,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of ``vocab`` ids: GKDTrainer needs a processing class (its pad token id for the
    generation config); the data are token ids already."""
    from tokenizers import Tokenizer, models

    words = {f"t{i}": i for i in range(vocab)}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="t0")), pad_token="t0", eos_token="t0"
    )


def dataset(args: BenchmarkArguments, vocab: int, size: int) -> Dataset:
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, vocab, (size, args.seq_len), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": ids.tolist()}
    )


class FingerprintCollator:
    """``default_data_collator``, recording each batch's fingerprint (its input ids' first column and sum)."""

    def __init__(self):
        self.seen: list[tuple] = []
        self.first: dict[str, torch.Tensor] | None = None  # the first training batch

    def __call__(self, features):
        batch = default_data_collator(features)
        ids = batch["input_ids"]
        self.seen.append((*ids[:, 0].tolist(), int(ids.sum())))
        if self.first is None:
            self.first = {k: v.clone() for k, v in batch.items()}
        return batch


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[list[float]] = []  # one list per train() call

    def on_train_begin(self, args, state, control, **kwargs):
        self.times.append([])

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.times[-1].append(time.perf_counter() - self._start)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(
    args: BenchmarkArguments,
    arm: str,
    vocab: int,
    out: str,
    *,
    beta: float,
    temperature: float,
    steps: int,
    optim: str = "adamw_torch",
    learning_rate: float | None = None,
    max_grad_norm: float = 1.0,
    logging_steps: int = 1,
):
    """The trainer of ``arm`` (``hf_full``, ``hf_chunked@<positions>`` or ``gkd``) on the shared task, its
    student, and its collator."""
    student = gpt2(args, vocab, args.hidden, seed=args.seed + 2)
    teacher = gpt2(args, vocab, args.teacher_hidden, seed=args.seed + 3, init=args.teacher_init).eval()
    collator = FingerprintCollator()
    common = {
        "output_dir": out,
        "per_device_train_batch_size": args.batch_size,
        "max_steps": steps,
        "learning_rate": args.learning_rate if learning_rate is None else learning_rate,
        "lr_scheduler_type": "constant",
        "optim": optim,
        "max_grad_norm": max_grad_norm,
        "logging_steps": logging_steps,
        "report_to": "none",
        "use_cpu": not args.device.startswith("cuda"),
        "seed": args.seed,
        "disable_tqdm": True,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
    }
    train = dataset(args, vocab, max(steps, 1) * args.batch_size)
    if arm == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(
            **common,
            temperature=temperature,
            beta=beta,
            lmbda=0.0,  # off-policy: the dataset's tokens, no generation
            seq_kd=False,
            bf16=False,  # SFTConfig's defaults: fp32 and no checkpointing, as hf_ckd
            gradient_checkpointing=False,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=config,
            train_dataset=train,
            data_collator=collator,
            processing_class=tokenizer(vocab),
        )
    else:
        mode, _, chunk = arm.removeprefix("hf_").partition("@")
        config = CheckpointDistillConfig(
            **common,
            temperature=temperature,
            alpha=0.0,
            beta=beta,
            kd_loss=mode,
            kd_chunk_size=int(chunk) if chunk else 1024,
        )
        trainer = CheckpointDistillTrainer(
            model=student, args=config, train_dataset=train, data_collator=collator, teacher_model=teacher
        )
    trainer.remove_callback(PrinterCallback)
    return trainer, student, collator


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def log_values(trainer, key: str) -> list[float]:
    return [e[key] for e in trainer.state.log_history if key in e and "train_runtime" not in e]


# ---- parity ------------------------------------------------------------------------------------------


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def first_batch_divergence(trainer, student0, batch, beta: float, temperature: float) -> float:
    """TRL's ``generalized_jsd_loss`` with the temperature, on the first training batch and the initial
    student: the loss function itself, without the trainer's token count."""
    from trl.experimental.gkd import GKDTrainer

    batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
    teacher = trainer.teacher_model
    with torch.no_grad():
        s = student0.to(trainer.args.device)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        value = GKDTrainer.generalized_jsd_loss(
            s.logits[:, :-1], t.logits[:, :-1], batch["labels"][:, 1:], beta=beta, temperature=temperature
        )
    return float(value)


def parity_runs(args: BenchmarkArguments, out: str) -> tuple[list[dict], list[dict]]:
    vocab, steps, seq = args.parity_vocab, args.parity_steps, args.seq_len
    ratio = (seq - 1) / seq  # scored positions / labels: TRL's count (see RESULTS.md)
    arms = ("hf_full", f"hf_chunked@{args.parity_chunk_size}", "gkd")
    betas = [float(b) for b in args.betas.split(",")]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    results, hf_tau1 = [], {}
    for beta in betas:
        for tau in temperatures:
            runs = {}
            for arm in arms:
                trainer, student, collator = build(
                    args, arm, vocab, os.path.join(out, f"p_{arm}"), beta=beta, temperature=tau, steps=steps
                )
                w0 = weights(student)
                # The same initialisation, rebuilt: GKDTrainer patches the student's forward (a fused LM head
                # bound to that very module), so a deepcopy would still run the trained student.
                student0 = gpt2(args, vocab, args.hidden, seed=args.seed + 2)
                trainer.train()
                runs[arm] = {
                    "trainer": trainer,
                    "student0": student0,
                    "w0": w0,
                    "w": weights(student),
                    "loss": log_values(trainer, "loss"),
                    "kd_divergence": log_values(trainer, "kd_divergence"),
                    "batches": collator.seen[:steps],
                    "first_batch": collator.first,
                }
            print(f"parity beta={beta} tau={tau} done", file=sys.stderr, flush=True)
            hf, chunked, gkd = (runs[a] for a in arms)
            hf_div = [v / tau**2 for v in hf["loss"]]  # alpha=0: loss = tau^2 * D, unrounded
            if tau == 1:
                hf_tau1[beta] = hf_div[0]
            gkd_scaled = [v / ratio for v in gkd["loss"]]
            entry = {
                "beta": beta,
                "temperature": tau,
                "same_batches": hf["batches"] == gkd["batches"] == chunked["batches"],
                "first_step": {
                    "hf_kd_divergence": hf_div[0],
                    "hf_kd_divergence_logged": hf["kd_divergence"][0],
                    "hf_chunked_kd_divergence": chunked["loss"][0] / tau**2,
                    "gkd_loss": gkd["loss"][0],
                    "gkd_over_hf": gkd["loss"][0] / hf_div[0],
                    "expected_ratio": ratio,
                    "rel_error": rel(gkd["loss"][0], hf_div[0]),
                    "rel_error_rescaled": rel(gkd_scaled[0], hf_div[0]),
                    "chunked_rel_error": rel(chunked["loss"][0] / tau**2, hf_div[0]),
                    "trl_function_at_tau": first_batch_divergence(
                        gkd["trainer"], gkd["student0"], gkd["first_batch"], beta, tau
                    ),
                },
                "curve_rel_error_rescaled_max": max(rel(g, h) for g, h in zip(gkd_scaled, hf_div)),
                "last_step": {"hf_kd_divergence": hf_div[-1], "gkd_loss_rescaled": gkd_scaled[-1]},
                "max_abs_dw": {
                    "hf_full_vs_gkd": max_abs_diff(hf["w"], gkd["w"]),
                    "hf_chunked_vs_gkd": max_abs_diff(chunked["w"], gkd["w"]),
                    "hf_full_vs_hf_chunked": max_abs_diff(hf["w"], chunked["w"]),
                    "hf_full_moved": max_abs_diff(hf["w"], hf["w0"]),
                    "same_init": max_abs_diff(hf["w0"], gkd["w0"]),
                },
            }
            first = entry["first_step"]
            first["trl_function_rel_error"] = rel(first["trl_function_at_tau"], hf_div[0])
            if tau != 1 and beta in hf_tau1:  # GKD's loss does not use its temperature
                first["gkd_rescaled_vs_hf_tau1"] = rel(gkd_scaled[0], hf_tau1[beta])
            results.append(entry)
    sgd = []
    for beta in betas:
        finals = {}
        for arm, lr in (
            ("hf_full", args.sgd_learning_rate),
            ("gkd", args.sgd_learning_rate),
            ("gkd_lr_scaled", args.sgd_learning_rate / ratio),
        ):
            trainer, student, _ = build(
                args, arm.removesuffix("_lr_scaled"), vocab, os.path.join(out, f"s_{arm}"), beta=beta,
                temperature=1.0, steps=steps, optim="sgd", learning_rate=lr, max_grad_norm=0.0,
            )  # fmt: skip
            trainer.train()
            finals[arm] = weights(student)
        sgd.append(
            {
                "beta": beta,
                "temperature": 1.0,
                "learning_rate": args.sgd_learning_rate,
                "max_abs_dw_same_lr": max_abs_diff(finals["hf_full"], finals["gkd"]),
                "max_abs_dw_lr_times_T_over_T_minus_1": max_abs_diff(
                    finals["hf_full"], finals["gkd_lr_scaled"]
                ),
            }
        )
    return results, sgd


# ---- time and memory ----------------------------------------------------------------------------------


def time_arms(args: BenchmarkArguments, vocab: int, out: str) -> dict[str, dict]:
    arms = args.arms(vocab)
    trainers, timers = {}, {}
    for arm in arms:
        trainer, _, _ = build(
            args, arm, vocab, os.path.join(out, f"t_{arm}"), beta=0.0, temperature=1.0,
            steps=args.steps_per_call, logging_steps=10**6,
        )  # fmt: skip
        timers[arm] = StepTimer()
        trainer.add_callback(timers[arm])
        trainers[arm] = trainer
        trainer.train()  # warm-up call
    for r in range(args.repeats):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            trainers[arm].train()
    print(f"timing V={vocab} done", file=sys.stderr, flush=True)
    results = {}
    for arm in arms:
        kept = [t for call in timers[arm].times[1:] for t in call[1:]]
        results[arm] = {"time_s": statistics.median(kept), "times_s": kept}
    return results


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


class MemoryProbe(TrainerCallback):
    """Peak memory growth over the second optimizer step (after the first has allocated the optimizer's
    state and the allocator's pools)."""

    def __init__(self):
        self.peak: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step != 1:
            return
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            self._before = _rss_bytes()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != 2:
            return
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._before
        else:
            self.peak = _peak_rss_bytes() - self._before


def measure_memory_here(args: BenchmarkArguments, vocab: int, arm: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        trainer, _, _ = build(args, arm, vocab, out, beta=0.0, temperature=1.0, steps=2, logging_steps=10**6)
        probe = MemoryProbe()
        trainer.add_callback(probe)
        trainer.train()
    return probe.peak


def measure_memory(args: BenchmarkArguments, vocab: int, arm: str) -> int:
    argv = [sys.executable, os.path.abspath(__file__), "--measure_memory", f"{vocab},{arm}"]
    for key, value in asdict(args).items():
        if key not in ("measure_memory", "json", "quick") and value is not None:
            argv += [f"--{key}", str(value)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    args.apply_quick()
    transformers.logging.set_verbosity_error()
    # GKDConfig is given gradient_checkpointing=False (SFTConfig defaults it to True); transformers 5 warns
    # that the field is renamed.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
    if args.measure_memory:
        vocab, arm = args.measure_memory.split(",")
        print(measure_memory_here(args, int(vocab), arm))
        return {}
    import trl

    with tempfile.TemporaryDirectory() as out:
        parity, sgd = parity_runs(args, out) if args.parity else ([], [])
        runs = []
        for vocab in args.vocab_sizes:
            timed = time_arms(args, vocab, out)
            for arm in args.arms(vocab):
                runs.append(
                    {
                        "vocab": vocab,
                        "arm": arm,
                        **timed[arm],
                        "peak_bytes": measure_memory(args, vocab, arm) if args.memory else 0,
                    }
                )
    for run in runs:
        gkd = next(r for r in runs if r["vocab"] == run["vocab"] and r["arm"] == "gkd")
        run["time_vs_gkd"] = run["time_s"] / gkd["time_s"]
        run["memory_vs_gkd"] = run["peak_bytes"] / max(gkd["peak_bytes"], 1)
    result = {
        "machine": machine(args.device),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "settings": {
            "student": f"GPT-2, n_embd={args.hidden}, n_layer={args.layers}",
            "teacher": f"GPT-2, n_embd={args.teacher_hidden}, n_layer={args.layers}, "
            f"initializer_range={args.teacher_init}, random and fixed",
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "parity_vocab": args.parity_vocab,
            "parity_steps": args.parity_steps,
            "parity_chunk_size": args.parity_chunk_size,
            "learning_rate": args.learning_rate,
            "sgd_learning_rate": args.sgd_learning_rate,
            "repeats": args.repeats,
            "steps_per_call": args.steps_per_call,
            "memory": "cuda max_memory_allocated growth over step 2"
            if args.device.startswith("cuda")
            else "RSS high-water mark growth over step 2",
        },
        "parity": parity,
        "sgd": sgd,
        "runs": runs,
    }
    print(f"{result['machine']}; {result['versions']}")
    print(f"{'beta':>4} {'tau':>4} {'same data':>9} {'hf D':>9} {'gkd':>9} {'gkd/hf':>7} {'rel err*':>8} "
          f"{'fn err':>8} {'|dw| full':>9} {'|dw| chnk':>9} {'moved':>7}")  # fmt: skip
    for p in parity:
        f, d = p["first_step"], p["max_abs_dw"]
        print(
            f"{p['beta']:>4} {p['temperature']:>4} {p['same_batches']!s:>9} {f['hf_kd_divergence']:>9.5f} "
            f"{f['gkd_loss']:>9.5f} {f['gkd_over_hf']:>7.4f} {f['rel_error_rescaled']:>8.1e} "
            f"{f['trl_function_rel_error']:>8.1e} {d['hf_full_vs_gkd']:>9.1e} {d['hf_chunked_vs_gkd']:>9.1e} "
            f"{d['hf_full_moved']:>7.3f}"
        )
    for s in sgd:
        print(
            f"SGD beta={s['beta']}: |dw| same lr {s['max_abs_dw_same_lr']:.1e}, lr x T/(T-1) "
            f"{s['max_abs_dw_lr_times_T_over_T_minus_1']:.1e}"
        )
    print(f"{'V':>6} {'arm':>16} {'time (s)':>9} {'x gkd':>6} {'peak (MiB)':>11} {'x gkd':>6}")
    for run in runs:
        print(
            f"{run['vocab']:>6} {run['arm']:>16} {run['time_s']:>9.4f} {run['time_vs_gkd']:>6.2f} "
            f"{run['peak_bytes'] / 2**20:>11.1f} {run['memory_vs_gkd']:>6.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
