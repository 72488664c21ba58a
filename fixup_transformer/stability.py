"""Stability probe: does a model train without diverging where its LayerNorm twins do?

One *cell* is a model variant at a depth, a learning rate, a warmup and a precision, trained for a fixed
number of Adam steps on fixed batches (the same batches for every variant). This is the experiment a user
runs in their head when they drop LayerNorm. By default: plain ``torch.optim.Adam`` (betas 0.9/0.98, every
parameter at the same lr, as `Seq2SeqTrainer` would do), constant lr after an optional linear warmup, no
clipping, fp32 or autocast fp16 with a ``GradScaler`` / bf16; a cell may instead use RAdam
(``Cell.optimizer``, T-Fixup's reference optimizer) and clip the gradient norm (``Cell.clip_norm``).

A cell *diverges* when a loss is not finite or rises more than ``SPIKE_NATS`` above the first loss;
it *learns* when the last loss is below the first. fp16 steps skipped by the scaler are counted; the
scaler's first few skips (while it finds its scale) are normal, so ``skipped_after_settling`` counts only
those after the first non-skipped step.

Used by ``benchmarks/stability.py`` (the grid, with a table and a plot in docs/depth.md) and by
``tests/test_stability.py`` (a fast slice that fails if Fixup diverges where the LN twins do not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence

import torch

from .text import FixupTransformerConfig, FixupTransformerForConditionalGeneration

SPIKE_NATS = 1.5
PRECISIONS = ("fp32", "fp16", "bf16")
# Plain torch optimizers, every parameter at the same lr. "radam" is what T-Fixup's reference code runs
# (its fairseq fork's "adam" steps with RAdam, whose first updates are damped: a built-in warmup).
OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}

# name -> config overrides; every variant is the same code path with a different normalization / init.
VARIANTS: dict[str, dict] = {
    # the default: the zero on each branch's multiplier
    "fixup": {"normalization": "none", "init": "fixup", "fixup_zero": "multiplier"},
    # the paper's rule 1 as printed: the zero on each branch's last layer
    "fixup_paper": {"normalization": "none", "init": "fixup", "fixup_zero": "last_layer"},
    "t_fixup": {"normalization": "none", "init": "t_fixup"},
    "post_ln": {"normalization": "post_ln", "init": "xavier"},
    "pre_ln": {"normalization": "pre_ln", "init": "xavier"},
}


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str
    layers: int  # N for N+N
    lr: float
    warmup: int = 0  # linear warmup updates (0: the full lr from the first step)
    precision: str = "fp32"
    optimizer: str = "adam"
    # clip the total gradient norm to this before each step (0: no clipping, the grid's default; T-Fixup's
    # reference run clipped at fairseq's old default, 25)
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0 (0: no clipping), got {self.clip_norm!r}")


@dataclasses.dataclass(frozen=True)
class Width:
    """The model size around the depth; the defaults are the standard base width (not a toy)."""

    d_model: int = 512
    heads: int = 8
    ffn_dim: int = 2048


def build_model(cell: Cell, vocab_size: int, width: Width, seed: int = 0, max_positions: int = 256):
    torch.manual_seed(seed)
    config = FixupTransformerConfig.symmetric(
        cell.layers,
        width.d_model,
        width.heads,
        width.ffn_dim,
        vocab_size=vocab_size,
        dropout=0.0,
        max_position_embeddings=max_positions,
        **VARIANTS[cell.variant],
    )
    return FixupTransformerForConditionalGeneration(config)


def copy_task_batches(
    vocab_size: int, batch_size: int, length: int, count: int, seed: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Random-token batches whose target is the source (ids 0-2 are pad/eos/unk, never drawn)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(3, vocab_size, (batch_size, length), generator=generator)
        batches.append({"input_ids": ids, "labels": ids.clone()})
    return batches


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def run_cell(
    cell: Cell,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    vocab_size: int,
    width: Width = Width(),
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Train one cell for ``steps`` updates (cycling through ``batches``) and summarise its losses.

    The model is initialised on the CPU (the same weights on every device for a seed), then moved to
    ``device``; fp32 on CUDA keeps TF32 off unless the caller turned it on.
    """
    device = torch.device(device)
    model = build_model(cell, vocab_size, width, seed).to(device).train()
    batches = [{name: tensor.to(device) for name, tensor in batch.items()} for batch in batches]
    optimizer = OPTIMIZERS[cell.optimizer](model.parameters(), lr=cell.lr, betas=(0.9, 0.98))
    scaler = torch.amp.GradScaler(device.type) if cell.precision == "fp16" else None
    losses, grad_norms, skipped, settled, skipped_after_settling = [], [], 0, False, 0
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cell.lr * min(1.0, (step + 1) / cell.warmup) if cell.warmup else cell.lr
        batch = batches[step % len(batches)]
        with _autocast(cell.precision, device):
            loss = model(**batch).loss
        if scaler is None:
            loss.backward()
            grad_norms.append(_clip_and_measure(model, cell.clip_norm))
            optimizer.step()
        else:
            scale_before = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norms.append(_clip_and_measure(model, cell.clip_norm))
            scaler.step(optimizer)
            scaler.update()
            was_skipped = scaler.get_scale() < scale_before
            skipped += was_skipped
            skipped_after_settling += was_skipped and settled
            settled = settled or not was_skipped
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break  # a NaN model only produces NaN from here on
    return {
        **summarize(cell, losses, skipped, skipped_after_settling, time.perf_counter() - started),
        "grad_norms": grad_norms,  # before clipping; tells a spike that follows a large gradient from one that does not
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def _clip_and_measure(model: torch.nn.Module, clip_norm: float) -> float:
    """The total gradient norm before clipping; clips to ``clip_norm`` when it is set (a factor of 1 otherwise)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm or math.inf)
    return float(norm)


def summarize(cell: Cell, losses: list[float], skipped: int, skipped_after_settling: int, seconds: float):
    finite = [loss for loss in losses if math.isfinite(loss)]
    first = losses[0]
    nonfinite_step = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    spike_step = next((i for i, loss in enumerate(finite) if loss > first + SPIKE_NATS), None)
    return {
        **dataclasses.asdict(cell),
        "steps": len(losses),
        "first_loss": first,
        "min_loss": min(finite) if finite else math.nan,
        "max_loss": max(finite) if finite else math.nan,
        "last_loss": losses[-1],
        "nonfinite_step": nonfinite_step,
        "spike_step": spike_step,
        "diverged": nonfinite_step is not None or spike_step is not None,
        "learned": math.isfinite(losses[-1]) and losses[-1] < first,
        "skipped_steps": skipped,
        "skipped_after_settling": skipped_after_settling,
        "seconds": round(seconds, 1),
        "losses": losses,
    }


def is_stable(result: dict) -> bool:
    """No NaN, no spike above first + SPIKE_NATS, last loss below the first, no fp16 skips once settled."""
    return not result["diverged"] and result["learned"] and result["skipped_after_settling"] == 0


__all__ = [
    "Cell",
    "OPTIMIZERS",
    "PRECISIONS",
    "SPIKE_NATS",
    "VARIANTS",
    "Width",
    "build_model",
    "copy_task_batches",
    "is_stable",
    "run_cell",
]
