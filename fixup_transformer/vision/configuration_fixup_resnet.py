"""Configuration of the Fixup ResNets (CIFAR ``6n+2`` family and ImageNet 18/34/50/101/152).

One config describes the authors' two model families and the normalized baselines they were
compared against; the architecture switch (``normalization``) and the initialization switch
(``init``) are independent fields, so "Fixup vs BatchNorm" runs differ in nothing else.
"""

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from ..choices import require_choice

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# (block type, blocks per stage) of He et al.'s ImageNet ResNets, as in the authors' Fixup code.
IMAGENET_DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
CIFAR_BASE_WIDTHS = (16, 32, 64)
IMAGENET_BASE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


@strict
class FixupResNetConfig(PreTrainedConfig):
    r"""
    Configuration of [`FixupResNetModel`] / [`FixupResNetForImageClassification`].

    family (`str`, defaults to `"cifar"`):
        `"cifar"`: He et al.'s CIFAR ResNet, 3x3 stem, three stages of basic blocks (widths 16/32/64),
        `depth = 6n + 2`, option-A (parameter-free) shortcuts. `"imagenet"`: 7x7 stride-2 stem + max-pool,
        four stages (widths 64/128/256/512, x4 for bottlenecks), 1x1 projection shortcuts, depth in 18/34/50/101/152.
    depth (`int`, defaults to 20):
        Number of weight layers, counted as He et al. do (stem + branch convs + classifier).
    width_multiplier (`float`, defaults to 1.0):
        Multiplies every stage width (rounded, at least 1 channel); small values make very deep nets cheap.
    normalization (`str`, defaults to `"none"`):
        `"none"`: the Fixup architecture (scalar biases before each conv/activation, one scalar multiplier
        per branch). `"batchnorm"`: the standard BatchNorm ResNet (conv-BN-ReLU), no Fixup scalars.
    init (`str`, defaults to `"fixup"`):
        `"fixup"`: the Fixup rule (see `fixup_transformer.fixup`); with BatchNorm the branch-final BN weight
        is zeroed instead of the conv (the BN analogue of rule 1). `"kaiming"`: He-normal (fan-out) for
        every conv and PyTorch's default Linear init for the classifier, with no zero or depth scaling.
    num_channels (`int`, defaults to 3):
        Channels of the input images.
    image_size (`int`, defaults to 32 for the CIFAR family and 224 for ImageNet):
        Side of the square images the model is trained on (32 for CIFAR, 224 for ImageNet); used by the
        image processor presets, the network itself accepts any size.

    Example:

    ```python
    >>> from fixup_transformer.vision import FixupResNetConfig, FixupResNetForImageClassification
    >>> model = FixupResNetForImageClassification(FixupResNetConfig.cifar(depth=110))
    ```
    """

    model_type = "fixup_resnet"
    families: ClassVar[tuple[str, ...]] = ("cifar", "imagenet")
    normalizations: ClassVar[tuple[str, ...]] = ("none", "batchnorm")
    inits: ClassVar[tuple[str, ...]] = ("fixup", "kaiming")

    family: str = "cifar"
    depth: int = 20
    width_multiplier: float | int = 1.0
    normalization: str = "none"
    init: str = "fixup"
    num_channels: int = 3
    image_size: int | None = None

    def __post_init__(self, **kwargs):
        # Plain ValueErrors here (rather than `validate_*` hooks, which huggingface_hub wraps in a
        # non-ValueError) so that callers and tests can catch configuration mistakes uniformly.
        require_choice("FixupResNetConfig", "family", self.family, self.families)
        require_choice("FixupResNetConfig", "normalization", self.normalization, self.normalizations)
        require_choice("FixupResNetConfig", "init", self.init, self.inits)
        if self.width_multiplier <= 0:
            raise ValueError(f"FixupResNetConfig.width_multiplier must be > 0, got {self.width_multiplier}")
        if self.num_channels < 1:
            raise ValueError(f"FixupResNetConfig.num_channels must be >= 1, got {self.num_channels}")
        if self.family == "cifar":
            if self.depth < 8 or (self.depth - 2) % 6 != 0:
                raise ValueError(
                    f"FixupResNetConfig.depth={self.depth} is not a CIFAR ResNet depth: it must be 6n+2 with "
                    "n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...)"
                )
        elif self.depth not in IMAGENET_DEPTHS:
            raise ValueError(
                f"FixupResNetConfig.depth={self.depth} is not an ImageNet ResNet depth: allowed {sorted(IMAGENET_DEPTHS)}"
            )
        if self.image_size is None:
            self.image_size = 32 if self.family == "cifar" else 224
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 10 if self.family == "cifar" else 1000
        super().__post_init__(**kwargs)

    # ---- derived architecture (not serialized: a function of the fields above) ----

    @property
    def layer_type(self) -> str:
        """`"basic"` (two 3x3 convs per branch) or `"bottleneck"` (1x1-3x3-1x1)."""
        return "basic" if self.family == "cifar" else IMAGENET_DEPTHS[self.depth][0]

    @property
    def fixup_scalars(self) -> bool:
        """Where Fixup's scalar biases and multipliers exist (rule 3): every block and the classifier input,
        unless BatchNorm is used (its shifts and scales take their place)."""
        return self.normalization == "none"

    @property
    def layers_per_branch(self) -> int:
        """``m`` of the Fixup rule: weight layers in one residual branch."""
        return 2 if self.layer_type == "basic" else 3

    @property
    def depths(self) -> tuple[int, ...]:
        """Residual blocks per stage."""
        if self.family == "cifar":
            return (self.depth - 2) // 6, (self.depth - 2) // 6, (self.depth - 2) // 6
        return IMAGENET_DEPTHS[self.depth][1]

    @property
    def num_blocks(self) -> int:
        """``L`` of the Fixup rule: the number of residual branches."""
        return sum(self.depths)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Inner width of each stage (the 3x3 conv width)."""
        base = CIFAR_BASE_WIDTHS if self.family == "cifar" else IMAGENET_BASE_WIDTHS
        return tuple(max(1, round(w * self.width_multiplier)) for w in base)

    @property
    def stem_width(self) -> int:
        return self.stage_widths[0]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Output channels of each stage (inner width x4 for bottlenecks)."""
        expansion = BOTTLENECK_EXPANSION if self.layer_type == "bottleneck" else 1
        return tuple(w * expansion for w in self.stage_widths)

    # ---- presets (timm-style factories) ----

    @classmethod
    def cifar(cls, depth: int = 20, num_labels: int = 10, **kwargs) -> "FixupResNetConfig":
        """CIFAR ResNet of ``depth = 6n+2`` layers; CIFAR-10 class names when ``num_labels == 10``."""
        if num_labels == 10 and "id2label" not in kwargs:
            kwargs["id2label"] = dict(enumerate(CIFAR10_CLASSES))
            kwargs["label2id"] = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
        elif "id2label" not in kwargs:
            kwargs["num_labels"] = num_labels
        kwargs.setdefault("image_size", 32)
        return cls(family="cifar", depth=depth, **kwargs)

    @classmethod
    def imagenet(cls, depth: int = 50, num_labels: int = 1000, **kwargs) -> "FixupResNetConfig":
        """ImageNet ResNet-18/34 (basic) or -50/101/152 (bottleneck)."""
        if "id2label" not in kwargs:
            kwargs["num_labels"] = num_labels
        kwargs.setdefault("image_size", 224)
        return cls(family="imagenet", depth=depth, **kwargs)


__all__ = ["FixupResNetConfig", "CIFAR10_CLASSES", "IMAGENET_DEPTHS"]
