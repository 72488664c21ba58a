"""Learning-rate schedules and optimizer parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fixup_transformer.fixup import ScalarBias, ScalarScale
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.training.schedules import ScheduleConfig, build_scheduler, cosine, inverse_sqrt, step


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.shift = ScalarBias()
        self.scale = ScalarScale()


def lrs(scheduler, optimizer, n):
    """Learning rates used by updates 1..n (the loop steps the scheduler after each update)."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_inverse_sqrt_matches_fairseq_endpoints():
    cfg = ScheduleConfig(name="inverse_sqrt", warmup_updates=4000, warmup_init_lr=1e-7)
    optimizer = build_optimizer(Tiny(), OptimConfig(lr=5e-4))
    scheduler = build_scheduler(optimizer, cfg, base_lr=5e-4)
    f = scheduler.lr_lambdas[0]
    assert f(0) * 5e-4 == pytest.approx(1e-7)  # first update runs at warmup_init_lr
    assert f(2000) * 5e-4 == pytest.approx(1e-7 + (5e-4 - 1e-7) / 2)  # linear in between
    assert f(4000) == pytest.approx(1.0)  # peak at the end of warmup
    assert f(16000) == pytest.approx(0.5)  # then lr * sqrt(warmup / n)
    assert f(4001) < f(4000)


def test_inverse_sqrt_without_warmup_decays_from_first_update():
    f = inverse_sqrt(0)
    assert [f(n) for n in (0, 1, 4, 100)] == pytest.approx([1.0, 1.0, 0.5, 0.1])


def test_scalar_group_keeps_its_ratio_through_the_schedule():
    model = Tiny()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, scalar_lr_multiplier=0.1))
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["main", "scalars"]
    scalars = optimizer.param_groups[1]["params"]
    assert {id(p) for p in scalars} == {id(model.shift.bias), id(model.scale.weight)}
    scheduler = build_scheduler(
        optimizer, ScheduleConfig(warmup_updates=10, warmup_init_lr=1e-7), base_lr=1e-3
    )
    for main, scalar in lrs(scheduler, optimizer, 30):
        assert scalar == pytest.approx(0.1 * main)


def test_weight_decay_groups():
    fairseq_like = build_optimizer(Tiny(), OptimConfig(weight_decay=0.01))
    assert all(g["weight_decay"] == 0.01 for g in fairseq_like.param_groups)
    model = Tiny()
    modern = build_optimizer(
        model, OptimConfig(weight_decay=0.01, decay_scalars=False, decay_biases_and_norms=False)
    )
    by_name = {g["name"]: g for g in modern.param_groups}
    assert [p is model.lin.weight for p in by_name["main"]["params"]] == [True]
    assert len(by_name["no_decay"]["params"]) == 3 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["scalars"]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(Tiny(), OptimConfig(name="sgd")), torch.optim.SGD)


def test_cosine_and_step():
    f = cosine(total_updates=110, warmup_updates=10)
    assert (
        f(0) == 0.0
        and f(10) == pytest.approx(1.0)
        and f(60) == pytest.approx(0.5)
        and f(110) == pytest.approx(0)
    )
    g = step([100, 150], gamma=0.1)
    assert [g(99), g(100), g(149), g(150)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert math.isclose(cosine(10, min_ratio=0.1)(10), 0.1)


def test_zero_initialised_branch_multipliers_get_the_gate_learning_rate():
    from fixup_transformer.fixup import ScalarScale

    model = Tiny()
    model.gate = ScalarScale(init_value=0.0)  # a branch multiplier carrying Fixup's zero
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, scalar_lr_multiplier=0.1, gate_lr_multiplier=10))
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert [p is model.gate.weight for p in by_name["gates"]["params"]] == [True]
    assert by_name["gates"]["lr"] == pytest.approx(1e-2) and by_name["scalars"]["lr"] == pytest.approx(1e-4)
    assert all(p is not model.gate.weight for p in by_name["scalars"]["params"])


def test_radam_is_t_fixups_reference_optimizer_with_damped_first_updates():
    """T-Fixup's reference code steps with RAdam: its first updates are momentum steps lr * g (no division
    by sqrt(v)), so a weight with a tiny gradient barely moves where Adam's first step moves it by lr."""
    model = Tiny()
    optimizer = build_optimizer(model, OptimConfig(name="radam", lr=1e-3, weight_decay=0.01))
    assert isinstance(optimizer, torch.optim.RAdam)
    assert optimizer.defaults["decoupled_weight_decay"]  # fairseq's adam decays like AdamW
    assert [g["name"] for g in optimizer.param_groups] == ["main", "scalars"]
    adam = build_optimizer(Tiny(), OptimConfig(name="adam", lr=1e-3, weight_decay=0.0))
    radam = build_optimizer(Tiny(), OptimConfig(name="radam", lr=1e-3, weight_decay=0.0))
    for opt in (adam, radam):
        weight = opt.param_groups[0]["params"][0]
        with torch.no_grad():
            weight.zero_()  # so a step of 1e-7 is not lost to float32 rounding
        before = weight.detach().clone()
        for p in (q for g in opt.param_groups for q in g["params"]):
            p.grad = torch.full_like(p, 1e-4)
        opt.step()
        moved = (weight.detach() - before).abs().max().item()
        expected = 1e-3 if opt is adam else 1e-3 * 1e-4  # sign-like step vs momentum step lr * g
        assert moved == pytest.approx(expected, rel=1e-3), type(opt).__name__
