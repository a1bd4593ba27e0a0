"""Soft-target cache: targets equal the online ensemble's, views replay pixel for pixel, fingerprints and
partial builds are refused."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torchvision.transforms import v2

import hf_ckd.cache as cache_module
from hf_ckd import Trajectory
from hf_ckd.cache import (
    CACHE_CONFIG_NAME,
    CacheError,
    ExampleTransform,
    ReplayViews,
    SoftTargetCache,
    build_soft_target_cache,
    run_fingerprint,
)
from hf_ckd.data import collate_images
from hf_ckd.teachers import TeacherEnsemble

TAU = 2.0


def augment() -> ExampleTransform:
    return ExampleTransform(
        v2.Compose([v2.RandomCrop(16, padding=3), v2.RandomHorizontalFlip()]), "pixel_values", "labels"
    )


@pytest.fixture(scope="module")
def ensemble(timm_teacher):
    return TeacherEnsemble.from_trajectory(Trajectory.from_local(timm_teacher), "0.5,last", weights=[1, 3])


@pytest.fixture(scope="module")
def examples(digits_data):
    return digits_data[0].select(range(40))


@pytest.fixture(scope="module")
def probs_cache(tmp_path_factory, ensemble, examples):
    out = tmp_path_factory.mktemp("cache") / "probs"
    return build_soft_target_cache(
        ensemble, examples, str(out), transform=augment(), collate_fn=collate_images, temperature=TAU, views=3,
        batch_size=16, progress=False,
    )  # fmt: skip


def online_log_targets(ensemble, replay, index, view):
    batch = collate_images(
        [{k: v for k, v in replay.item(i, view).items() if not k.startswith("cache_")} for i in index]
    )
    return ensemble.log_targets(batch, TAU)


def test_cached_targets_equal_online_targets(probs_cache, ensemble, examples):
    replay = ReplayViews(examples, augment(), views=3)
    index = torch.tensor([0, 5, 39, 17])
    for view in range(3):
        cached = probs_cache.log_targets(index, torch.full((4,), view)).exp()
        online = online_log_targets(ensemble, replay, index.tolist(), view).exp()
        torch.testing.assert_close(cached, online, atol=2e-3, rtol=0)  # fp16 storage
    assert probs_cache.config["weights"] == [0.25, 0.75] and probs_cache.config["temperature"] == TAU


def test_views_replay_pixel_for_pixel(examples):
    replay = ReplayViews(examples, augment(), views=4, seed=7)
    first = replay.item(3, 2)["pixel_values"]
    torch.manual_seed(123)  # the global RNG state does not matter
    again = replay.item(3, 2)["pixel_values"]
    assert torch.equal(first, again)
    others = [replay.item(3, v)["pixel_values"] for v in (0, 1, 3)]
    assert all(not torch.equal(first, o) for o in others)
    replay.set_epoch(6)  # epoch 6 -> view 6 mod 4 = 2
    assert torch.equal(replay[3]["pixel_values"], first) and replay[3]["cache_view"] == 2
    assert not torch.equal(
        ReplayViews(examples, augment(), views=4, seed=8).item(3, 2)["pixel_values"], first
    )


def test_batched_reads_equal_single_reads_and_leave_the_rng_alone(examples):
    replay = ReplayViews(examples, augment(), views=4, seed=7)
    keys = [(3, 2), (0, 0), (39, 3), (3, 1)]
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    batch = replay.items(keys)
    assert torch.equal(torch.rand(3), expected_next)  # replaying views did not move the training RNG
    for item, (index, view) in zip(batch, keys):
        single = replay.item(index, view)
        assert torch.equal(item["pixel_values"], single["pixel_values"])
        assert (item["cache_index"], item["cache_view"]) == (index, view)
    replay.set_epoch(1)
    through_loader = next(iter(torch.utils.data.DataLoader(replay, batch_size=4, collate_fn=list)))
    assert [it["cache_view"] for it in through_loader] == [1] * 4
    assert torch.equal(through_loader[3]["pixel_values"], replay.item(3, 1)["pixel_values"])


def test_build_with_dataloader_workers_equals_build_without(tmp_path, probs_cache, ensemble, examples):
    cache = build_soft_target_cache(
        ensemble, examples, str(tmp_path / "workers"), transform=augment(), collate_fn=collate_images,
        temperature=TAU, views=3, batch_size=16, num_workers=2, progress=False,
    )  # fmt: skip
    index = torch.arange(40).repeat(3)
    view = torch.arange(3).repeat_interleave(40)
    assert torch.equal(cache.log_targets(index, view), probs_cache.log_targets(index, view))


@pytest.mark.parametrize("storage", ["topk", "sampled"])
def test_topk_and_sampled_storage(tmp_path, ensemble, examples, storage):
    cache = build_soft_target_cache(
        ensemble, examples.select(range(16)), str(tmp_path / storage), transform=augment(),
        collate_fn=collate_images, temperature=TAU, storage=storage, k=4 if storage == "topk" else 200,
        progress=False,
    )  # fmt: skip
    replay = ReplayViews(examples.select(range(16)), augment(), views=1)
    index = torch.arange(16)
    exact = online_log_targets(ensemble, replay, index.tolist(), 0).exp()
    stored = cache.log_targets(index, torch.zeros(16, dtype=torch.long)).exp()
    torch.testing.assert_close(stored.sum(-1), torch.ones(16))
    if storage == "topk":
        top = exact.topk(4, dim=-1)
        torch.testing.assert_close(stored.gather(1, top.indices), top.values, atol=2e-3, rtol=0)
        residual = (1 - top.values.sum(-1)) / 6  # spread over the 6 other classes: the stated bias
        rest = stored.scatter(1, top.indices, -1.0)
        torch.testing.assert_close(rest.max(-1).values, residual, atol=2e-3, rtol=0)
    else:
        # 200 draws per example: each stored probability is a binomial frequency around the exact one.
        assert (stored - exact).abs().max() < 5 * (0.25 / 200) ** 0.5
        assert ((stored > 0) <= (exact > 0)).all()


def test_fingerprint_mismatches_are_refused(probs_cache, ensemble, examples, timm_teacher):
    replay = ReplayViews(examples, augment(), views=3)
    expected = run_fingerprint(ensemble.checkpoints, ensemble.weights, ensemble.average, TAU, replay)
    probs_cache.check(expected)  # the run it was built for
    cases = {
        "temperature": run_fingerprint(ensemble.checkpoints, ensemble.weights, ensemble.average, 4.0, replay),
        "views": run_fingerprint(
            ensemble.checkpoints,
            ensemble.weights,
            ensemble.average,
            TAU,
            ReplayViews(examples, augment(), views=2),
        ),
        "dataset_fingerprint": run_fingerprint(
            ensemble.checkpoints,
            ensemble.weights,
            ensemble.average,
            TAU,
            ReplayViews(examples.shuffle(seed=1), augment(), views=3),
        ),
        "teacher_hashes": run_fingerprint(
            Trajectory.from_local(timm_teacher).select("0.7,last"),
            ensemble.weights,
            ensemble.average,
            TAU,
            replay,
        ),
        "weights": run_fingerprint(ensemble.checkpoints, [0.5, 0.5], ensemble.average, TAU, replay),
        "transform": run_fingerprint(
            ensemble.checkpoints,
            ensemble.weights,
            ensemble.average,
            TAU,
            ReplayViews(
                examples, ExampleTransform(v2.RandomHorizontalFlip(), "pixel_values", "labels"), views=3
            ),
        ),
    }
    for key, fingerprint in cases.items():
        with pytest.raises(
            CacheError, match=rf"built for other settings:\n(.*\n)*- {key}: cache has [\s\S]*Rebuild"
        ):
            probs_cache.check(fingerprint, rebuild_hint=f"python build.py  # {key}")


def test_killed_build_leaves_nothing(tmp_path, ensemble, examples):
    class Dies(ExampleTransform):
        calls = 0

        def __call__(self, example):
            Dies.calls += 1
            if Dies.calls > 20:
                raise KeyboardInterrupt  # a kill in the middle of the build
            return super().__call__(example)

    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build_soft_target_cache(
            ensemble, examples, str(out), transform=Dies(v2.RandomHorizontalFlip(), "pixel_values", "labels"),
            collate_fn=collate_images, temperature=TAU, batch_size=8, progress=False,
        )  # fmt: skip
    assert not out.exists() and os.listdir(tmp_path) == []


# A build that stalls after 10 examples (writing `marker` first), in its own process, to be killed or watched.
STALLING_BUILD = """
import pathlib, sys, time
from datasets import load_from_disk
from torchvision.transforms import v2
from hf_ckd import Trajectory
from hf_ckd.cache import ExampleTransform, build_soft_target_cache
from hf_ckd.data import collate_images
from hf_ckd.teachers import TeacherEnsemble

