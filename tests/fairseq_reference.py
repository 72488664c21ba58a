"""fairseq checkpoints in fairseq's layout, and fairseq's forward computation, for the converter tests.

Neither uses fairseq (it does not import on Python 3.11). The state dicts follow the key names and
shapes that the modules register (the Fixup authors' ``transformer_zero.py`` /
``multihead_attention_zero.py``; fairseq's ``transformer_encoder.py`` / ``transformer_decoder.py`` /
``transformer_layer.py`` / ``multihead_attention.py``, current and 2019 spellings). The forward is
written from those sources, independently of this package's model, so that comparing the two checks
the conversion rather than restating it:

* tokens are embedded as ``sqrt(d) * E[x]`` plus positions ``make_positions`` (pads skipped, the first
  real token at ``padding_idx + 1``), sinusoidal rows ``[sin(p w), cos(p w)]`` or a learned table;
* attention projects q, k, v (with biases in the LN model), scales q by ``head_dim ** -0.5`` *after*
  the projection, masks padded keys and future steps;
* transformer_zero subtracts its scalar biases (``LayerShift: x - b``) and multiplies by ``scaleN``;
* the LN model applies LayerNorm after (post-LN) or before (pre-LN) each residual branch, pre-LN adds
  the final ``layer_norm`` of each stack.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch.nn import functional as F

PAD, EOS = 1, 2  # fairseq Dictionary: <s>=0 <pad>=1 </s>=2 <unk>=3


@dataclass(frozen=True)
class Arch:
    flavor: str = "zero"  # "zero" (the authors' fork) or "transformer"
    normalize_before: bool = False
    modern_keys: bool = True  # q_proj/k_proj/v_proj, self_attn_layer_norm, output_projection
    d: int = 16
    ffn: int = 24
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    vocab: int = 24
    target_vocab: int | None = None  # separate target dictionary of another size

    def rows(self, stack: str) -> int:
        return self.target_vocab or self.vocab if stack == "decoder" else self.vocab

    share_all: bool = False
    share_output: bool = False
    learned_pos: bool = False
    max_positions: int = 64


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


class _Filler:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.state: OrderedDict[str, torch.Tensor] = OrderedDict()

    def random(self, key: str, *shape: int, mean: float = 0.0, scale: float = 0.3) -> torch.Tensor:
        self.state[key] = mean + scale * torch.randn(shape, generator=self.generator)
        return self.state[key]

    def norm(self, key: str, d: int) -> None:
        self.random(f"{key}.weight", d, mean=1.0, scale=0.1)
        self.random(f"{key}.bias", d, scale=0.1)


def _attention_keys(fill: _Filler, prefix: str, arch: Arch) -> None:
    d, bias = arch.d, arch.flavor == "transformer"
    if arch.modern_keys and arch.flavor == "transformer":
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):  # registration order in fairseq's MHA
            fill.random(f"{prefix}.{name}.weight", d, d)
            fill.random(f"{prefix}.{name}.bias", d, scale=0.1)
        return
    fill.random(f"{prefix}.in_proj_weight", 3 * d, d)
    if bias:
        fill.random(f"{prefix}.in_proj_bias", 3 * d, scale=0.1)
    fill.random(f"{prefix}.out_proj.weight", d, d)
    if bias:
        fill.random(f"{prefix}.out_proj.bias", d, scale=0.1)


def _ffn_keys(fill: _Filler, prefix: str, arch: Arch) -> None:
    for name, shape in (("fc1", (arch.ffn, arch.d)), ("fc2", (arch.d, arch.ffn))):
        fill.random(f"{prefix}.{name}.weight", *shape)
        if arch.flavor == "transformer":
            fill.random(f"{prefix}.{name}.bias", shape[0], scale=0.1)


def _zero_scalars(fill: _Filler, prefix: str, shifts: int, scales: int) -> None:
    for i in range(shifts):
        fill.random(f"{prefix}.shift{i}.bias", 1, scale=0.2)
    for i in range(scales):
        fill.random(f"{prefix}.scale{i}.weight", 1, mean=1.0, scale=0.2)


def _embeddings(fill: _Filler, stack: str, arch: Arch, shared: torch.Tensor | None) -> None:
    fill.state[f"{stack}.version"] = torch.tensor(
        [2.0 if arch.flavor == "zero" or not arch.modern_keys else 3.0]
    )
    if shared is not None:
        fill.state[f"{stack}.embed_tokens.weight"] = shared
    else:
        fill.random(f"{stack}.embed_tokens.weight", arch.rows(stack), arch.d, scale=arch.d**-0.5)
    fill.state[f"{stack}.embed_tokens.weight"][PAD].zero_()
    if arch.learned_pos:
        table = fill.random(f"{stack}.embed_positions.weight", arch.max_positions + PAD + 1, arch.d)
        table[PAD].zero_()
    else:
        fill.state[f"{stack}.embed_positions._float_tensor"] = torch.tensor([0.5])


def encoder_norm_names(arch: Arch) -> tuple[str, str]:
    # fairseq 2019 kept the encoder's two LayerNorms in a ModuleList; today they are named.
    return (
        ("self_attn_layer_norm", "final_layer_norm")
        if arch.modern_keys
        else ("layer_norms.0", "layer_norms.1")
    )


def fairseq_state(arch: Arch, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A 'trained' fairseq state dict: every weight random, scalars away from their init."""
    fill = _Filler(seed)
    _embeddings(fill, "encoder", arch, None)
    for i in range(arch.encoder_layers):
        prefix = f"encoder.layers.{i}"
        _attention_keys(fill, f"{prefix}.self_attn", arch)
        if arch.flavor == "zero":
            _ffn_keys(fill, prefix, arch)
            _zero_scalars(fill, prefix, shifts=4, scales=2)
            continue
        norms = encoder_norm_names(arch)
        fill.norm(f"{prefix}.{norms[0]}", arch.d)
        _ffn_keys(fill, prefix, arch)
        fill.norm(f"{prefix}.{norms[1]}", arch.d)
    if arch.flavor == "zero":
        _zero_scalars(fill, "encoder", shifts=1, scales=1)
    elif arch.normalize_before:
        fill.norm("encoder.layer_norm", arch.d)
    _embeddings(fill, "decoder", arch, fill.state["encoder.embed_tokens.weight"] if arch.share_all else None)
    for i in range(arch.decoder_layers):
        prefix = f"decoder.layers.{i}"
        _attention_keys(fill, f"{prefix}.self_attn", arch)
        if arch.flavor == "transformer":
            fill.norm(f"{prefix}.self_attn_layer_norm", arch.d)
        _attention_keys(fill, f"{prefix}.encoder_attn", arch)
        if arch.flavor == "transformer":
            fill.norm(f"{prefix}.encoder_attn_layer_norm", arch.d)
        _ffn_keys(fill, prefix, arch)
        if arch.flavor == "zero":
            _zero_scalars(fill, prefix, shifts=5, scales=3)
        else:
            fill.norm(f"{prefix}.final_layer_norm", arch.d)
    if arch.flavor == "zero":
        _zero_scalars(fill, "decoder", shifts=1, scales=0)
    elif arch.normalize_before:
        fill.norm("decoder.layer_norm", arch.d)
    tied = arch.share_all or arch.share_output
    if arch.flavor == "transformer" and arch.modern_keys:
        # Current fairseq always has an output_projection module; tied, it holds the embedding itself.
        if tied:
            fill.state["decoder.output_projection.weight"] = fill.state["decoder.embed_tokens.weight"]
        else:
            fill.random("decoder.output_projection.weight", arch.rows("decoder"), arch.d, scale=arch.d**-0.5)
    elif not tied:
        fill.random("decoder.embed_out", arch.rows("decoder"), arch.d, scale=arch.d**-0.5)
    return fill.state


