"""Fixup's scalar biases and multipliers, applied through the linear layers they surround.

For a bias-free linear ``W`` with scalars around it, exact algebra gives one affine map:

    s * (W(x + b_in) + b_out) = (sW) x + s * (b_in * W·1 + b_out)

Two uses:

* **Training** (:func:`scaled_shifted_linear` with ``fold=True``): the scalars act on the weights
  (O(d^2) work) instead of on the activations (O(tokens x d) work plus one stored activation per
  scalar for the backward pass), which is cheaper in time and memory for any real batch.
* **Inference** (:func:`fold_into_linear`, called by each module's ``fold_scalars_()``): the same map
  is written into the linear layers once, the scalar modules become ``nn.Identity``, and
  ``config.scalars_folded = True`` rebuilds that layout on load: a plain-linear model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..fixup import ScalarBias, ScalarScale


def _bias_value(module: nn.Module | None) -> torch.Tensor | None:
    return module.bias if isinstance(module, ScalarBias) else None


def effective_weight_and_bias(
    layer: nn.Linear,
    input_shift: nn.Module | None = None,
    output_shift: nn.Module | None = None,
    output_scale: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W', c') with ``W' x + c' = s * (layer(x + b_in) + b_out)``; None or identity modules add nothing."""
    weight, bias = layer.weight, layer.bias
    b_in, b_out = _bias_value(input_shift), _bias_value(output_shift)
    if b_in is not None:
        shifted = b_in * weight.sum(dim=1)
        bias = shifted if bias is None else bias + shifted
    if b_out is not None:
        bias = b_out.expand(layer.out_features) if bias is None else bias + b_out
    if isinstance(output_scale, ScalarScale):
        weight = weight * output_scale.weight
        bias = None if bias is None else bias * output_scale.weight
    return weight, bias


def scaled_shifted_linear(
    x: torch.Tensor,
    layer: nn.Linear,
    input_shift: nn.Module | None = None,
    output_shift: nn.Module | None = None,
    output_scale: nn.Module | None = None,
    fold: bool = True,
) -> torch.Tensor:
    """``output_scale(output_shift(layer(input_shift(x))))``, with the scalars folded into the weights
    when ``fold`` (training) or applied element-wise otherwise (inference on small batches, where the
    O(d^2) weight-side work per call would cost more than the O(tokens x d) activation-side work).

    Only a plain ``nn.Linear`` is folded: a wrapped one (a PEFT/LoRA adapter, a quantized layer) must
    run its own forward, which reading its ``weight`` would bypass."""
    if fold and type(layer) is nn.Linear:
        return F.linear(x, *effective_weight_and_bias(layer, input_shift, output_shift, output_scale))
    for module in (input_shift, layer, output_shift, output_scale):
        if module is not None:
            x = module(x)
    return x


@torch.no_grad()
def fold_into_linear(layer: nn.Linear, input_shift=None, output_shift=None, output_scale=None) -> None:
    """Write ``output_scale * (layer(x + input_shift) + output_shift)`` into ``layer``'s weight and bias.

    The modules that own the scalars call this from their ``fold_scalars_()`` and then drop the scalars.
    """
    weight, bias = effective_weight_and_bias(layer, input_shift, output_shift, output_scale)
    if bias is None:
        bias = torch.zeros(layer.out_features, dtype=weight.dtype, device=weight.device)
    layer.weight = nn.Parameter(weight.clone())
    layer.bias = nn.Parameter(bias.clone())
