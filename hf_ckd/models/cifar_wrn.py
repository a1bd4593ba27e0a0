"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, 2016) in the layout of the CRD codebase.

WRN-d-k: ``[B, C, 32, 32]`` -> 3x3 stem conv (16) -> three groups of ``n = (d - 4) / 6`` pre-activation
basic blocks with 16k, 32k and 64k channels, the last two halving the resolution -> BN-ReLU
-> ``[B, 64k, 8, 8]`` -> average pool -> linear. No dropout inside blocks (as in CRD's teachers).
Parameter names follow CRD (``block1.layer.0.convShortcut`` ...), so its released checkpoints load with
``timm.create_model(name, checkpoint_path=...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .cifar_resnet import build_cifar_model, cifar_cfg, init_cifar_weights


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``.

    A block that changes the width takes its 1x1-conv shortcut from the pre-activated input (BN-ReLU(x)),
    an identity block adds ``x`` itself.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        # CRD's name, kept for checkpoint compatibility.
        self.convShortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False) if in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + shortcut


class WideGroup(nn.Module):
    """``num_blocks`` blocks, the first one changing width and stride: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``."""

    def __init__(self, in_chs: int, out_chs: int, num_blocks: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1)
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class CifarWideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``.

    Args:
        depth: total depth, ``6n + 4`` (16, 28, 40, ...).
        widen_factor: width multiplier ``k`` of the three groups (16k, 32k, 64k channels).
        num_classes: classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.block1 = WideGroup(16, widths[0], n, 1)
        self.block2 = WideGroup(widths[0], widths[1], n, 2)
        self.block3 = WideGroup(widths[1], widths[2], n, 2)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.num_features = self.head_hidden_size = widths[2]
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise all weights as the original: Kaiming convs, BN 1/0, linear bias 0."""
        init_cifar_weights(self, zero_linear_bias=True)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, 64k, H/4, W/4]`` (after the final BN-ReLU)."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, 64k, h, w]`` -> pooled ``[B, 64k]`` (``pre_logits``) or logits ``[B, num_classes]``."""
        x = F.dropout(x.mean(dim=(2, 3)), p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_PAPER = {"paper_name": "Wide Residual Networks", "paper_ids": "arXiv:1605.07146"}
default_cfgs = generate_default_cfgs(
    {name: cifar_cfg(**_PAPER) for name in ("cifar_wrn_40_2", "cifar_wrn_40_1", "cifar_wrn_16_2")}
)


def _create(depth: int, widen_factor: int, pretrained: bool, **kwargs) -> CifarWideResNet:
    variant = f"cifar_wrn_{depth}_{widen_factor}"
    return build_cifar_model(
        CifarWideResNet, variant, pretrained, depth=depth, widen_factor=widen_factor, **kwargs
    )


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """WRN-40-2 (6 blocks per group, widths 32/64/128, ~2.2M parameters with 100 classes)."""
    return _create(40, 2, pretrained, **kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """WRN-40-1 (6 blocks per group, widths 16/32/64, ~0.57M parameters with 100 classes)."""
    return _create(40, 1, pretrained, **kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """WRN-16-2 (2 blocks per group, widths 32/64/128, ~0.70M parameters with 100 classes)."""
    return _create(16, 2, pretrained, **kwargs)