teacher, data, out, marker = sys.argv[1:]


class Stalls(ExampleTransform):
    calls = 0

    def __call__(self, example):
        Stalls.calls += 1
        if Stalls.calls > 10:
            pathlib.Path(marker).touch()
            time.sleep(600)
        return super().__call__(example)


ensemble = TeacherEnsemble.from_trajectory(Trajectory.from_local(teacher), "last")
build_soft_target_cache(
    ensemble, load_from_disk(data).with_format("torch"), out, collate_fn=collate_images, temperature=2.0,
    transform=Stalls(v2.RandomHorizontalFlip(), "pixel_values", "labels"), batch_size=8, progress=False,
)
"""


def start_stalling_build(tmp_path, teacher, examples, out, name):
    """A build of `out` in a subprocess, returned once it is in the middle of its teacher forwards."""
    data = tmp_path / "examples"
    if not data.exists():
        examples.save_to_disk(str(data))
    marker = tmp_path / f"{name}.started"
    process = subprocess.Popen(
        [sys.executable, "-c", STALLING_BUILD, teacher, str(data), str(out), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the stalling build did not start:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    return process


def build_folders(parent):
    return sorted(p for p in parent.iterdir() if p.name.startswith(".hf_ckd_cache-"))


def test_a_killed_build_is_removed_by_the_next_build_and_a_live_one_is_kept(
    tmp_path, ensemble, examples, timm_teacher, monkeypatch, caplog
):
    """SIGKILL skips every cleanup: the folder stays, and the next build of the same target removes it (the
    dead owner's lock is free), while the folder of a build still running (lock held) is left alone, as are
    other targets' folders."""
    monkeypatch.setattr(cache_module, "STALE_BUILD_GRACE_S", 0.0)  # the folders here are seconds old
    runs = tmp_path / "runs"
    out = runs / "cache"
    killed = start_stalling_build(tmp_path, timm_teacher, examples, out, "killed")
    (leftover,) = build_folders(runs)
    assert leftover.name.startswith(".hf_ckd_cache-cache-")
    assert (leftover / ".hf_ckd_build.lock").read_text().startswith(f"pid {killed.pid} ")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert leftover.is_dir()  # what the kill leaves

    live = start_stalling_build(tmp_path, timm_teacher, examples, out, "live")
    try:
        (live_folder,) = set(build_folders(runs)) - {leftover}
        other_target = runs / ".hf_ckd_cache-cache-2-abcdefgh"  # a build of runs/cache-2, not ours
        other_target.mkdir()
        with caplog.at_level(logging.INFO, logger="hf_ckd.cache"):
            build_soft_target_cache(
                ensemble, examples, str(out), transform=augment(), collate_fn=collate_images, temperature=TAU,
                batch_size=16, progress=False,
            )  # fmt: skip
        assert not leftover.exists() and live_folder.is_dir() and other_target.is_dir()
        assert f"Removed {leftover}, left by a killed build of {out} (pid {killed.pid} " in caplog.text
        assert f"Kept {live_folder}: a live build holds its lock" in caplog.text
        assert os.listdir(out / "table") and not (out / ".hf_ckd_build.lock").exists()
        SoftTargetCache(str(out))
    finally:
        live.kill()
        live.wait(timeout=60)
    # Once its owner is gone, the next build (here a rebuild) removes that folder too.
    build_soft_target_cache(
        ensemble, examples, str(out), transform=augment(), collate_fn=collate_images, temperature=TAU,
        batch_size=16, progress=False, overwrite=True,
    )  # fmt: skip
    assert sorted(p.name for p in runs.iterdir()) == [".hf_ckd_cache-cache-2-abcdefgh", "cache"]


def test_stale_build_folders_need_age_and_no_lock(tmp_path, caplog):
    """A lock-less folder is removed only past the grace period (a build creates its folder, then locks it)."""
    out = tmp_path / "cache"
    young = tmp_path / ".hf_ckd_cache-cache-young123"
    old = tmp_path / ".hf_ckd_cache-cache-old12345"
    for folder in (young, old):
        (folder / "shard-00000").mkdir(parents=True)
    past = time.time() - 2 * cache_module.STALE_BUILD_GRACE_S
    os.utime(old, (past, past))
    unrelated = tmp_path / ".hf_ckd_cache-cachex-old12345"  # the target cachex
    unrelated.mkdir()
    os.utime(unrelated, (past, past))
    with caplog.at_level(logging.WARNING, logger="hf_ckd.cache"):
        assert cache_module.remove_stale_builds(str(out)) == [str(old)]
    assert (
        young.is_dir()
        and unrelated.is_dir()
        and f"Removed {old}" in caplog.text
        and "no lock file" in caplog.text
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"storage": "probs", "views": 3,', "is not valid JSON"),
        ("[1, 2]", "holds a list, not a JSON object"),
        ("drop:num_examples", "'num_examples' is missing"),
        ("set:views=three", "'views' is 'three', not int"),
        ("set:num_classes=true", "'num_classes' is True, not int"),
        ("set:storage=logits", "'storage' is 'logits', not one of"),
    ],
)
def test_damaged_metadata_is_refused_with_the_file_and_the_fix(tmp_path, probs_cache, content, problem):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(probs_cache.path, damaged)
    metadata = damaged / CACHE_CONFIG_NAME
    config = json.loads(metadata.read_text())
    if content.startswith("drop:"):
        del config[content[5:]]
        content = json.dumps(config)
    elif content.startswith("set:"):
        key, value = content[4:].split("=")
        config[key] = {"true": True}.get(value, value)
        content = json.dumps(config)
    metadata.write_text(content)
    with pytest.raises(CacheError) as info:
        SoftTargetCache(str(damaged))
    message = str(info.value)
    assert f"metadata '{metadata}'" in message and problem in message
    assert f"Delete the cache folder '{damaged}' and rebuild it" in message


