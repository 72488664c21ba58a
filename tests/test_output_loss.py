"""The training loss without logits: the same loss, NLL and gradients as the logits path, none of its memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_helpers import random_batch, tiny_config, trained_like

from fixup_transformer.text import FixupTransformerForConditionalGeneration
from fixup_transformer.text.output_loss import label_smoothed_loss_sums, linear_label_smoothed_loss_sums


def _inputs(tokens=37, d=16, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, d, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, d, generator=generator, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::5] = -100
    return hidden, weight, labels


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("chunk_tokens", [None, 8, 1])
@pytest.mark.parametrize("smoothing", ["torch", "fairseq", "none"])
def test_sums_and_gradients_match_the_logits_path(chunk_tokens, smoothing):
    hidden, weight, labels = _inputs()
    vocab, epsilon = weight.size(0), 0.1
    uniform = {"torch": epsilon / vocab, "fairseq": epsilon / (vocab - 1), "none": 0.0}[smoothing]
    loss, nll = linear_label_smoothed_loss_sums(hidden, weight, labels, uniform, chunk_tokens)
    ref_loss, ref_nll = label_smoothed_loss_sums(F.linear(hidden, weight), labels, uniform)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    if smoothing == "torch":  # and both agree with torch's own label smoothing
        torch.testing.assert_close(
            loss, F.cross_entropy(F.linear(hidden, weight), labels, reduction="sum", label_smoothing=epsilon)
        )
    for got, want in zip(
        _grads(3.0 * loss, hidden, weight), _grads(3.0 * ref_loss, hidden, weight), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert not nll.requires_grad


def test_a_frozen_output_weight_gets_no_gradient_and_the_input_the_right_one():
    hidden, weight, labels = _inputs()
    weight.requires_grad_(False)
    loss, _ = linear_label_smoothed_loss_sums(hidden, weight, labels, 0.002)
    ref_loss, _ = label_smoothed_loss_sums(F.linear(hidden, weight), labels, 0.002)
    loss.backward()
    assert weight.grad is None
    torch.testing.assert_close(hidden.grad, _grads(ref_loss, hidden)[0])


def test_bf16_autocast_stays_close_to_the_fp32_loss():
    hidden, weight, labels = _inputs(tokens=64, d=32, vocab=200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = linear_label_smoothed_loss_sums(hidden, weight, labels, 0.0005)
    grad_hidden, grad_weight = _grads(loss, hidden, weight)
    ref_loss, ref_nll = label_smoothed_loss_sums(F.linear(hidden, weight), labels, 0.0005)
    ref_hidden, ref_weight = _grads(ref_loss, hidden, weight)
    assert loss.dtype == nll.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    torch.testing.assert_close(grad_hidden, ref_hidden, rtol=0.05, atol=0.05 * ref_hidden.abs().max().item())
    torch.testing.assert_close(grad_weight, ref_weight, rtol=0.05, atol=0.05 * ref_weight.abs().max().item())


def _model(**overrides):
    torch.manual_seed(0)
    return trained_like(
        FixupTransformerForConditionalGeneration(tiny_config(label_smoothing=0.1, **overrides))
    )


def _batch():
    source, labels = random_batch(3, 7, seed=1), random_batch(3, 6, seed=2)
    labels[0, -2:] = -100
    return {"input_ids": source, "labels": labels}


def test_training_forward_gives_the_logits_path_loss_nll_and_gradients_without_logits():
    runs = {}
    for without_logits in (True, False):
        model = _model(loss_without_logits=without_logits).train()
        output = model(**_batch())
        output.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        runs[without_logits] = (output, grads)
    fused, plain = runs[True][0], runs[False][0]
    assert fused.logits is None and plain.logits is not None
    torch.testing.assert_close(fused.loss, plain.loss)
    torch.testing.assert_close(fused.nll_loss, plain.nll_loss)
    labels = _batch()["labels"]
    expected_nll = F.cross_entropy(plain.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(plain.nll_loss, expected_nll)
    assert runs[True][1].keys() == runs[False][1].keys()
    for name, grad in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_and_no_grad_forwards_keep_their_logits():
    model = _model()
    with torch.no_grad():
        assert model.train()(**_batch()).logits is not None
    assert model.eval()(**_batch()).logits is not None


def test_training_keeps_no_vocabulary_sized_activation_for_backward():
    """The largest activation of a translation model is gone: nothing of ``[target tokens, vocab]`` is saved."""
    vocab = 1000
    batch = {"input_ids": random_batch(4, 9, vocab, seed=1), "labels": random_batch(4, 8, vocab, seed=2)}
    target_tokens = batch["labels"].numel()
    logits_sized = {}
    for without_logits in (True, False):
        model = _model(vocab_size=vocab, loss_without_logits=without_logits).train()
        parameters = {p.data_ptr() for p in model.parameters()}
        saved = []

        def pack(tensor, saved=saved, parameters=parameters):
            if tensor.data_ptr() not in parameters:
                saved.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(**batch).loss.backward()
        logits_sized[without_logits] = [
            shape
            for shape in saved
            if shape and shape[-1] == vocab and torch.Size(shape).numel() >= target_tokens * vocab
        ]
    assert logits_sized[False]  # the logits path keeps its log-probabilities for backward
    assert logits_sized[True] == []


def test_a_second_backward_through_the_loss_is_an_error_not_a_double_scaled_gradient():
    # backward scales the saved gradients in place (no second [V, d] copy at the peak of a step); autograd's
    # version check must then refuse a retained graph's second backward rather than scale them twice.
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(7, 4, requires_grad=True)
    loss, _ = linear_label_smoothed_loss_sums(hidden, weight, torch.randint(0, 7, (5,)), 0.01)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_padding_rows_are_not_projected_on_cpu(monkeypatch):
    hidden, weight, labels = _inputs()  # every fifth label is -100
    projected_rows = []
    original = torch.nn.functional.linear

    def counting_linear(x, w, *args):
        projected_rows.append(x.shape[0])
        return original(x, w, *args)

    monkeypatch.setattr(torch.nn.functional, "linear", counting_linear)
    loss, _ = linear_label_smoothed_loss_sums(hidden, weight, labels, 0.01)
    assert sum(projected_rows) == int((labels != -100).sum())
    grad_hidden, _ = _grads(loss, hidden, weight)
    assert torch.count_nonzero(grad_hidden[labels == -100]) == 0


def test_a_batch_without_labels_has_zero_loss_and_zero_gradients():
    hidden, weight, labels = _inputs()
    loss, nll = linear_label_smoothed_loss_sums(hidden, weight, torch.full_like(labels, -100), 0.01)
    assert loss.item() == 0.0 and nll.item() == 0.0
    grad_hidden, grad_weight = _grads(loss, hidden, weight)
    assert torch.count_nonzero(grad_hidden) == 0 and torch.count_nonzero(grad_weight) == 0


def test_compiled_logits_loss_builds_no_vocabulary_sized_buffer_in_backward():
    """Under torch.compile the loss from logits (the training loss there) must add no [tokens, V] buffer to the
    backward pass: the softmax gradient is written into the logits' own buffer. A ``gather`` of the target
    log-probability did add one (a zeroed fp32 buffer and a scatter into it: 4 GiB per step at 32k tokens x
    32k pieces)."""
    from torch._inductor.utils import run_and_get_code

    tokens, vocab = 64, 512
    hidden, weight, labels = _inputs(tokens=tokens, d=16, vocab=vocab)

    def projected_loss(hidden, weight, labels):
        return label_smoothed_loss_sums(F.linear(hidden, weight), labels, 0.1 / vocab)

    def loss_and_grads(function):
        loss, nll = function(hidden, weight, labels)
        return (loss, nll, *_grads(loss, hidden, weight))

    torch._dynamo.reset()
    compiled, (forward_code, backward_code) = run_and_get_code(loss_and_grads, torch.compile(projected_loss))
    for got, expected in zip(compiled, loss_and_grads(projected_loss), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # inductor's reduction order
    allocation = f"empty_strided_cpu(({tokens}, {vocab})"
    assert allocation in forward_code  # the logits themselves: the check below can see such a buffer
    assert allocation not in backward_code, backward_code
