"""CIFAR (32x32) architectures of the CRD / checkpoint-KD experiments, registered in timm.

Importing this package registers ``cifar_resnet{20,32,56,110}``, ``cifar_wrn_{40_2,40_1,16_2}`` and
``cifar_mobilenetv2`` in timm's model registry, so ``timm.create_model("cifar_wrn_40_2")`` and
``TimmWrapperConfig(architecture="cifar_wrn_40_2")`` work. See ``docs/models.md``.
"""

from .cifar_mobilenetv2 import CifarMobileNetV2, cifar_mobilenetv2
from .cifar_resnet import CifarResNet, cifar_resnet20, cifar_resnet32, cifar_resnet56, cifar_resnet110
from .cifar_wrn import CifarWideResNet, cifar_wrn_16_2, cifar_wrn_40_1, cifar_wrn_40_2

__all__ = [
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarWideResNet",
    "cifar_mobilenetv2",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_wrn_16_2",
    "cifar_wrn_40_1",
    "cifar_wrn_40_2",
]
