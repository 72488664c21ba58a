"""One MT training update: forward and backward over its micro-batches, then the optimizer step.

fairseq's normalization: the summed label-smoothed loss of all micro-batches on all processes, divided by
their number of target tokens (a per-batch mean, what ``model(..., labels=...).loss`` returns by default,
would weight short batches more; the model returns sums when asked with ``num_items_in_batch=1``).
Label smoothing is the model's (``config.label_smoothing``, torch's convention: ``eps / V`` on every class;
fairseq spreads ``eps`` over the ``V - 1`` wrong classes, a difference of ``O(eps / V)``). Nothing here
reads a device value back to the host in fp32/bf16 (``step_guard.py``): a non-finite update is skipped on the device.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from accelerate import Accelerator

from ..hardware import sum_dtype
from ..text.modeling_fixup_transformer import IGNORE_INDEX, shift_tokens_right
from .mt_config import MTConfig
from .step_guard import optimizer_step_unless


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def teacher_forced(model, batch, pad_id: int, start_id: int, **kwargs):
    """The model's forward on a batch, decoder inputs = its labels shifted right behind ``start_id``.

    Any seq2seq model (a benchmark runs Marian through it too); ``kwargs`` go to the model."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=shift_tokens_right(batch["labels"], pad_id, start_id),
        use_cache=False,  # a training step needs no KV cache; building one copies every layer's K/V
        **kwargs,
    )


def forward_loss_sums(model, batch, pad_id: int, start_id: int):
    """Summed label-smoothed loss, summed NLL and the number of target tokens of one batch.

    In training the model computes the loss without materialising the logits (``loss_without_logits``).
    """
    labels = batch["labels"]
    # num_items_in_batch=1: sums, as the update normalises by all its tokens
    output = teacher_forced(model, batch, pad_id, start_id, labels=labels, num_items_in_batch=1)
    return output.loss, output.nll_loss, (labels != IGNORE_INDEX).sum()


def compiled_forward_loss():
    """``forward_loss_sums`` under ``torch.compile``: the model's forward and its loss in one graph (from the
    logits, which inductor fuses; the eager chunked loss would be a graph break). Dynamic shapes, because
    every batch has other lengths; validation and generation keep the eager model (they are other graphs,
    and run rarely)."""
    return torch.compile(forward_loss_sums, dynamic=True)


class StepOutcome(NamedTuple):
    """One update's result; every tensor stays on the device (``step_guard``)."""

    sums: torch.Tensor  # [loss, nll, target tokens] summed over micro-batches and processes
    grad_norm: torch.Tensor | None  # of the all-reduced gradients; None if no norm was taken
    not_finite: torch.Tensor  # 0-dim bool: loss or norm not finite, the update was not applied
    skipped: bool  # the fp16 GradScaler skipped the update (overflow); known on the host


def train_step(
    model,
    optimizer,
    accelerator: Accelerator,
    batches: list[dict],
    cfg: MTConfig,
    ids: tuple[int, int],
    halted: torch.Tensor,
    forward_loss=None,
) -> StepOutcome:
    """Forward/backward over the micro-batches of one update, then step unless something is not finite.

    Without a GradScaler (fp32/bf16) nothing here reads a device value: the update is skipped on the device
    when the loss or the gradient norm is not finite, or when ``halted`` (an earlier step was not finite).
    With fp16's GradScaler, which reads the host anyway, an overflow is its usual skip and a non-finite
    loss is caught before stepping. ``forward_loss`` replaces the eager model-plus-loss call (the compiled
    one of ``train.compile``).
    """
    forward_loss = forward_loss or forward_loss_sums
    device = accelerator.device
    batches = [to_device(batch, device) for batch in batches]
    local_tokens = sum((b["labels"] != IGNORE_INDEX).sum(dtype=torch.float32) for b in batches)
    total_tokens = accelerator.reduce(local_tokens, "sum")
    # DDP averages gradients over processes, hence the factor num_processes: the result is d(sum)/d(total).
    scale = accelerator.num_processes / total_tokens.clamp(min=1.0)
    sums = torch.zeros(3, device=device, dtype=sum_dtype(device))
    for k, batch in enumerate(batches):
        sync = k == len(batches) - 1
        with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
            loss, nll, ntok = forward_loss(model, batch, *ids)
            accelerator.backward(loss * scale)
        sums += torch.stack([loss.detach().double(), nll.detach().double(), ntok.double()])
    sums = accelerator.reduce(sums, "sum")
    max_norm = cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else float("inf")
    if getattr(accelerator, "scaler", None) is not None:
        if not bool(torch.isfinite(sums[0])):
            optimizer.zero_grad(set_to_none=True)
            return StepOutcome(sums, None, torch.ones((), dtype=torch.bool, device=device), False)
        scale_before = accelerator.scaler.get_scale()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        # A skip is the scaler lowering its scale. Accelerate's flag (optimizer_step_was_skipped) asks
        # whether GradScaler called optimizer.step, which it always does for fused optimizers (it hands
        # them found_inf), so that flag never reports a skip with the fused AdamW built here.
        skipped = accelerator.scaler.get_scale() < scale_before
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(sums, grad_norm, torch.zeros((), dtype=torch.bool, device=device), skipped)
    # A finite loss can still give inf/NaN gradients (huge lr); one such step would make every weight NaN.
    # The loss is reduced over processes and the norm is of the all-reduced gradients, so every rank
    # reaches the same verdict.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    not_finite = ~(torch.isfinite(sums[0]) & torch.isfinite(grad_norm))
    optimizer_step_unless(optimizer, not_finite | halted)
    skipped = accelerator.optimizer_step_was_skipped  # a host flag (False here: only GradScaler skips)
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(sums, grad_norm, not_finite, skipped)
