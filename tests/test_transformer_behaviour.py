"""Forward/backward, caching, masking, attention backends, generation, folding and bad input."""

from __future__ import annotations

import pytest
import torch
from transformer_helpers import EOS, PAD, multi30k_word_batch, random_batch, tiny_config, trained_like

from fixup_transformer import FixupTransformerForConditionalGeneration
from fixup_transformer.fixup import ScalarBias, ScalarScale
from fixup_transformer.training.optim import OptimConfig, build_optimizer

VARIANTS = [
    ("none", "fixup"),
    ("none", "t_fixup"),
    ("none", "xavier"),
    ("post_ln", "xavier"),
    ("pre_ln", "xavier"),
]


def build(seed: int = 0, **overrides) -> FixupTransformerForConditionalGeneration:
    torch.manual_seed(seed)
    return FixupTransformerForConditionalGeneration(tiny_config(**overrides))


def trained(**overrides) -> FixupTransformerForConditionalGeneration:
    return trained_like(build(**overrides)).eval()


@pytest.mark.parametrize(("normalization", "init"), VARIANTS)
def test_every_variant_runs_forward_and_backward(normalization, init):
    model = build(normalization=normalization, init=init, dropout=0.1)
    labels = random_batch(3, 6, seed=1)
    loss = model(input_ids=random_batch(3, 8), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(("normalization", "init"), VARIANTS)
def test_a_few_adam_steps_on_real_multi30k_reduce_the_loss(multi30k, normalization, init):
    input_ids, attention_mask, labels, vocab = multi30k_word_batch(multi30k.parent)
    model = build(normalization=normalization, init=init, vocab_size=vocab, d_model=64, label_smoothing=0.1)
    # The library's groups (what the training scripts use): Fixup's zero gates train at 10x lr, scalars at lr/10.
    optimizer = build_optimizer(model, OptimConfig(name="adam", lr=1e-3, weight_decay=0.0))
    losses = []
    for _ in range(15):
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize(("normalization", "init"), [("none", "fixup"), ("pre_ln", "xavier")])
def test_cached_step_by_step_decoding_equals_teacher_forcing(normalization, init):
    model = trained(normalization=normalization, init=init)
    source = random_batch(2, 7)
    decoder_input = random_batch(2, 6, seed=5)
    full = model(input_ids=source, decoder_input_ids=decoder_input, use_cache=False).logits
    encoder_outputs = model.get_encoder()(input_ids=source)
    cache, steps = None, []
    for position in range(decoder_input.shape[1]):
        out = model(
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_input[:, position : position + 1],
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_the_old_past_key_values_keyword_still_continues_from_the_cache():
    # Hand-written decoding loops use transformers' old name; dropping it silently restarted at position 0.
    model = trained()
    source, decoder_input = random_batch(2, 6, seed=1), random_batch(2, 5, seed=2)
    full = model(input_ids=source, decoder_input_ids=decoder_input).logits[:, 3:]
    prefix = model(input_ids=source, decoder_input_ids=decoder_input[:, :3], use_cache=True)
    encoder_outputs = (prefix.encoder_last_hidden_state,)
    with pytest.warns(FutureWarning, match="past_key_values"):
        rest = model(
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_input[:, 3:],
            past_key_values=prefix.past_key_values,
        ).logits
    torch.testing.assert_close(rest, full, rtol=1e-5, atol=1e-5)


def test_cross_attention_keys_are_computed_once_per_source():
    model = trained()
    calls = []
    projection = model.model.decoder.layers[0].encoder_attn.kv_proj
    handle = projection.register_forward_hook(lambda *_: calls.append(1))
    model.generate(random_batch(2, 7), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    handle.remove()
    assert len(calls) == 1


def test_greedy_with_and_without_cache_gives_the_same_tokens():
    model = trained()
    source = random_batch(3, 9)
    with_cache = model.generate(source, max_new_tokens=10, do_sample=False, use_cache=True)
    without = model.generate(source, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_static_cache_decoding_gives_the_dynamic_cache_tokens():
    """``cache_implementation="static"`` (what ``generate`` compiles on a GPU): the same greedy and beam
    tokens as the default dynamic cache, with a left-padded source."""
    model = trained()
    source = random_batch(3, 9)
    mask = torch.ones_like(source)
    mask[0, :3] = 0
    for beams in (1, 3):
        kwargs = dict(
            attention_mask=mask, num_beams=beams, max_new_tokens=10, min_new_tokens=10, do_sample=False
        )
        dynamic = model.generate(source, **kwargs)
        static = model.generate(source, cache_implementation="static", **kwargs)
        assert torch.equal(static, dynamic), f"num_beams={beams}"


def test_compiled_static_cache_decoding_gives_the_eager_tokens():
    """The decoding step compiled as transformers does it for static caches (fullgraph, static shapes; on
    CPU only when asked with ``_compile_all_devices``): the eager tokens, and no recompile on a second call."""
    from transformers import CompileConfig

    torch._dynamo.reset()
    model = trained()
    source = random_batch(2, 6)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    eager = model.generate(source, **kwargs)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")  # no CUDA graphs on CPU
    compile_config._compile_all_devices = True  # transformers' switch for compiling on CPU (testing)
    first = model.generate(source, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert torch.equal(first, eager)
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = model.generate(source, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert torch.equal(again, eager)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_beam_search_reorders_only_the_self_attention_cache(monkeypatch, cache_implementation):
    """Beam search keeps the cross-attention keys/values in place (they are equal within a sentence) and
    gives the tokens and scores of transformers' full reorder."""
    from transformers.cache_utils import EncoderDecoderCache

    model = trained()
    source = random_batch(3, 9)
    mask = torch.ones_like(source)
    mask[1, :4] = 0
    kwargs = dict(
        attention_mask=mask,
        num_beams=4,
        num_return_sequences=2,
        max_new_tokens=10,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        cache_implementation=cache_implementation,
    )
    cross_reorders = []
    real_reorder = EncoderDecoderCache.reorder_cache

    def counting_reorder(self, beam_idx):
        cross_reorders.append(1)
        real_reorder(self, beam_idx)

    monkeypatch.setattr(EncoderDecoderCache, "reorder_cache", counting_reorder)
    ours = model.generate(source, **kwargs)
    assert cross_reorders == []

    def full_reorder(cache, beam_idx):  # transformers' default: both caches, every step
        cache.reorder_cache(beam_idx)
        return cache

    monkeypatch.setattr(
        FixupTransformerForConditionalGeneration, "_reorder_cache", staticmethod(full_reorder)
    )
    full = model.generate(source, **kwargs)
    assert cross_reorders, "the reference run did not take the full reorder path"
    assert torch.equal(ours.sequences, full.sequences)
    torch.testing.assert_close(ours.sequences_scores, full.sequences_scores)


def test_beam_search_and_sampling_run():
    model = trained()
    source = random_batch(2, 7)
    beams = model.generate(source, num_beams=4, num_return_sequences=2, max_new_tokens=8, length_penalty=1.0)
    assert beams.shape[0] == 4 and (beams[:, 0] == model.config.decoder_start_token_id).all()
    torch.manual_seed(0)
    sampled = model.generate(source, do_sample=True, top_k=10, max_new_tokens=8)
    assert sampled.shape[0] == 2


def test_eager_and_sdpa_attention_agree():
    source, decoder_input = random_batch(2, 7), random_batch(2, 5, seed=3)
    mask = torch.ones_like(source)
    mask[1, 4:] = 0
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = trained()
        model.set_attn_implementation(implementation)
        assert model.config._attn_implementation == implementation
        logits[implementation] = model(
            input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input
        ).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-5, atol=1e-5)


def test_extra_padding_changes_nothing_at_real_positions():
    model = trained()
    source, decoder_input = random_batch(2, 6), random_batch(2, 5, seed=3)
    padded = torch.cat([source, torch.full((2, 4), PAD)], dim=1)
    reference = model(input_ids=source, decoder_input_ids=decoder_input).logits
    result = model(
        input_ids=padded, attention_mask=padded.ne(PAD).long(), decoder_input_ids=decoder_input
    ).logits
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-5)

    # Padded decoder positions at the end do not change earlier target positions either.
    padded_target = torch.cat([decoder_input, torch.full((2, 3), PAD)], dim=1)
    target_mask = padded_target.ne(PAD).long()
    result = model(
        input_ids=source, decoder_input_ids=padded_target, decoder_attention_mask=target_mask
    ).logits
    torch.testing.assert_close(result[:, :5], reference, rtol=1e-5, atol=1e-5)


def test_a_sentence_gives_the_same_result_alone_and_in_a_batch():
    model = trained()
    long_source, short_source = random_batch(1, 9, seed=1), random_batch(1, 4, seed=2)
    batch = torch.full((2, 9), PAD)
    batch[0], batch[1, :4] = long_source[0], short_source[0]
    decoder_input = random_batch(2, 5, seed=3)
    together = model(
        input_ids=batch, attention_mask=batch.ne(PAD).long(), decoder_input_ids=decoder_input
    ).logits
    alone = model(input_ids=short_source, decoder_input_ids=decoder_input[1:]).logits
    torch.testing.assert_close(together[1:], alone, rtol=1e-5, atol=1e-5)
    generated_together = model.generate(batch, attention_mask=batch.ne(PAD).long(), max_new_tokens=6)
    generated_alone = model.generate(short_source, max_new_tokens=6)
    width = generated_alone.shape[1]
    assert torch.equal(generated_together[1, :width], generated_alone[0])


def test_labels_are_shifted_and_ignored_positions_do_not_count():
    model = trained(label_smoothing=0.1)
    source = random_batch(2, 6)
    labels = random_batch(2, 5, seed=4)
    padded_labels = torch.cat([labels, torch.full((2, 3), -100)], dim=1)
    loss = model(input_ids=source, labels=labels).loss
    padded_loss = model(input_ids=source, labels=padded_labels).loss
    torch.testing.assert_close(loss, padded_loss)
    out = model(input_ids=source, labels=labels)
    decoder_input = torch.cat([torch.full((2, 1), EOS), labels[:, :-1]], dim=1)
    manual = model(input_ids=source, decoder_input_ids=decoder_input).logits
    torch.testing.assert_close(out.logits, manual)
    summed = model(input_ids=source, labels=labels, num_items_in_batch=1).loss
    torch.testing.assert_close(summed, loss * labels.numel())


def test_gradient_checkpointing_gives_the_same_gradients():
    source, labels = random_batch(2, 7), random_batch(2, 5, seed=4)
    gradients, ffn_calls = [], []
    for checkpointing in (False, True):
        model = trained_like(build()).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        calls = []
        # A pre-hook: checkpointing stops recomputing as soon as the saved tensors are rebuilt, which may
        # be before the FFN returns.
        model.model.encoder.layers[0].ffn.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        model(input_ids=source, labels=labels).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        ffn_calls.append(len(calls))
    torch.testing.assert_close(gradients[0], gradients[1])
    assert ffn_calls == [1, 2]  # checkpointing recomputes the layer in the backward pass


@pytest.mark.parametrize(("normalization", "init"), [("none", "fixup"), ("post_ln", "xavier")])
def test_folded_scalars_give_the_same_logits_with_fewer_modules(normalization, init, tmp_path):
    model = trained(normalization=normalization, init=init)
    source, decoder_input = random_batch(2, 7), random_batch(2, 5, seed=3)
    reference = model(input_ids=source, decoder_input_ids=decoder_input).logits
    model.fold_scalars()
    assert model.config.scalars_folded
    remaining = [m for m in model.modules() if isinstance(m, ScalarBias | ScalarScale)]
    # Only the stack outputs keep their scalars (Fixup: encoder shift+scale, decoder shift).
    assert len(remaining) == (3 if normalization == "none" else 0)
    folded = model(input_ids=source, decoder_input_ids=decoder_input).logits
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(
        reloaded(input_ids=source, decoder_input_ids=decoder_input).logits, reference, rtol=1e-5, atol=1e-5
    )


def test_token_ids_outside_the_vocabulary_raise_a_clear_error():
    model = build()
    too_large = random_batch(1, 5)
    too_large[0, 2] = model.config.vocab_size
    with pytest.raises(
        RuntimeError, match=r"`input_ids` contains a token id outside the vocabulary \[0, 97\)"
    ):
        model(input_ids=too_large, decoder_input_ids=random_batch(1, 3))
    with pytest.raises(RuntimeError, match="decoder_input_ids"):
        model(input_ids=random_batch(1, 5), decoder_input_ids=too_large)


def test_too_long_input_names_max_position_embeddings():
    model = build(max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=random_batch(1, 9), decoder_input_ids=random_batch(1, 3))


@pytest.mark.parametrize(("normalization", "init"), [("none", "fixup"), ("pre_ln", "xavier")])
def test_training_mode_weight_side_scalars_compute_the_same_function(normalization, init):
    # In training mode the scalars act through the weights (folding.scaled_shifted_linear), in eval mode
    # on the activations; with dropout off both must give the same logits and the same gradients.
    source, labels = random_batch(2, 7), random_batch(2, 5, seed=4)
    results = []
    for training in (True, False):
        model = trained(normalization=normalization, init=init).train(training)
        loss = model(input_ids=source, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_fp32_training_keeps_no_scaled_weight_copy_for_backward():
    # A branch multiplier s folded as F.linear(x, s * W) would hold the copy s * W until backward, one
    # weight-sized tensor per branch-final linear; folding.ScaledWeightLinear keeps W itself.
    model = trained().train()
    parameters = {p.data_ptr() for p in model.parameters()}
    final_shapes = {
        tuple(module.weight.shape)
        for name, module in model.named_modules()
        if name.endswith(("out_proj", "fc2"))
    }
    saved = []

    def pack(tensor):
        saved.append((tuple(tensor.shape), tensor.data_ptr()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=random_batch(3, 7), labels=random_batch(3, 5, seed=1)).loss.backward()
    assert any(ptr in parameters for shape, ptr in saved if shape in final_shapes)  # W itself is kept
    assert not [shape for shape, ptr in saved if shape in final_shapes and ptr not in parameters]


def test_backward_through_the_fused_projections_copies_no_gradient_into_shape():
    # On a GPU at translation batch sizes eager steps are launch-bound, so each kernel counts. Splitting a
    # fused QKV/KV output into heads must let backward stack the parts' gradients straight into the
    # projection's layout: one stack per fused projection, no clone to make a permuted gradient contiguous
    # (the split before 2026-11-27 cost one clone per attention, and a stack for the single query too).
    from torch.utils._python_dispatch import TorchDispatchMode

    class Operators(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    model = trained().train()
    loss = model(input_ids=random_batch(3, 7), labels=random_batch(3, 5, seed=1)).loss
    with Operators() as backward:
        loss.backward()
    fused = [m for m in model.modules() if hasattr(m, "qkv_proj") or hasattr(m, "kv_proj")]
    assert backward.names.count("stack") == len(fused)
    assert "clone" not in backward.names


@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned"])
def test_left_padding_gives_the_positions_and_translation_of_the_unpadded_sentence(position_embedding):
    # Positions count the unmasked tokens (fairseq's make_positions), so left pads shift nothing.
    model = trained(position_embedding=position_embedding)
    source = random_batch(1, 6, seed=7)
    padded = torch.cat([torch.full((1, 3), PAD), source], dim=1)
    mask = padded.ne(PAD).long()
    alone = model.model.encoder(input_ids=source).last_hidden_state
    left_padded = model.model.encoder(input_ids=padded, attention_mask=mask).last_hidden_state[:, 3:]
    torch.testing.assert_close(left_padded, alone, rtol=1e-5, atol=1e-5)
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=1)
    assert (
        model.generate(padded, attention_mask=mask, **kwargs).tolist()
        == model.generate(source, **kwargs).tolist()
    )


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_resizing_unshared_embeddings_resizes_the_decoder_and_output_too(tie_word_embeddings):
    model = trained(share_encoder_decoder_embeddings=False, tie_word_embeddings=tie_word_embeddings)
    model.resize_token_embeddings(120)
    assert model.model.encoder.embed_tokens.num_embeddings == 120
    assert model.model.decoder.embed_tokens.num_embeddings == 120
    assert model.lm_head.weight.shape[0] == 120 and model.config.vocab_size == 120
    assert (model.lm_head.weight is model.model.decoder.embed_tokens.weight) == tie_word_embeddings
    labels = random_batch(2, 5, vocab=120, seed=2)
    labels[:, 1] = 119  # a new id on the target side
    assert torch.isfinite(model(input_ids=random_batch(2, 6, vocab=120), labels=labels).loss)


def test_resizing_with_no_size_changes_nothing_with_separate_vocabularies(tmp_path):
    # transformers' resize_token_embeddings() with no argument only returns the input embedding.
    model = build(vocab_size=97, decoder_vocab_size=80, share_encoder_decoder_embeddings=False)
    model.resize_token_embeddings()
    assert model.model.decoder.embed_tokens.num_embeddings == 80 and model.lm_head.weight.shape[0] == 80
    assert model.config.decoder_vocab_size == 80
    model.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).lm_head.weight.shape[0] == 80


@pytest.mark.parametrize("missing", ["pad_token_id", "decoder_start_token_id"])
def test_labels_without_the_token_ids_to_shift_them_name_the_field(missing):
    model = build(**{missing: None})
    with pytest.raises(ValueError, match=f"config.{missing} must be set"):
        model(input_ids=random_batch(1, 4), labels=random_batch(1, 3))


@pytest.mark.parametrize("init", ["fixup", "t_fixup"])
def test_resizing_without_mean_resizing_draws_added_rows_from_the_init_plan(init):
    torch.manual_seed(0)
    model = build(init=init, d_model=64, share_encoder_decoder_embeddings=False)
    heads = {"lm_head": model.lm_head.weight[:97].clone()}
    model.resize_token_embeddings(1097, mean_resizing=False)
    for stack in (model.model.encoder, model.model.decoder):
        table = stack.embed_tokens
        added_std = table.weight[97:].std().item()
        assert added_std == pytest.approx(table.init_std, rel=0.05), (table.init_std, added_std)
    added_head = model.lm_head.weight[97:]
    if init == "fixup":  # rule 1: the classifier starts at zero, new classes too
        assert not added_head.any()
    else:
        assert added_head.std().item() == pytest.approx(model.lm_head.weight[:97].std().item(), rel=0.1)
    assert torch.equal(model.lm_head.weight[:97], heads["lm_head"])


def test_folding_refuses_a_model_in_training_mode():
    model = trained().train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        model.fold_scalars()
    assert not model.config.scalars_folded


def test_forward_and_a_cached_decoding_step_read_nothing_back_to_the_host(monkeypatch):
    # A host read (item / int / bool / tolist of a tensor) is a device sync on a GPU: the CPU stops running
    # ahead. Counting them on CPU pins the no-sync property down without a GPU.
    model = trained()
    source, decoder_input = random_batch(2, 7), random_batch(2, 5, seed=3)
    mask = torch.ones_like(source)  # generate always passes one; transformers would check it for padding
    with torch.no_grad():
        cache = model(input_ids=source, decoder_input_ids=decoder_input, use_cache=True).cache
    reads = []
    for method in ("item", "__int__", "__bool__", "__float__", "tolist"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    with torch.no_grad():
        model(input_ids=source, attention_mask=mask, decoder_input_ids=decoder_input)
        step = random_batch(2, 1, seed=4)
        model(input_ids=source, attention_mask=mask, decoder_input_ids=step, cache=cache, use_cache=True)
    model.train()
    model(input_ids=source, attention_mask=mask, labels=decoder_input).loss.backward()
    monkeypatch.undo()
    assert reads == []


def test_a_static_cache_length_is_not_read_back_for_the_position_check(monkeypatch):
    # A static cache reports its length as a tensor: comparing it with max_position_embeddings in Python
    # would be a host read at every eager decoding step.
    from fixup_transformer.text.modeling_fixup_transformer import _positions

    config = tiny_config()
    reads = []
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: reads.append("__bool__") or True)
    positions = _positions(1, torch.tensor(3), torch.device("cpu"), config)
    monkeypatch.undo()
    assert reads == [] and positions.tolist() == [3]
    with pytest.raises(ValueError, match="max_position_embeddings"):  # an int length is still checked
        _positions(2, config.max_position_embeddings, torch.device("cpu"), config)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_separate_vocabularies_resize_one_side_at_a_time(tmp_path, tie_word_embeddings):
    # fairseq's two dictionaries: resize_token_embeddings is the source side (as MarianMTModel), and
    # resize_decoder_token_embeddings the target side; trained target rows are never cut.
    model = build(
        vocab_size=100, decoder_vocab_size=150, share_encoder_decoder_embeddings=False,
        tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    target_rows = model.lm_head.weight.detach().clone()
    model.resize_token_embeddings(120)
    assert model.model.encoder.embed_tokens.num_embeddings == 120 and model.config.vocab_size == 120
    assert model.model.decoder.embed_tokens.num_embeddings == 150 and model.config.decoder_vocab_size == 150
    assert torch.equal(model.lm_head.weight, target_rows)
    model.resize_decoder_token_embeddings(160)
    assert model.model.decoder.embed_tokens.num_embeddings == 160 and model.lm_head.weight.shape[0] == 160
    assert torch.equal(model.lm_head.weight[:150], target_rows) and model.config.decoder_vocab_size == 160
    assert (model.lm_head.weight is model.model.decoder.embed_tokens.weight) == tie_word_embeddings
    labels = random_batch(2, 5, vocab=160, seed=2)
    labels[:, 1] = 159
    assert torch.isfinite(model(input_ids=random_batch(2, 6, vocab=120), labels=labels).loss)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.vocab_size == 120 and loaded.lm_head.weight.shape[0] == 160
    with pytest.raises(ValueError, match="resize_token_embeddings"):
        build().resize_decoder_token_embeddings(50)


def test_an_explicit_equal_decoder_vocab_size_follows_a_resize(tmp_path):
    # decoder_vocab_size given as vocab_size (shared embeddings): after a resize the saved config loads.
    model = build(vocab_size=97, decoder_vocab_size=97)
    model.resize_token_embeddings(120)
    assert model.config.target_vocab_size == 120 == model.lm_head.weight.shape[0]
    model.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).lm_head.weight.shape[0] == 120
