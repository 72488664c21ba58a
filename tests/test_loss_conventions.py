"""The model's label smoothing convention and the chunked loss's own padding mask (the GPU path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformer_helpers import random_batch, tiny_config, trained_like

from fixup_transformer.text import FixupTransformerForConditionalGeneration
from fixup_transformer.text.output_loss import _LinearSmoothedCrossEntropy, label_smoothed_loss_sums


@pytest.mark.parametrize("without_logits", [True, False])
def test_the_model_loss_is_torch_cross_entropy_with_label_smoothing(without_logits):
    """config.label_smoothing = eps puts eps / V on every class (torch's convention, as documented)."""
    torch.manual_seed(0)
    config = tiny_config(label_smoothing=0.2, loss_without_logits=without_logits)
    model = trained_like(FixupTransformerForConditionalGeneration(config)).train()
    source, labels = random_batch(3, 7, seed=1), random_batch(3, 6, seed=2)
    labels[0, -2:] = -100
    loss = model(input_ids=source, labels=labels).loss
    with torch.no_grad():
        logits = model.eval()(
            input_ids=source, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)
        ).logits
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.2)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_tokens", [4, 64])
def test_the_chunked_loss_masks_ignored_rows_itself(chunk_tokens):
    """On a GPU the ignored rows are not dropped before the projection: the function's own mask must keep them
    out of both sums and of both gradients. Called directly here, so that the CPU row-dropping is bypassed."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=generator, requires_grad=True)
    weight = torch.randn(11, 8, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (13,), generator=generator)
    labels[::3] = -100
    uniform = 0.1 / 11
    loss, nll = _LinearSmoothedCrossEntropy.apply(hidden, weight, labels, uniform, chunk_tokens)
    ref_loss, ref_nll = label_smoothed_loss_sums(F.linear(hidden, weight), labels, uniform)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    got = torch.autograd.grad(loss, (hidden, weight))
    want = torch.autograd.grad(ref_loss, (hidden, weight))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert torch.count_nonzero(got[0][labels == -100]) == 0
