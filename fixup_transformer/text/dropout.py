"""Dropout for CPU training: one-byte masks cut from 64-bit random words.

On CPU, ``F.dropout`` draws its mask with ``bernoulli_`` and keeps it, in the input's dtype (4 bytes in
fp32), until backward. Here each 64-bit random word gives four 16-bit uniform draws and the mask kept for
backward is ``bool``. Same distribution up to p's rounding to a multiple of 1/65536 (the scale uses the exact
keep probability, so the expectation is unchanged); p within 2**-10 of 0 or 1, where that rounding would
be more than 1/128 of p or of 1 - p, goes to ``F.dropout``. Measured on the project's CPU only (AMD EPYC,
fp32, 2 threads, ``benchmarks/dropout_speed.py``, docs/benchmarks.md): forward + backward 2.4-2.8x faster
than ``F.dropout`` for 2048 x 256 to 1920 x 2048 elements, whole training steps 1.11-1.13x faster. Not
measured on Intel CPUs, where torch may draw ``bernoulli_`` through MKL. On CUDA, inside ``torch.compile`` and
under functorch transforms, ``F.dropout`` is used: the first two already run one fused kernel with a one-byte
mask, and the custom autograd function below has no forward-mode or vmap rule.
"""

import torch
from torch.nn import functional as F

_DRAWS_PER_WORD = 4  # 16-bit draws in one int64 word
_LEVELS = 1 << 16
_MIN_LEVELS = 64  # levels on each side of the threshold: p's rounding error stays under 1/128 of p and 1 - p


def keep_threshold(p: float) -> tuple[int, float]:
    """(threshold, keep probability): an int16 draw ``r`` is kept when ``r >= threshold``."""
    kept_levels = _LEVELS - round(p * _LEVELS)
    return (_LEVELS // 2) - kept_levels, kept_levels / _LEVELS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A ``bool`` mask of ``shape`` that is True with probability ``1 - p``, and that probability."""
    threshold, keep_probability = keep_threshold(p)
    count = shape.numel()
    words = torch.empty((count + _DRAWS_PER_WORD - 1) // _DRAWS_PER_WORD, dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # every bit uniform (from the int64 minimum: the full 64-bit range)
    draws = words.view(torch.int16)[:count].view(shape)
    return draws >= threshold, keep_probability


class _ByteMaskDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, p: float) -> torch.Tensor:
        mask, keep_probability = keep_mask(inputs.shape, p, inputs.device)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / keep_probability
        return inputs.mul(mask).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (mask,) = ctx.saved_tensors
        return grad_output.mul(mask).mul_(ctx.scale), None


def _byte_masks_apply(inputs: torch.Tensor, p: float) -> bool:
    return (
        inputs.device.type == "cpu"
        and _MIN_LEVELS / _LEVELS <= p <= 1.0 - _MIN_LEVELS / _LEVELS
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


def dropout(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(inputs, p, training)``, with one-byte masks on CPU (see the module docstring)."""
    if not 0.0 <= p <= 1.0:  # F.dropout's check, in evaluation too
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return inputs
    if _byte_masks_apply(inputs, p):
        return _ByteMaskDropout.apply(inputs, p)
    return F.dropout(inputs, p=p, training=True)