def test_incomplete_or_truncated_caches_are_refused(tmp_path, probs_cache):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(probs_cache.path, partial)
    os.remove(partial / "hf_ckd_cache.json")
    with pytest.raises(CacheError, match=r"not a complete soft-target cache.*rebuild"):
        SoftTargetCache(str(partial))
    truncated = tmp_path / "truncated"
    shutil.copytree(probs_cache.path, truncated)
    table = probs_cache.table.select(range(10))
    shutil.rmtree(truncated / "table")
    table.with_format(None).save_to_disk(str(truncated / "table"))
    with pytest.raises(CacheError, match=r"holds 10 rows, expected 120 \(40 examples x 3 views\)"):
        SoftTargetCache(str(truncated))
    with pytest.raises(CacheError, match=r"does not exist"):
        SoftTargetCache(str(tmp_path / "missing"))


def test_bad_build_arguments(tmp_path, ensemble, examples):
    common = dict(transform=augment(), collate_fn=collate_images, temperature=TAU, progress=False)
    with pytest.raises(CacheError, match=r"views must be an integer >= 1"):
        build_soft_target_cache(ensemble, examples, str(tmp_path / "a"), views=0, **common)
    with pytest.raises(
        CacheError, match=r"needs k, an integer in \[1, num_classes - 1\] \(num_classes = 10\)"
    ):
        build_soft_target_cache(ensemble, examples, str(tmp_path / "b"), storage="topk", k=10, **common)
    with pytest.raises(CacheError, match=r"storage must be one of"):
        build_soft_target_cache(ensemble, examples, str(tmp_path / "c"), storage="logits", **common)
    assert os.listdir(tmp_path) == []


