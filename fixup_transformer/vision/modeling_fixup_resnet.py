"""Fixup ResNets (Zhang, Dauphin, Ma, ICLR 2019) and their BatchNorm / Kaiming baselines, as HF models.

Architecture follows the authors' ``fixup_resnet_cifar.py`` / ``fixup_resnet_imagenet.py``:

    basic:      out = relu(conv1(x + b1a) + b1b); out = conv2(out + b2a) * s + b2b; relu(out + shortcut)
    bottleneck: the same pattern over conv1 (1x1), conv2 (3x3), conv3 (1x1), with one multiplier ``s``

With ``normalization="batchnorm"`` the very same blocks become conv-BN-ReLU blocks: the Fixup scalars are
``nn.Identity`` and the BN modules real, so both models run one forward code path.

The init plan, as timm's ``resnet.py`` states it: each block names its in-branch convs and its branch-final
layer and has ``zero_init_last()``; the model's ``_init_weights`` draws every conv with He init, scales the
in-branch ones by Fixup's depth factor and calls ``zero_init_last()`` (the numbers come from
:mod:`fixup_transformer.fixup`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as hf_init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)
from transformers.modeling_utils import PreTrainedModel

from ..fixup import InitsOwnedModules, ScalarBias, ScalarScale, fixup_depth_factor, scaled_he_normal_, zero_
from .configuration_fixup_resnet import FixupResNetConfig

# ---------------------------------------------------------------------------------------------------------
# Layer factories
# ---------------------------------------------------------------------------------------------------------


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free conv: the biases are scalar Fixup biases or BN shifts."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


def _norm(config: FixupResNetConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if config.normalization == "batchnorm" else nn.Identity()


def _bias(config: FixupResNetConfig) -> nn.Module:
    return ScalarBias() if config.fixup_scalars else nn.Identity()


def _scale(config: FixupResNetConfig) -> nn.Module:
    return ScalarScale() if config.fixup_scalars else nn.Identity()


class SubsamplePadShortcut(nn.Module):
    """He et al.'s option-A shortcut: stride-``s`` subsampling and zero-padded extra channels, no parameters."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


