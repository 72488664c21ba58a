"""The Fixup rule, written once and used by every model of this package.

Zhang, Dauphin, Ma, *Fixup Initialization: Residual Learning Without Normalization*, ICLR 2019, section 3.
For a residual network with ``L`` residual branches of ``m`` weight layers each:

1. the classification layer and the last layer of each residual branch start at zero;
2. every other layer of a branch gets a standard init (He / Xavier) scaled by ``L ** (-1 / (2m - 2))``;
3. each branch gets one scalar multiplier (init 1) and a scalar bias (init 0) before each
   convolution, linear and element-wise activation.

The modeling files only say *which* layer is branch-final or in-branch; the numbers come from here.
Every initializer goes through ``transformers.initialization``, whose functions skip tensors that were
loaded from a checkpoint, so ``from_pretrained`` never overwrites trained weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as hf_init


def fixup_depth_factor(num_branches: int, layers_per_branch: int) -> float:
    """``L ** (-1 / (2m - 2))``: the factor that keeps the summed branch updates O(1) at init."""
    if num_branches < 1:
        raise ValueError(f"num_branches must be >= 1, got {num_branches}")
    if layers_per_branch < 2:
        raise ValueError(
            f"layers_per_branch must be >= 2 (a branch of one layer has no in-branch layer), got {layers_per_branch}"
        )
    return num_branches ** (-1.0 / (2 * layers_per_branch - 2))


def xavier_uniform_bound(fan_in: int, fan_out: int) -> float:
    """Bound ``a`` of Xavier/Glorot uniform init U(-a, a) for a ``fan_out x fan_in`` weight."""
    return math.sqrt(6.0 / (fan_in + fan_out))


def he_normal_std(fan: int) -> float:
    """Std of He (Kaiming) normal init for ReLU, ``sqrt(2 / fan)``."""
    return math.sqrt(2.0 / fan)


def _fill_chunks_(weight: torch.Tensor, gains: list[float], draw) -> torch.Tensor:
    """Init a fused projection (chunks stacked along dim 0) with ``draw(chunk, gain)`` per chunk; a weight
    loaded from a checkpoint is left alone."""
    if getattr(weight, "_is_hf_initialized", False):
        return weight
    chunks = weight.detach().chunk(len(gains), dim=0)
    values = [draw(chunk, gain) for chunk, gain in zip(chunks, gains, strict=True)]
    return hf_init.copy_(weight, torch.cat(values, dim=0))


def chunked_xavier_uniform_(weight: torch.Tensor, gains: list[float]) -> torch.Tensor:
    """Xavier init of a fused projection (e.g. QKV stacked along dim 0), each chunk with its own gain.

    Fan-in/fan-out are those of one chunk, so a fused ``3d x d`` QKV matrix is initialised exactly like
    three separate ``d x d`` projections.
    """

    def draw(chunk: torch.Tensor, gain: float) -> torch.Tensor:
        fan_out, fan_in = chunk.shape
        bound = gain * xavier_uniform_bound(fan_in, fan_out)
        return torch.empty_like(chunk).uniform_(-bound, bound)

    return _fill_chunks_(weight, gains, draw)


def chunked_normal_(weight: torch.Tensor, gains: list[float], std: float) -> torch.Tensor:
    """N(0, std * gain) init of a fused projection, chunk by chunk (the ``init_std`` convention of BERT/BART/
    Marian in transformers, for the LayerNorm baselines)."""
    return _fill_chunks_(weight, gains, lambda chunk, gain: torch.empty_like(chunk).normal_(0.0, std * gain))


def scaled_he_normal_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """He-normal init of a conv/linear weight in fan-out mode, multiplied by ``gain`` (the Fixup factor).

    Fan-out (``C_out * k * k``) is what the authors' ResNet code used: ``sqrt(2 / (C_out * k * k))``.
    """
    fan_out = weight.shape[0] * math.prod(weight.shape[2:])
    return hf_init.normal_(weight, mean=0.0, std=gain * he_normal_std(fan_out))


def zero_(tensor: torch.Tensor | None) -> None:
    """Rule 1: the last layer of every residual branch (and the classifier) starts at zero."""
    if tensor is not None:
        hf_init.zeros_(tensor)


class ScalarBias(nn.Module):
    """A single learned scalar added to its input (rule 3). Init 0, so it is the identity at init.

    The paper writes the bias as added (``x + b``); the authors' fairseq code subtracted it. The two are
    the same model up to the sign of a learned number that starts at 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

    def reset_parameters(self) -> None:
        hf_init.zeros_(self.bias)


class ScalarScale(nn.Module):
    """A single learned multiplier on a residual branch (rule 3). Init 1, or 0 where it carries rule 1's zero."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.init_value = init_value
        self.weight = nn.Parameter(torch.full((1,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def reset_parameters(self) -> None:
        hf_init.constant_(self.weight, self.init_value)


SCALAR_MODULES = (ScalarBias, ScalarScale)


def scalar_parameter_names(model: nn.Module) -> list[str]:
    """Names of the Fixup scalar parameters, which the authors train at a 10x smaller learning rate."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, SCALAR_MODULES):
            names.extend(f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters())
    return names


def gate_parameter_names(model: nn.Module) -> list[str]:
    """Names of the branch multipliers that start at 0 (gates that open their branch during training).

    They carry Fixup's zero (``fixup_zero="multiplier"``), and the training scripts give them their own
    learning rate: at the authors' lr/10 for scalars a gate stays nearly shut for hundreds of updates.
    """
    return [
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, ScalarScale) and module.init_value == 0.0
    ]


class InitsOwnedModules:
    """Mixin for a ``PreTrainedModel`` whose ``_init_weights`` initialises a module's children from the module
    (an attention branch its projections, a residual block its convs).

    transformers treats out-of-tree models as "custom code" and then skips every module whose own
    (non-recursive) parameter list is empty, such as those owners. Every init of this package goes through
    `transformers.initialization` (or checks `_is_hf_initialized` itself), so loaded weights are safe without
    that heuristic.
    """

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        super()._initialize_weights(module, is_custom_code=False)
