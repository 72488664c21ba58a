"""fairseq checkpoints <-> this package's ``fixup_transformer`` model type.

    to HF:      fairseq ``checkpoint_best.pt`` (+ ``dict.*.txt``) -> export directory
                (``config.json`` + ``model.safetensors`` + ``fairseq/`` sidecar), loadable with
                ``FixupTransformerForConditionalGeneration.from_pretrained``
    to fairseq: export directory -> ``checkpoint.pt`` in the fairseq layout (+ the dictionaries)

Covered: the Fixup authors' ``transformer_zero`` fork and fairseq's ``transformer`` (post-LN and pre-LN),
see :mod:`.fairseq_layout` for the key plan and the sources it follows. The converted model computes
what fairseq computes: LayerNorm checkpoints get ``linear_bias=True``, positions start at
``padding_idx + 1`` (``position_offset``) and skip pads, and fairseq's dictionary ids
(``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3; decoding starts with ``</s>``) go into the config.

The ``fairseq/`` sidecar keeps what the HF model has no place for -- the original ``args``/``cfg``, the
key spelling, fairseq's bookkeeping buffers (``version``, ``_float_tensor``) and the dictionaries -- so
the way back writes the original checkpoint's exact key set and tensors. Nothing here imports fairseq.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..atomic_files import replacing
from ..evaluation.translate import position_limit
from ..hub import add_remote_code
from ..text import FixupTransformerConfig, FixupTransformerForConditionalGeneration
from ..training.checkpoint import atomic_write_json, export_pretrained, save_state_dict
from .fairseq_layout import (
    FIXUP,
    TRANSFORMER,
    Layout,
    Shape,
    build_plan,
    fairseq_to_hf,
    hf_to_fairseq,
    is_buffer_key,
    planned_fairseq_keys,
    planned_hf_keys,
)
from .fairseq_options import (
    FAIRSEQ_SPECIALS,
    FairseqDictionary,
    find_dictionaries,
    flat_options,
    from_json_compatible,
    option,
    raw_config,
    read_dictionary,
    to_json_compatible,
)
from .safe_load import load_checkpoint

SIDECAR_DIR = "fairseq"
SOURCE_FILE = "source.json"
BUFFERS_FILE = "buffers.safetensors"
SIDECAR_FORMAT = 1
# The authors' MultiheadAttentionZero defaults num_blocks to 12 and the decoder's encoder attention
# never passes it: their cross-attention init used L = 12 whatever the depth.
AUTHORS_CROSS_ATTENTION_DEPTH = 12
# fairseq's "gelu" is the exact (erf) GELU, as nn.GELU(); its tanh approximations are not supported.
SUPPORTED_ACTIVATIONS = ("relu", "gelu")


class ConversionError(ValueError):
    """A checkpoint or export this converter cannot translate exactly; the message says why."""


@dataclass(frozen=True)
class FairseqSource:
    """A fairseq checkpoint as read: its weights, config and the layout they were found in."""

    state: dict[str, torch.Tensor]
    config_kind: str  # "args" or "cfg"
    config: Any
    options: dict[str, Any]
    layout: Layout
    shape: Shape


# ---------------------------------------------------------------------------------------------------------
# Reading a fairseq checkpoint


def _model_state(checkpoint: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.get("model")
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: no `model` state dict in the checkpoint")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: `model.{key}` is a {type(value).__name__}, not a tensor")
    return dict(state)


def _flavor(state: dict[str, torch.Tensor]) -> str:
    if "encoder.shift0.bias" in state or "encoder.layers.0.shift0.bias" in state:
        return FIXUP
    if any(".layer_norm" in key or "_layer_norm." in key for key in state):
        return TRANSFORMER
    raise ConversionError(
        "neither the Fixup authors' transformer_zero (shiftN/scaleN scalars) nor fairseq's transformer "
        "(LayerNorms); other architectures are not supported"
    )


def detect_layout(state: dict[str, torch.Tensor]) -> Layout:
    learned = [f"{stack}.embed_positions.weight" in state for stack in ("encoder", "decoder")]
    if learned[0] != learned[1]:
        raise ConversionError("learned positions in one stack and sinusoidal in the other are not supported")
    output_key = next(
        (key for key in ("decoder.output_projection.weight", "decoder.embed_out") if key in state), None
    )
    return Layout(
        flavor=_flavor(state),
        fused_attention="encoder.layers.0.self_attn.in_proj_weight" in state,
        indexed_encoder_norms="encoder.layers.0.layer_norms.0.weight" in state,
        output_key=output_key,
        learned_positions=learned[0],
    )


def _layer_count(state: dict[str, torch.Tensor], stack: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(rf"{stack}\.layers\.(\d+)\.", key))}
    if not indices:
        raise ConversionError(f"no `{stack}.layers.*` weights in the checkpoint")
    if indices != set(range(max(indices) + 1)):
        raise ConversionError(f"`{stack}.layers` indices are not contiguous: {sorted(indices)}")
    return max(indices) + 1


def _normalization(state: dict[str, torch.Tensor], options: dict[str, Any], flavor: str) -> str:
    if flavor == FIXUP:
        return "none"
    before = [option(options, f"{stack}_normalize_before", bool, False) for stack in ("encoder", "decoder")]
    if before[0] != before[1]:
        raise ConversionError(
            "encoder_normalize_before != decoder_normalize_before; this model type uses one placement"
        )
    if not before[0]:
        return "post_ln"
    for stack in ("encoder", "decoder"):
        if f"{stack}.layer_norm.weight" not in state:
            raise ConversionError(
                f"pre-LN without the final `{stack}.layer_norm` (no_decoder_final_norm) is not supported"
            )
    return "pre_ln"


def detect_shape(state: dict[str, torch.Tensor], options: dict[str, Any], layout: Layout) -> Shape:
    share = option(options, "share_all_embeddings", bool, False)
    tie = share or option(options, "share_decoder_input_output_embed", bool, False)
    if not tie and layout.output_key is None:
        tie = True  # no output matrix saved: fairseq projects with the decoder embedding
    return Shape(
        encoder_layers=_layer_count(state, "encoder"),
        decoder_layers=_layer_count(state, "decoder"),
        normalization=_normalization(state, options, layout.flavor),
        share_embeddings=share,
        tie_output=tie,
    )


def _reject_unsupported_options(options: dict[str, Any]) -> None:
    """Options that change the computation without leaving a weight we would trip over."""
    for name, what in (
        ("no_token_positional_embeddings", "models without positional embeddings"),
        ("layernorm_embedding", "a LayerNorm on the embeddings (layernorm_embedding)"),
        ("cross_self_attention", "cross_self_attention"),
        ("adaptive_input", "adaptive input embeddings"),
        ("no_cross_attention", "decoders without cross-attention"),
        # T-Fixup's fork keeps (unused) LayerNorm weights, so it would otherwise pass for fairseq's transformer.
        ("dont_use_layernorm", "T-Fixup fork checkpoints (--dont-use-layernorm)"),
        ("Tfixup", "T-Fixup fork checkpoints (--Tfixup)"),
    ):
        if option(options, name, bool, False):
            raise ConversionError(f"{what} are not supported by this model type")
    # Multilingual tasks (M2M-100 style) decode from a language token the HF model would not be given.
    if option(options, "decoder_langtok", bool, False) or options.get("encoder_langtok") not in (None, ""):
        raise ConversionError(
            "language tokens (encoder_langtok / decoder_langtok of a multilingual task) are not supported: "
            "decoding would not start from the language token"
        )
    if options.get("adaptive_softmax_cutoff") not in (None, "", []):
        raise ConversionError(
            "adaptive softmax (adaptive_softmax_cutoff) is not supported by this model type"
        )
    activation = option(options, "activation_fn", str, "relu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ConversionError(f"activation_fn={activation!r} is not supported (only relu and gelu)")


def _reject_unplanned_keys(state: dict[str, torch.Tensor], planned: set[str]) -> None:
    unknown = sorted(key for key in state if key not in planned and not is_buffer_key(key))
    if unknown:
        raise ConversionError(
            f"weights this model type has no place for: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''} (an architecture option that is not supported)"
        )


def read_fairseq_checkpoint(path: str | Path) -> FairseqSource:
    path = Path(path)
    checkpoint = load_checkpoint(path)
    state = _model_state(checkpoint, path)
    try:
        kind, config = raw_config(checkpoint)
        options = flat_options(kind, config)
        _reject_unsupported_options(options)
        layout = detect_layout(state)
        shape = detect_shape(state, options, layout)
        _reject_unplanned_keys(state, planned_fairseq_keys(build_plan(shape, layout)))
    except ValueError as error:
        raise ConversionError(f"{path}: {error}") from None
    return FairseqSource(state, kind, config, options, layout, shape)


# ---------------------------------------------------------------------------------------------------------
# The HF config


def _check_dictionaries(dictionaries: list[FairseqDictionary], rows: tuple[int, int], shared: bool) -> None:
    if not dictionaries:
        return
    source, target = (dictionaries[0], dictionaries[-1])
    if shared and source.symbols != target.symbols:
        raise ConversionError(f"{source.path} and {target.path} differ, but the model shares one embedding")
    for dictionary, count, side in ((source, rows[0], "encoder"), (target, rows[1], "decoder")):
        if len(dictionary) != count:
            raise ConversionError(
                f"{dictionary.path}: {len(dictionary)} symbols, but the {side} embedding has {count} rows "
                "(wrong dictionary for this checkpoint?)"
            )


def _max_positions(source: FairseqSource, offset: int) -> int:
    state = source.state
    if source.layout.learned_positions:
        rows = {state[f"{stack}.embed_positions.weight"].shape[0] for stack in ("encoder", "decoder")}
        if len(rows) != 1:
            raise ConversionError(
                f"encoder and decoder learned position tables differ in size: {sorted(rows)}"
            )
        return rows.pop()
    longest = max(
        option(source.options, name, int, 1024) for name in ("max_source_positions", "max_target_positions")
    )
    return longest + offset


def _ffn_dim(state: dict[str, torch.Tensor], stack: str, layers: int) -> int:
    dims = {state[f"{stack}.layers.{i}.fc1.weight"].shape[0] for i in range(layers)}
    if len(dims) != 1:
        raise ConversionError(f"{stack} layers have different FFN sizes {sorted(dims)}")
    return dims.pop()


def build_hf_config(source: FairseqSource, dictionaries: list[FairseqDictionary]) -> FixupTransformerConfig:
    state, options, shape, layout = source.state, source.options, source.shape, source.layout
    encoder_rows, d_model = state["encoder.embed_tokens.weight"].shape
    decoder_rows, decoder_dim = state["decoder.embed_tokens.weight"].shape
    if decoder_dim != d_model:
        raise ConversionError(
            f"encoder width {d_model} != decoder width {decoder_dim}; one d_model is needed"
        )
    _check_dictionaries(dictionaries, (encoder_rows, decoder_rows), shape.share_embeddings)
    pad = FAIRSEQ_SPECIALS["pad"]
    offset = pad + 1  # fairseq's make_positions: the first real token is at padding_idx + 1
    activation_dropout = option(options, "activation_dropout", float, 0.0) or option(
        options, "relu_dropout", float, 0.0
    )
    fixup = layout.flavor == FIXUP
    return FixupTransformerConfig(
        vocab_size=encoder_rows,
        decoder_vocab_size=decoder_rows if decoder_rows != encoder_rows else None,
        d_model=d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=option(options, "encoder_attention_heads", int),
        decoder_attention_heads=option(options, "decoder_attention_heads", int),
        encoder_ffn_dim=_ffn_dim(state, "encoder", shape.encoder_layers),
        decoder_ffn_dim=_ffn_dim(state, "decoder", shape.decoder_layers),
        activation_function=option(options, "activation_fn", str, "relu"),
        dropout=option(options, "dropout", float, 0.1),
        attention_dropout=option(options, "attention_dropout", float, 0.0),
        activation_dropout=activation_dropout,
        max_position_embeddings=_max_positions(source, offset),
        position_embedding="learned" if layout.learned_positions else "sinusoidal",
        position_offset=offset,
        scale_embedding=not option(options, "no_scale_embedding", bool, False),
        share_encoder_decoder_embeddings=shape.share_embeddings,
        tie_word_embeddings=shape.tie_output,
        normalization=shape.normalization,
        init="fixup" if fixup else "xavier",
        fixup_cross_attention_depth=AUTHORS_CROSS_ATTENTION_DEPTH if fixup else None,
        # The authors' rule 1 as the paper writes it: last linear of each branch 0, multiplier 1 (used only
        # if the model is re-initialised).
        fixup_zero="last_layer" if fixup else "multiplier",
        linear_bias=not fixup,
        label_smoothing=option(options, "label_smoothing", float, 0.0),
        pad_token_id=pad,
        eos_token_id=FAIRSEQ_SPECIALS["eos"],
        bos_token_id=FAIRSEQ_SPECIALS["bos"],
        decoder_start_token_id=FAIRSEQ_SPECIALS["eos"],  # fairseq's decoder input starts with </s>
    )


# ---------------------------------------------------------------------------------------------------------
# fairseq -> HF export


def _dictionaries(
    dict_paths: list[str | Path] | None, data_dir: str | Path | None, options: dict[str, Any]
) -> list[FairseqDictionary]:
    if dict_paths:
        if len(dict_paths) > 2:
            raise ConversionError("--dict takes one joint dictionary or a source and a target dictionary")
        if len(dict_paths) == 2:
            first, second = (Path(path) for path in dict_paths)
            # The sidecar keeps dictionaries by file name: src/dict.txt and tgt/dict.txt would be one file.
            if first.name == second.name and first.read_bytes() != second.read_bytes():
                raise ConversionError(
                    f"--dict {first} and {second} have the same file name but differ; the export keeps them "
                    "by name: copy them to distinct names (e.g. dict.de.txt and dict.en.txt)"
                )
        return [read_dictionary(path) for path in dict_paths]
    if data_dir is not None:
        languages = (option(options, "source_lang", str, None), option(options, "target_lang", str, None))
        return [read_dictionary(path) for path in find_dictionaries(data_dir, *languages)]
    return []


def _converted_model(source: FairseqSource, config: FixupTransformerConfig):
    plan = build_plan(source.shape, source.layout)
    dtype = source.state["encoder.embed_tokens.weight"].dtype
    model = FixupTransformerForConditionalGeneration(config).to(dtype).eval()
    target = model.state_dict()
    hf_state = fairseq_to_hf(source.state, plan, {key: value.shape for key, value in target.items()})
    # The LayerNorm baselines of this package still carry Fixup scalars; fairseq has none, so they stay at
    # their identity values (bias 0, multiplier 1), which the fresh model already holds.
    for key in target.keys() - hf_state.keys():
        if not key.endswith(("_shift.bias", "output_scale.weight")):
            raise ConversionError(f"the converted model has no value for `{key}`")
        hf_state[key] = target[key]
    model.load_state_dict(hf_state, strict=True)
    _set_fairseq_decoding_defaults(model)
    return model


# fairseq-generate's default output length: max_len_a * source length + max_len_b with a = 0, b = 200.
FAIRSEQ_MAX_LEN_B = 200


def _set_fairseq_decoding_defaults(model) -> None:
    """A plain ``generate()`` of the export decodes as fairseq's SequenceGenerator does by default: <pad> is
    never chosen, </s> not as the first token (``--min-len 1``), and outputs run up to 200 tokens and then
    </s> (the positions permitting), not transformers' 20. transformers' lengths count the start token."""
    generation = model.generation_config
    generation.suppress_tokens = [model.config.pad_token_id]
    generation.min_length = 2
    generation.max_length = min(FAIRSEQ_MAX_LEN_B + 2, position_limit(model))
    generation.forced_eos_token_id = model.config.eos_token_id


def _sidecar_record(source: FairseqSource, dictionaries: list[FairseqDictionary]) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "layout": source.layout.to_json(),
        "config_kind": source.config_kind,
        "config": to_json_compatible(source.config),
        "keys": list(source.state),
        "dictionaries": [dictionary.path.name for dictionary in dictionaries],
    }


def _write_sidecar(
    sidecar: Path,
    record: dict[str, Any],
    buffers: dict[str, torch.Tensor],
    dictionaries: list[FairseqDictionary],
) -> None:
    sidecar.mkdir()
    atomic_write_json(sidecar / SOURCE_FILE, record)
    if buffers:
        save_state_dict(buffers, sidecar / BUFFERS_FILE)
    for dictionary in dictionaries:
        shutil.copyfile(dictionary.path, sidecar / dictionary.path.name)


def convert_fairseq_to_hf(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    dict_paths: list[str | Path] | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """Write an export directory of this model type from a fairseq checkpoint; returns the directory."""
    inputs = [checkpoint_path, *(dict_paths or []), *([data_dir] if data_dir else [])]
    out = Path(output_dir).resolve()
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved == out or out in resolved.parents:
            raise ConversionError(
                f"output_dir {output_dir} holds the input {path}; the export replaces its folder: choose another"
            )
    source = read_fairseq_checkpoint(checkpoint_path)
    try:
        dictionaries = _dictionaries(dict_paths, data_dir, source.options)
        config = build_hf_config(source, dictionaries)
        record = _sidecar_record(source, dictionaries)
        model = _converted_model(source, config)
    except ValueError as error:
        raise ConversionError(f"{checkpoint_path}: {error}") from None
    buffers = {key: value for key, value in source.state.items() if is_buffer_key(key)}

    def finalize(tmp: Path) -> None:
        _write_sidecar(tmp / SIDECAR_DIR, record, buffers, dictionaries)
        add_remote_code(tmp, model.config)  # loads on the Hub without this package (trust_remote_code)

    export_pretrained(model, output_dir, finalize=finalize)
    return Path(output_dir)


# ---------------------------------------------------------------------------------------------------------
# HF export -> fairseq


def _read_sidecar(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / SIDECAR_DIR / SOURCE_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != SIDECAR_FORMAT:
        raise ConversionError(f"{path}: sidecar format {record.get('format')!r}, expected {SIDECAR_FORMAT}")
    return record


def _default_layout(config: FixupTransformerConfig) -> Layout:
    learned = config.position_embedding == "learned"
    if config.normalization == "none":
        # The authors' fork: fused projections, `embed_out` when untied.
        return Layout(
            FIXUP, True, False, None if config.tie_word_embeddings else "decoder.embed_out", learned
        )
    return Layout(TRANSFORMER, False, False, "decoder.output_projection.weight", learned)


def _check_exportable(config: FixupTransformerConfig, layout: Layout, model_dir: Path) -> None:
    """What fairseq cannot express; each message says which config field is the obstacle."""
    problems = []
    if (
        config.pad_token_id != FAIRSEQ_SPECIALS["pad"]
        or config.position_offset != FAIRSEQ_SPECIALS["pad"] + 1
    ):
        problems.append(
            "fairseq's dictionary has <pad> = 1 and positions starting at 2: needs pad_token_id=1 and "
            f"position_offset=2 (got {config.pad_token_id} and {config.position_offset})"
        )
    if config.decoder_start_token_id != FAIRSEQ_SPECIALS["eos"]:
        problems.append("fairseq starts decoding with </s> = 2: needs decoder_start_token_id=2")
    if config.eos_token_id != FAIRSEQ_SPECIALS["eos"]:
        problems.append(
            f"fairseq stops decoding at </s> = 2: needs eos_token_id=2 (got {config.eos_token_id})"
        )
    if layout.flavor == FIXUP:
        if config.normalization != "none" or config.scalars_folded or config.linear_bias:
            problems.append(
                "transformer_zero has no LayerNorm and no linear biases (unfolded Fixup models only)"
            )
        if config.activation_function != "relu" or not config.scale_embedding:
            problems.append("transformer_zero hard-codes ReLU and sqrt(d) embedding scaling")
    elif config.normalization == "none":
        problems.append(
            "fairseq's transformer always has LayerNorm; normalization='none' maps to transformer_zero"
        )
    if config.share_encoder_decoder_embeddings and not config.tie_word_embeddings:
        problems.append("fairseq --share-all-embeddings always ties the output projection")
    if problems:
        raise ConversionError(
            f"{model_dir}: cannot be written as a fairseq checkpoint: {'; '.join(problems)}"
        )


def _default_args(config: FixupTransformerConfig, layout: Layout) -> argparse.Namespace:
    """A legacy ``args`` Namespace that fairseq's ``transformer`` / the fork's ``transformer_zero`` accept."""
    max_positions = config.max_position_embeddings - config.position_offset
    pre = config.normalization == "pre_ln"
    learned = config.position_embedding == "learned"
    return argparse.Namespace(
        arch="transformer_zero" if layout.flavor == FIXUP else "transformer",
        task="translation",
        criterion="label_smoothed_cross_entropy",
        label_smoothing=float(config.label_smoothing),
        encoder_embed_dim=config.d_model,
        decoder_embed_dim=config.d_model,
        decoder_input_dim=config.d_model,
        decoder_output_dim=config.d_model,
        encoder_ffn_embed_dim=config.encoder_ffn_dim,
        decoder_ffn_embed_dim=config.decoder_ffn_dim,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        decoder_attention_heads=config.decoder_attention_heads,
        encoder_normalize_before=pre,
        decoder_normalize_before=pre,
        encoder_learned_pos=learned,
        decoder_learned_pos=learned,
        activation_fn=config.activation_function,
        dropout=float(config.dropout),
        attention_dropout=float(config.attention_dropout),
        activation_dropout=float(config.activation_dropout),
        relu_dropout=float(config.activation_dropout),
        no_scale_embedding=not config.scale_embedding,
        share_all_embeddings=config.share_encoder_decoder_embeddings,
        share_decoder_input_output_embed=config.tie_word_embeddings,
        max_source_positions=max_positions,
        max_target_positions=max_positions,
        no_token_positional_embeddings=False,
        adaptive_softmax_cutoff=None,
        layernorm_embedding=False,
        no_decoder_final_norm=False,
        cross_self_attention=False,
        left_pad_source=True,
        left_pad_target=False,
    )


def _default_buffers(layout: Layout) -> dict[str, torch.Tensor]:
    # The fork registers version 2 (fairseq 0.6); current fairseq version 3. Sinusoidal position modules
    # of both register a one-element `_float_tensor` (only used for its device/dtype).
    version = 2.0 if layout.flavor == FIXUP else 3.0
    buffers = {f"{stack}.version": torch.tensor([version]) for stack in ("encoder", "decoder")}
    if not layout.learned_positions:
        for stack in ("encoder", "decoder"):
            buffers[f"{stack}.embed_positions._float_tensor"] = torch.zeros(1)
    return buffers


def _ordered(state: dict[str, torch.Tensor], order: list[str] | None) -> dict[str, torch.Tensor]:
    if not order:
        return state
    if set(order) != set(state):
        extra, missing = sorted(set(state) - set(order)), sorted(set(order) - set(state))
        raise ConversionError(
            f"keys differ from the original checkpoint: extra {extra[:3]}, missing {missing[:3]}"
        )
    return {key: state[key] for key in order}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def _fairseq_checkpoint(config_kind: str, config: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    # The entries fairseq's checkpoint_utils._upgrade_state_dict expects of a checkpoint it did not write.
    return {
        "args": config if config_kind == "args" else None,
        "cfg": config if config_kind == "cfg" else None,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": 0,
            }
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }


def convert_hf_to_fairseq(model_dir: str | Path, output_path: str | Path) -> Path:
    """Write a fairseq checkpoint (and, when the export has them, its dictionaries beside it)."""
    model_dir, output_path = Path(model_dir), Path(output_path)
    if not (model_dir / "config.json").is_file():
        raise ConversionError(f"{model_dir}: no config.json (not an export directory of this model type)")
    config = FixupTransformerConfig.from_pretrained(model_dir)
    record = _read_sidecar(model_dir)
    layout = Layout.from_json(record["layout"]) if record else _default_layout(config)
    _check_exportable(config, layout, model_dir)
    model = FixupTransformerForConditionalGeneration.from_pretrained(model_dir, dtype="auto").eval()
    if layout.flavor == TRANSFORMER:
        # fairseq's transformer has no Fixup scalars: move them into the linear weights and biases (exact
        # for the identity values a converted fairseq model holds; the same function otherwise).
        model.fold_scalars()
    shape = Shape(
        config.encoder_layers,
        config.decoder_layers,
        config.normalization,
        config.share_encoder_decoder_embeddings,
        config.tie_word_embeddings,
    )
    plan = build_plan(shape, layout)
    hf_state = model.state_dict()
    leftover = sorted(hf_state.keys() - planned_hf_keys(plan))
    if leftover:
        raise ConversionError(
            f"{model_dir}: weights with no place in the fairseq layout: {', '.join(leftover[:5])}"
        )
    state = hf_to_fairseq(hf_state, plan)
    buffers_path = model_dir / SIDECAR_DIR / BUFFERS_FILE
    state.update(load_file(buffers_path) if record and buffers_path.is_file() else _default_buffers(layout))
    state = _ordered(state, record.get("keys") if record else None)
    dictionary_names = _dictionary_names(record, model_dir, output_path)
    # The sidecar is written once, at conversion: a model resized since (resize_token_embeddings, then
    # save_pretrained) no longer matches its dictionaries, and fairseq could not load the pair.
    encoder_rows = state["encoder.embed_tokens.weight"].shape[0]
    decoder_rows = state.get("decoder.embed_tokens.weight", state["encoder.embed_tokens.weight"]).shape[0]
    try:
        _check_dictionaries(
            [read_dictionary(model_dir / SIDECAR_DIR / name) for name in dictionary_names],
            (encoder_rows, decoder_rows),
            config.share_encoder_decoder_embeddings,
        )
    except ConversionError as error:
        raise ConversionError(
            f"{model_dir}: its fairseq dictionaries no longer fit its embeddings (resized after the conversion?): "
            f"{error}"
        ) from None
    if record:
        config_kind, fairseq_config = record["config_kind"], from_json_compatible(record["config"])
    else:
        config_kind, fairseq_config = "args", _default_args(config, layout)
    _atomic_torch_save(_fairseq_checkpoint(config_kind, fairseq_config, state), output_path)
    for name in dictionary_names:
        shutil.copyfile(model_dir / SIDECAR_DIR / name, output_path.parent / name)
    return output_path


def _dictionary_names(record: dict[str, Any] | None, model_dir: Path, output_path: Path) -> list[str]:
    """The sidecar's dictionary file names, which are copied beside the output: plain names only, so an
    export (e.g. from the Hub) cannot make the copy write outside that folder or over the checkpoint."""
    names = record.get("dictionaries", []) if record else []
    for name in names:
        if (
            not isinstance(name, str)
            or Path(name).name != name
            or name in ("", ".", "..")
            or name == output_path.name
        ):
            raise ConversionError(
                f"{model_dir / SIDECAR_DIR}: dictionary name {name!r} is not a plain file name beside the output"
            )
    return names


# ---------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert fairseq Transformer checkpoints (the Fixup authors' transformer_zero, fairseq's "
        "transformer) to this package's model type and back. fairseq itself is not needed.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    to_hf = commands.add_parser("to-hf", help="fairseq checkpoint.pt -> export directory")
    to_hf.add_argument("checkpoint", help="fairseq checkpoint (e.g. checkpoints/checkpoint_best.pt)")
    to_hf.add_argument("output_dir", help="export directory to write (replaced atomically if it exists)")
    to_hf.add_argument(
        "--dict", nargs="+", metavar="DICT", help="dict.SRC.txt [dict.TGT.txt] (fairseq dictionaries)"
    )
    to_hf.add_argument("--data-dir", help="fairseq data-bin directory holding dict.<lang>.txt")
    to_fairseq = commands.add_parser("to-fairseq", help="export directory -> fairseq checkpoint.pt")
    to_fairseq.add_argument("model_dir", help="export directory of this model type")
    to_fairseq.add_argument("output", help="fairseq checkpoint file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "to-hf":
            if args.dict and args.data_dir:
                raise ConversionError("pass either --dict or --data-dir, not both")
            out = convert_fairseq_to_hf(args.checkpoint, args.output_dir, args.dict, args.data_dir)
            if not args.dict and not args.data_dir:
                print(
                    "note: no --dict/--data-dir given; special ids assume fairseq's defaults "
                    "(<s>=0 <pad>=1 </s>=2 <unk>=3) and the vocabulary size is not checked",
                    file=sys.stderr,
                )
        else:
            out = convert_hf_to_fairseq(args.model_dir, args.output)
    except (ValueError, OSError) as error:  # ConversionError, CheckpointLoadError, a bad config.json
        print(f"convert_fairseq: error: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0


__all__ = ["ConversionError", "convert_fairseq_to_hf", "convert_hf_to_fairseq", "main"]
