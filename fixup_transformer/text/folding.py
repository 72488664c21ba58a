"""Folding Fixup's scalar biases and multipliers into the linear layers, for inference.

Each rewrite is exact algebra on bias-free linears ``W``:

* a scalar bias before a linear:        ``W(x + b) = Wx + b * W·1``  (a bias vector)
* a scalar bias before an activation:   ``relu(Wx + c + b) = relu(Wx + (c + b))``
* a multiplier after a branch's last linear: ``s * (Wx + c) = (sW)x + sc``

After folding, the scalar modules are replaced by ``nn.Identity`` and the linears carry biases, which is
what ``config.scalars_folded = True`` builds, so a folded model saves and loads like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from ..fixup import ScalarBias, ScalarScale


def _ensure_bias(layer: nn.Linear) -> torch.Tensor:
    if layer.bias is None:
        layer.bias = nn.Parameter(
            torch.zeros(layer.out_features, dtype=layer.weight.dtype, device=layer.weight.device)
        )
    return layer.bias


def fold_input_bias(shift: nn.Module, layer: nn.Linear) -> None:
    """``layer(x + b)`` -> ``layer'(x)``."""
    if isinstance(shift, ScalarBias):
        _ensure_bias(layer).add_(shift.bias * layer.weight.sum(dim=1))


def fold_activation_bias(shift: nn.Module, layer: nn.Linear) -> None:
    """``act(layer(x) + b)`` -> ``act(layer'(x))``."""
    if isinstance(shift, ScalarBias):
        _ensure_bias(layer).add_(shift.bias)


def fold_output_scale(scale: nn.Module, layer: nn.Linear) -> None:
    """``s * layer(x)`` -> ``layer'(x)``."""
    if isinstance(scale, ScalarScale):
        layer.weight.mul_(scale.weight)
        _ensure_bias(layer).mul_(scale.weight)


@torch.no_grad()
def fold_model_scalars(model: nn.Module) -> None:
    """Fold the scalars of every encoder/decoder layer of a ``FixupTransformerForConditionalGeneration``."""
    from .modeling_fixup_transformer import FixupAttention, FixupFeedForward, ResidualConnection

    if model.config.scalars_folded:
        return
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    for layer in layers:
        for name, branch in layer.named_children():
            residual = getattr(layer, f"{name}_residual", None)
            if isinstance(branch, FixupAttention):
                first = branch.q_proj if branch.is_cross_attention else branch.qkv_proj
                fold_input_bias(branch.input_shift, first)
                if branch.is_cross_attention:
                    _ensure_bias(branch.kv_proj)
                _ensure_bias(branch.out_proj)
                fold_output_scale(residual.scale, branch.out_proj)
                branch.input_shift = nn.Identity()
            elif isinstance(branch, FixupFeedForward):
                fold_input_bias(branch.input_shift, branch.fc1)
                fold_activation_bias(branch.activation_shift, branch.fc1)
                fold_input_bias(branch.output_shift, branch.fc2)
                fold_output_scale(residual.scale, branch.fc2)
                branch.input_shift = branch.activation_shift = branch.output_shift = nn.Identity()
            else:
                continue
            assert isinstance(residual, ResidualConnection)
            residual.scale = nn.Identity()
    model.config.scalars_folded = True