def model_args(arch: Arch, **extra) -> argparse.Namespace:
    """The flat option names both the fork and fairseq's legacy CLI save."""
    fields = dict(
        arch="transformer_zero_iwslt_de_en" if arch.flavor == "zero" else "transformer",
        task="translation",
        source_lang="de",
        target_lang="en",
        criterion="label_smoothed_cross_entropy",
        label_smoothing=0.1,
        encoder_embed_dim=arch.d,
        decoder_embed_dim=arch.d,
        encoder_ffn_embed_dim=arch.ffn,
        decoder_ffn_embed_dim=arch.ffn,
        encoder_layers=arch.encoder_layers,
        decoder_layers=arch.decoder_layers,
        encoder_attention_heads=arch.heads,
        decoder_attention_heads=arch.heads,
        encoder_normalize_before=arch.normalize_before,
        decoder_normalize_before=arch.normalize_before,
        encoder_learned_pos=arch.learned_pos,
        decoder_learned_pos=arch.learned_pos,
        share_all_embeddings=arch.share_all,
        share_decoder_input_output_embed=arch.share_output or arch.share_all,
        dropout=0.3,
        attention_dropout=0.0,
        relu_dropout=0.0,
        max_source_positions=arch.max_positions,
        max_target_positions=arch.max_positions,
        adam_betas="(0.9, 0.98)",
        lr=[0.0005],
        no_token_positional_embeddings=False,
        adaptive_softmax_cutoff=None,
    )
    if arch.flavor == "transformer":
        fields.update(activation_fn="relu", activation_dropout=0.0, layernorm_embedding=False)
    fields.update(extra)
    return argparse.Namespace(**fields)


