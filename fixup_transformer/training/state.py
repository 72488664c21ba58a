"""What both training loops (MT and image) agree on: their saved counters and when a budget is spent."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from accelerate import Accelerator

from ..hardware import sum_dtype

# Keys that older checkpoints used for a field that has since been renamed.
_LEGACY_KEYS = {"batch_in_epoch": "batches_done"}  # image checkpoints before the loops shared a state


@dataclasses.dataclass
class TrainerState:
    """Counters saved as ``trainer_state.json`` in every checkpoint (everything else is Accelerate's).

    Each loop extends it with its own counters (``MTTrainerState``, ``ImageTrainerState``).
    """

    step: int = 0  # optimizer updates applied
    epoch: int = 0  # 0-based epoch in progress
    batches_done: int = 0  # batches of ``epoch`` consumed (identical on all ranks)
    train_seconds: float = 0.0  # wall-clock training time over all segments (for max_minutes)
    # Seconds per phase of training (data, steps, validation, checkpoints, exports), over all segments.
    time_breakdown: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        values = {_LEGACY_KEYS.get(k, k): v for k, v in values.items()}
        return cls(**{k: v for k, v in values.items() if k in names})


def epoch_of_last_update(epoch: int, batches_done: int) -> int:
    """The 1-based epoch the newest update belongs to: the one in progress, or at an epoch boundary
    (``batches_done == 0``) the one just finished, as fairseq labels its end-of-epoch validation."""
    return max(1, epoch + (1 if batches_done else 0))


def out_of_time(accelerator: Accelerator, state: Any, max_minutes: float | None, agree: bool = True) -> bool:
    """Whether the time budget is spent by ``state.train_seconds``, decided *together* by all processes.

    Clocks differ between processes, so each one deciding alone could stop them at different updates (and
    hang the next collective). With several processes the clocks are max-reduced, i.e. a host read, made
    only where ``agree`` (the loops pass their log boundaries); elsewhere the answer is "not yet". Every
    process then keeps the agreed clock in ``state.train_seconds``, so the checkpoint records the time the
    verdict was made on and a rerun finds the budget spent (the main process, which saves, starts its
    clock last). One process decides alone at every call.
    """
    if accelerator.num_processes > 1:
        if not agree:
            return False
        device = accelerator.device
        clock = torch.full((1,), float(state.train_seconds), dtype=sum_dtype(device), device=device)
        state.train_seconds = float(accelerator.reduce(clock, "max").item())
    return max_minutes is not None and state.train_seconds >= 60 * max_minutes


def improves(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing to beat yet)."""
    return best is None or (value > best if higher_is_better else value < best)