# ---- in the trainer --------------------------------------------------------------------------------


def distill_args(tmp_path, name, teacher, **overrides):
    from conftest import trainer_args

    from hf_ckd import CheckpointDistillConfig

    config = dict(
        teacher=teacher, teacher_checkpoints="0.5,last", teacher_weights=[1, 3], temperature=TAU, alpha=0.5,
        max_steps=4, per_device_train_batch_size=8, logging_steps=1, save_strategy="no", optim="sgd",
        learning_rate=0.1,
    )  # fmt: skip
    config.update(overrides)
    return CheckpointDistillConfig(**trainer_args(tmp_path / name, **config))


def test_training_from_the_cache_loads_no_teacher(probs_cache, examples, timm_teacher, tmp_path, monkeypatch):
    """Cached and online runs over the same replayed views log the same losses (fp16 targets); the cached
    run never builds a teacher model."""
    from conftest import tiny_timm

    import hf_ckd.teachers
    from hf_ckd import CheckpointDistillTrainer

    runs = {}
    for mode in ("online", "cached"):
        replay = ReplayViews(examples, augment(), views=3)
        extra = {"soft_target_cache": probs_cache.path} if mode == "cached" else {}
        if mode == "cached":

            def refuse(*args, **kwargs):
                raise AssertionError("a teacher model was loaded")

            monkeypatch.setattr(hf_ckd.teachers, "load_teacher", refuse)
            monkeypatch.setattr(TeacherEnsemble, "from_trajectory", refuse)
        trainer = CheckpointDistillTrainer(
            model=tiny_timm("test_efficientnet_gn", seed=4),
            args=distill_args(tmp_path, mode, timm_teacher, num_train_epochs=2, max_steps=-1, **extra),
            train_dataset=replay,
            data_collator=collate_images,
        )
        trainer.train()
        runs[mode] = [(e["loss"], e["loss_kd"]) for e in trainer.state.log_history if "loss_kd" in e]
        assert replay.view == 1  # the second epoch trained on view 1
    assert len(runs["online"]) == 10  # 2 epochs x 5 batches
    # fp16 targets: equal losses at first; the rounding then moves the two students apart, slowly (by up to
    # 3.3% at the last steps in a full-suite run, which depends on the order the process ran earlier tests in).
    for i, ((online, online_kd), (cached, cached_kd)) in enumerate(zip(runs["online"], runs["cached"])):
        rel = 2e-3 if i < 3 else 6e-2
        assert cached == pytest.approx(online, rel=rel) and cached_kd == pytest.approx(online_kd, rel=rel)