def checkpoint_dict(arch: Arch, state, config_kind: str = "args", **extra) -> dict:
    """A checkpoint file's top level as fairseq's trainer writes it (without an optimizer state)."""
    args = model_args(arch, **extra)
    top = {
        "args": args if config_kind == "args" else None,
        "model": state,
        "optimizer_history": [
            {
                "criterion_name": "LabelSmoothedCrossEntropyCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": 3.2},
                "num_updates": 1000,
            }
        ],
        "extra_state": {
            "epoch": 3,
            "val_loss": 3.2,
            "train_iterator": {"epoch": 3, "iterations_in_epoch": 0},
        },
    }
    if config_kind in ("cfg", "cfg_nested"):
        top["cfg"] = {
            "_name": None,
            "common": {"fp16": False, "seed": 1},
            # fairseq 0.10+ keeps a legacy architecture's options as a Namespace here; a model configured
            # through hydra has TransformerConfig's nested dict instead.
            "model": args if config_kind == "cfg" else transformer_config_dict(args),
            "task": {"_name": "translation", "source_lang": "de", "target_lang": "en", "data": "data-bin"},
            "criterion": {"_name": "label_smoothed_cross_entropy", "label_smoothing": 0.1},
        }
    return top


def transformer_config_dict(args: argparse.Namespace) -> dict:
    """fairseq's TransformerConfig as a plain dict: ``encoder``/``decoder`` sections, the rest flat."""
    flat = dict(vars(args))
    nested = {"_name": flat.pop("arch")}
    for stack in ("encoder", "decoder"):
        nested[stack] = {
            key[len(stack) + 1 :]: flat.pop(key) for key in list(flat) if key.startswith(f"{stack}_")
        }
    nested["decoder"]["output_dim"] = nested["decoder"]["input_dim"] = nested["decoder"]["embed_dim"]
    nested["quant_noise"] = {"pq": 0.0, "pq_block_size": 8, "scalar": 0.0}
    return {**nested, **flat}


