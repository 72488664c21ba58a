"""fairseq interop: checkpoints of the Fixup authors' fork and of fairseq's transformer, both ways.

The checkpoints are written in fairseq's exact layout (tests/fairseq_reference.py), the logits of the
converted model are compared with fairseq's computation written out independently, and conversion there
and back must give back every tensor and key.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import runpy
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from fairseq_reference import (
    EOS,
    PAD,
    Arch,
    checkpoint_dict,
    fairseq_greedy,
    fairseq_logits,
    fairseq_state,
    write_dictionary,
)
from transformer_helpers import trained_like

from fixup_transformer import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from fixup_transformer.convert.fairseq import (
    ConversionError,
    convert_fairseq_to_hf,
    convert_hf_to_fairseq,
    main,
)
from fixup_transformer.convert.safe_load import CheckpointLoadError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {
    # The authors' IWSLT run: separate dictionaries, output matrix `embed_out`, args Namespace (fairseq 0.6).
    "zero": Arch(flavor="zero", target_vocab=20),
    "zero_shared": Arch(flavor="zero", share_all=True, learned_pos=True),
    "post_ln": Arch(flavor="transformer", share_all=True),
    "pre_ln": Arch(flavor="transformer", normalize_before=True, share_output=True, heads=2),
    # fairseq 2019 key names: fused in_proj, encoder layer_norms.0/1, embed_out.
    "pre_ln_2019": Arch(flavor="transformer", normalize_before=True, modern_keys=False, learned_pos=True),
}


def source_batch() -> torch.Tensor:
    """Source rows right-padded, left-padded (fairseq's default) and unpadded, each ending in </s>."""
    return torch.tensor(
        [
            [5, 9, 11, 7, EOS, PAD, PAD],
            [PAD, PAD, 4, 13, 6, 20, EOS],
            [8, 8, 15, 22, 10, 17, EOS],
        ]
    )


def decoder_batch() -> torch.Tensor:
    return torch.tensor([[EOS, 6, 12, 9, 4], [EOS, 10, 3, 19, 13], [EOS, 7, 7, 14, 5]])


def save_checkpoint(tmp_path, name: str, arch: Arch, config_kind: str = "args", **torch_save_kwargs):
    state = fairseq_state(arch, seed=len(name))
    path = tmp_path / f"{name}.pt"
    torch.save(checkpoint_dict(arch, state, config_kind), path, **torch_save_kwargs)
    return path, state


def logits_of(model_dir, src, tgt) -> torch.Tensor:
    model = FixupTransformerForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=src, attention_mask=src.ne(PAD), decoder_input_ids=tgt).logits


def assert_same_state(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)  # same keys, same order
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


# ---------------------------------------------------------------------------------------------------------
# Same function as fairseq


@pytest.mark.parametrize("name", list(ARCHS))
def test_converted_model_computes_fairseq_logits(tmp_path, name):
    arch = ARCHS[name]
    kind = {"post_ln": "cfg", "pre_ln": "cfg_nested"}.get(name, "args")
    path, state = save_checkpoint(tmp_path, name, arch, config_kind=kind)
    out = convert_fairseq_to_hf(path, tmp_path / "hf")
    src, tgt = source_batch(), decoder_batch()
    expected = fairseq_logits(state, arch, src, tgt)
    torch.testing.assert_close(logits_of(out, src, tgt), expected, rtol=1e-4, atol=1e-4)