def _shortcut(config: FixupResNetConfig, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    if config.family == "cifar":
        return SubsamplePadShortcut(out_ch, stride)
    # The 1x1 projection is not inside a branch: plain He init (gain 1) under every scheme.
    return nn.Sequential(_conv(in_ch, out_ch, 1, stride), _norm(config, out_ch))


# ---------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------


class ResidualBlock(GradientCheckpointingLayer):
    """What both block kinds tell the init: their in-branch convs and their branch-final layer."""

    def in_branch_convs(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    def last_conv_and_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        raise NotImplementedError

    def shortcut_conv(self) -> nn.Conv2d | None:
        """The ImageNet projection shortcut's 1x1 conv (outside the branch: plain He init under every scheme)."""
        return self.shortcut[0] if isinstance(self.shortcut, nn.Sequential) else None

    def zero_init_last(self) -> None:
        """Rule 1: the branch starts at zero. With BatchNorm the last BN's weight is zeroed instead (Goyal et
        al. 2017): zeroing the conv in front of a BN would make its output 0 / sqrt(eps), with exploding
        gradients."""
        conv, norm = self.last_conv_and_norm()
        zero_(norm.weight if isinstance(norm, nn.BatchNorm2d) else conv.weight)


class FixupBasicBlock(ResidualBlock):
    """Two 3x3 convs (m = 2): conv1 in-branch (x L^-1/2 under Fixup), conv2 branch-final (0)."""

    def __init__(self, config: FixupResNetConfig, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        self.bias1a, self.conv1, self.norm1, self.bias1b = (
            _bias(config),
            _conv(in_ch, width, 3, stride),
            _norm(config, width),
            _bias(config),
        )
        self.bias2a, self.conv2, self.norm2 = _bias(config), _conv(width, width, 3), _norm(config, width)
        self.scale, self.bias2b = _scale(config), _bias(config)
        self.shortcut = _shortcut(config, in_ch, width, stride)

    def in_branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1]

    def last_conv_and_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv2, self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self.bias1a(x)
        out = F.relu(self.bias1b(self.norm1(self.conv1(xb))))
        out = self.bias2b(self.scale(self.norm2(self.conv2(self.bias2a(out)))))
        identity = x if self.shortcut is None else self.shortcut(xb)
        return F.relu(out + identity)


class FixupBottleneck(ResidualBlock):
    """1x1 -> 3x3 -> 1x1 (m = 3): conv1, conv2 in-branch (x L^-1/4 under Fixup), conv3 branch-final (0)."""

    def __init__(self, config: FixupResNetConfig, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * 4
        self.bias1a, self.conv1, self.norm1, self.bias1b = (
            _bias(config),
            _conv(in_ch, width, 1),
            _norm(config, width),
            _bias(config),
        )
        self.bias2a, self.conv2, self.norm2, self.bias2b = (
            _bias(config),
            _conv(width, width, 3, stride),
            _norm(config, width),
            _bias(config),
        )
        self.bias3a, self.conv3, self.norm3 = _bias(config), _conv(width, out_ch, 1), _norm(config, out_ch)
        self.scale, self.bias3b = _scale(config), _bias(config)
        self.shortcut = _shortcut(config, in_ch, out_ch, stride)

    def in_branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def last_conv_and_norm(self) -> tuple[nn.Conv2d, nn.Module]:
        return self.conv3, self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = self.bias1a(x)
        out = F.relu(self.bias1b(self.norm1(self.conv1(xb))))
        out = F.relu(self.bias2b(self.norm2(self.conv2(self.bias2a(out)))))
        out = self.bias3b(self.scale(self.norm3(self.conv3(self.bias3a(out)))))
        identity = x if self.shortcut is None else self.shortcut(xb)
        return F.relu(out + identity)


class FixupStem(nn.Module):
    """``relu(conv(x) + b)``: 3x3 for CIFAR; 7x7 stride 2 followed by 3x3 max-pool for ImageNet."""

    def __init__(self, config: FixupResNetConfig) -> None:
        super().__init__()
        width = config.stem_width
        kernel, stride = (3, 1) if config.family == "cifar" else (7, 2)
        self.conv = _conv(config.num_channels, width, kernel, stride)
        self.norm = _norm(config, width)
        self.bias = _bias(config)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if config.family == "imagenet" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bias(self.norm(self.conv(x)))))


class FixupStage(nn.Module):
    """A run of blocks at one resolution; the first may downsample and widen."""

    def __init__(
        self, config: FixupResNetConfig, in_ch: int, width: int, num_blocks: int, stride: int
    ) -> None:
        super().__init__()
        block_cls = FixupBasicBlock if config.layer_type == "basic" else FixupBottleneck
        expansion = 1 if config.layer_type == "basic" else 4
        blocks = []
        for i in range(num_blocks):
            blocks.append(block_cls(config, in_ch, width, stride if i == 0 else 1))
            in_ch = width * expansion
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------


class FixupResNetPreTrainedModel(InitsOwnedModules, PreTrainedModel):
    config: FixupResNetConfig
    config_class = FixupResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["FixupBasicBlock", "FixupBottleneck"]
    # The loss is a mean over the batch and takes no num_items_in_batch: transformers' Trainer must divide
    # by its gradient-accumulation steps itself (it skips that for models whose forward takes **kwargs).
    accepts_loss_kwargs = False

    def _refuse_checkpointing_with_batchnorm(self) -> None:
        if self.config.normalization == "batchnorm":
            # The recomputed forward would update every running mean/var a second time per step.
            raise ValueError(
                "gradient checkpointing recomputes each block's forward, which would update the BatchNorm "
                "running statistics twice per step; it is supported for normalization='none' (Fixup)"
            )

    # Both public entry points (`activation_checkpointing_enable`, and the deprecated
    # `gradient_checkpointing_enable`) end in the private method where transformers has it; overriding a
    # public one instead would make transformers warn about deprecation on every call.
    if hasattr(PreTrainedModel, "_activation_checkpointing_enable"):

        def _activation_checkpointing_enable(self, *args, **kwargs) -> None:
            self._refuse_checkpointing_with_batchnorm()
            super()._activation_checkpointing_enable(*args, **kwargs)

    else:  # transformers releases before the rename

        def gradient_checkpointing_enable(self, *args, **kwargs) -> None:
            self._refuse_checkpointing_with_batchnorm()
            super().gradient_checkpointing_enable(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The whole init plan. transformers calls this on children before their parents (so a block's
        # BatchNorms are set before the block zeroes its last one), and every initializer goes through
        # `transformers.initialization`, which skips tensors loaded from a checkpoint.
        if isinstance(module, ResidualBlock):
            fixup = self.config.init == "fixup"
            # Rule 2: in-branch convs x L^(-1/(2m-2)); the Kaiming baseline keeps plain He init.
            gain = fixup_depth_factor(self.config.num_blocks, self.config.layers_per_branch) if fixup else 1.0
            for conv in module.in_branch_convs():
                scaled_he_normal_(conv.weight, gain)
            last_conv, _ = module.last_conv_and_norm()
            if not (fixup and self.config.normalization == "none"):
                scaled_he_normal_(last_conv.weight)  # (a Fixup conv that rule 1 zeroes is not drawn)
            if module.shortcut_conv() is not None:
                scaled_he_normal_(module.shortcut_conv().weight)
            if fixup:
                module.zero_init_last()  # rule 1
        elif isinstance(module, FixupStem):
            scaled_he_normal_(module.conv.weight)
        elif isinstance(module, nn.BatchNorm2d):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
            hf_init.zeros_(module.running_mean)
            hf_init.ones_(module.running_var)
            hf_init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            if self.config.init == "fixup":
                zero_(module.weight)  # rule 1: the classifier starts at zero
                zero_(module.bias)
            else:  # PyTorch's default Linear init, what the He et al. baselines used
                hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                hf_init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (ScalarBias, ScalarScale)):
            module.reset_parameters()


def check_pixel_values(
    pixel_values: torch.Tensor, num_channels: int, dtype: torch.dtype | None = None
) -> None:
    """Clear errors for the usual mistakes: channels-last arrays, a missing batch axis, integer pixels, and
    (outside autocast) pixels of another float type than the weights, e.g. float64 from numpy."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}"
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels at dim 1 but the model expects {num_channels} "
            f"(shape {tuple(pixel_values.shape)}; channels-last images must be permuted to (B, C, H, W))"
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be a floating-point tensor (normalized images), got {pixel_values.dtype}; "
            "use FixupResNetImageProcessor to convert uint8 images"
        )
    # Autocast casts float32/16 inputs to its type itself, never float64.
    cast_by_autocast = (
        torch.is_autocast_enabled(pixel_values.device.type) and pixel_values.dtype != torch.float64
    )
    if dtype is not None and pixel_values.dtype != dtype and not cast_by_autocast:
        raise TypeError(
            f"pixel_values are {pixel_values.dtype} but the model's weights are {dtype}: convert them with "
            "pixel_values.to(model.dtype) (numpy arrays are float64)"
        )


class FixupResNetModel(FixupResNetPreTrainedModel):
    """Stem + stages + global average pool. ``pooler_output`` is ``(batch, channels)``."""

    def __init__(self, config: FixupResNetConfig) -> None:
        super().__init__(config)
        self.stem = FixupStem(config)
        stages, in_ch = [], config.stem_width
        for i, (width, n) in enumerate(zip(config.stage_widths, config.depths, strict=True)):
            stages.append(FixupStage(config, in_ch, width, n, stride=1 if i == 0 else 2))
            in_ch = config.hidden_sizes[i]
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        check_pixel_values(pixel_values, self.config.num_channels, self.dtype)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden = self.stem(pixel_values)
        all_hidden = (hidden,) if output_hidden_states else None
        for stage in self.stages:
            hidden = stage(hidden)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        pooled = hidden.mean(dim=(2, 3))
        if not return_dict:
            return tuple(v for v in (hidden, pooled, all_hidden) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden
        )


class FixupClassifier(nn.Module):
    """``fc(x + b)``: the scalar bias before the (zero-initialized) classification layer."""

    def __init__(self, config: FixupResNetConfig) -> None:
        super().__init__()
        self.bias = _bias(config)
        self.fc = nn.Linear(config.hidden_sizes[-1], config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bias(pooled))


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None = None
) -> torch.Tensor:
    """Cross-entropy against class indices ``(B,)`` or soft/mixup targets ``(B, num_labels)``; with
    ``config.problem_type`` set, transformers' losses for it: MSE for ``"regression"``, binary
    cross-entropy per label for ``"multi_label_classification"``."""
    batch, num_labels = logits.shape
    if labels.shape[0] != batch:
        raise ValueError(f"labels has batch size {labels.shape[0]} but pixel_values has {batch}")
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(batch).float())
        return F.mse_loss(logits.float(), labels.float())
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi-label targets must have shape (batch, num_labels) = {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if labels.is_floating_point():
        if labels.shape != logits.shape:
            raise ValueError(
                f"soft labels must have shape (batch, num_labels) = {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits.float(), labels.float())
    if labels.ndim != 1:
        raise ValueError(f"class-index labels must have shape (batch,), got {tuple(labels.shape)}")
    if labels.numel() and labels.device.type != "cpu":
        # On an accelerator a host read of min/max would stall every training step: check on the device
        # (raised at the next synchronisation, with this message).
        in_range = ((labels >= 0) & (labels < num_labels)).all()
        torch._assert_async(in_range, f"labels must be class indices in [0, {num_labels - 1}]")
    elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
        raise ValueError(
            f"labels must be class indices in [0, {num_labels - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return F.cross_entropy(logits.float(), labels.long())


class FixupResNetForImageClassification(FixupResNetPreTrainedModel):
    def __init__(self, config: FixupResNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = FixupResNetModel(config)
        self.classifier = FixupClassifier(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)` or `torch.FloatTensor` of shape `(batch, num_labels)`):
            Class indices, or target distributions (mixup / label smoothing); cross-entropy either way.
            With `config.problem_type` `"regression"` (MSE) or `"multi_label_classification"` (binary
            cross-entropy, `(batch, num_labels)` 0/1 targets), transformers' loss for that problem; with one
            label and no `problem_type`, regression, as in transformers.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        # transformers' convention: one output and no problem_type set is a regression
        problem_type = self.config.problem_type or ("regression" if self.num_labels == 1 else None)
        loss = classification_loss(logits, labels, problem_type) if labels is not None else None
        if not return_dict:
            out = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return ImageClassifierOutputWithNoAttention(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states
        )


# ---------------------------------------------------------------------------------------------------------
# Factories (timm style)
# ---------------------------------------------------------------------------------------------------------


def _factory(family: str, depth: int):
    def create(**kwargs) -> FixupResNetForImageClassification:
        make = FixupResNetConfig.cifar if family == "cifar" else FixupResNetConfig.imagenet
        return FixupResNetForImageClassification(make(depth=depth, **kwargs))

    create.__name__ = f"fixup_resnet{depth}" + ("_cifar" if family == "cifar" else "")
    create.__doc__ = f"{family} ResNet-{depth} image classifier (Fixup by default; kwargs go to the config)."
    return create


fixup_resnet20_cifar = _factory("cifar", 20)
fixup_resnet32_cifar = _factory("cifar", 32)
fixup_resnet44_cifar = _factory("cifar", 44)
fixup_resnet56_cifar = _factory("cifar", 56)
fixup_resnet110_cifar = _factory("cifar", 110)
fixup_resnet1202_cifar = _factory("cifar", 1202)
fixup_resnet18 = _factory("imagenet", 18)
fixup_resnet34 = _factory("imagenet", 34)
fixup_resnet50 = _factory("imagenet", 50)
fixup_resnet101 = _factory("imagenet", 101)
fixup_resnet152 = _factory("imagenet", 152)

__all__ = [
    "FixupResNetPreTrainedModel",
    "FixupResNetModel",
    "FixupResNetForImageClassification",
    "FixupBasicBlock",
    "FixupBottleneck",
    "SubsamplePadShortcut",
    "classification_loss",
    "check_pixel_values",
    "fixup_resnet20_cifar",
    "fixup_resnet32_cifar",
    "fixup_resnet44_cifar",
    "fixup_resnet56_cifar",
    "fixup_resnet110_cifar",
    "fixup_resnet1202_cifar",
    "fixup_resnet18",
    "fixup_resnet34",
    "fixup_resnet50",
    "fixup_resnet101",
    "fixup_resnet152",
]
