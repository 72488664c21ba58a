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


def shifted_bias(
    layer: nn.Linear, input_shift: nn.Module | None = None, output_shift: nn.Module | None = None
) -> torch.Tensor | None:
    """c with ``W x + c = layer(x + b_in) + b_out``; None or identity modules add nothing."""
    bias = layer.bias
    b_in, b_out = _bias_value(input_shift), _bias_value(output_shift)
    if b_in is not None:
        shifted = b_in * layer.weight.sum(dim=1)
        bias = shifted if bias is None else bias + shifted
    if b_out is not None:
        bias = b_out.expand(layer.out_features) if bias is None else bias + b_out
    return bias


def effective_weight_and_bias(
    layer: nn.Linear,
    input_shift: nn.Module | None = None,
    output_shift: nn.Module | None = None,
    output_scale: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W', c') with ``W' x + c' = s * (layer(x + b_in) + b_out)``; None or identity modules add nothing."""
    weight, bias = layer.weight, shifted_bias(layer, input_shift, output_shift)
    if isinstance(output_scale, ScalarScale):
        weight = weight * output_scale.weight
        bias = None if bias is None else bias * output_scale.weight
    return weight, bias


class ScaledWeightLinear(torch.autograd.Function):
    """``F.linear(x, s * W, c)`` that keeps ``W`` (a parameter, in memory anyway) for backward instead of the
    scaled copy ``s * W``, which autograd would hold from forward to backward: one weight-sized tensor per
    branch-final linear (42 MB at the IWSLT size). The copy is rebuilt in backward (O(d^2)), and
    ``dL/ds = <dL/d(sW), W>`` needs only ``W``."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        ctx.save_for_backward(x, weight, scale)
        ctx.has_bias = bias is not None
        return F.linear(x, weight * scale, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        x, weight, scale = ctx.saved_tensors
        grad_x = grad_weight = grad_scale = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_output @ (weight * scale)
        rows = grad_output.reshape(-1, grad_output.shape[-1])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_scaled_weight = rows.T @ x.reshape(-1, x.shape[-1])  # dL/d(sW)
            if ctx.needs_input_grad[1]:
                grad_weight = grad_scaled_weight * scale
            if ctx.needs_input_grad[2]:
                grad_scale = torch.dot(grad_scaled_weight.flatten(), weight.flatten()).reshape(scale.shape)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = rows.sum(dim=0)
        return grad_x, grad_weight, grad_scale, grad_bias


def is_plain_linear(layer: nn.Module) -> bool:
    """An ``nn.Linear`` whose weight may be read directly: not a subclass or adapter wrapper, and without
    hooks that must run before its forward (Accelerate's device_map/offload ``_hf_hook`` moves or loads the
    weight there; DeepSpeed ZeRO-3, whose parameters carry ``ds_id``, gathers it there)."""
    return type(layer) is nn.Linear and not hasattr(layer, "_hf_hook") and not hasattr(layer.weight, "ds_id")


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

    Only a plain ``nn.Linear`` is folded (:func:`is_plain_linear`): a wrapped or hooked one (a PEFT/LoRA
    adapter, a quantized layer, an offloaded one) must run its own forward, which reading its ``weight``
    would bypass."""
    if fold and is_plain_linear(layer):
        if isinstance(output_scale, ScalarScale) and not torch.is_autocast_enabled(x.device.type):
            # fp32: keep W, not s*W, for backward (under autocast the linear keeps a low-precision copy
            # of its weight anyway, as every autocast linear does).
            scale = output_scale.weight
            bias = shifted_bias(layer, input_shift, output_shift)
            return ScaledWeightLinear.apply(x, layer.weight, scale, None if bias is None else bias * scale)
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
