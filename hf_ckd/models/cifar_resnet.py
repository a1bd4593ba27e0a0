"""CIFAR ResNets (He et al., 2016, Sec. 4.2) in the layout of the CRD codebase (Tian et al., 2020).

``[B, C, 32, 32]`` -> 3x3 stem conv (16) -> three stages of ``n = (depth - 2) / 6`` basic blocks with 16,
32 and 64 channels, the last two halving the resolution -> ``[B, 64, 8, 8]`` -> average pool -> linear.
Shortcuts that change shape are 1x1 conv + BN. Parameter names follow CRD, so its released checkpoints
(``{"model": state_dict}``) load with ``timm.create_model(name, checkpoint_path=...)``.

The helpers shared by all CIFAR families (default cfg, weight init, builder) live here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from torch import nn

from .._constants import CIFAR100_MEAN, CIFAR100_STD

CRD_URL = "https://github.com/HobbitLong/RepDistiller"


def cifar_cfg(**kwargs) -> dict:
    """timm pretrained cfg for a CIFAR-100 architecture without published weights (no url / hub id)."""
    return {
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "origin_url": CRD_URL,
        **kwargs,
    }


def init_cifar_weights(
    model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False
) -> None:
    """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0; linears N(0, ``linear_std``) or PyTorch default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is None:
                m.reset_parameters()  # PyTorch's default
            else:
                nn.init.normal_(m.weight, std=linear_std)
            if zero_linear_bias or linear_std is not None:
                nn.init.zeros_(m.bias)


def build_cifar_model(
    model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs
) -> nn.Module:
    """Build ``variant`` with timm's ``build_model_with_cfg``.

    No weights are published for these models: ``pretrained=True`` raises unless a weight source is given
    in ``pretrained_cfg_overlay`` (``file``, ``url``, ``hf_hub_id`` or ``state_dict``).
    """
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
        )
        if not (cfg.has_weights or cfg.state_dict is not None):
            raise RuntimeError(
                f"No pretrained weights are published for {variant!r}: use pretrained=False, or pass your own "
                "with pretrained_cfg_overlay=dict(file=...) or timm.create_model(..., checkpoint_path=...)."
            )
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


def _stage(in_chs: int, out_chs: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [
        BasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1) for i in range(num_blocks)
    ]
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers.

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 56, 110, ...).
        num_classes: classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        channels: stem width, then the three stage widths.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        channels: tuple[int, int, int, int] = (16, 16, 32, 64),
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.layer1 = _stage(channels[0], channels[1], n, 1)
        self.layer2 = _stage(channels[1], channels[2], n, 2)
        self.layer3 = _stage(channels[2], channels[3], n, 2)
        self.num_features = self.head_hidden_size = channels[3]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise all weights as the original: Kaiming convs, BN 1/0, PyTorch-default linear."""
        init_cifar_weights(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, 64, H/4, W/4]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, 64, h, w]`` -> pooled ``[B, 64]`` (``pre_logits``) or logits ``[B, num_classes]``."""
        x = F.dropout(x.mean(dim=(2, 3)), p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_PAPERS = {"paper_name": "Deep Residual Learning for Image Recognition", "paper_ids": "arXiv:1512.03385"}
default_cfgs = generate_default_cfgs(
    {f"cifar_resnet{d}": cifar_cfg(**_PAPERS) for d in (20, 32, 56, 110)},
)


def _create(depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    return build_cifar_model(CifarResNet, f"cifar_resnet{depth}", pretrained, depth=depth, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, ~0.28M parameters with 100 classes)."""
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage, ~0.47M parameters with 100 classes)."""
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, ~0.86M parameters with 100 classes)."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage, ~1.7M parameters with 100 classes)."""
    return _create(110, pretrained, **kwargs)
