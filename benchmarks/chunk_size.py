#!/usr/bin/env python
"""``kd_loss="chunked"``: step time and peak extra memory over the chunk size (positions per chunk), at
several vocabulary sizes, to choose ``kd_chunk_size``'s default (``hf_ckd._options.default_chunk_size``).

One step is ``linear_distillation_loss(mode="chunked")`` forward + backward on N positions, student and
teacher hidden size H, vocabulary V (fp32), with the trainer's default mix (``alpha=0.5``: CE and KD).

* Time: every chunk size of one V runs interleaved in one process (rotating order), after warm-up, median
  of the repeats; ratios are to the fastest chunk size of that V, within the run.
* Peak memory: a fresh subprocess per (V, chunk size), the growth of the resident high-water mark over the
  RSS before the step (``VmHWM`` reset through ``/proc/self/clear_refs``, ``MALLOC_MMAP_THRESHOLD_=131072`` so
  freed tensors leave the resident set at once), as in ``benchmarks/large_vocab.py``; on a GPU,
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step. It includes the ``[V, H]``
  weight gradient every chunk size holds; ``buffer_mib`` is one ``[chunk, V]`` float32 buffer.
* The rule's pick (``default_chunk_size(V, H)``) is marked beside the measurements.

    python benchmarks/chunk_size.py --json benchmarks/chunk_size.json
    python benchmarks/chunk_size.py --quick
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

from hf_ckd._options import default_chunk_size
from hf_ckd.losses import linear_distillation_loss


@dataclass
class BenchmarkArguments:
    vocabs: str = field(default="512,8192,32768", metadata={"help": "Comma-separated vocabulary sizes."})
    chunk_sizes: str = field(
        default="16,32,64,128,256,512,1024", metadata={"help": "Comma-separated positions per chunk."}
    )
    positions: int = field(default=1024, metadata={"help": "N, positions per step."})
    hidden: int = field(default=512, metadata={"help": "Student and teacher hidden size H."})
    temperature: float = field(default=2.0, metadata={"help": "tau."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the CE term (the config's default)."})
    beta: float = field(default=0.0, metadata={"help": "Divergence (0 forward KL, 1 reverse KL)."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats per chunk size (median)."})
    warmup: int = field(default=1, metadata={"help": "Untimed steps per chunk size first."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "Device."})
    seed: int = field(default=0, metadata={"help": "Seed."})
    quick: bool = field(default=False, metadata={"help": "Small sizes (seconds), for the tests."})
    json: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    measure_memory: str | None = field(
        default=None, metadata={"help": "Internal: 'V,chunk' in a child process."}
    )

    def apply_quick(self) -> None:
        if self.quick:
            self.vocabs, self.chunk_sizes, self.positions, self.hidden = "2048", "16,256", 128, 32
            self.repeats = 2

    @property
    def vocab_sizes(self) -> list[int]:
        return [int(v) for v in self.vocabs.split(",") if v.strip()]

    @property
    def chunks(self) -> list[int]:
        return [int(c) for c in self.chunk_sizes.split(",") if c.strip()]


def make_inputs(args: BenchmarkArguments, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    n, h = args.positions, args.hidden
    rank_bias = (
        -1.1 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))[torch.randperm(vocab, generator=g)]
    )
    inputs = {
        "student_hidden": torch.randn(n, h, generator=g),
        "student_head_weight": torch.randn(vocab, h, generator=g) / math.sqrt(h),
        "teacher_hidden": torch.randn(n, h, generator=g),
        "teacher_head_weight": torch.randn(vocab, h, generator=g) / math.sqrt(h),
        "teacher_head_bias": rank_bias,
        "labels": torch.randint(0, vocab, (n,), generator=g),
    }
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    inputs["student_hidden"].requires_grad_(True)
    inputs["student_head_weight"].requires_grad_(True)
    return inputs


def kd_step(args: BenchmarkArguments, inputs: dict[str, torch.Tensor], chunk: int) -> float:
    loss, _ = linear_distillation_loss(
        **inputs,
        temperature=args.temperature,
        alpha=args.alpha,
        beta=args.beta,
        mode="chunked",
        chunk_size=chunk,
    )
    loss.backward()
    for key in ("student_hidden", "student_head_weight"):
        inputs[key].grad = None
    return loss.item()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_chunks(args: BenchmarkArguments, vocab: int) -> dict[int, dict[str, float]]:
    inputs = make_inputs(args, vocab)
    chunks = args.chunks
    for chunk in chunks:
        for _ in range(args.warmup):
            kd_step(args, inputs, chunk)
    times: dict[int, list[float]] = {c: [] for c in chunks}
    losses: dict[int, float] = {}
    for r in range(args.repeats):
        order = chunks[r % len(chunks) :] + chunks[: r % len(chunks)]
        for chunk in order:
            synchronize(args.device)
            start = time.perf_counter()
            losses[chunk] = kd_step(args, inputs, chunk)
            synchronize(args.device)
            times[chunk].append(time.perf_counter() - start)
    return {
        c: {"time_s": statistics.median(times[c]), "times_s": times[c], "loss": losses[c]} for c in chunks
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measure_memory_here(args: BenchmarkArguments, vocab: int, chunk: int) -> int:
    """Peak memory growth of one step, in bytes (run in a fresh process)."""
    inputs = make_inputs(args, vocab)
    kd_step(args, inputs, chunk)  # warm-up: allocator and BLAS workspaces, as in training
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        kd_step(args, inputs, chunk)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    kd_step(args, inputs, chunk)
    return _peak_rss_bytes() - before


def measure_memory(args: BenchmarkArguments, vocab: int, chunk: int) -> int:
    argv = [sys.executable, os.path.abspath(__file__), "--measure_memory", f"{vocab},{chunk}"]
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
    if args.measure_memory:
        vocab, chunk = (int(x) for x in args.measure_memory.split(","))
        print(measure_memory_here(args, vocab, chunk))
        return {}
    torch.manual_seed(args.seed)
    runs = []
    for vocab in args.vocab_sizes:
        timed = time_chunks(args, vocab)
        fastest = min(t["time_s"] for t in timed.values())
        for chunk in args.chunks:
            runs.append(
                {
                    "vocab": vocab,
                    "chunk_size": chunk,
                    "chunks_per_step": math.ceil(args.positions / chunk),
                    "buffer_mib": min(chunk, args.positions) * vocab * 4 / 2**20,
                    **timed[chunk],
                    "vs_fastest": timed[chunk]["time_s"] / fastest,
                    "peak_bytes": measure_memory(args, vocab, chunk),
                }
            )
    result = {
        "machine": machine(args.device),
        "settings": {
            "positions": args.positions,
            "hidden": args.hidden,
            "temperature": args.temperature,
            "alpha": args.alpha,
            "beta": args.beta,
            "repeats": args.repeats,
            "memory": "cuda max_memory_allocated"
            if args.device.startswith("cuda")
            else "RSS high-water mark growth",
        },
        "rule": {str(v): default_chunk_size(v, args.hidden) for v in args.vocab_sizes},
        "runs": runs,
    }
    print(
        f"{result['machine']}; N={args.positions}, H={args.hidden}, fp32, alpha={args.alpha}, beta={args.beta}"
    )
    print(
        f"{'V':>7} {'chunk':>6} {'[c,V] MiB':>9} {'time (s)':>9} {'x best':>7} {'peak (MiB)':>11} {'rule':>5}"
    )
    for run in runs:
        pick = "<-" if default_chunk_size(run["vocab"], args.hidden) == run["chunk_size"] else ""
        print(
            f"{run['vocab']:>7} {run['chunk_size']:>6} {run['buffer_mib']:>9.1f} {run['time_s']:>9.4f} "
            f"{run['vs_fastest']:>7.2f} {run['peak_bytes'] / 2**20:>11.1f} {pick:>5}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
