"""Dropout for CPU training: one-byte masks cut from 64-bit random words.

On CPU, ``F.dropout`` draws its mask with ``bernoulli_`` (one generator call per element) and keeps it as a
4-byte float tensor until backward. Here each 64-bit random word gives four 16-bit uniform draws and the
mask kept for backward is ``bool``. Same distribution up to p's rounding to 1/65536 (the scale uses the
exact keep probability, so the expectation is unchanged). On the project's CPU (AMD EPYC, fp32, 1 and 2
threads, 2048 x 256 to 1920 x 2048 elements) forward + backward took 0.33-0.52x the time of ``F.dropout``,
and the mask a quarter of its memory (docs/benchmarks.md). On CUDA, and inside ``torch.compile``, ``F.dropout`` is already one fused kernel
with a one-byte mask, so it is used there.
"""

import torch
from torch.nn import functional as F

_DRAWS_PER_WORD = 4  # 16-bit draws in one int64 word
_LEVELS = 1 << 16


def keep_threshold(p: float) -> tuple[int, float]:
    """(threshold, keep probability): an int16 draw ``r`` is kept when ``r >= threshold``."""
    kept_levels = max(_LEVELS - round(p * _LEVELS), 1)  # p within 2**-17 of 1 keeps 1 level in 65536
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


def dropout(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(inputs, p, training)``, with one-byte masks on CPU (see the module docstring)."""
    if not training or p == 0.0:
        return inputs
    if inputs.device.type != "cpu" or not 0.0 < p < 1.0 or torch.compiler.is_compiling():
        return F.dropout(inputs, p=p, training=True)
    return _ByteMaskDropout.apply(inputs, p)
