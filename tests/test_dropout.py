"""The CPU dropout with one-byte masks: F.dropout's distribution and gradient, a quarter of its memory."""

import pytest
import torch
import torch.nn.functional as F
from transformer_helpers import random_batch, tiny_config

from fixup_transformer.text import FixupTransformerForConditionalGeneration
from fixup_transformer.text.dropout import _ByteMaskDropout, dropout, keep_threshold


def _saved_tensors(function, *args):
    """Every tensor autograd keeps for backward while ``function(*args)`` runs, and the output."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        output = function(*args)
    return saved, output


def test_the_threshold_keeps_the_rounded_probability():
    threshold, keep = keep_threshold(0.2)
    assert keep == 52429 / 65536  # round(0.2 * 65536) = 13107 of 65536 levels dropped
    assert threshold == 32768 - 52429  # int16 draws >= threshold: 52429 of the 65536 values
    assert keep_threshold(0.0) == (-32768, 1.0)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_each_16_bit_lane_keeps_one_minus_p_and_the_mean_is_preserved(p):
    torch.manual_seed(0)
    inputs = torch.ones(4096, 256)
    output = dropout(inputs, p, training=True)
    kept = output != 0
    sigma = (p * (1 - p) / (kept.numel() / 4)) ** 0.5
    for lane in range(4):  # the four draws cut from each 64-bit word
        rate = kept.flatten()[lane::4].float().mean().item()
        assert abs(rate - (1 - p)) < 5 * sigma, (lane, rate)
    _, keep = keep_threshold(p)
    assert torch.equal(output.unique(), torch.tensor([0.0, 1 / keep]))
    assert abs(output.mean().item() - 1.0) < 5 * sigma / (1 - p)


def test_gradient_is_the_mask_times_the_scale_and_only_a_bool_mask_is_kept():
    torch.manual_seed(1)
    inputs = torch.randn(64, 32, requires_grad=True)
    saved, output = _saved_tensors(dropout, inputs, 0.3, True)
    assert [t.dtype for t in saved] == [torch.bool]
    upstream = torch.randn_like(output)
    (grad,) = torch.autograd.grad(output, inputs, upstream)
    ratio = torch.where(output != 0, output / inputs, torch.zeros_like(output))
    torch.testing.assert_close(grad, upstream * ratio)
    assert torch.equal(grad != 0, output != 0)
    # F.dropout keeps a float mask of the input's size: four times the bytes
    f_saved, _ = _saved_tensors(F.dropout, inputs, 0.3, True)
    assert sum(t.element_size() * t.numel() for t in f_saved) == 4 * saved[0].numel()


def test_same_seed_same_mask_and_low_precision_stays_low():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        inputs = torch.randn(33, 7).to(dtype)
        torch.manual_seed(5)
        first = dropout(inputs, 0.25, training=True)
        torch.manual_seed(5)
        second = dropout(inputs, 0.25, training=True)
        assert first.dtype == dtype
        assert torch.equal(first, second)


def test_identity_zeros_and_errors_like_f_dropout():
    inputs = torch.randn(5, 3)
    assert dropout(inputs, 0.5, training=False) is inputs
    assert dropout(inputs, 0.0, training=True) is inputs
    assert torch.equal(dropout(inputs, 1.0, training=True), torch.zeros_like(inputs))
    for p, training in ((1.5, True), (-0.1, True), (1.5, False)):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout(inputs, p, training=training)


@pytest.mark.parametrize("p", [1e-4, 1 - 1e-4])
def test_a_p_that_65536_levels_would_round_badly_goes_to_f_dropout(p):
    inputs = torch.randn(64, 32, requires_grad=True)
    saved, _ = _saved_tensors(dropout, inputs, p, True)
    assert torch.bool not in [t.dtype for t in saved]


def test_the_model_trains_with_it_at_every_dropout_site(monkeypatch):
    torch.manual_seed(0)
    config = tiny_config(dropout=0.3, activation_dropout=0.2)
    model = FixupTransformerForConditionalGeneration(config).train()
    source, labels = random_batch(4, 9), random_batch(4, 7, seed=1)
    calls = []
    apply = _ByteMaskDropout.apply
    monkeypatch.setattr(_ByteMaskDropout, "apply", lambda *args: calls.append(args[1]) or apply(*args))
    model(input_ids=source, labels=labels).loss.backward()
    encoder, decoder = config.encoder_layers, config.decoder_layers
    # embeddings of both stacks, each residual branch (2 per encoder layer, 3 per decoder layer), and the
    # FFN activations
    assert sorted(calls) == sorted([0.3] * (2 + 2 * encoder + 3 * decoder) + [0.2] * (encoder + decoder))
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradient_checkpointing_recomputes_the_same_masks():
    source, labels = random_batch(4, 9), random_batch(4, 7, seed=1)
    config = tiny_config(dropout=0.3, activation_dropout=0.2)
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(config).train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        torch.manual_seed(3)
        loss = model(input_ids=source, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0], results[1])
