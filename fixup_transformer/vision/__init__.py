"""Fixup ResNets for images: config, models, image processor, Auto-class registration.

``register_vision()`` makes ``AutoConfig``, ``AutoModel``, ``AutoModelForImageClassification`` and
``AutoImageProcessor`` (hence ``pipeline("image-classification")``) resolve ``model_type="fixup_resnet"``.
It runs on import of this subpackage and is safe to call again.
"""

from __future__ import annotations

from .configuration_fixup_resnet import CIFAR10_CLASSES, IMAGENET_DEPTHS, FixupResNetConfig
from .image_processing_fixup_resnet import CIFAR10_MEAN, CIFAR10_STD, FixupResNetImageProcessor
from .modeling_fixup_resnet import (
    FixupResNetForImageClassification,
    FixupResNetModel,
    FixupResNetPreTrainedModel,
    fixup_resnet18,
    fixup_resnet20_cifar,
    fixup_resnet32_cifar,
    fixup_resnet34,
    fixup_resnet44_cifar,
    fixup_resnet50,
    fixup_resnet56_cifar,
    fixup_resnet101,
    fixup_resnet110_cifar,
    fixup_resnet152,
    fixup_resnet1202_cifar,
)


def register_vision() -> None:
    """Register the Fixup ResNet types with transformers' Auto classes (idempotent, no ``auto_map``)."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
    )

    # exist_ok=True makes repeated calls (and re-imports under reloaders) harmless.
    AutoConfig.register(FixupResNetConfig.model_type, FixupResNetConfig, exist_ok=True)
    AutoModel.register(FixupResNetConfig, FixupResNetModel, exist_ok=True)
    AutoModelForImageClassification.register(
        FixupResNetConfig, FixupResNetForImageClassification, exist_ok=True
    )
    AutoImageProcessor.register(
        FixupResNetConfig, image_processor_classes={"pil": FixupResNetImageProcessor}, exist_ok=True
    )


register_vision()

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_DEPTHS",
    "FixupResNetConfig",
    "FixupResNetForImageClassification",
    "FixupResNetImageProcessor",
    "FixupResNetModel",
    "FixupResNetPreTrainedModel",
    "fixup_resnet18",
    "fixup_resnet20_cifar",
    "fixup_resnet32_cifar",
    "fixup_resnet34",
    "fixup_resnet44_cifar",
    "fixup_resnet50",
    "fixup_resnet56_cifar",
    "fixup_resnet101",
    "fixup_resnet110_cifar",
    "fixup_resnet152",
    "fixup_resnet1202_cifar",
    "register_vision",
]
