"""MobileNetV2 (Sandler et al., 2018) for 32x32 inputs, as CRD's ``mobile_half``.

``[B, C, 32, 32]`` -> 3x3 stride-2 stem -> seven groups of inverted residual blocks -> 1x1 conv to 1280
-> ``[B, 1280, 2, 2]`` -> average pool -> linear. Differences from the ImageNet network: the second group
keeps stride 1 (total stride 16 instead of 32), channel counts are ``int(c * width_mult)`` with no rounding
to multiples of 8, the 1280-channel head is not scaled for ``width_mult <= 1``, ReLU instead of ReLU6,
and every block has its 1x1 expansion conv (also for expansion 1). Parameter names follow CRD
(``conv1.0``, ``blocks.i.j.conv.k``, ``conv2.0``, ``classifier.0``) so its checkpoints load directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from torch import nn

from .cifar_resnet import build_cifar_model, cifar_cfg, init_cifar_weights

# (expansion ratio, output channels before width_mult, blocks, stride of the first block); None = expand_ratio
BLOCK_SETTINGS = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(
    in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    conv = nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU (stride), 1x1 project-BN; residual if the shape is kept.

    ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_chs * expand_ratio
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_chs, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR.

    Args:
        width_mult: channel multiplier of stem and blocks (0.5 in CRD's ``mobile_half``).
        expand_ratio: expansion ratio of all groups but the first (6).
        num_classes: classifier outputs; 0 replaces the classifier with ``nn.Identity``.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        width_mult: float = 0.5,
        expand_ratio: int = 6,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        in_chs = int(32 * width_mult)
        self.conv1 = nn.Sequential(*_conv_bn_relu(in_chans, in_chs, 3, stride=2))
        self.blocks = nn.ModuleList()
        for t, c, n, s in BLOCK_SETTINGS:
            out_chs = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t or expand_ratio))
                in_chs = out_chs
            self.blocks.append(nn.Sequential(*group))
        self.num_features = self.head_hidden_size = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn_relu(in_chs, self.num_features, 1))
        self.classifier = self._make_classifier(num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise all weights as the original: Kaiming convs, BN 1/0, linear N(0, 0.01) / 0."""
        init_cifar_weights(self, linear_std=0.01)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        # A one-layer Sequential, as in CRD (its checkpoints name the weights classifier.0.*).
        return nn.Sequential(nn.Linear(self.num_features, num_classes)) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W] -> [B, 1280, H/16, W/16]``."""
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.conv2(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, 1280, h, w]`` -> pooled ``[B, 1280]`` (``pre_logits``) or logits ``[B, num_classes]``."""
        x = F.dropout(x.mean(dim=(2, 3)), p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "cifar_mobilenetv2": cifar_cfg(
            pool_size=(2, 2),
            first_conv="conv1.0",
            classifier="classifier.0",
            paper_name="MobileNetV2: Inverted Residuals and Linear Bottlenecks",
            paper_ids="arXiv:1801.04381",
        ),
    }
)


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs) -> CifarMobileNetV2:
    """CRD's ``mobile_half``: width 0.5, expansion 6 (~0.81M parameters with 100 classes)."""
    model_args = dict(width_mult=0.5, expand_ratio=6)
    return build_cifar_model(CifarMobileNetV2, "cifar_mobilenetv2", pretrained, **dict(model_args, **kwargs))