def write_dictionary(path, size: int) -> None:
    """A dict.*.txt for ``size`` ids: ``size - 4`` symbols (the Dictionary adds the 4 specials itself)."""
    lines = [f"w{i} {1000 - i}" for i in range(size - 4)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# fairseq's forward computation


def make_positions(tokens: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    mask = tokens.ne(pad).int()
    return (torch.cumsum(mask, dim=1) * mask).long() + pad


def sinusoidal_table(rows: int, dim: int, pad: int = PAD) -> torch.Tensor:
    half = dim // 2
    step = math.log(10000) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float) * -step)
    angles = torch.arange(rows, dtype=torch.float).unsqueeze(1) * frequencies.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table[pad] = 0
    return table


def _embed(state, stack: str, tokens: torch.Tensor, arch: Arch) -> torch.Tensor:
    positions = make_positions(tokens)
    if arch.learned_pos:
        table = state[f"{stack}.embed_positions.weight"]
    else:
        table = sinusoidal_table(int(positions.max()) + 1, arch.d)
    return math.sqrt(arch.d) * F.embedding(tokens, state[f"{stack}.embed_tokens.weight"]) + table[positions]


def _projections(state, prefix: str):
    """(weights, biases) of q, k, v: fused ``in_proj_*`` or separate ``{q,k,v}_proj``."""
    if f"{prefix}.in_proj_weight" in state:
        weights = state[f"{prefix}.in_proj_weight"].chunk(3)
        bias = state.get(f"{prefix}.in_proj_bias")
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        return weights, biases
    names = ("q_proj", "k_proj", "v_proj")
    return [state[f"{prefix}.{n}.weight"] for n in names], [state.get(f"{prefix}.{n}.bias") for n in names]


def attention(state, prefix, query, key, heads, key_padding_mask=None, causal=False):
    (wq, wk, wv), (bq, bk, bv) = _projections(state, prefix)
    batch, tgt, d = query.shape
    head_dim = d // heads
    q = F.linear(query, wq, bq) * head_dim**-0.5
    k, v = F.linear(key, wk, bk), F.linear(key, wv, bv)
    split = lambda t: t.view(batch, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2)
    if causal:
        scores = scores + torch.triu(torch.full((tgt, tgt), float("-inf")), 1)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (F.softmax(scores.float(), dim=-1) @ split(v)).transpose(1, 2).reshape(batch, tgt, d)
    return F.linear(out, state[f"{prefix}.out_proj.weight"], state.get(f"{prefix}.out_proj.bias"))


def _zero_ffn(state, prefix, x, shifts):
    """shift_in, fc1, shift before ReLU, ReLU, shift before fc2, fc2 (all shifts subtract)."""
    s_in, s_act, s_out = (state[f"{prefix}.shift{i}.bias"] for i in shifts)
    h = F.relu(F.linear(x - s_in, state[f"{prefix}.fc1.weight"]) - s_act)
    return F.linear(h - s_out, state[f"{prefix}.fc2.weight"])


