"""Training-step bookkeeping that stays on the device until it is read.

A host read of a device tensor (``float(loss)``, ``bool(torch.isfinite(x))``, ``.item()``) waits for the
GPU to finish every queued kernel, so the CPU can no longer run ahead and queue the next step; for a
launch-bound model that is most of its speed. The training loop therefore keeps a step's loss sums, its
gradient norm and the verdict "not finite, not applied" here, on the device, and reads them in one
transfer per log interval (or before a validation, a checkpoint or the end of training).

The skip itself is decided on the device too: torch's fused optimizers accept ``found_inf`` (the
mechanism GradScaler uses for fp16) and then leave weights, moments and step counts untouched. Once a
step was not finite every later step is skipped as well, until the loop reads the window and stops the
run: the weights stay those from before the bad update, which is what the error message promises.
"""

from __future__ import annotations

import dataclasses

import torch

from ..hardware import sum_dtype


def uses_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` (or the one Accelerate wraps) can skip a step on the device (fused torch optim)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(inner.defaults.get("fused"))


def optimizer_step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()``, except where the 0-dim bool tensor ``skip`` is true: then nothing changes.

    Fused optimizers decide on the device (no host read); the others read ``skip`` once.
    """
    inner = getattr(
        optimizer, "optimizer", optimizer
    )  # accelerate's AcceleratedOptimizer wraps the torch one
    if not uses_device_skip(inner):
        if not bool(skip):
            optimizer.step()
        return
    inner.found_inf = skip.to(torch.float32)
    try:
        optimizer.step()
    finally:
        del inner.found_inf  # GradScaler (fp16) sets its own; a stale one would skip every later step


@dataclasses.dataclass
class StepWindow:
    """Host copy of the accumulated steps (one device read)."""

    loss: float  # summed over target tokens since the last reset
    nll: float
    tokens: float
    total_tokens: float  # since the accumulator was made (all processes)
    grad_norm: float  # mean pre-clip norm of the applied steps since the last reset (fairseq's gnorm)
    first_bad: (
        tuple[int, float, float] | None
    )  # (update, loss per token, grad norm) of the first non-finite step


class StepAccumulator:
    """Loss sums, token counts and the first non-finite step, kept on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device
        dtype = sum_dtype(device)
        self.window = torch.zeros(3, dtype=dtype, device=device)  # loss, nll, tokens since reset
        self.total_tokens = torch.zeros((), dtype=dtype, device=device)
        self.grad_norms = torch.zeros(2, dtype=dtype, device=device)  # sum, count since reset
        # (update, loss per token, grad norm) of the first step that was not finite; update -1: none yet.
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0], dtype=dtype, device=device)
        self.halted = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, sums: torch.Tensor, grad_norm: torch.Tensor | None, not_finite: torch.Tensor, update: int):
        """Record one step: ``sums`` = [loss, nll, tokens], ``not_finite`` = it was not applied for NaN/inf."""
        applied = ~(not_finite | self.halted)
        self.window += torch.where(applied, sums, torch.zeros_like(sums))
        self.total_tokens += torch.where(applied, sums[2], torch.zeros_like(sums[2]))
        norm = torch.full((), float("nan"), device=self.device) if grad_norm is None else grad_norm
        norm = norm.detach().to(self.window.dtype)
        counted = applied & torch.isfinite(norm)
        self.grad_norms += torch.where(counted, torch.stack([norm, torch.ones_like(norm)]), 0.0)
        loss_per_token = sums[0] / sums[2].clamp(min=1)
        # torch.full is a fill kernel; torch.tensor(x, device=...) would copy from pageable host memory.
        at = torch.full((), float(update), dtype=self.window.dtype, device=self.device)
        record = torch.stack([at, loss_per_token, norm])
        self.first_bad = torch.where(not_finite & ~self.halted, record, self.first_bad)
        self.halted = self.halted | not_finite

    def read(self) -> StepWindow:
        """One device-to-host transfer of everything accumulated."""
        values = torch.cat([self.window, self.total_tokens[None], self.grad_norms, self.first_bad])
        values = values.tolist()
        loss, nll, tokens, total, norm_sum, norm_count, bad_update, bad_loss, bad_norm = values
        grad_norm = norm_sum / norm_count if norm_count else float("nan")
        first_bad = None if bad_update < 0 else (int(bad_update), bad_loss, bad_norm)
        return StepWindow(loss, nll, tokens, total, grad_norm, first_bad)

    def reset_window(self) -> None:
        self.window.zero_()
        self.grad_norms.zero_()

    def window_sums(self) -> list[float]:
        """The unlogged part of the log window (loss, nll, tokens, grad-norm sum and count), for a checkpoint:
        a resume then logs the same window a run without the interruption logs."""
        return torch.cat([self.window, self.grad_norms]).tolist()

    def restore_window(self, sums: list[float]) -> None:
        if sums:
            self.window.copy_(torch.tensor(sums[:3], dtype=self.window.dtype))
            self.grad_norms.copy_(torch.tensor(sums[3:], dtype=self.grad_norms.dtype))
