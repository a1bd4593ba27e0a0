"""Two CPU processes under `accelerate launch` (DDP over gloo): both ranks end on the same student, and it
equals a one-process run on the same global batch (the loss is scaled right for gradient averaging)."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "distill_two_processes.py")


def _env():
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_CONFIG_FILE", None)
    return env


def test_two_processes_agree_and_match_one_process(text_teacher, tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        SCRIPT, text_teacher, str(ddp_out), "8",
    ]  # fmt: skip
    result = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    infos = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in range(2)]
    for info in infos:
        # Without ACCELERATE_USE_CPU=1 two independent processes would each train alone.
        assert info["distributed_type"] == "MULTI_CPU" and info["num_processes"] == 2
        assert info["teacher_devices"] == ["cpu", "cpu"]
    assert infos[0]["loss_kd"] == infos[1]["loss_kd"]  # logged parts are gathered over both ranks
    rank0, rank1 = (load_file(ddp_out / f"rank{r}.safetensors") for r in range(2))
    for key in rank0:
        assert (rank0[key] == rank1[key]).all(), key

    # One process with the same global batch (2 x 8) reaches the same weights.
    single = subprocess.run(
        [sys.executable, SCRIPT, text_teacher, str(single_out), "16"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    reference = load_file(single_out / "rank0.safetensors")
    for key in reference:
        assert rank0[key].allclose(reference[key], atol=1e-5), key
    assert infos[0]["loss_kd"] == pytest.approx(
        json.loads((single_out / "rank0.json").read_text())["loss_kd"], rel=1e-4
    )


def test_chunked_and_sampled_kd_under_ddp(lm_teacher, tmp_path):
    """kd_loss='chunked' (hidden states + LM heads, the head weight's gradient made outside the student's
    forward) on two DDP processes: both ranks agree and reach the weights of kd_loss='full'. kd_loss='sampled'
    (each rank draws its own samples): both ranks still end on the same student (the gradients are
    averaged), and it moved from its initialisation towards the full-KD student."""
    from conftest import tiny_gpt2

    script = os.path.join(os.path.dirname(__file__), "scripts", "distill_lm_two_processes.py")
    results = {}
    for mode in ("full", "chunked", "sampled"):
        out = tmp_path / mode
        launch = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29519",
            script, lm_teacher, str(out), "4", mode,
        ]  # fmt: skip
        result = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        assert all(info["distributed_type"] == "MULTI_CPU" for info in infos)
        ranks = [load_file(out / f"rank{r}.safetensors") for r in range(2)]
        assert all((ranks[0][k] == ranks[1][k]).all() for k in ranks[0])
        results[mode] = (ranks[0], infos[0]["loss_kd"])
    for key, value in results["full"][0].items():
        assert results["chunked"][0][key].allclose(value, atol=1e-5), key
    assert results["chunked"][1] == pytest.approx(results["full"][1], rel=1e-5)
    initial = tiny_gpt2(hidden=16, layers=1, seed=1).state_dict()
    full, sampled = results["full"][0], results["sampled"][0]

    def distance(a, b):
        return sum(float((a[k] - b[k]).pow(2).sum()) for k in full) ** 0.5

    assert distance(sampled, full) < 0.6 * distance(initial, full), (
        distance(sampled, full),
        distance(initial, full),
    )