def _ln_ffn(state, prefix, x):
    h = F.relu(F.linear(x, state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc1.bias"]))
    return F.linear(h, state[f"{prefix}.fc2.weight"], state[f"{prefix}.fc2.bias"])


def _norm(state, key, x):
    return F.layer_norm(x, x.shape[-1:], state[f"{key}.weight"], state[f"{key}.bias"], eps=1e-5)


def _before(state, key, x, arch: Arch):
    """fairseq's TransformerLayer: pre-LN normalizes the branch input..."""
    return _norm(state, key, x) if arch.normalize_before else x


def _after(state, key, x, arch: Arch):
    """...post-LN the sum of residual and branch."""
    return x if arch.normalize_before else _norm(state, key, x)


def _ln_encoder_layer(state, p, x, pad_mask, arch: Arch):
    attn_norm, ffn_norm = (f"{p}.{name}" for name in encoder_norm_names(arch))
    h = _before(state, attn_norm, x, arch)
    x = _after(state, attn_norm, x + attention(state, f"{p}.self_attn", h, h, arch.heads, pad_mask), arch)
    return _after(state, ffn_norm, x + _ln_ffn(state, p, _before(state, ffn_norm, x, arch)), arch)


def _ln_decoder_layer(state, p, x, encoder_out, encoder_pad_mask, arch: Arch):
    norm = f"{p}.self_attn_layer_norm"
    h = _before(state, norm, x, arch)
    x = _after(state, norm, x + attention(state, f"{p}.self_attn", h, h, arch.heads, causal=True), arch)
    norm = f"{p}.encoder_attn_layer_norm"
    h = _before(state, norm, x, arch)
    cross = attention(state, f"{p}.encoder_attn", h, encoder_out, arch.heads, encoder_pad_mask)
    x = _after(state, norm, x + cross, arch)
    norm = f"{p}.final_layer_norm"
    return _after(state, norm, x + _ln_ffn(state, p, _before(state, norm, x, arch)), arch)


def encode(state, src_tokens, arch: Arch):
    x, pad_mask = _embed(state, "encoder", src_tokens, arch), src_tokens.eq(PAD)
    for i in range(arch.encoder_layers):
        p = f"encoder.layers.{i}"
        if arch.flavor == "zero":
            h = x - state[f"{p}.shift0.bias"]
            x = (
                x
                + attention(state, f"{p}.self_attn", h, h, arch.heads, pad_mask) * state[f"{p}.scale0.weight"]
            )
            x = x + _zero_ffn(state, p, x, (1, 2, 3)) * state[f"{p}.scale1.weight"]
            continue
        x = _ln_encoder_layer(state, p, x, pad_mask, arch)
    if arch.flavor == "zero":
        return (x - state["encoder.shift0.bias"]) * state["encoder.scale0.weight"], pad_mask
    if arch.normalize_before:
        x = _norm(state, "encoder.layer_norm", x)
    return x, pad_mask


def decode(state, prev_output_tokens, encoder_out, encoder_pad_mask, arch: Arch):
    x = _embed(state, "decoder", prev_output_tokens, arch)
    for i in range(arch.decoder_layers):
        p = f"decoder.layers.{i}"
        if arch.flavor == "zero":
            h = x - state[f"{p}.shift0.bias"]
            x = (
                x
                + attention(state, f"{p}.self_attn", h, h, arch.heads, causal=True)
                * state[f"{p}.scale0.weight"]
            )
            h = x - state[f"{p}.shift1.bias"]
            cross = attention(state, f"{p}.encoder_attn", h, encoder_out, arch.heads, encoder_pad_mask)
            x = x + cross * state[f"{p}.scale1.weight"]
            x = x + _zero_ffn(state, p, x, (2, 3, 4)) * state[f"{p}.scale2.weight"]
            continue
        x = _ln_decoder_layer(state, p, x, encoder_out, encoder_pad_mask, arch)
    if arch.flavor == "zero":
        x = x - state["decoder.shift0.bias"]
    elif arch.normalize_before:
        x = _norm(state, "decoder.layer_norm", x)
    for key in ("decoder.output_projection.weight", "decoder.embed_out"):
        if key in state:
            return F.linear(x, state[key])
    return F.linear(x, state["decoder.embed_tokens.weight"])


@torch.no_grad()
def fairseq_logits(state, arch: Arch, src_tokens, prev_output_tokens) -> torch.Tensor:
    encoder_out, pad_mask = encode(state, src_tokens, arch)
    return decode(state, prev_output_tokens, encoder_out, pad_mask, arch)


@torch.no_grad()
def fairseq_greedy(state, arch: Arch, src_tokens, steps: int) -> torch.Tensor:
    """fairseq-style greedy decoding: start from </s>, recompute the whole prefix each step, never choose
    <pad> (SequenceGenerator sets its score to -inf), and never end early (``--min-len steps``: </s> is not
    a candidate)."""
    encoder_out, pad_mask = encode(state, src_tokens, arch)
    tokens = torch.full((src_tokens.shape[0], 1), EOS)
    for _ in range(steps):
        logits = decode(state, tokens, encoder_out, pad_mask, arch)[:, -1]
        logits[:, EOS] = float("-inf")
        logits[:, PAD] = float("-inf")
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens
