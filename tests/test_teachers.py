"""Teacher loading (transformers, timm, plain modules), safe loading, the ensemble, broken checkpoints."""

import os
import shutil

import pytest
import torch
from conftest import tiny_bert, tiny_timm
from safetensors.torch import save_file
from torch import nn

from hf_ckd import Checkpoint, TeacherEnsemble, TeacherLoadError, TeacherOutputError, Trajectory, load_teacher
from hf_ckd.teachers import _load_state_dict, output_size


def _checkpoint(path, step=1, name=None):
    return Checkpoint(name=name or os.path.basename(path), path=str(path), step=step)


def test_load_transformers_teacher_frozen_eval(text_teacher):
    ckpt = Trajectory.from_local(text_teacher).at(0.5)
    model = load_teacher(ckpt)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    half = load_teacher(ckpt, dtype="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert output_size(model) == 4


def test_load_timm_teacher_through_wrapper(timm_teacher):
    model = load_teacher(Trajectory.from_local(timm_teacher)[-1])
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    assert output_size(model) == 10
    logits = model(pixel_values=torch.randn(2, 1, 16, 16)).logits
    assert logits.shape == (2, 10)


def test_load_timm_native_hub_format(tmp_path):
    """A folder in timm's own hub format (config.json with pretrained_cfg) loads through the same path."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    save_for_hf(model, str(tmp_path), model_config={"num_classes": 10})
    teacher = load_teacher(_checkpoint(tmp_path))
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(teacher(pixel_values=x).logits, model(x))


def test_same_teacher_weights_as_saved(text_teacher):
    ckpt = Trajectory.from_local(text_teacher).at(1.0)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(ckpt.path, "model.safetensors"))
    loaded = load_teacher(ckpt).state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value)


class MLP(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixel_values, labels=None):
        return {"logits": self.net(pixel_values)}


def test_model_init_for_plain_modules(tmp_path):
    torch.manual_seed(0)
    net = MLP()
    (tmp_path / "ckpt").mkdir()
    save_file(net.state_dict(), str(tmp_path / "ckpt" / "model.safetensors"))
    ckpt = _checkpoint(tmp_path / "ckpt")
    teacher = load_teacher(ckpt, model_init=MLP)
    teacher_with_arg = load_teacher(ckpt, model_init=lambda checkpoint: MLP())
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(teacher(x)["logits"], net(x)["logits"])
    torch.testing.assert_close(teacher_with_arg(x)["logits"], net(x)["logits"])
    with pytest.raises(TeacherLoadError, match=r"(?s)ckpt.*failed to load.*size mismatch"):
        load_teacher(ckpt, model_init=lambda: MLP(hidden=8))
    with pytest.raises(TeacherLoadError, match=r"no config\.json.*teacher_model_init"):
        load_teacher(ckpt)


def test_pickle_weights_load_only_weights_only(tmp_path):
    torch.manual_seed(0)
    bert = tiny_bert()
    folder = tmp_path / "bin_teacher"
    bert.save_pretrained(folder)
    os.remove(folder / "model.safetensors")
    torch.save(bert.state_dict(), folder / "pytorch_model.bin")
    teacher = load_teacher(_checkpoint(folder))
    ids = torch.randint(0, 32, (2, 16))
    bert.eval()
    torch.testing.assert_close(teacher(input_ids=ids).logits, bert(input_ids=ids).logits)

    # A pickle that needs full unpickling (an arbitrary object) is refused unless opted in.
    unsafe = tmp_path / "unsafe.bin"
    torch.save({"weight": torch.ones(2), "meta": Unpicklable()}, unsafe)
    with pytest.raises(TeacherLoadError, match=r"unsafe\.bin.*allow_unsafe_pickle=True"):
        _load_state_dict(str(unsafe), allow_unsafe_pickle=False)
    assert isinstance(_load_state_dict(str(unsafe), allow_unsafe_pickle=True)["meta"], Unpicklable)


class Unpicklable:
    pass


def test_broken_checkpoints_are_all_listed_in_one_error(text_teacher, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(text_teacher, run)
    os.remove(run / "checkpoint-30" / "model.safetensors")  # no weights
    os.remove(run / "checkpoint-60" / "config.json")  # no config
    weights = run / "checkpoint-90" / "model.safetensors"  # corrupted
    weights.write_bytes(weights.read_bytes()[:100])
    traj = Trajectory.from_local(run)
    with pytest.raises(TeacherLoadError) as err:
        TeacherEnsemble.from_trajectory(traj, "all")
    message = str(err.value)
    assert "3 of 4 teacher checkpoints" in message
    assert "checkpoint-30" in message and "has no weights" in message
    assert "checkpoint-60" in message and "no config.json" in message
    assert "checkpoint-90" in message and "not a valid safetensors file" in message
    # The healthy checkpoint still loads on its own.
    assert len(TeacherEnsemble.from_trajectory(traj, "last")) == 1


def test_ensemble_merges_duplicates_and_checks_weights(text_teacher):
    traj = Trajectory.from_local(text_teacher)
    ensemble = TeacherEnsemble.from_trajectory(traj, "0.5,0.55,last", weights=[1, 1, 2])
    assert [c.name for c in ensemble.checkpoints] == ["checkpoint-60", "checkpoint-120"]
    assert ensemble.weights == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match=r"teacher_weights has 2 values.*selects 3"):
        TeacherEnsemble.from_trajectory(traj, "0.3,0.5,last", weights=[1, 1])
    batch = {"input_ids": torch.randint(0, 32, (3, 16)), "labels": torch.zeros(3, dtype=torch.long)}
    logits = ensemble.logits(batch)
    assert len(logits) == 2 and logits[0].shape == (3, 4)
    log_p = ensemble.log_targets(batch, temperature=2.0)
    expected = 0.5 * torch.softmax(logits[0] / 2, -1) + 0.5 * torch.softmax(logits[1] / 2, -1)
    torch.testing.assert_close(log_p.exp(), expected)
    described = ensemble.describe()
    assert [c["name"] for c in described["checkpoints"]] == ["checkpoint-60", "checkpoint-120"]


def test_nan_teacher_output_names_checkpoint_and_step(tmp_path):
    model = tiny_timm()
    with torch.no_grad():
        model.timm_model.fc.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path / "checkpoint-7")
    ensemble = TeacherEnsemble.from_trajectory(Trajectory.from_local(tmp_path), "last")
    with pytest.raises(TeacherOutputError, match=r"checkpoint-7.*teacher step 7.*student step 3"):
        ensemble.logits({"pixel_values": torch.randn(2, 1, 16, 16)}, step=3)


def test_label_spaces_must_agree_across_checkpoints(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "checkpoint-1")
    other = tiny_bert()
    other.config.num_labels = 7
    type(other)(other.config).save_pretrained(tmp_path / "checkpoint-2")
    with pytest.raises(TeacherLoadError, match="different label spaces"):
        TeacherEnsemble.from_trajectory(Trajectory.from_local(tmp_path), "all")


@pytest.mark.parametrize("fixture", ["timm_teacher", "text_teacher"])
def test_fused_and_loop_ensembles_agree(fixture, request, digits_data, text_data):
    """vmap over the stacked checkpoints gives the loop's logits (fp32, 1e-5); auto keeps one of the two."""
    traj = Trajectory.from_local(request.getfixturevalue(fixture))
    batch = (
        {"pixel_values": torch.stack([digits_data[1][i]["pixel_values"] for i in range(8)])}
        if fixture == "timm_teacher"
        else {"input_ids": torch.stack([torch.as_tensor(text_data[1][i]["input_ids"]) for i in range(8)])}
    )
    loop = TeacherEnsemble.from_trajectory(traj, "all")
    fused = TeacherEnsemble(loop.models, loop.checkpoints, fusion="vmap")
    for a, b in zip(loop.logits(batch), fused.logits(batch)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    auto = TeacherEnsemble(loop.models, loop.checkpoints, fusion="auto")
    targets = auto.log_targets(batch, 2.0)
    assert auto.fusion in ("loop", "vmap")
    torch.testing.assert_close(targets, loop.log_targets(batch, 2.0), rtol=1e-5, atol=1e-5)


def test_vmap_needs_one_architecture(timm_teacher, text_teacher):
    timm_ens = TeacherEnsemble.from_trajectory(Trajectory.from_local(timm_teacher), "last")
    text_ens = TeacherEnsemble.from_trajectory(Trajectory.from_local(text_teacher), "last")
    models, checkpoints = timm_ens.models + text_ens.models, timm_ens.checkpoints + text_ens.checkpoints
    with pytest.raises(ValueError, match=r"teacher_fusion='vmap' needs checkpoints of one architecture"):
        TeacherEnsemble(models, checkpoints, fusion="vmap")
    with pytest.raises(ValueError, match=r"teacher_fusion must be one of"):
        TeacherEnsemble(models, checkpoints, fusion="fast")
