"""The Fixup / T-Fixup / Xavier inits follow FIXUP.md number by number; configs reject bad values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch import nn
from transformer_helpers import random_batch, tiny_config

from fixup_transformer import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.fixup import ScalarBias, ScalarScale, scalar_parameter_names


def xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


def build(**overrides) -> FixupTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return FixupTransformerForConditionalGeneration(tiny_config(**overrides))


def build_sized(d: int, ffn: int, encoder_layers: int, decoder_layers: int, **overrides):
    return build(
        d_model=d,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        **overrides,
    )


def chunk_std(weight: torch.Tensor, parts: int, index: int) -> float:
    return weight.detach().chunk(parts, dim=0)[index].std().item()


@pytest.mark.parametrize("layers", [(2, 2), (6, 6), (12, 4)])
def test_fixup_in_branch_std_scales_with_depth(layers):
    enc, dec = layers
    d, ffn = 128, 256
    model = build_sized(d, ffn, enc, dec, vocab_size=50)
    depth = 2 * enc + 3 * dec
    assert model.config.fixup_depth == depth
    # q/k/v: Xavier with the fans of the authors' fused 3d x d in-projection, i.e. d x d fans / sqrt(2).
    attention_std = xavier_std(d, d) * 2**-0.5 * depth ** (-1 / 6)
    ffn_std = xavier_std(d, ffn) * depth ** (-1 / 2)
    for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
        for part in range(3):
            assert chunk_std(layer.self_attn.qkv_proj.weight, 3, part) == pytest.approx(
                attention_std, rel=0.05
            )
        assert layer.ffn.fc1.weight.std().item() == pytest.approx(ffn_std, rel=0.05)
    for layer in model.model.decoder.layers:
        assert layer.encoder_attn.q_proj.weight.std().item() == pytest.approx(attention_std, rel=0.05)
        for part in range(2):
            assert chunk_std(layer.encoder_attn.kv_proj.weight, 2, part) == pytest.approx(
                attention_std, rel=0.05
            )


def test_paper_rule_1_zeroes_branch_final_layers_and_the_untied_classifier():
    model = build(fixup_zero="last_layer")  # the paper's placement
    for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
        assert torch.count_nonzero(layer.self_attn.out_proj.weight) == 0
        assert torch.count_nonzero(layer.ffn.fc2.weight) == 0
    for layer in model.model.decoder.layers:
        assert torch.count_nonzero(layer.encoder_attn.out_proj.weight) == 0
    assert torch.count_nonzero(model.lm_head.weight) == 0
    assert model.lm_head.weight is not model.model.shared.weight
    assert all(m.weight.item() == 1.0 for m in branch_multipliers(model))


def branch_multipliers(model) -> list[ScalarScale]:
    return [
        m for name, m in model.named_modules() if isinstance(m, ScalarScale) and name.endswith("output_scale")
    ]


def test_zero_multipliers_with_last_layers_scaled_like_their_branch():
    d, ffn, enc, dec = 128, 256, 3, 2
    model = build_sized(d, ffn, enc, dec, vocab_size=50)  # the default: fixup_zero="multiplier"
    depth = 2 * enc + 3 * dec
    multipliers = branch_multipliers(model)
    assert len(multipliers) == 2 * enc + 3 * dec
    assert all(m.weight.item() == 0.0 for m in multipliers)
    for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
        assert layer.self_attn.out_proj.weight.std().item() == pytest.approx(
            xavier_std(d, d) * depth ** (-1 / 6), rel=0.05
        )
        assert layer.ffn.fc2.weight.std().item() == pytest.approx(
            xavier_std(ffn, d) * depth ** (-1 / 2), rel=0.05
        )
    assert torch.count_nonzero(model.lm_head.weight) == 0  # untied classifier: rule 1 by default


def test_rule_1_holds_by_default_the_initial_loss_is_ln_v():
    # Every branch and the classifier contribute 0 at init, so the prediction is uniform: loss = ln V.
    model = build(d_model=128, vocab_size=400)
    loss = model(input_ids=random_batch(4, 9, vocab=400), labels=random_batch(4, 7, vocab=400, seed=1)).loss
    assert loss.item() == pytest.approx(math.log(400), abs=0.01)


def test_tied_output_projection_keeps_the_embedding_init():
    model = build(d_model=128, vocab_size=400, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.model.decoder.embed_tokens.weight is model.model.shared.weight
    rows = model.model.shared.weight.detach()[1:]  # row 0 is padding, zero as in fairseq
    assert rows.std().item() == pytest.approx(128**-0.5, rel=0.05)
    assert torch.count_nonzero(model.model.shared.weight[0]) == 0


def test_cross_attention_depth_can_reproduce_the_authors_hard_coded_12():
    d = 128
    model = build(
        d_model=d, encoder_layers=6, decoder_layers=6, fixup_cross_attention_depth=12, vocab_size=50
    )
    cross = model.model.decoder.layers[0].encoder_attn.q_proj.weight.std().item()
    own = chunk_std(model.model.decoder.layers[0].self_attn.qkv_proj.weight, 3, 0)
    assert cross == pytest.approx(xavier_std(d, d) * 2**-0.5 * 12 ** (-1 / 6), rel=0.05)
    assert own == pytest.approx(xavier_std(d, d) * 2**-0.5 * 30 ** (-1 / 6), rel=0.05)


def test_t_fixup_scales_value_output_and_ffn_only():
    d, ffn, enc, dec = 128, 256, 4, 3
    model = build_sized(d, ffn, enc, dec, init="t_fixup")
    enc_gain, dec_gain = 0.67 * enc ** (-0.25), (9 * dec) ** (-0.25)
    encoder_layer, decoder_layer = model.model.encoder.layers[0], model.model.decoder.layers[0]
    qkv = encoder_layer.self_attn.qkv_proj.weight
    # q and k: fairseq's 1/sqrt(2) gain, as in the T-Fixup reference code.
    assert chunk_std(qkv, 3, 0) == pytest.approx(xavier_std(d, d) * 2**-0.5, rel=0.05)
    assert chunk_std(qkv, 3, 1) == pytest.approx(xavier_std(d, d) * 2**-0.5, rel=0.05)
    assert chunk_std(qkv, 3, 2) == pytest.approx(xavier_std(d, d) * enc_gain, rel=0.05)
    assert encoder_layer.self_attn.out_proj.weight.std().item() == pytest.approx(
        xavier_std(d, d) * enc_gain, rel=0.05
    )
    assert encoder_layer.ffn.fc2.weight.std().item() == pytest.approx(xavier_std(d, ffn) * enc_gain, rel=0.05)
    kv = decoder_layer.encoder_attn.kv_proj.weight
    assert chunk_std(kv, 2, 1) == pytest.approx(xavier_std(d, d) * dec_gain, rel=0.05)
    assert decoder_layer.ffn.fc1.weight.std().item() == pytest.approx(xavier_std(d, ffn) * dec_gain, rel=0.05)
    # Shared embedding: the encoder's factor, as in the T-Fixup authors' code.
    embedding_std = d**-0.5 * (9 * enc) ** (-0.25)
    assert model.model.shared.weight[1:].std().item() == pytest.approx(embedding_std, rel=0.05)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_t_fixup_shared_embedding_keeps_the_encoder_factor_when_reinitialised(tie_word_embeddings):
    # The decoder holds the shared table too; re-initialising the model must not redraw it at the decoder's
    # (9M)^(-1/4) (the two differ when encoder and decoder depths differ).
    d, enc, dec = 128, 2, 12
    model = build_sized(d, 256, enc, dec, init="t_fixup", tie_word_embeddings=tie_word_embeddings)
    expected = d**-0.5 * (9 * enc) ** (-0.25)
    for parameter in model.parameters():
        parameter._is_hf_initialized = False
    model.apply(model._init_weights)
    assert model.model.shared.weight[1:].std().item() == pytest.approx(expected, rel=0.05)
    if tie_word_embeddings:
        assert model.lm_head.weight is model.model.shared.weight


def test_xavier_baseline_has_no_zero_layers_and_fairseqs_qkv_gain():
    model = build_sized(128, 256, 2, 2, normalization="post_ln", init="xavier")
    layer = model.model.encoder.layers[0]
    assert layer.self_attn.out_proj.weight.std().item() == pytest.approx(xavier_std(128, 128), rel=0.05)
    assert layer.ffn.fc2.weight.std().item() == pytest.approx(xavier_std(256, 128), rel=0.05)
    # fairseq's q, k, v: gain 1/sqrt(2) (the fans of its old fused 3d x d in-projection), not gain 1
    for part in range(3):
        assert chunk_std(layer.self_attn.qkv_proj.weight, 3, part) == pytest.approx(
            xavier_std(128, 128) * 2**-0.5, rel=0.05
        )


def test_normal_baseline_draws_every_weight_from_n_0_init_std_as_transformers_bart():
    model = build_sized(
        64, 256, 2, 2, normalization="post_ln", init="normal", init_std=0.05, position_embedding="learned"
    )
    decoder = model.model.decoder.layers[1]
    weights = {
        "qkv": decoder.self_attn.qkv_proj.weight,
        "cross q": decoder.encoder_attn.q_proj.weight,
        "out": decoder.self_attn.out_proj.weight,
        "fc1": decoder.ffn.fc1.weight,
        "fc2": decoder.ffn.fc2.weight,
        "embedding": model.model.shared.weight[1:],  # the padding row is 0
        "output projection": model.lm_head.weight,
        "learned positions": model.model.encoder.embed_positions.weight,
    }
    for name, weight in weights.items():
        assert weight.std().item() == pytest.approx(0.05, rel=0.1), name
        assert weight.mean().abs().item() < 0.01, name
    # the fairseq-style baseline is unchanged: Xavier linears, N(0, d^-1/2) embeddings
    xavier = build_sized(64, 256, 2, 2, normalization="post_ln", init="xavier", init_std=0.05)
    assert xavier.model.shared.weight[1:].std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert xavier.model.decoder.layers[1].ffn.fc1.weight.std().item() == pytest.approx(
        xavier_std(64, 256), rel=0.1
    )


def test_scalars_start_at_one_and_zero_and_are_listed_for_their_own_learning_rate():
    model = build(fixup_zero="last_layer")
    biases = [m for m in model.modules() if isinstance(m, ScalarBias)]
    scales = [m for m in model.modules() if isinstance(m, ScalarScale)]
    # 4 biases per encoder layer, 5 per decoder layer, + encoder and decoder output shifts.
    assert len(biases) == 4 * 2 + 5 * 2 + 2
    # One multiplier per branch (2 per encoder layer, 3 per decoder layer) + the encoder output scale.
    assert len(scales) == 2 * 2 + 3 * 2 + 1
    assert all(m.bias.item() == 0.0 for m in biases)
    assert all(m.weight.item() == 1.0 for m in scales)
    assert len(scalar_parameter_names(model)) == len(biases) + len(scales)


def test_no_layernorm_without_normalization_and_layernorm_for_baselines():
    assert not any(isinstance(m, nn.LayerNorm) for m in build().modules())
    post = sum(isinstance(m, nn.LayerNorm) for m in build(normalization="post_ln", init="xavier").modules())
    pre = sum(isinstance(m, nn.LayerNorm) for m in build(normalization="pre_ln", init="xavier").modules())
    assert post == 2 * 2 + 3 * 2
    assert pre == 2 * 2 + 3 * 2 + 2  # + final LayerNorm of each stack
    assert not any(isinstance(m, nn.Linear) and m.bias is not None for m in build().modules())


def test_at_init_the_decoder_output_does_not_depend_on_the_source():
    model = build().eval()
    decoder_input = random_batch(2, 6, seed=1)
    first = model(input_ids=random_batch(2, 9, seed=2), decoder_input_ids=decoder_input).logits
    second = model(input_ids=random_batch(2, 5, seed=3), decoder_input_ids=decoder_input).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"normalization": "batchnorm"}, "normalization"),
        ({"init": "kaiming"}, "init"),
        ({"position_embedding": "rotary"}, "position_embedding"),
        ({"d_model": 30, "encoder_attention_heads": 4}, "encoder_attention_heads"),
        ({"decoder_attention_heads": 5}, "decoder_attention_heads"),
        ({"init": "fixup", "normalization": "post_ln"}, "normalization"),
        ({"dropout": 1.5}, "dropout"),
        ({"encoder_layers": 0}, "encoder_layers"),
        ({"pad_token_id": 500}, "pad_token_id"),
        ({"fixup_zero": "first_layer"}, "fixup_zero"),
        ({"normalization": "post_ln", "init": "normal", "init_std": 0.0}, "init_std"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),  # a string would be truthy: tied
        ({"d_model": 32.0}, "d_model"),
        ({"vocab_size": None}, "vocab_size"),
    ],
)
def test_config_field_types_are_checked_and_named(overrides, field):
    # The strict dataclass validates annotations only when they are types, not postponed strings.
    with pytest.raises(StrictDataclassFieldValidationError, match=f"field '{field}'"):
        tiny_config(**overrides)


def test_decoder_view_of_the_config_resolves_a_shared_vocabulary():
    # transformers' caches and generation read the decoder's fields through get_text_config(decoder=True).
    view = tiny_config(decoder_layers=3).get_text_config(decoder=True)
    assert (view.vocab_size, view.num_hidden_layers) == (tiny_config().vocab_size, 3)


def test_default_config_is_the_iwslt_size_with_depth_30():
    config = FixupTransformerConfig()
    assert (config.d_model, config.encoder_ffn_dim, config.encoder_attention_heads) == (512, 1024, 4)
    assert config.fixup_depth == 30
    assert (config.normalization, config.init) == ("none", "fixup")
    assert (config.fixup_zero, config.tie_word_embeddings) == ("multiplier", False)


def test_fixup_zero_is_always_saved_and_older_configs_load_as_the_paper_placement(tmp_path):
    # transformers writes only non-default fields; the default changed from "last_layer" to "multiplier",
    # so the field is always written, and a config that lacks it was made with the old default.
    FixupTransformerConfig().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["fixup_zero"] == "multiplier"
    assert FixupTransformerConfig.from_pretrained(tmp_path).fixup_zero == "multiplier"
    del saved["fixup_zero"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert FixupTransformerConfig.from_pretrained(tmp_path).fixup_zero == "last_layer"
    assert (
        FixupTransformerConfig.from_pretrained(tmp_path, fixup_zero="multiplier").fixup_zero == "multiplier"
    )
