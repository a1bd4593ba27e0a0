#!/usr/bin/env python
"""Large-vocabulary KD: time, peak memory and loss error of ``full`` / ``chunked`` / ``sampled``, and a
quality run (a student trained with full KD and with sampled KD from the same teacher).

One KD step is ``linear_kd_loss`` forward + backward on N positions, student hidden size H, teacher hidden
size Ht and vocabulary V (fp32).

* Time: the three modes run interleaved in one process (rotating order), after warm-up, median of repeats.
* Peak memory: a fresh subprocess per (V, mode). On a GPU, ``torch.cuda.max_memory_allocated`` minus the
  memory allocated before the step. On CPU, the resident high-water mark: the child builds the inputs,
  resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one step and reads ``VmHWM``, and
  reports the growth over the RSS before the step; the child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` so
  that freed tensors leave the resident set at once (with glibc's adaptive threshold, repeated measurements
  of one mode varied by up to 20%).
* Error: ``|loss(mode) - loss(full)| / loss(full)`` on the same inputs (sampled: mean over the repeats'
  draws).
* Quality: a synthetic teacher with a Zipf-like output distribution (a fixed random LM head whose bias is
  -1.1 log rank) over random context features; a student (a linear map to H then its own head) trained for
  the same steps and seed with ``full`` and ``sampled`` KD; compared on held-out full-KD loss.

    python benchmarks/large_vocab.py --json benchmarks/large_vocab.json
    python benchmarks/large_vocab.py --quick
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser

from hf_ckd.losses import TeacherSamples, cat_samples, linear_kd_loss, stratified_targets

MODES = ("full", "chunked", "sampled", "sampled_cached", "sampled_cached_exact")


@dataclass
class BenchmarkArguments:
    vocabs: str = field(default="32768,131072,262144", metadata={"help": "Comma-separated vocabulary sizes."})
    positions: int = field(
        default=1024, metadata={"help": "N, positions per step (4096 is realistic on a GPU)."}
    )
    hidden: int = field(default=512, metadata={"help": "Student hidden size H."})
    teacher_hidden: int = field(default=512, metadata={"help": "Teacher hidden size Ht."})
    chunk_size: int = field(
        default=128, metadata={"help": "Positions per chunk (chunked, and sampled's teacher)."}
    )
    sample_fraction: float = field(default=0.02, metadata={"help": "sampled: num_samples = this * V."})
    temperature: float = field(default=2.0, metadata={"help": "tau."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats per mode (median)."})
    warmup: int = field(default=1, metadata={"help": "Untimed steps per mode first."})
    quality_vocab: int = field(default=32768, metadata={"help": "V of the quality run."})
    quality_steps: int = field(default=300, metadata={"help": "Student steps of the quality run."})
    quality_positions: int = field(
        default=1024,
        metadata={
            "help": "Positions per step of the quality run (the sampled gradient's noise averages over them: at 256 "
            "the gap to full KD is several times larger)."
        },
    )
    quality_schedule: str = field(
        default="constant",
        metadata={
            "help": "Learning rate of the quality run: constant, or linear (decay to 0 over the steps)."
        },
    )
    quality_arms: str = field(
        default="full,sampled,sampled_cached,sampled_cached_exact",
        metadata={"help": "Comma-separated arms of the quality run (full first: the reference)."},
    )
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    seed: int = field(default=0, metadata={"help": "Seed."})
    quick: bool = field(default=False, metadata={"help": "Small sizes (seconds), for the tests."})
    json: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    measure_memory: str | None = field(
        default=None, metadata={"help": "Internal: 'V,mode' in a child process."}
    )

    def apply_quick(self) -> None:
        if self.quick:
            self.vocabs, self.positions, self.hidden, self.teacher_hidden = "4096", 128, 32, 48
            self.chunk_size, self.repeats, self.quality_vocab, self.quality_steps = 32, 2, 2048, 20
            self.quality_positions = 64

    @property
    def vocab_sizes(self) -> list[int]:
        return [int(v) for v in self.vocabs.split(",") if v.strip()]


def make_inputs(args: BenchmarkArguments, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    n, h, ht = args.positions, args.hidden, args.teacher_hidden
    rank_bias = (
        -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))[torch.randperm(vocab, generator=g)]
    )
    inputs = {
        "student_hidden": torch.randn(n, h, generator=g),
        "student_head_weight": torch.randn(vocab, h, generator=g) / math.sqrt(h),
        "teacher_hidden": torch.randn(n, ht, generator=g),
        "teacher_head_weight": torch.randn(vocab, ht, generator=g) / math.sqrt(ht),
        "teacher_head_bias": rank_bias,
        "labels": torch.randint(0, vocab, (n,), generator=g),
    }
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    inputs["student_hidden"].requires_grad_(True)
    inputs["student_head_weight"].requires_grad_(True)
    return inputs


def stored_samples(args: BenchmarkArguments, log_target: torch.Tensor, generator) -> tuple:
    """What a token-level soft-target cache stores per position (``stratified_targets``): the teacher's top ids
    and draws from the rest, ``teacher_ids`` of them in all, and the uniform ids, all with their
    probabilities: the samples the online mode draws."""
    vocab = log_target.shape[-1]
    k = teacher_ids(args, vocab)
    return stratified_targets(
        log_target, k // 2, k - k // 2, generator, num_uniform=num_samples(args, vocab) - k
    )


def cached_draws(args: BenchmarkArguments, inputs: dict[str, torch.Tensor]) -> dict[str, TeacherSamples]:
    """The teacher's samples as a soft-target cache holds them (computed once, outside the timed step, like
    the cache)."""
    vocab = inputs["student_head_weight"].shape[0]
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    parts = []
    with torch.no_grad():
        for start in range(0, args.positions, args.chunk_size):
            logits = (
                inputs["teacher_hidden"][start : start + args.chunk_size] @ inputs["teacher_head_weight"].T
            )
            log_target = torch.log_softmax((logits + inputs["teacher_head_bias"]) / args.temperature, dim=-1)
            parts.append(stored_samples(args, log_target, generator))
    return {"teacher_samples": cat_samples(parts, vocab)}


def num_samples(args: BenchmarkArguments, vocab: int) -> int:
    return max(3, int(args.sample_fraction * vocab))


def teacher_ids(args: BenchmarkArguments, vocab: int) -> int:
    """The teacher's share of the sample budget (as online: ``proposal_teacher_mass`` = 2/3); the rest of
    the budget is uniform ids."""
    return round(2 / 3 * num_samples(args, vocab))


def kd_step(
    args: BenchmarkArguments, inputs: dict[str, torch.Tensor], mode: str, seed: int = 0, draws=None
) -> float:
    """One forward + backward; returns the loss. ``draws``: :func:`cached_draws` for ``sampled_cached``."""
    vocab = inputs["student_head_weight"].shape[0]
    extra: dict = {}
    if mode.startswith("sampled"):
        extra["generator"] = torch.Generator(device=args.device).manual_seed(seed)
        extra["num_samples"] = num_samples(args, vocab)
    if mode.startswith("sampled_cached"):
        teacher = ("teacher_hidden", "teacher_head_weight", "teacher_head_bias")
        inputs = {k: v for k, v in inputs.items() if k not in teacher}
        inputs.update(teacher_hidden=None, teacher_head_weight=None, **draws)
        extra["num_samples"] -= teacher_ids(args, vocab)  # the uniform ids
        if mode.endswith("exact"):
            extra["sampled_normalizer"] = "exact"
    loss = linear_kd_loss(
        **inputs, temperature=args.temperature, mode=mode.split("_")[0], chunk_size=args.chunk_size, **extra
    )
    loss.backward()
    for key in ("student_hidden", "student_head_weight"):
        inputs[key].grad = None
    return loss.item()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_modes(args: BenchmarkArguments, vocab: int) -> dict[str, dict[str, float]]:
    inputs = make_inputs(args, vocab)
    draws = cached_draws(args, inputs)
    for mode in MODES:
        for _ in range(args.warmup):
            kd_step(args, inputs, mode, draws=draws)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    losses: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for mode in order:
            synchronize(args.device)
            start = time.perf_counter()
            losses[mode].append(kd_step(args, inputs, mode, seed=r, draws=draws))
            synchronize(args.device)
            times[mode].append(time.perf_counter() - start)
    reference = statistics.mean(losses["full"])
    return {
        mode: {
            "time_s": statistics.median(times[mode]),
            "loss": statistics.mean(losses[mode]),
            "rel_error": abs(statistics.mean(losses[mode]) - reference) / abs(reference),
        }
        for mode in MODES
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure_memory_here(args: BenchmarkArguments, vocab: int, mode: str) -> int:
    """Peak memory growth of one step, in bytes (run in a fresh process)."""
    inputs = make_inputs(args, vocab)
    draws = cached_draws(args, inputs) if mode.startswith("sampled_cached") else None
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        kd_step(args, inputs, mode, draws=draws)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    kd_step(args, inputs, mode, draws=draws)
    return _peak_rss_bytes() - before


def measure_memory(args: BenchmarkArguments, vocab: int, mode: str) -> int:
    argv = [sys.executable, os.path.abspath(__file__), "--measure_memory", f"{vocab},{mode}"]
    for key, value in asdict(args).items():
        if key not in ("measure_memory", "json", "quick") and value is not None:
            argv += [f"--{key}", str(value)]
    # A fixed mmap threshold: every tensor allocation above 128 KiB is mapped and unmapped with the tensor, so
    # the resident high-water mark follows live tensors rather than what glibc's heap happened to keep.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def quality_run(args: BenchmarkArguments) -> dict[str, float]:
    """Held-out full-KD loss of students trained with full and with sampled KD (same teacher, steps, seed)."""
    vocab, h, ctx, n = args.quality_vocab, args.hidden, 64, args.quality_positions
    g = torch.Generator().manual_seed(args.seed + 1)
    teacher_map = torch.randn(ctx, args.teacher_hidden, generator=g) / math.sqrt(ctx)
    teacher_head = 3.0 * torch.randn(vocab, args.teacher_hidden, generator=g) / math.sqrt(args.teacher_hidden)
    rank_bias = (
        -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))[torch.randperm(vocab, generator=g)]
    )
    held_out = torch.randn(1024, ctx, generator=g)
    tensors = [t.to(args.device) for t in (teacher_map, teacher_head, rank_bias, held_out)]
    teacher_map, teacher_head, rank_bias, held_out = tensors

    def heldout_loss(student_map, student_head) -> float:
        with torch.no_grad():
            return linear_kd_loss(
                held_out @ student_map, student_head, held_out @ teacher_map, teacher_head,
                torch.zeros(len(held_out), dtype=torch.long, device=args.device), temperature=1.0,
                mode="chunked", chunk_size=args.chunk_size, teacher_head_bias=rank_bias,
            ).item()  # fmt: skip

    def lr_factor(step: int) -> float:
        return 1.0 - step / args.quality_steps if args.quality_schedule == "linear" else 1.0

    results = {}
    for mode in args.quality_arms.split(","):
        torch.manual_seed(args.seed)
        student_map = (torch.randn(ctx, h) / math.sqrt(ctx)).to(args.device).requires_grad_()
        student_head = (torch.randn(vocab, h) / math.sqrt(h)).to(args.device).requires_grad_()
        optimizer = torch.optim.Adam([student_map, student_head], lr=3e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        data = torch.Generator().manual_seed(args.seed + 2)
        draws = torch.Generator(device=args.device).manual_seed(args.seed + 3)
        extra = (
            {"num_samples": num_samples(args, vocab), "generator": draws}
            if mode.startswith("sampled")
            else {}
        )
        for _ in range(args.quality_steps):
            x = torch.randn(n, ctx, generator=data).to(args.device)
            teacher = {
                "teacher_hidden": x @ teacher_map,
                "teacher_head_weight": teacher_head,
                "teacher_head_bias": rank_bias,
            }
            if mode.startswith("sampled_cached"):  # samples as a cache holds them (fresh examples every step)
                with torch.no_grad():
                    log_target = torch.log_softmax(x @ teacher_map @ teacher_head.T + rank_bias, dim=-1)
                    samples = stored_samples(args, log_target, draws)
                teacher = {"teacher_hidden": None, "teacher_head_weight": None, "teacher_samples": samples}
                extra["num_samples"] = num_samples(args, vocab) - teacher_ids(args, vocab)
                if mode.endswith("exact"):
                    extra["sampled_normalizer"] = "exact"
            loss = linear_kd_loss(
                x @ student_map, student_head, labels=torch.zeros(n, dtype=torch.long, device=args.device),
                temperature=1.0, mode=mode.split("_")[0], chunk_size=args.chunk_size, **teacher, **extra,
            )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        results[mode] = heldout_loss(student_map, student_head)
    return results


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(argv)
    args.apply_quick()
    if args.measure_memory:
        vocab, mode = args.measure_memory.split(",")
        print(measure_memory_here(args, int(vocab), mode))
        return {}
    torch.manual_seed(args.seed)
    runs = []
    for vocab in args.vocab_sizes:
        timed = time_modes(args, vocab)
        for mode in MODES:
            runs.append(
                {"vocab": vocab, "mode": mode, **timed[mode], "peak_bytes": measure_memory(args, vocab, mode)}
            )
    quality = quality_run(args)
    result = {
        "machine": machine(args.device),
        "settings": {
            "positions": args.positions,
            "hidden": args.hidden,
            "teacher_hidden": args.teacher_hidden,
            "chunk_size": args.chunk_size,
            "sample_fraction": args.sample_fraction,
            "temperature": args.temperature,
            "repeats": args.repeats,
            "memory": "cuda max_memory_allocated"
            if args.device.startswith("cuda")
            else "RSS high-water mark growth",
            "quality": {
                "vocab": args.quality_vocab,
                "steps": args.quality_steps,
                "positions": args.quality_positions,
                "schedule": args.quality_schedule,
                "arms": args.quality_arms,
                "teacher": "synthetic Zipf-like",
            },
        },
        "runs": runs,
        "quality": quality,
    }
    print(f"{result['machine']}; N={args.positions}, H={args.hidden}, Ht={args.teacher_hidden}, fp32")
    print(
        f"{'V':>8} {'mode':>8} {'time (s)':>9} {'x full':>7} {'peak (MiB)':>11} {'full/mode':>9} {'rel err':>8}"
    )
    for run in runs:
        full = next(r for r in runs if r["vocab"] == run["vocab"] and r["mode"] == "full")
        print(
            f"{run['vocab']:>8} {run['mode']:>8} {run['time_s']:>9.4f} {full['time_s'] / run['time_s']:>7.2f} "
            f"{run['peak_bytes'] / 2**20:>11.1f} {full['peak_bytes'] / max(run['peak_bytes'], 1):>9.2f} "
            f"{run['rel_error']:>8.1e}"
        )
    print(
        f"quality (V={args.quality_vocab}, held-out full-KD loss): full {quality['full']:.4f}, "
        + ", ".join(
            f"{mode} {quality[mode]:.4f} ({(quality[mode] - quality['full']) / quality['full']:+.2%})"
            for mode in ("sampled", "sampled_cached", "sampled_cached_exact")
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
