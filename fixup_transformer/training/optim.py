"""Optimizers with the Fixup parameter groups.

The authors train the scalar biases and multipliers at a 10x smaller learning rate (their fairseq fork
and their CIFAR script both do); ``scalar_lr_multiplier`` (default 0.1) reproduces that. Scalars are
found by module type through :func:`fixup_transformer.fixup.scalar_parameter_names`, so a model without
them (a Marian model) simply has no scalar group; this package's LayerNorm twins keep their branch scalars,
which train in that group too (docs/architecture.md).

Weight decay follows fairseq by default: it is applied to **every** parameter, biases, embeddings and
Fixup scalars included (fairseq's ``--weight-decay`` has no exclusion list; the authors' CIFAR script
likewise passes all parameters to SGD with weight decay). ``decay_scalars: false`` and
``decay_biases_and_norms: false`` give the common modern exclusions instead.

``adamw`` is the default because fairseq's ``adam`` optimizer implements *decoupled* weight decay
(``p -= lr * wd * p``), which is exactly ``torch.optim.AdamW``; ``adam`` is torch's L2-coupled Adam.
``radam`` is ``torch.optim.RAdam`` with decoupled weight decay: what T-Fixup's reference code runs when its
command line says ``--optimizer adam`` (its fairseq fork's ``adam.py`` steps with RAdam), and what lets
T-Fixup train without warmup (docs/depth.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ..fixup import gate_parameter_names, scalar_parameter_names
from .config import field_doc, require


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and gradient settings."""

    name: Literal["adamw", "adam", "radam", "sgd"] = field_doc(
        "adamw",
        "adamw = fairseq's adam (decoupled weight decay); adam = torch L2-coupled Adam; radam = RAdam with "
        "decoupled weight decay (T-Fixup's reference optimizer: no warmup needed up to 18+18 layers in fp32 at d 512; "
        "docs/depth.md); sgd = momentum SGD.",
    )
    lr: float = field_doc(5e-4, "Peak learning rate of the main parameter group (after warmup).")
    betas: tuple[float, float] = field_doc((0.9, 0.98), "Adam betas (fairseq Transformer: 0.9, 0.98).")
    eps: float = field_doc(1e-8, "Adam epsilon.")
    momentum: float = field_doc(0.9, "sgd only: momentum.")
    nesterov: bool = field_doc(False, "sgd only: Nesterov momentum.")
    weight_decay: float = field_doc(1e-4, "Weight decay (decoupled for adamw, L2 for adam and sgd).")
    scalar_lr_multiplier: float = field_doc(
        0.1, "Learning rate of the Fixup scalar biases/multipliers as a fraction of lr (the authors use 0.1)."
    )
    gate_lr_multiplier: float = field_doc(
        10.0,
        "Learning rate of the zero-initialised branch multipliers (model.fixup_zero: multiplier) as a multiple "
        "of lr. At the scalars' lr/10 they stay nearly shut for hundreds of updates (Multi30k: test BLEU 9.7 "
        "vs 23.9 for LayerNorm at 834 updates); at 10x lr they track the paper's placement (docs/fixup.md).",
    )
    decay_scalars: bool = field_doc(True, "Apply weight decay to the Fixup scalars (fairseq: yes).")
    decay_biases_and_norms: bool = field_doc(
        True, "Apply weight decay to biases and LayerNorm/BatchNorm weights (fairseq: yes)."
    )
    clip_norm: float = field_doc(0.0, "Clip the global gradient norm to this value; 0 disables clipping.")

    def validate(self, prefix: str = "optim.") -> None:
        """Range checks (a negative lr or beta would otherwise surface as a torch traceback)."""
        require(self.lr > 0, f"{prefix}lr", self.lr, "> 0")
        for i, beta in enumerate(self.betas):
            require(0 <= beta < 1, f"{prefix}betas[{i}]", beta, "in [0, 1)")
        require(self.eps > 0, f"{prefix}eps", self.eps, "> 0")
        require(self.momentum >= 0, f"{prefix}momentum", self.momentum, ">= 0")
        require(self.weight_decay >= 0, f"{prefix}weight_decay", self.weight_decay, ">= 0")
        require(
            self.scalar_lr_multiplier >= 0, f"{prefix}scalar_lr_multiplier", self.scalar_lr_multiplier, ">= 0"
        )
        require(self.gate_lr_multiplier >= 0, f"{prefix}gate_lr_multiplier", self.gate_lr_multiplier, ">= 0")
        require(self.clip_norm >= 0, f"{prefix}clip_norm", self.clip_norm, ">= 0 (0 disables clipping)")


def _is_bias_or_norm(name: str, param: nn.Parameter, norm_params: set[int]) -> bool:
    return param.ndim <= 1 and (name.endswith("bias") or id(param) in norm_params)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split trainable parameters into named groups: ``main``, ``no_decay`` and ``scalars``.

    Each group carries its own ``lr`` and ``weight_decay`` and a ``name`` (for logging); empty groups are
    dropped. Tied parameters appear once (``named_parameters`` deduplicates shared tensors).
    """
    gate_names = set(gate_parameter_names(model))
    scalar_names = set(scalar_parameter_names(model)) - gate_names
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)
    }
    groups: dict[str, dict] = {
        "main": {"name": "main", "params": [], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "no_decay": {"name": "no_decay", "params": [], "lr": cfg.lr, "weight_decay": 0.0},
        "scalars": {
            "name": "scalars",
            "params": [],
            "lr": cfg.lr * cfg.scalar_lr_multiplier,
            "weight_decay": cfg.weight_decay if cfg.decay_scalars else 0.0,
        },
        "gates": {
            "name": "gates",
            "params": [],
            "lr": cfg.lr * cfg.gate_lr_multiplier,
            "weight_decay": cfg.weight_decay if cfg.decay_scalars else 0.0,
        },
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in gate_names:
            groups["gates"]["params"].append(param)
        elif name in scalar_names:
            groups["scalars"]["params"].append(param)
        elif not cfg.decay_biases_and_norms and _is_bias_or_norm(name, param, norm_params):
            groups["no_decay"]["params"].append(param)
        else:
            groups["main"]["params"].append(param)
    return [g for g in groups.values() if g["params"]]


def _fusable(groups: list[dict]) -> bool:
    """torch's fused kernels (CPU since torch 2.4, CUDA) take floating-point params on one of those devices."""
    params = [p for g in groups for p in g["params"]]
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg`` over :func:`param_groups` of ``model``.

    Fused where possible: one kernel per step instead of several per tensor, and it can skip a non-finite
    step on the device (``found_inf``, see ``step_guard``) without the host reading anything.
    """
    groups = param_groups(model, cfg)
    fused = {"fused": True} if _fusable(groups) else {}
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "radam":  # torch has no fused RAdam; step_guard then reads the skip verdict once per step
        return torch.optim.RAdam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, decoupled_weight_decay=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    raise ValueError(f"unknown optim.name {cfg.name!r}")
