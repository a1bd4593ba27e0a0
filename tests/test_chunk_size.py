"""The default chunk size of the chunked KD losses (``kd_chunk_size=None``): positions per chunk chosen from the
head's shape ``[V, H]``, so one ``[chunk, V]`` buffer stays within a fixed number of elements, or within the
head's own size when that is larger (benchmarks/chunk_size.py, benchmarks/RESULTS.md "Chunk size"); without
H, from V alone."""

from itertools import pairwise

import pytest

from hf_ckd._options import (
    KD_CHUNK_BUDGET,
    KD_CHUNK_MAX,
    KD_CHUNK_MIN,
    OptionError,
    default_chunk_size,
    resolve_chunk_size,
)

VOCABS = [1, 2, 100, 512, 4096, 4097, 8192, 32000, 32768, 50257, 65536, 128256, 131072, 151936, 262144, 10**6]
HIDDENS = [1, 8, 16, 64, 100, 128, 512, 768, 1024, 4096]


@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_matches_the_documented_formula(vocab, hidden):
    assert default_chunk_size(vocab, hidden) == max(16, min(1024, max(2**22 // vocab, hidden)))


@pytest.mark.parametrize("vocab", VOCABS)
def test_without_the_hidden_size(vocab):
    """Without H (no floor): positions by the vocabulary alone."""
    assert default_chunk_size(vocab) == max(16, min(1024, 2**22 // vocab))
    assert default_chunk_size(vocab) == default_chunk_size(vocab, 1)


def test_constants():
    assert (KD_CHUNK_BUDGET, KD_CHUNK_MIN, KD_CHUNK_MAX) == (2**22, 16, 1024)


def test_documented_values():
    """The values the config's help, docs/large_vocab.md and benchmarks/RESULTS.md quote."""
    assert [default_chunk_size(v, 64) for v in (512, 4096, 8192, 32768, 50257, 131072, 262144)] == [
        1024, 1024, 512, 128, 83, 64, 64,
    ]  # fmt: skip
    assert [default_chunk_size(v, 512) for v in (512, 8192, 32768, 131072)] == [1024, 512, 512, 512]
    assert default_chunk_size(32768, 128) == 128
    assert default_chunk_size(131072, 16) == 32
    assert default_chunk_size(262144, 8) == 16
    assert default_chunk_size(128256, 4096) == 1024
    assert default_chunk_size(50257, 768) == 768  # GPT-2 small
    assert [default_chunk_size(v) for v in (512, 8192, 32768, 131072, 262144)] == [1024, 512, 128, 32, 16]


@pytest.mark.parametrize("hidden", HIDDENS)
def test_monotone_in_the_vocabulary(hidden):
    """More vocabulary never means more positions per chunk."""
    sizes = [default_chunk_size(v, hidden) for v in range(1, 300_000, 97)]
    assert all(a >= b for a, b in pairwise(sizes))


@pytest.mark.parametrize("vocab", VOCABS)
def test_monotone_in_the_hidden_size(vocab):
    sizes = [default_chunk_size(vocab, h) for h in range(1, 3000, 7)]
    assert all(a <= b for a, b in pairwise(sizes))


@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_clamped(vocab, hidden):
    assert KD_CHUNK_MIN <= default_chunk_size(vocab, hidden) <= KD_CHUNK_MAX


@pytest.mark.parametrize("hidden", HIDDENS)
@pytest.mark.parametrize("vocab", VOCABS)
def test_buffer_bound(vocab, hidden):
    """One [chunk, V] buffer holds at most max(budget, V * H) elements (unless the smallest chunk, 16
    positions, is larger), and one position more would exceed that (unless the largest chunk caps it)."""
    chunk = default_chunk_size(vocab, hidden)
    bound = max(KD_CHUNK_BUDGET, vocab * hidden)
    assert chunk * vocab <= bound or chunk == KD_CHUNK_MIN
    assert chunk in (KD_CHUNK_MAX, KD_CHUNK_MIN) or (chunk + 1) * vocab > bound


def test_budget_argument():
    assert default_chunk_size(32768, 8, budget=2**20) == 32
    assert default_chunk_size(32768, 8, budget=2**30) == 1024
    assert default_chunk_size(32768, 512, budget=2**20) == 512  # the hidden size is the floor


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, None, "512"])
def test_bad_arguments(bad):
    with pytest.raises(OptionError, match="vocab must be an integer >= 1"):
        default_chunk_size(bad, 64)
    if bad is not None:  # None: no hidden size
        with pytest.raises(OptionError, match="hidden must be an integer >= 1"):
            default_chunk_size(512, bad)


def test_resolve_chunk_size():
    assert resolve_chunk_size(None, 32768, hidden=64) == 128
    assert resolve_chunk_size(None, 32768, hidden=768) == 768
    assert resolve_chunk_size(None, 131072) == 32  # without the hidden size
    assert resolve_chunk_size(7, 32768, hidden=64) == 7  # an explicit size is kept, whatever the head
    assert resolve_chunk_size(5000, 512, "chunk_size") == 5000
    with pytest.raises(OptionError, match="kd_chunk_size must be an integer >= 1, got 0"):
        resolve_chunk_size(0, 512, hidden=64)
    with pytest.raises(OptionError, match=r"^chunk_size must be an integer >= 1, got 2\.5"):
        resolve_chunk_size(2.5, 512, "chunk_size")


def test_config_accepts_none_and_ints(tmp_path):
    from hf_ckd import CheckpointDistillConfig

    assert CheckpointDistillConfig(output_dir=str(tmp_path), report_to="none").kd_chunk_size is None
    config = CheckpointDistillConfig(output_dir=str(tmp_path), report_to="none", kd_chunk_size=64)
    assert config.kd_chunk_size == 64
    for bad in (0, -1, 2.5, True):
        with pytest.raises(OptionError, match="kd_chunk_size must be an integer >= 1"):
            CheckpointDistillConfig(output_dir=str(tmp_path), report_to="none", kd_chunk_size=bad)


def test_command_line_parses_the_field(tmp_path):
    from transformers import HfArgumentParser

    from hf_ckd import CheckpointDistillConfig

    parser = HfArgumentParser(CheckpointDistillConfig)
    (default,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert default.kd_chunk_size is None
    (given,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--report_to", "none", "--kd_chunk_size", "256"]
    )
    assert given.kd_chunk_size == 256
