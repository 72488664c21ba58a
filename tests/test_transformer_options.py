"""The Transformer's non-default options: the FFN activation, embedding scaling, and a save/load round trip
of a config where many fields differ from their defaults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformer_helpers import random_batch, tiny_config, trained_like

from fixup_transformer import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.text.modeling_fixup_transformer import FixupFeedForward

REFERENCE_ACTIVATIONS = {
    "gelu": lambda h: F.gelu(h, approximate="none"),  # the exact (erf) GELU
    "relu": F.relu,
}


def _reference_ffn(ffn: FixupFeedForward, x: torch.Tensor, activation) -> torch.Tensor:
    """``s * fc2(act(fc1(x + b1) + b2) + b3)`` written out from the module's own parameters."""
    hidden = F.linear(x + ffn.input_shift.bias, ffn.fc1.weight) + ffn.activation_shift.bias
    hidden = activation(hidden)
    return F.linear(hidden + ffn.output_shift.bias, ffn.fc2.weight) * ffn.output_scale.weight


def _ffns(model) -> list[FixupFeedForward]:
    ffns = [m for m in model.modules() if isinstance(m, FixupFeedForward)]
    assert len(ffns) == 4  # 2 encoder + 2 decoder layers
    return ffns


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_ffn_activation_is_the_configured_one_exactly(activation, training):
    # float64 and pre-activations of order 1-3, where erf- and tanh-GELU differ by up to ~5e-4: far above
    # the float64 rounding of the comparison. Training mode takes the weight-side scalar path (folding.py).
    torch.manual_seed(0)
    model = trained_like(
        FixupTransformerForConditionalGeneration(tiny_config(activation_function=activation))
    ).double()
    model.train(training)
    with torch.no_grad():  # multipliers of 1, so that the branch output is not shrunk towards 0
        for ffn in _ffns(model):
            ffn.output_scale.weight.fill_(1.0)
    x = 2.0 * torch.randn(3, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for ffn in _ffns(model):
        with torch.no_grad():
            out = ffn(x)
            expected = _reference_ffn(ffn, x, REFERENCE_ACTIVATIONS[activation])
            tanh_gelu = _reference_ffn(ffn, x, lambda h: F.gelu(h, approximate="tanh"))
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        # The check discriminates: the tanh approximation (and ReLU vs GELU) give measurably other outputs.
        assert (out - tanh_gelu).abs().max() > 1e-5


@pytest.mark.parametrize("scale_embedding", [True, False])
def test_embeddings_are_multiplied_by_sqrt_d_model_only_with_scale_embedding(scale_embedding):
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(tiny_config(scale_embedding=scale_embedding)).eval()
    expected_scale = math.sqrt(32) if scale_embedding else 1.0
    source, target = random_batch(2, 7), random_batch(2, 5, seed=1)
    layer_inputs = {}

    def record(name):
        def hook(module, args):
            layer_inputs[name] = args[0].detach().clone()

        return hook

    encoder, decoder = model.model.encoder, model.model.decoder
    handles = [
        encoder.layers[0].register_forward_pre_hook(record("encoder")),
        decoder.layers[0].register_forward_pre_hook(record("decoder")),
    ]
    with torch.no_grad():
        model(input_ids=source, decoder_input_ids=target)
    for handle in handles:
        handle.remove()

    table = model.model.shared.weight.detach()
    for name, stack, ids in (("encoder", encoder, source), ("decoder", decoder, target)):
        positions = stack.embed_positions(torch.arange(ids.shape[1]), torch.float32)  # sinusoidal, no params
        expected = table[ids] * expected_scale + positions
        torch.testing.assert_close(layer_inputs[name], expected, rtol=1e-6, atol=1e-6)
        # and not the other choice: the token part is ~d^-1/2 per feature, so sqrt(d) is far outside tolerance
        wrong = table[ids] * (1.0 if scale_embedding else math.sqrt(32)) + positions
        assert (layer_inputs[name] - wrong).abs().max() > 0.1


NON_DEFAULT_FIELDS = dict(
    activation_function="gelu",
    scale_embedding=False,
    normalization="pre_ln",
    init="normal",
    init_std=0.05,
    position_embedding="learned",
    linear_bias=True,
    position_offset=2,
    share_encoder_decoder_embeddings=False,
    decoder_vocab_size=89,
    label_smoothing=0.1,
    loss_without_logits=False,
)


def test_save_and_load_of_a_non_default_config_gives_identical_logits_and_fields(tmp_path: Path):
    defaults = FixupTransformerConfig()
    assert all(getattr(defaults, k) != v for k, v in NON_DEFAULT_FIELDS.items())  # really non-default
    torch.manual_seed(0)
    model = trained_like(FixupTransformerForConditionalGeneration(tiny_config(**NON_DEFAULT_FIELDS))).eval()
    source, target = random_batch(2, 7), random_batch(2, 5, vocab=89, seed=1)
    with torch.no_grad():
        logits = model(input_ids=source, decoder_input_ids=target).logits

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()

    for name, value in NON_DEFAULT_FIELDS.items():
        assert getattr(loaded.config, name) == value, name
    # The fields became the architecture again, not only config values.
    activations = [ffn.activation for ffn in _ffns(loaded)]
    assert all(isinstance(a, torch.nn.GELU) and a.approximate == "none" for a in activations)
    assert loaded.model.encoder.embed_scale == loaded.model.decoder.embed_scale == 1.0
    assert loaded.model.decoder.embed_tokens.num_embeddings == 89 and loaded.lm_head.out_features == 89
    assert isinstance(loaded.model.encoder.output.norm, torch.nn.LayerNorm)  # pre-LN's final norm
    for (name, original), (loaded_name, reloaded) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == loaded_name and torch.equal(original, reloaded), name
    with torch.no_grad():
        reloaded_logits = loaded(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(reloaded_logits, logits, rtol=0, atol=0)
