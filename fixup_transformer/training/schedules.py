"""Learning-rate schedules as ``LambdaLR`` multipliers.

Every schedule is a function ``multiplier(num_updates) -> float`` applied to each parameter group's own
base learning rate. Writing them as multipliers (rather than absolute rates, as fairseq does) keeps the
per-group ratios fixed: the Fixup scalars, which train at ``lr * scalar_lr_multiplier``, follow the same
curve one decade lower.

Step convention (the same as fairseq's ``lr_step_update``): ``LambdaLR`` evaluates the multiplier at
``scheduler.last_epoch`` = number of ``scheduler.step()`` calls so far, and the loop calls ``step()``
once after every optimizer update. So update ``n`` (1-based) runs at ``multiplier(n - 1)``: the first
update uses the warmup start value, and ``multiplier(warmup_updates) == 1``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import ConfigError, field_doc, require


@dataclasses.dataclass
class ScheduleConfig:
    """Learning-rate schedule (multipliers of the optimizer's ``lr``; all counts are optimizer updates)."""

    name: Literal["inverse_sqrt", "cosine", "step", "constant"] = field_doc(
        "inverse_sqrt",
        "inverse_sqrt: fairseq's linear warmup then lr*sqrt(warmup/n); cosine: warmup then half-cosine to "
        "min_lr_ratio*lr at total_updates; step: warmup then lr*gamma^(number of milestones passed); "
        "constant: warmup then lr.",
    )
    warmup_updates: int = field_doc(
        4000,
        "Linear warmup length in updates. 0 disables warmup; inverse_sqrt then decays as lr/sqrt(n) from "
        "the first update (update 1 and 2 both run at lr, since n is clamped to >= 1).",
    )
    warmup_init_lr: float = field_doc(
        1e-7,
        "Absolute learning rate of the first warmup update for the main parameter group (fairseq "
        "--warmup-init-lr); other groups start at the same fraction of their own lr.",
    )
    total_updates: int | None = field_doc(
        None,
        "cosine only: the update at which the cosine reaches its minimum (defaults to the run's max_updates).",
    )
    min_lr_ratio: float = field_doc(0.0, "cosine only: final lr as a fraction of lr.")
    milestones: list[int] = field_doc([], "step only: updates at which the lr is multiplied by gamma.")
    gamma: float = field_doc(0.1, "step only: factor applied at each milestone.")

    def validate(self, prefix: str = "schedule.") -> None:
        require(self.warmup_updates >= 0, f"{prefix}warmup_updates", self.warmup_updates, ">= 0")
        require(self.warmup_init_lr >= 0, f"{prefix}warmup_init_lr", self.warmup_init_lr, ">= 0")
        if self.total_updates is not None:
            require(self.total_updates >= 1, f"{prefix}total_updates", self.total_updates, ">= 1")
        require(0 <= self.min_lr_ratio <= 1, f"{prefix}min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        require(self.gamma > 0, f"{prefix}gamma", self.gamma, "> 0")

    def check_length(self, max_updates: int | None, budget_key: str, prefix: str = "schedule.") -> None:
        """A cosine schedule needs a length, longer than its warmup: checked with the config, not at the
        first update (``budget_key`` names the run's own update budget)."""
        if self.name != "cosine":
            return
        total = self.total_updates or max_updates
        if not total:
            raise ConfigError(f"{prefix}name=cosine needs {prefix}total_updates or {budget_key}")
        if total <= self.warmup_updates:
            raise ConfigError(
                f"{prefix}name=cosine: its length ({total} updates) must exceed "
                f"{prefix}warmup_updates ({self.warmup_updates})"
            )


def _warmup(n: int, warmup_updates: int, init_ratio: float) -> float:
    return init_ratio + (1.0 - init_ratio) * n / warmup_updates


def inverse_sqrt(warmup_updates: int, init_ratio: float = 0.0) -> Callable[[int], float]:
    """fairseq ``inverse_sqrt``: linear from ``init_ratio`` to 1 over ``warmup_updates``, then ``sqrt(W/n)``."""
    if warmup_updates < 0:
        raise ValueError(f"warmup_updates must be >= 0, got {warmup_updates}")

    def multiplier(n: int) -> float:
        if warmup_updates > 0 and n < warmup_updates:
            return _warmup(n, warmup_updates, init_ratio)
        return math.sqrt(max(warmup_updates, 1) / max(n, 1))

    return multiplier


def cosine(total_updates: int, warmup_updates: int = 0, init_ratio: float = 0.0, min_ratio: float = 0.0):
    """Linear warmup, then ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 -> 1; flat after."""
    if total_updates <= warmup_updates:
        raise ValueError(
            f"cosine: total_updates ({total_updates}) must exceed warmup_updates ({warmup_updates})"
        )

    def multiplier(n: int) -> float:
        if n < warmup_updates:
            return _warmup(n, warmup_updates, init_ratio)
        t = min(1.0, (n - warmup_updates) / (total_updates - warmup_updates))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return multiplier


def step(milestones: list[int], gamma: float, warmup_updates: int = 0, init_ratio: float = 0.0):
    """Linear warmup, then ``gamma ** (number of milestones <= n)`` (torch ``MultiStepLR``)."""
    milestones = sorted(milestones)

    def multiplier(n: int) -> float:
        if n < warmup_updates:
            return _warmup(n, warmup_updates, init_ratio)
        return gamma ** sum(1 for m in milestones if n >= m)

    return multiplier


def constant(warmup_updates: int = 0, init_ratio: float = 0.0):
    def multiplier(n: int) -> float:
        return _warmup(n, warmup_updates, init_ratio) if n < warmup_updates else 1.0

    return multiplier


def schedule_multiplier(cfg: ScheduleConfig, base_lr: float, max_updates: int | None = None):
    """The multiplier function described by ``cfg`` for an optimizer whose main group has ``base_lr``."""
    init_ratio = cfg.warmup_init_lr / base_lr if cfg.warmup_updates > 0 and base_lr > 0 else 0.0
    if cfg.name == "inverse_sqrt":
        return inverse_sqrt(cfg.warmup_updates, init_ratio)
    if cfg.name == "cosine":
        total = cfg.total_updates or max_updates
        if not total:
            raise ValueError("schedule.name=cosine needs schedule.total_updates or a max_updates budget")
        return cosine(total, cfg.warmup_updates, init_ratio, cfg.min_lr_ratio)
    if cfg.name == "step":
        return step(cfg.milestones, cfg.gamma, cfg.warmup_updates, init_ratio)
    if cfg.name == "constant":
        return constant(cfg.warmup_updates, init_ratio)
    raise ValueError(f"unknown schedule.name {cfg.name!r}")


def build_scheduler(
    optimizer: Optimizer, cfg: ScheduleConfig, base_lr: float, max_updates: int | None = None
) -> LambdaLR:
    """``LambdaLR`` with the same multiplier for every group (so group lr ratios are preserved)."""
    return LambdaLR(optimizer, schedule_multiplier(cfg, base_lr, max_updates))