def test_trainer_refuses_a_cache_of_another_run(probs_cache, examples, timm_teacher, tmp_path):
    from conftest import tiny_timm

    from hf_ckd import CheckpointDistillTrainer

    cases = [
        (
            {"temperature": 4.0},
            ReplayViews(examples, augment(), views=3),
            r"temperature: cache has 2.0, the run has 4.0",
        ),
        ({}, ReplayViews(examples, augment(), views=2), r"views: cache has 3, the run has 2"),
        (
            {},
            ReplayViews(examples.select(range(30)), augment(), views=3),
            r"num_examples: cache has 40, the run has 30",
        ),
        ({}, examples, r"needs train_dataset=hf_ckd.cache.ReplayViews"),
    ]
    for overrides, dataset, match in cases:
        args = distill_args(
            tmp_path, "refused", timm_teacher, soft_target_cache=probs_cache.path, **overrides
        )
        with pytest.raises(CacheError, match=match):
            CheckpointDistillTrainer(
                model=tiny_timm(), args=args, train_dataset=dataset, data_collator=collate_images
            )
        assert not (tmp_path / "refused").exists()


def test_token_level_sampled_cache(lm_teacher, lm_data, tmp_path, monkeypatch):
    """A causal LM's targets are cached per position as the teacher's k/2 most likely ids, k/2 draws from the
    rest (ids, counts), uniform ids, all with their exact probabilities, and the exact entropy; the student
    trains from them with kd_loss='sampled' without loading a teacher, and its KD loss falls."""
    from conftest import tiny_gpt2, trainer_args
    from transformers import default_data_collator

    import hf_ckd.teachers
    from hf_ckd import CheckpointDistillConfig, CheckpointDistillTrainer
    from hf_ckd.cache import SelectColumns

    train = lm_data[0].select(range(256))
    teachers = TeacherEnsemble.from_trajectory(Trajectory.from_local(lm_teacher), "last")
    with pytest.raises(CacheError, match="storage='sampled'"):
        build_soft_target_cache(
            teachers, train, str(tmp_path / "probs"), transform=SelectColumns(), collate_fn=default_data_collator,
            temperature=1.0, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "probs").exists()
    with pytest.raises(CacheError, match="num_uniform must be an integer >= 1"):
        build_soft_target_cache(
            teachers, train, str(tmp_path / "bad"), transform=SelectColumns(), collate_fn=default_data_collator,
            temperature=1.0, storage="sampled", k=8, num_uniform=0, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "bad").exists()
    k = 8  # 4 top ids of V = 16 (exact), 4 draws from the rest, and k // 2 = 4 uniform ids
    cache = build_soft_target_cache(
        teachers, train, str(tmp_path / "tokens"), transform=SelectColumns(), collate_fn=default_data_collator,
        temperature=1.0, storage="sampled", k=k, batch_size=64, progress=False,
    )  # fmt: skip
    assert cache.token_level and cache.num_uniform == k // 2
    index = torch.tensor([0, 7, 200])
    batch = default_data_collator([train[i] for i in index.tolist()])
    samples = cache.token_samples(index, torch.zeros(3, dtype=torch.long), None, batch["input_ids"].shape[1])
    ids, counts, probs, uniform_counts, entropy = samples
    log_p = teachers.log_targets(batch, 1.0)  # [3, T, V]
    vocab = log_p.shape[-1]
    assert torch.allclose(entropy, -(log_p.exp() * log_p).sum(-1), atol=1e-5)  # exact, stored
    valid = ids < vocab
    torch.testing.assert_close(probs[valid], log_p.exp().gather(2, ids.clamp(max=vocab - 1))[valid])
    top = valid & (counts == 0) & (uniform_counts == 0)
    assert torch.all(top.sum(-1) == k // 2) and torch.all(counts.sum(-1) == k - k // 2)
    assert torch.all(uniform_counts.sum(-1) <= k // 2) and bool((uniform_counts > 0).any())
    torch.testing.assert_close(  # the top ids are the teacher's most likely
        torch.where(top, probs, 0.0).sort(-1, descending=True).values[..., : k // 2],
        log_p.exp().topk(k // 2, -1).values,
    )
    rest = 1 - torch.where(top, probs, 0.0).sum(-1, keepdim=True)
    estimate = torch.where(top, probs, rest * counts / (k - k // 2))
    empirical = torch.zeros_like(log_p).scatter_add_(2, ids.clamp(max=vocab - 1), estimate)
    tv = 0.5 * (empirical - log_p.exp()).abs().sum(-1)  # total variation per position
    assert tv.mean() < 0.05, tv.mean()  # only the rest (mass r) is sampled
    shorter = batch["attention_mask"].clone()
    shorter[1, -1] = 0  # the data changed since the build: example 7 has one position fewer
    with pytest.raises(CacheError, match="Example 7 has 11 attended positions in this batch but 12"):
        cache.token_samples(index, torch.zeros(3, dtype=torch.long), shorter, shorter.shape[1])

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher model was loaded")

    monkeypatch.setattr(hf_ckd.teachers, "load_teacher", refuse)
    monkeypatch.setattr(TeacherEnsemble, "from_trajectory", refuse)
    config = dict(
        teacher=lm_teacher, teacher_checkpoints="last", temperature=1.0, alpha=0.0, kd_loss="sampled",
        soft_target_cache=cache.path, max_steps=60, save_strategy="no", logging_steps=10,
        per_device_train_batch_size=32,
    )  # fmt: skip
    trainer = CheckpointDistillTrainer(
        model=tiny_gpt2(hidden=16, layers=1, seed=1),
        args=CheckpointDistillConfig(**trainer_args(tmp_path / "student", **config)),
        train_dataset=ReplayViews(train, SelectColumns()),
        data_collator=default_data_collator,
    )
    trainer.train()
    kd = [e["loss_kd"] for e in trainer.state.log_history if "loss_kd" in e]
    assert kd[-1] < 0.7 * kd[0], kd
    with pytest.raises(CacheError, match="train with kd_loss='sampled'"):
        CheckpointDistillTrainer(
            model=tiny_gpt2(hidden=16, layers=1, seed=1),
            args=CheckpointDistillConfig(**trainer_args(tmp_path / "c", **{**config, "kd_loss": "chunked"})),
            train_dataset=ReplayViews(train, SelectColumns()),
            data_collator=default_data_collator,
        )
    with open(os.path.join(cache.path, CACHE_CONFIG_NAME)) as f:
        stored = json.load(f)
    del stored["num_uniform"]  # as a cache of the previous token-level layout
    with open(os.path.join(cache.path, CACHE_CONFIG_NAME), "w") as f:
        json.dump(stored, f)
    with pytest.raises(CacheError, match="older layout"):
        SoftTargetCache(cache.path)