def test_converted_fixup_model_keeps_the_authors_recipe(tmp_path):
    path, state = save_checkpoint(tmp_path, "zero", ARCHS["zero"])
    config = FixupTransformerConfig.from_pretrained(convert_fairseq_to_hf(path, tmp_path / "hf"))
    assert (config.normalization, config.init, config.linear_bias) == ("none", "fixup", False)
    assert config.fixup_cross_attention_depth == 12  # MultiheadAttentionZero's default num_blocks
    assert config.fixup_zero == "last_layer"  # the paper's rule 1, as the authors' code initialises
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (1, 2, 0)
    assert config.decoder_start_token_id == EOS and config.position_offset == PAD + 1
    assert not config.tie_word_embeddings and config.dropout == 0.3 and config.label_smoothing == 0.1
    assert (config.vocab_size, config.decoder_vocab_size) == (24, 20)  # de and en dictionaries
    assert "AutoModelForSeq2SeqLM" in config.auto_map  # Hub-ready: the model code is written beside it
    # The authors subtract their scalar biases; here they are added: the stored sign flips.
    model = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert model.model.encoder.layers[0].ffn.activation_shift.bias.item() == pytest.approx(
        -state["encoder.layers.0.shift2.bias"].item()
    )


def test_greedy_generation_with_cache_matches_fairseq_decoding(tmp_path):
    arch = ARCHS["pre_ln"]
    path, state = save_checkpoint(tmp_path, "pre_ln", arch)
    model = FixupTransformerForConditionalGeneration.from_pretrained(
        convert_fairseq_to_hf(path, tmp_path / "hf")
    )
    src = source_batch()
    generated = model.eval().generate(
        input_ids=src,
        attention_mask=src.ne(PAD),
        max_new_tokens=6,
        min_new_tokens=6,
        num_beams=1,
        do_sample=False,
        forced_eos_token_id=None,  # the reference never ends (min-len = steps); the export's own default would
    )
    expected = fairseq_greedy(state, arch, src, steps=6)
    assert torch.equal(generated, expected)
    # The export's own defaults: fairseq never picks <pad>, and decodes up to 200 tokens, not 20.
    generation = model.generation_config
    assert generation.suppress_tokens == [PAD] and generation.max_length > 20
    # fairseq's --min-len 1 (no empty output) and its </s> forced after the last allowed token
    assert generation.min_length == 2 and generation.forced_eos_token_id == model.config.eos_token_id


# ---------------------------------------------------------------------------------------------------------
# There and back


@pytest.mark.parametrize("name", ["zero", "zero_shared", "post_ln", "pre_ln_2019"])
def test_round_trip_gives_back_every_tensor_and_key(tmp_path, name):
    arch = ARCHS[name]
    kind = "cfg" if name == "post_ln" else "args"
    path, _ = save_checkpoint(tmp_path, name, arch, config_kind=kind)
    original = load_checkpoint(path)
    convert_fairseq_to_hf(path, tmp_path / "hf")
    back = load_checkpoint(convert_hf_to_fairseq(tmp_path / "hf", tmp_path / "back" / "checkpoint.pt"))
    assert_same_state(back["model"], original["model"])
    assert back[kind] == original[kind]
    if arch.share_all:  # fairseq's tied modules save one tensor under several names
        assert back["model"]["decoder.embed_tokens.weight"] is back["model"]["encoder.embed_tokens.weight"]


def test_round_trip_of_a_legacy_format_fp16_checkpoint(tmp_path):
    """torch < 1.6 wrote a non-zip format, and --fp16 runs save half-precision weights."""
    arch = ARCHS["zero"]
    state = {
        key: value.half() if value.is_floating_point() else value
        for key, value in fairseq_state(arch).items()
    }
    path = tmp_path / "old.pt"
    torch.save(checkpoint_dict(arch, state), path, _use_new_zipfile_serialization=False)
    out = convert_fairseq_to_hf(path, tmp_path / "hf")
    assert FixupTransformerForConditionalGeneration.from_pretrained(out).dtype == torch.float16
    back = load_checkpoint(convert_hf_to_fairseq(out, tmp_path / "back.pt"))
    assert_same_state(back["model"], state)


