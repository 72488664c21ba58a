"""Depth: a ~1,000-layer Fixup ResNet and a 50+50-layer Fixup Transformer train without normalization.

A few optimizer steps on one fixed real batch must give finite, decreasing losses (the paper's claim
that Fixup makes very deep residual networks trainable from the first step, without normalization and
without warmup). The full-size comparison against the baselines is ``benchmarks/depth_*.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from fixup_transformer.diagnostics import record_training, torch_threads
from fixup_transformer.probe_data import cifar_batches, multi30k_batches
from fixup_transformer.text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.vision import FixupResNetConfig, FixupResNetForImageClassification


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny per-layer ops run fastest on one thread; several threads on a busy 2-core box thrash."""
    with torch_threads(1):
        yield


def assert_trains(losses: list[float]) -> None:
    assert all(math.isfinite(v) for v in losses), losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), f"loss not decreasing: {losses}"


def test_fixup_resnet_998_layers_trains_without_normalization(cifar10):
    batches = cifar_batches(cifar10, batch_size=8)
    torch.manual_seed(0)
    config = FixupResNetConfig.cifar(depth=998, width_multiplier=0.25)  # 6n+2 with n = 166: 498 blocks
    model = FixupResNetForImageClassification(config)
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    run = record_training(model, batches, optimizer, steps=3, progress=False)
    assert len(run.layer_names) == 498
    assert run.losses[0] == pytest.approx(math.log(10), abs=1e-5)
    assert_trains(run.losses)
    assert all(math.isfinite(g) for g in run.grad_norms)


def test_fixup_transformer_50_plus_50_layers_trains_without_warmup(multi30k):
    batches, vocab_size = multi30k_batches(
        multi30k, batch_size=8, vocab_size=500, max_tokens=20, tokenizer_pairs=2000
    )
    torch.manual_seed(0)
    config = FixupTransformerConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=50, decoder_layers=50, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0,
    )  # fmt: skip
    model = FixupTransformerForConditionalGeneration(config)
    # Constant lr from the first step: no warmup.
    optimizer = build_optimizer(
        model, OptimConfig(name="adamw", lr=1e-3, betas=(0.9, 0.98), weight_decay=0.0)
    )
    run = record_training(model, batches, optimizer, steps=3, progress=False)
    assert len(run.layer_names) == 100
    assert_trains(run.losses)
    assert all(math.isfinite(g) for g in run.grad_norms)
