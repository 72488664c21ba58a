"""Values of every schedule built from a ScheduleConfig: warmup from warmup_init_lr, peak, decay shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.training.schedules import ScheduleConfig, build_scheduler, schedule_multiplier

LR, INIT_LR, WARMUP = 1e-3, 1e-5, 10


def _multiplier(name: str, max_updates: int | None = None, **fields):
    cfg = ScheduleConfig(name=name, warmup_updates=WARMUP, warmup_init_lr=INIT_LR, **fields)
    return schedule_multiplier(cfg, base_lr=LR, max_updates=max_updates)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("inverse_sqrt", {}),
        ("cosine", {"total_updates": 110}),
        ("step", {"milestones": [50], "gamma": 0.5}),
        ("constant", {}),
    ],
)
def test_every_schedule_warms_up_from_warmup_init_lr_to_the_peak_at_warmup_updates(name, fields):
    f = _multiplier(name, **fields)
    assert f(0) * LR == pytest.approx(INIT_LR)  # the first update runs at warmup_init_lr
    assert f(WARMUP // 2) * LR == pytest.approx(INIT_LR + (LR - INIT_LR) / 2)  # linear in between
    assert f(WARMUP) == pytest.approx(1.0)  # the peak exactly at warmup_updates
    values = [f(n) for n in range(WARMUP + 1)]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing warmup


def test_cosine_reaches_its_minimum_at_total_updates_not_at_max_updates():
    f = _multiplier("cosine", max_updates=1000, total_updates=110, min_lr_ratio=0.2)
    assert f(110) == pytest.approx(0.2)
    assert f(500) == pytest.approx(0.2)  # flat after total_updates
    g = _multiplier("cosine", max_updates=210, min_lr_ratio=0.2)  # no total_updates: the run's budget
    assert g(210) == pytest.approx(0.2) and g(110) == pytest.approx(0.6)


def test_cosine_halfway_is_the_mean_of_peak_and_minimum():
    f = _multiplier("cosine", total_updates=110, min_lr_ratio=0.2)
    assert f(60) == pytest.approx(0.6)  # min + (1 - min) * (1 + cos(pi / 2)) / 2
    assert f(35) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_step_and_constant_after_warmup():
    f = _multiplier("step", milestones=[30, 20], gamma=0.5)
    assert [f(19), f(20), f(29), f(30), f(1000)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25])
    g = _multiplier("constant")
    assert [g(WARMUP), g(WARMUP + 1), g(10_000)] == pytest.approx([1.0, 1.0, 1.0])


def test_the_learning_rates_updates_run_at_through_lambda_lr():
    """Update n runs at multiplier(n - 1): update 1 at warmup_init_lr, update WARMUP + 1 at the peak."""
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, OptimConfig(lr=LR, weight_decay=0.0))
    cfg = ScheduleConfig(name="cosine", warmup_updates=WARMUP, warmup_init_lr=INIT_LR, total_updates=30)
    scheduler = build_scheduler(optimizer, cfg, base_lr=LR)
    used = []
    for _ in range(31):
        used.append(optimizer.param_groups[0]["lr"])
        model.weight.grad = torch.zeros_like(model.weight)
        model.bias.grad = torch.zeros_like(model.bias)
        optimizer.step()
        scheduler.step()
    assert used[0] == pytest.approx(INIT_LR)
    assert max(used) == pytest.approx(LR) and used.index(max(used)) == WARMUP
    assert used[30] == pytest.approx(0.0, abs=1e-12)