def test_model_trained_here_exports_to_fairseq_with_its_scalars_folded(tmp_path):
    """An LN model fine-tuned in this package has non-identity Fixup scalars; fairseq gets them folded."""
    arch = ARCHS["post_ln"]
    path, _ = save_checkpoint(tmp_path, "post_ln", arch)
    model = FixupTransformerForConditionalGeneration.from_pretrained(
        convert_fairseq_to_hf(path, tmp_path / "hf")
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("_shift.bias", "output_scale.weight")):
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(tmp_path / "tuned")
    (tmp_path / "tuned" / "fairseq").mkdir()
    for sidecar in (tmp_path / "hf" / "fairseq").iterdir():
        (tmp_path / "tuned" / "fairseq" / sidecar.name).write_bytes(sidecar.read_bytes())
    back = load_checkpoint(convert_hf_to_fairseq(tmp_path / "tuned", tmp_path / "tuned.pt"))
    src, tgt = source_batch(), decoder_batch()
    torch.testing.assert_close(
        fairseq_logits(back["model"], arch, src, tgt),
        logits_of(tmp_path / "tuned", src, tgt),
        rtol=1e-5,
        atol=1e-5,
    )


def test_converted_layer_norm_model_fine_tunes_with_its_biases(tmp_path):
    """Training mode folds the scalars into the weights (folding.py); with linear biases it must still
    compute the eval-mode function, and the biases must learn."""
    path, _ = save_checkpoint(tmp_path, "pre_ln", ARCHS["pre_ln"])
    out = convert_fairseq_to_hf(path, tmp_path / "hf")
    model = FixupTransformerForConditionalGeneration.from_pretrained(out, dropout=0.0)
    src, tgt = source_batch(), decoder_batch()
    batch = dict(input_ids=src, attention_mask=src.ne(PAD), decoder_input_ids=tgt)
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    logits = model.train()(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    logits.logsumexp(-1).sum().backward()
    assert model.model.encoder.layers[0].self_attn.qkv_proj.bias.grad.abs().sum() > 0


def test_model_without_sidecar_exports_to_current_fairseq_layout(tmp_path):
    config = FixupTransformerConfig(
        vocab_size=24, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, normalization="pre_ln",
        init="xavier", linear_bias=True, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        position_offset=2, max_position_embeddings=66, tie_word_embeddings=True,
    )  # fmt: skip
    FixupTransformerForConditionalGeneration(config).save_pretrained(tmp_path / "hf")
    checkpoint = load_checkpoint(convert_hf_to_fairseq(tmp_path / "hf", tmp_path / "fs.pt"))
    args = checkpoint["args"]
    assert (args.arch, args.encoder_normalize_before, args.max_source_positions) == ("transformer", True, 64)
    arch = Arch(
        flavor="transformer", normalize_before=True, d=16, ffn=20, encoder_layers=1, heads=2, share_all=True
    )
    expected_keys = set(fairseq_state(arch))
    assert set(checkpoint["model"]) == expected_keys
    src, tgt = source_batch(), decoder_batch()
    torch.testing.assert_close(
        fairseq_logits(checkpoint["model"], arch, src, tgt),
        logits_of(tmp_path / "hf", src, tgt),
        rtol=1e-5,
        atol=1e-5,
    )


def test_native_model_with_its_own_ids_is_refused_with_the_reason(tmp_path):
    config = FixupTransformerConfig(
        vocab_size=24, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=20, decoder_ffn_dim=20
    )
    FixupTransformerForConditionalGeneration(config).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="pad_token_id=1 and position_offset=2"):
        convert_hf_to_fairseq(tmp_path / "hf", tmp_path / "fs.pt")


