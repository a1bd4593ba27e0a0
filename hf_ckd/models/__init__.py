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
    "check_timm_architecture",
    "cifar_mobilenetv2",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_wrn_16_2",
    "cifar_wrn_40_1",
    "cifar_wrn_40_2",
    "timm_classifier",
]


def check_timm_architecture(architecture: str, argument: str = "--model_name") -> None:
    """Raise a ``ValueError`` naming ``argument`` and close names when timm does not know ``architecture``."""
    import timm

    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('_')[0]}*")[:8]
        raise ValueError(f"{argument} '{architecture}' is not a timm architecture; close ones: {close}.")


def timm_classifier(architecture: str, num_labels: int, argument: str = "--model_name", **model_args):
    """A ``TimmWrapperForImageClassification`` for a timm ``architecture`` with ``num_labels`` outputs.

    Building the wrapper from a config re-draws every weight from N(0, 0.02); timm's own initialisation
    (Kaiming for the CIFAR networks, as in the papers) is restored when the model has ``init_weights``.
    An unknown ``architecture`` raises a ``ValueError`` naming ``argument`` and close timm names.
    """
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    check_timm_architecture(architecture, argument)
    model = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture=architecture, num_labels=num_labels, model_args=model_args)
    )
    if hasattr(model.timm_model, "init_weights"):
        model.timm_model.init_weights()
    return model
