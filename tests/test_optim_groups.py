"""Parameter groups of build_optimizer: which parameter goes where, at which lr and weight decay."""

from __future__ import annotations

import pytest
import torch
from test_training_schedules import Tiny
from transformer_helpers import tiny_config

from fixup_transformer.fixup import ScalarScale, gate_parameter_names, scalar_parameter_names
from fixup_transformer.text import FixupTransformerForConditionalGeneration
from fixup_transformer.training.optim import OptimConfig, build_optimizer, param_groups


class Branchy(Tiny):
    """The schedule tests' module plus a zero-initialised branch multiplier (a gate)."""

    def __init__(self):
        super().__init__()
        self.gate = ScalarScale(init_value=0.0)


def _by_name(groups):
    return {g["name"]: g for g in groups}


def _ids(params):
    return {id(p) for p in params}


def test_gates_are_only_in_the_gate_group_and_decay_like_the_scalars():
    model = Branchy()
    cfg = OptimConfig(lr=1e-3, weight_decay=0.01, decay_scalars=False)
    groups = _by_name(param_groups(model, cfg))
    assert _ids(groups["gates"]["params"]) == {id(model.gate.weight)}
    assert _ids(groups["scalars"]["params"]) == {id(model.shift.bias), id(model.scale.weight)}
    assert groups["gates"]["weight_decay"] == 0.0 and groups["scalars"]["weight_decay"] == 0.0
    decayed = _by_name(param_groups(model, OptimConfig(weight_decay=0.01, decay_scalars=True)))
    assert decayed["gates"]["weight_decay"] == 0.01 and decayed["scalars"]["weight_decay"] == 0.01


def test_every_trainable_parameter_is_in_exactly_one_group_and_frozen_ones_in_none():
    model = Branchy()
    model.lin.weight.requires_grad_(False)
    model.shift.bias.requires_grad_(False)
    groups = param_groups(model, OptimConfig(decay_biases_and_norms=False))
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters() if p.requires_grad}


def test_a_fixup_transformer_s_groups_follow_its_scalar_and_gate_names():
    model = FixupTransformerForConditionalGeneration(tiny_config(fixup_zero="multiplier"))
    params = dict(model.named_parameters())
    gates, scalars = (
        set(gate_parameter_names(model)),
        set(scalar_parameter_names(model)) - set(gate_parameter_names(model)),
    )
    assert gates and scalars
    cfg = OptimConfig(lr=2e-3, scalar_lr_multiplier=0.1, gate_lr_multiplier=10.0, decay_scalars=False)
    groups = _by_name(build_optimizer(model, cfg).param_groups)
    assert _ids(groups["gates"]["params"]) == {id(params[n]) for n in gates}
    assert _ids(groups["scalars"]["params"]) == {id(params[n]) for n in scalars}
    assert groups["gates"]["lr"] == pytest.approx(2e-2) and groups["scalars"]["lr"] == pytest.approx(2e-4)
    assert groups["main"]["lr"] == pytest.approx(2e-3) and groups["main"]["weight_decay"] == cfg.weight_decay


@pytest.mark.parametrize("name", ["adamw", "adam", "radam"])
def test_adam_family_gets_the_configured_betas_and_eps(name):
    optimizer = build_optimizer(Branchy(), OptimConfig(name=name, betas=(0.8, 0.95), eps=1e-6))
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6


def test_sgd_gets_the_configured_momentum_and_nesterov():
    optimizer = build_optimizer(Branchy(), OptimConfig(name="sgd", momentum=0.7, nesterov=True))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.7 and optimizer.defaults["nesterov"] is True
