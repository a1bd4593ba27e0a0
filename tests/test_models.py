"""The CIFAR architectures registered in timm by ``hf_ckd.models``."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel

import hf_ckd.models  # noqa: F401  (registers the models)

# Published parameter counts with 100 classes (CRD, Tian et al. 2020, and the original papers).
PUBLISHED_PARAMS = {
    "cifar_wrn_40_2": 2.2e6,
    "cifar_wrn_40_1": 0.57e6,
    "cifar_wrn_16_2": 0.70e6,
    "cifar_resnet110": 1.7e6,
    "cifar_resnet56": 0.86e6,
    "cifar_resnet32": 0.47e6,
    "cifar_resnet20": 0.28e6,
    "cifar_mobilenetv2": 0.81e6,
}
NAMES = sorted(PUBLISHED_PARAMS)
NUM_FEATURES = {"cifar_wrn_40_2": 128, "cifar_wrn_16_2": 128, "cifar_mobilenetv2": 1280}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_listed():
    assert set(timm.list_models("cifar_*")) >= set(NAMES)
    assert not any(timm.is_model_pretrained(name) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_paper(name):
    model = timm.create_model(name, num_classes=100)
    assert n_params(model) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.03)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_cfg(name):
    model = timm.create_model(name).eval()  # 100 classes by default
    num_features = NUM_FEATURES.get(name, 64)
    assert model.num_features == num_features
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
        assert feats.shape[:2] == (2, num_features) and feats.ndim == 4
        assert model.forward_head(feats).shape == (2, 100)
        assert model.forward_head(feats, pre_logits=True).shape == (2, num_features)
    assert model.get_classifier()(torch.randn(2, num_features)).shape == (2, 100)

    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 100
    assert cfg["mean"] == (0.5071, 0.4865, 0.4409) and cfg["std"] == (0.2673, 0.2564, 0.2762)
    assert "url" not in cfg and "hf_hub_id" not in cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert timm.data.resolve_data_config({}, model=model)["mean"] == cfg["mean"]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_wrn_16_2", "cifar_mobilenetv2"])
def test_timm_kwargs(name):
    x = torch.randn(2, 1, 32, 32)
    model = timm.create_model(name, in_chans=1, num_classes=10, drop_rate=0.5)
    assert model(x).shape == (2, 10)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert (pooled == 0).float().mean() > 0.2  # dropout before the classifier, in train mode

    model.reset_classifier(0)
    assert model.eval()(x).shape == (2, model.num_features)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(7, global_pool="max")


def test_pretrained_raises():
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("cifar_wrn_40_2", pretrained=True)


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("cifar_resnet110", "layer2.0.downsample.0.weight", (32, 16, 1, 1)),
        ("cifar_resnet110", "layer3.17.bn2.running_var", (64,)),
        ("cifar_wrn_40_2", "block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
        ("cifar_wrn_40_2", "block3.layer.5.conv2.weight", (128, 128, 3, 3)),
        ("cifar_mobilenetv2", "blocks.0.0.conv.0.weight", (16, 16, 1, 1)),
        ("cifar_mobilenetv2", "blocks.1.0.conv.3.weight", (48, 1, 3, 3)),
        ("cifar_mobilenetv2", "conv2.0.weight", (1280, 160, 1, 1)),
        ("cifar_mobilenetv2", "classifier.0.weight", (100, 1280)),
    ],
)
def test_crd_parameter_names(name, key, shape):
    assert timm.create_model(name).state_dict()[key].shape == shape


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenetv2"])
def test_crd_style_checkpoint_loads(name, tmp_path):
    """CRD saves ``{"model": state_dict, "epoch": ...}``; both timm loading paths unwrap it."""
    src = timm.create_model(name).eval()
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": src.state_dict()}, path)
    x = torch.randn(2, 3, 32, 32)
    for kwargs in (
        {"checkpoint_path": str(path)},
        {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}},
    ):
        loaded = timm.create_model(name, **kwargs).eval()
        torch.testing.assert_close(loaded(x), src(x))


def test_timm_wrapper_round_trip(tmp_path):
    config = TimmWrapperConfig(architecture="cifar_wrn_40_1", num_labels=100)
    model = TimmWrapperForImageClassification(config).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = model(pixel_values=x).logits
    assert logits.shape == (2, 100)
    model.save_pretrained(tmp_path)
    reloaded = TimmWrapperForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(pixel_values=x).logits, logits, rtol=0, atol=0)

    backbone = TimmWrapperModel(TimmWrapperConfig(architecture="cifar_resnet20")).eval()
    assert backbone(pixel_values=x).pooler_output.shape == (2, 64)


def test_timm_wrapper_overrides_init_until_reinitialised():
    """transformers' generic init redraws every conv from N(0, 0.02); ``init_weights()`` restores the paper's."""
    model = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="cifar_resnet56", num_labels=100)
    )
    conv = model.timm_model.layer3[0].conv2.weight  # 64 x 64 x 3 x 3: Kaiming std sqrt(2 / 576) = 0.059
    assert conv.std().item() == pytest.approx(0.02, rel=0.1)
    model.timm_model.init_weights()
    assert conv.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.1)


def test_resnet20_learns_brightness():
    """64 noisy images whose class is their mean brightness: 12 SGD steps (batches of 16) fit them."""
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = 0.5 * torch.randn(64, 3, 32, 32) + (labels.float() - 0.5).view(-1, 1, 1, 1)
    model = timm.create_model("cifar_resnet20", num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(12):
        batch = torch.arange(16 * step, 16 * (step + 1)) % 64
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(images).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.9