def test_separate_vocabularies_resize_side_by_side(tmp_path):
    # As MarianMTModel: resize_token_embeddings is the source dictionary, resize_decoder_token_embeddings
    # the target one (resizing both to one size could cut trained target rows).
    path, _ = save_checkpoint(tmp_path, "zero", ARCHS["zero"])
    model = FixupTransformerForConditionalGeneration.from_pretrained(
        convert_fairseq_to_hf(path, tmp_path / "hf")
    )
    target_size = model.config.target_vocab_size
    model.resize_token_embeddings(32)
    assert (model.config.vocab_size, model.config.target_vocab_size) == (32, target_size)
    model.resize_decoder_token_embeddings(32)
    assert (model.config.vocab_size, model.config.target_vocab_size) == (32, 32)
    assert model.model.decoder.embed_tokens.num_embeddings == model.lm_head.out_features == 32
    src = torch.tensor([[30, 5, EOS]])
    assert model(input_ids=src, decoder_input_ids=torch.tensor([[EOS, 31]])).logits.shape == (1, 2, 32)


def test_configs_saved_before_the_interop_fields_load_the_same_model(tmp_path):
    config = FixupTransformerConfig(
        vocab_size=24, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=20, decoder_ffn_dim=20
    )
    model = trained_like(FixupTransformerForConditionalGeneration(config)).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for field in ("linear_bias", "position_offset", "decoder_vocab_size"):
        del saved[field]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    assert not [
        name for name in reloaded.state_dict() if name.endswith(("proj.bias", "fc1.bias", "fc2.bias"))
    ]
    src = torch.tensor([[5, 9, 11, 1, 0, 0]])
    with torch.no_grad():
        before = model(input_ids=src, attention_mask=src.ne(0), decoder_input_ids=src).logits
        after = reloaded(input_ids=src, attention_mask=src.ne(0), decoder_input_ids=src).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(linear_bias=True), "linear_bias=True` is for the LayerNorm variants"),
        (dict(decoder_vocab_size=20), "needs `share_encoder_decoder_embeddings=False`"),
        (
            dict(decoder_vocab_size=20, share_encoder_decoder_embeddings=False, decoder_start_token_id=21),
            "[0, 20)",
        ),
        (dict(position_offset=-1), "position_offset"),
    ],
)
def test_interop_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FixupTransformerConfig(vocab_size=24, d_model=16, **fields)


# ---------------------------------------------------------------------------------------------------------
# Dictionaries and the command line


def zero_checkpoint_with_dictionaries(tmp_path) -> tuple[Path, Path]:
    """A transformer_zero checkpoint and a data-bin folder with its dict.de.txt / dict.en.txt."""
    arch = ARCHS["zero"]
    path, _ = save_checkpoint(tmp_path, "zero", arch)
    data = tmp_path / "data-bin"
    data.mkdir()
    for lang, stack in (("de", "encoder"), ("en", "decoder")):
        write_dictionary(data / f"dict.{lang}.txt", arch.rows(stack))
    return path, data


def test_dictionaries_are_checked_and_kept_beside_the_weights(tmp_path, capsys):
    path, data = zero_checkpoint_with_dictionaries(tmp_path)
    assert main(["to-hf", str(path), str(tmp_path / "hf"), "--data-dir", str(data)]) == 0
    assert (tmp_path / "hf" / "fairseq" / "dict.de.txt").read_text() == (data / "dict.de.txt").read_text()
    assert main(["to-fairseq", str(tmp_path / "hf"), str(tmp_path / "back" / "checkpoint.pt")]) == 0
    assert (tmp_path / "back" / "dict.en.txt").is_file()

    small = tmp_path / "dict.small.txt"
    small.write_text("a 3\nb 2\n")
    assert main(["to-hf", str(path), str(tmp_path / "bad"), "--dict", str(small)]) == 2
    error = capsys.readouterr().err
    assert "dict.small.txt: 6 symbols, but the encoder embedding has 24 rows" in error
    assert not (tmp_path / "bad").exists()

    # Two dictionaries of one file name would be one file in the export's sidecar.
    lines = (data / "dict.de.txt").read_text().splitlines()
    other = [f"{lines[0].split()[0]} 999999", *lines[1:]]  # same symbols, other counts: another file
    for side, text in (("src", lines), ("tgt", other)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "dict.txt").write_text("\n".join(text) + "\n")
    dicts = [str(tmp_path / "src" / "dict.txt"), str(tmp_path / "tgt" / "dict.txt")]
    assert main(["to-hf", str(path), str(tmp_path / "same_name"), "--dict", *dicts]) == 2
    assert "have the same file name but differ" in capsys.readouterr().err


def test_dictionary_lines_split_as_fairseq_reads_them(tmp_path):
    # fairseq iterates the file (lines end at "\n" only); a symbol may hold U+2028, NEL or a form feed.
    from fixup_transformer.convert.fairseq_options import read_dictionary

    path = tmp_path / "dict.de.txt"
    path.write_text("a\u2028b 3\nc\x85d 2\r\ne\x0cf 1\n", encoding="utf-8")
    assert list(read_dictionary(path).symbols[4:]) == ["a\u2028b", "c\x85d", "e\x0cf"]


def test_an_overwrite_line_gives_the_symbol_a_new_index_as_fairseq_does(tmp_path):
    from fixup_transformer.convert.fairseq_options import read_dictionary

    path = tmp_path / "dict.de.txt"
    path.write_text("a 3\n<unk> 0 #fairseq:overwrite\nb 1\n", encoding="utf-8")
    assert list(read_dictionary(path).symbols[4:]) == ["a", "<unk>", "b"]  # fairseq: indices 4, 5, 6


def test_the_export_never_replaces_its_own_input_or_a_folder_that_is_no_export(tmp_path, capsys):
    arch = ARCHS["zero"]
    (tmp_path / "checkpoints").mkdir()
    path, _ = save_checkpoint(tmp_path / "checkpoints", "zero", arch)
    for lang, stack in (("de", "encoder"), ("en", "decoder")):
        write_dictionary(tmp_path / "checkpoints" / f"dict.{lang}.txt", arch.rows(stack))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    argv = ["to-hf", str(path), str(tmp_path / "checkpoints"), "--data-dir", str(tmp_path / "checkpoints")]
    assert main(argv) == 2 and "holds the input" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    argv = ["to-hf", str(path), str(other), "--data-dir", str(tmp_path / "checkpoints")]
    assert main(argv) == 2 and "is not a model export" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    assert (other / "todo.txt").read_text() == "keep me"


def fairseq_preprocess_dictionary(sentences: list[list[str]], path) -> list[str]:
    """dict.<lang>.txt as fairseq-preprocess writes it: words by count (ties alphabetical), the 4 specials
    implied, padded to a multiple of 8 ids with madeupwordNNNN (Dictionary.finalize)."""
    counts = Counter(dict(sorted(Counter(word for sentence in sentences for word in sentence).items())))
    words = [word for word, _ in counts.most_common()]
    padding = [f"madeupword{i:04d}" for i in range(-(len(words) + 4) % 8)]
    lines = [f"{word} {counts[word]}" for word in words] + [f"{word} 0" for word in padding]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ["<s>", "<pad>", "</s>", "<unk>", *words, *padding]


def encode_line(words: list[str], symbols: list[str]) -> list[int]:
    """fairseq's Dictionary.encode_line: unknown words to <unk>, </s> appended."""
    index = {symbol: i for i, symbol in enumerate(symbols)}
    return [index.get(word, 3) for word in words] + [EOS]


def test_real_multi30k_sentences_through_fairseq_dictionaries(tmp_path, multi30k):
    """Real sentences, dictionaries built the way fairseq-preprocess builds them (separate de/en), ids
    made the way fairseq makes them, and a left-padded source batch as fairseq batches it."""

    def read(split: str, lang: str, n: int) -> list[list[str]]:
        with gzip.open(multi30k / f"{split}.{lang}.gz", "rt", encoding="utf-8") as handle:
            return [next(handle).split() for _ in range(n)]

    data = tmp_path / "data-bin"
    data.mkdir()
    symbols = {
        lang: fairseq_preprocess_dictionary(read("train", lang, 200), data / f"dict.{lang}.txt")
        for lang in ("de", "en")
    }
    arch = Arch(flavor="zero", vocab=len(symbols["de"]), target_vocab=len(symbols["en"]))
    state = fairseq_state(arch)
    torch.save(checkpoint_dict(arch, state), tmp_path / "checkpoint_best.pt")
    out = convert_fairseq_to_hf(tmp_path / "checkpoint_best.pt", tmp_path / "hf", data_dir=data)
    config = FixupTransformerConfig.from_pretrained(out)
    assert (config.vocab_size, config.decoder_vocab_size) == (len(symbols["de"]), len(symbols["en"]))
    assert config.vocab_size % 8 == 0 and config.decoder_vocab_size % 8 == 0

    sources = [encode_line(words, symbols["de"]) for words in read("val", "de", 6)]
    targets = [[EOS, *encode_line(words, symbols["en"])[:-1]] for words in read("val", "en", 6)]
    width = max(map(len, sources))
    src = torch.tensor([[PAD] * (width - len(ids)) + ids for ids in sources])  # fairseq left-pads sources
    length = max(map(len, targets))
    tgt = torch.tensor([ids + [PAD] * (length - len(ids)) for ids in targets])
    real = tgt.ne(PAD)
    expected = fairseq_logits(state, arch, src, tgt)[real]
    # A random 'trained' net at these lengths reaches logits in the hundreds: fp32 noise scales with them.
    scale = float(expected.abs().max())
    torch.testing.assert_close(logits_of(out, src, tgt)[real], expected, rtol=1e-4, atol=1e-5 * scale)


def test_script_is_a_thin_wrapper_over_the_package_command(tmp_path, monkeypatch, capsys):
    path, _ = save_checkpoint(tmp_path, "zero", ARCHS["zero"])
    monkeypatch.setattr(sys, "argv", ["convert_fairseq.py", "to-hf", str(path), str(tmp_path / "hf")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "scripts" / "convert_fairseq.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "no --dict/--data-dir given" in capsys.readouterr().err
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_console_entry_point_is_declared():
    declared = 'fixup-convert-fairseq = "fixup_transformer.convert.fairseq:main"'
    assert declared in (ROOT / "pyproject.toml").read_text().splitlines()


# ---------------------------------------------------------------------------------------------------------
# Refusals


def test_to_fairseq_errors_are_one_line(tmp_path, capsys):
    assert main(["to-fairseq", str(tmp_path / "nothing"), str(tmp_path / "fs.pt")]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(
        json.dumps({"model_type": "fixup_transformer", "normalization": "none", "linear_bias": True})
    )
    assert main(["to-fairseq", str(tmp_path / "bad"), str(tmp_path / "fs.pt")]) == 2
    assert "linear_bias=True" in capsys.readouterr().err
    assert not (tmp_path / "fs.pt").exists()


def test_unsupported_architecture_options_are_named(tmp_path):
    arch = ARCHS["post_ln"]
    state = fairseq_state(arch)
    state["encoder.layernorm_embedding.weight"] = torch.ones(arch.d)
    path = tmp_path / "lne.pt"
    torch.save(checkpoint_dict(arch, state), path)
    with pytest.raises(ConversionError, match=r"lne\.pt: .*encoder\.layernorm_embedding\.weight"):
        convert_fairseq_to_hf(path, tmp_path / "hf")
    torch.save(checkpoint_dict(arch, fairseq_state(arch), layernorm_embedding=True), path)
    with pytest.raises(ConversionError, match="layernorm_embedding"):
        convert_fairseq_to_hf(path, tmp_path / "hf")


def test_t_fixup_fork_checkpoints_are_refused_by_name(tmp_path):
    # T-Fixup's fork keeps LayerNorm weights it never uses: without this check it would pass for fairseq's
    # transformer and fail later with a message that names no file.
    arch = ARCHS["post_ln"]
    path = tmp_path / "tfixup.pt"
    torch.save(checkpoint_dict(arch, fairseq_state(arch), dont_use_layernorm=True, Tfixup=True), path)
    with pytest.raises(
        ConversionError, match=r"tfixup\.pt: T-Fixup fork checkpoints \(--dont-use-layernorm\)"
    ):
        convert_fairseq_to_hf(path, tmp_path / "hf")


@pytest.mark.parametrize("langtok", [{"decoder_langtok": True}, {"encoder_langtok": "src"}])
def test_multilingual_language_token_checkpoints_are_refused(tmp_path, langtok):
    # M2M-100-style tasks decode from a language token: no weight shows it, the options do.
    arch = ARCHS["post_ln"]
    path = tmp_path / "m2m.pt"
    torch.save(checkpoint_dict(arch, fairseq_state(arch), **langtok), path)
    with pytest.raises(ConversionError, match=r"m2m\.pt: language tokens"):
        convert_fairseq_to_hf(path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_to_fairseq_copies_only_plain_dictionary_names_beside_the_output(tmp_path):
    path, data = zero_checkpoint_with_dictionaries(tmp_path)
    assert main(["to-hf", str(path), str(tmp_path / "hf"), "--data-dir", str(data)]) == 0
    source = tmp_path / "hf" / "fairseq" / "source.json"
    record = json.loads(source.read_text())
    for name in ("../../outside.txt", "checkpoint.pt"):  # out of the folder; over the checkpoint itself
        source.write_text(json.dumps({**record, "dictionaries": [name]}))
        with pytest.raises(ConversionError, match="is not a plain file name beside the output"):
            convert_hf_to_fairseq(tmp_path / "hf", tmp_path / "back" / "checkpoint.pt")
        assert not (tmp_path / "back" / "checkpoint.pt").exists() and not (tmp_path / "outside.txt").exists()


def test_to_fairseq_refuses_a_model_resized_after_conversion(tmp_path):
    path, data = zero_checkpoint_with_dictionaries(tmp_path)
    convert_fairseq_to_hf(path, tmp_path / "hf", data_dir=data)
    model = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path / "hf")
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(tmp_path / "hf")  # the fairseq/ sidecar stays as it was
    with pytest.raises(ConversionError, match="no longer fit its embeddings"):
        convert_hf_to_fairseq(tmp_path / "hf", tmp_path / "back" / "checkpoint.pt")


def test_a_model_section_without_languages_keeps_the_task_s(tmp_path):
    # fairseq 0.12 stores a legacy --arch's args as cfg.model, with source_lang=None where the task inferred it.
    from fixup_transformer.convert.fairseq_options import flat_options

    config = {
        "task": {"source_lang": "en", "target_lang": "de"},
        "model": {"source_lang": None, "dropout": 0.3},
    }
    options = flat_options("cfg", config)
    assert (options["source_lang"], options["target_lang"], options["dropout"]) == ("en", "de", 0.3)


@pytest.mark.parametrize("shape", ["shared", "cycle"])
def test_a_config_built_to_explode_is_refused_quickly(shape):
    # A pickle can share one list many times (60 doublings: 2**60 entries from a ~1 KB file) or make a list
    # contain itself; copying the config must stop with an error, not hang or recurse without end.
    from fixup_transformer.convert.safe_load import plain

    value: list = []
    if shape == "shared":
        for _ in range(60):
            value = [value, value]
    else:
        value.append(value)
    with pytest.raises(ValueError, match="more than 100000 entries|nests deeper than 64 levels"):
        plain(argparse.Namespace(arch="transformer", extra=value))


# ---------------------------------------------------------------------------------------------------------
# Loading only weights and plain config


@pytest.fixture
def fake_modules():
    """Register classes under fairseq/omegaconf module names while a test pickles them, then remove them
    (the loader must cope without those modules, as it does on a machine without fairseq)."""
    added = []

    def add(module_name: str, cls: type) -> type:
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        cls.__module__, cls.__qualname__ = module_name, cls.__name__
        setattr(sys.modules[module_name], cls.__name__, cls)
        return cls

    yield add
    for name in added:
        del sys.modules[name]


def test_training_bookkeeping_objects_are_read_as_inert_stand_ins(tmp_path, fake_modules):
    calls = []

    class AverageMeter:
        def __setstate__(self, state):  # would run if the loader rebuilt the real class
            calls.append(state)

    meter = fake_modules("fairseq.logging.meters", AverageMeter)()
    meter.val, meter.count = 2.5, 7
    arch = ARCHS["zero"]
    top = checkpoint_dict(arch, fairseq_state(arch))
    top["extra_state"]["metrics"] = {"train": {"loss": meter}}
    path = tmp_path / "with_meters.pt"
    torch.save(top, path)
    del sys.modules["fairseq.logging.meters"].AverageMeter
    loaded = load_checkpoint(path)
    assert calls == []
    assert loaded["extra_state"]["metrics"]["train"]["loss"].state == {"val": 2.5, "count": 7}
    assert convert_fairseq_to_hf(path, tmp_path / "hf").is_dir()


def test_omegaconf_config_of_fairseq_0_10_is_read_without_omegaconf(tmp_path, fake_modules):
    """fairseq 0.10.x pickled the DictConfig itself: containers keep `_content`, value nodes `_val`."""

    class DictConfig:
        pass

    class AnyNode:
        pass

    fake_modules("omegaconf.dictconfig", DictConfig)
    fake_modules("omegaconf.nodes", AnyNode)

    def node(value):
        n = AnyNode()
        n.__dict__.update(_val=value, _metadata=None, _parent=None)
        return n

    def container(content):
        c = DictConfig()
        c.__dict__.update(_content=content, _metadata=None, _parent=None, _flags_cache={})
        return c

    arch = ARCHS["pre_ln"]
    top = checkpoint_dict(arch, fairseq_state(arch), config_kind="cfg")
    cfg = top["cfg"]
    top["cfg"] = container(
        {
            "model": node(cfg["model"]),
            "task": container({key: node(value) for key, value in cfg["task"].items()}),
            "criterion": container({key: node(value) for key, value in cfg["criterion"].items()}),
        }
    )
    path = tmp_path / "dictconfig.pt"
    torch.save(top, path)
    out = convert_fairseq_to_hf(path, tmp_path / "hf")
    assert FixupTransformerConfig.from_pretrained(out).normalization == "pre_ln"
    record = json.loads((out / "fairseq" / "source.json").read_text())
    assert record["config"]["task"]["source_lang"] == "de"


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w')",))

    arch = ARCHS["zero"]
    top = checkpoint_dict(arch, fairseq_state(arch))
    top["extra_state"]["x"] = Payload()
    path = tmp_path / "evil.pt"
    torch.save(top, path)
    with pytest.raises(CheckpointLoadError, match=r"evil\.pt: refusing to load.*builtins\.eval"):
        load_checkpoint(path)
    assert main(["to-hf", str(path), str(tmp_path / "hf")]) == 2
    assert not marker.exists()


def test_files_that_are_not_checkpoints_get_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointLoadError, match=r"junk\.pt: not a torch\.save checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointLoadError, match=r"missing\.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(CheckpointLoadError, match="holds a Tensor"):
        load_checkpoint(tensor_only)


def test_namespace_args_survive_without_unpickling_anything_else(tmp_path):
    path = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(arch="transformer", lr=[0.1]), "model": {}}, path)
    assert load_checkpoint(path)["args"].lr == [0.1]
    with pytest.raises(ConversionError, match="no `model` state dict"):
        convert_fairseq_to_hf(path, tmp_path / "hf")
