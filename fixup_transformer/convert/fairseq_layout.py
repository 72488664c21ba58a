"""Where each weight lives in a fairseq checkpoint and in this package's model: the key plan.

Two fairseq architectures are covered, read from their sources:

* the Fixup authors' ``transformer_zero`` (github.com/hongyi-zhang/Fixup, ``fairseq/fairseq/models/
  transformer_zero.py`` and ``modules/multihead_attention_zero.py``): no LayerNorm, bias-free linears, a
  fused ``in_proj_weight`` (q; k; v stacked), ``shiftN.bias`` scalars that are *subtracted*
  (``LayerShift: x - b``) and ``scaleN.weight`` multipliers;
* fairseq's own ``transformer`` (github.com/facebookresearch/fairseq, ``fairseq/models/transformer/``,
  ``fairseq/modules/transformer_layer.py``, ``multihead_attention.py``), post-LN or pre-LN
  (``--encoder/decoder-normalize-before``), with linear biases; both the current key names
  (``q_proj``/``k_proj``/``v_proj``, ``self_attn_layer_norm``/``final_layer_norm``,
  ``output_projection``) and the 2019 ones (``in_proj_weight``/``in_proj_bias``, encoder
  ``layer_norms.0/1``, ``embed_out``) that fairseq still upgrades on load.

A plan is a list of :class:`Group` entries: "these fairseq tensors, concatenated along dim 0, equal these
HF tensors, concatenated along dim 0" (optionally negated). Concatenation covers fused vs split q/k/v in
both directions, and the plan runs both ways without loss (concat/split/negate are exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FIXUP = "fixup"  # the authors' transformer_zero
TRANSFORMER = "transformer"  # fairseq's transformer (post-LN / pre-LN)
FLAVORS = (FIXUP, TRANSFORMER)

# fairseq state-dict entries that are bookkeeping, not weights: carried through unchanged.
BUFFER_SUFFIXES = (".version", "embed_positions._float_tensor", "embed_positions.weights")


@dataclass(frozen=True)
class Layout:
    """How one fairseq checkpoint spells its keys (recorded so that the way back writes the same keys)."""

    flavor: str
    fused_attention: bool  # in_proj_weight (q; k; v) instead of q_proj / k_proj / v_proj
    indexed_encoder_norms: bool = False  # encoder layer_norms.0/1 (2019) instead of named LayerNorms
    output_key: str | None = None  # decoder.output_projection.weight / decoder.embed_out / None
    learned_positions: bool = False

    def to_json(self) -> dict:
        return {
            "flavor": self.flavor,
            "fused_attention": self.fused_attention,
            "indexed_encoder_norms": self.indexed_encoder_norms,
            "output_key": self.output_key,
            "learned_positions": self.learned_positions,
        }

    @classmethod
    def from_json(cls, data: dict) -> Layout:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Group:
    fairseq: tuple[str, ...]
    hf: tuple[str, ...]
    negate: bool = False  # the authors subtract their scalar biases; this package adds them


@dataclass
class Plan:
    groups: list[Group] = field(default_factory=list)
    # Keys that hold the same tensor as another key of the same side (tied / shared weights).
    fairseq_aliases: dict[str, str] = field(default_factory=dict)
    hf_aliases: dict[str, str] = field(default_factory=dict)

    def add(self, fairseq: str | tuple[str, ...], hf: str | tuple[str, ...], negate: bool = False) -> None:
        as_tuple = lambda keys: (keys,) if isinstance(keys, str) else tuple(keys)  # noqa: E731
        self.groups.append(Group(as_tuple(fairseq), as_tuple(hf), negate))


@dataclass(frozen=True)
class Shape:
    """What the plan needs to know about the model besides the layout."""

    encoder_layers: int
    decoder_layers: int
    normalization: str  # none / post_ln / pre_ln
    share_embeddings: bool  # one embedding for encoder and decoder (fairseq --share-all-embeddings)
    tie_output: bool  # output projection = decoder embedding


# ---------------------------------------------------------------------------------------------------------
# Attention and FFN of one layer


def _projection_keys(prefix: str, fused: bool, suffix: str) -> tuple[str, ...]:
    if fused:
        return (f"{prefix}.in_proj_{suffix}",)
    return tuple(f"{prefix}.{name}_proj.{suffix}" for name in ("q", "k", "v"))


def _attention(plan: Plan, fs: str, hf: str, cross: bool, layout: Layout, biases: bool) -> None:
    """One attention block: fairseq ``{fs}`` (q, k, v, out_proj) to our ``{hf}`` (qkv or q + kv, out)."""
    hf_inputs = (f"{hf}.q_proj", f"{hf}.kv_proj") if cross else (f"{hf}.qkv_proj",)
    for suffix in ("weight", "bias") if biases else ("weight",):
        plan.add(
            _projection_keys(fs, layout.fused_attention, suffix), tuple(f"{k}.{suffix}" for k in hf_inputs)
        )
        plan.add(f"{fs}.out_proj.{suffix}", f"{hf}.out_proj.{suffix}")


def _ffn(plan: Plan, fs: str, hf: str, biases: bool) -> None:
    for name in ("fc1", "fc2"):
        for suffix in ("weight", "bias") if biases else ("weight",):
            plan.add(f"{fs}.{name}.{suffix}", f"{hf}.ffn.{name}.{suffix}")


def _layer_norm(plan: Plan, fs: str, hf: str) -> None:
    for suffix in ("weight", "bias"):
        plan.add(f"{fs}.{suffix}", f"{hf}.{suffix}")


# The authors' scalars, in the order their layers apply them, and where each sits in our layer.
_ZERO_ENCODER_SCALARS = (
    ("shift0.bias", "self_attn.input_shift.bias"),
    ("scale0.weight", "self_attn.output_scale.weight"),
    ("shift1.bias", "ffn.input_shift.bias"),
    ("shift2.bias", "ffn.activation_shift.bias"),
    ("shift3.bias", "ffn.output_shift.bias"),
    ("scale1.weight", "ffn.output_scale.weight"),
)
_ZERO_DECODER_SCALARS = (
    ("shift0.bias", "self_attn.input_shift.bias"),
    ("scale0.weight", "self_attn.output_scale.weight"),
    ("shift1.bias", "encoder_attn.input_shift.bias"),
    ("scale1.weight", "encoder_attn.output_scale.weight"),
    ("shift2.bias", "ffn.input_shift.bias"),
    ("shift3.bias", "ffn.activation_shift.bias"),
    ("shift4.bias", "ffn.output_shift.bias"),
    ("scale2.weight", "ffn.output_scale.weight"),
)


def _zero_layer(plan: Plan, stack: str, index: int, layout: Layout) -> None:
    fs, hf = f"{stack}.layers.{index}", f"model.{stack}.layers.{index}"
    _attention(plan, f"{fs}.self_attn", f"{hf}.self_attn", cross=False, layout=layout, biases=False)
    if stack == "decoder":
        _attention(plan, f"{fs}.encoder_attn", f"{hf}.encoder_attn", cross=True, layout=layout, biases=False)
    _ffn(plan, fs, hf, biases=False)
    scalars = _ZERO_ENCODER_SCALARS if stack == "encoder" else _ZERO_DECODER_SCALARS
    for fs_name, hf_name in scalars:
        plan.add(f"{fs}.{fs_name}", f"{hf}.{hf_name}", negate=fs_name.startswith("shift"))


def _ln_layer(plan: Plan, stack: str, index: int, layout: Layout, normalization: str) -> None:
    fs, hf = f"{stack}.layers.{index}", f"model.{stack}.layers.{index}"
    norm = "pre_norm" if normalization == "pre_ln" else "post_norm"
    _attention(plan, f"{fs}.self_attn", f"{hf}.self_attn", cross=False, layout=layout, biases=True)
    if stack == "decoder":
        _attention(plan, f"{fs}.encoder_attn", f"{hf}.encoder_attn", cross=True, layout=layout, biases=True)
    _ffn(plan, fs, hf, biases=True)
    if stack == "encoder" and layout.indexed_encoder_norms:
        names = {"self_attn": "layer_norms.0", "ffn": "layer_norms.1"}
    elif stack == "encoder":
        names = {"self_attn": "self_attn_layer_norm", "ffn": "final_layer_norm"}
    else:
        names = {
            "self_attn": "self_attn_layer_norm",
            "encoder_attn": "encoder_attn_layer_norm",
            "ffn": "final_layer_norm",
        }
    for branch, fs_name in names.items():
        _layer_norm(plan, f"{fs}.{fs_name}", f"{hf}.{branch}_residual.{norm}")


# ---------------------------------------------------------------------------------------------------------
# Whole model


def _embeddings(plan: Plan, shape: Shape, layout: Layout) -> None:
    plan.add("encoder.embed_tokens.weight", "model.encoder.embed_tokens.weight")
    if shape.share_embeddings:
        plan.fairseq_aliases["decoder.embed_tokens.weight"] = "encoder.embed_tokens.weight"
        plan.hf_aliases["model.shared.weight"] = "model.encoder.embed_tokens.weight"
        plan.hf_aliases["model.decoder.embed_tokens.weight"] = "model.encoder.embed_tokens.weight"
    else:
        plan.add("decoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
    if shape.tie_output:
        if layout.output_key is not None:
            plan.fairseq_aliases[layout.output_key] = "decoder.embed_tokens.weight"
        plan.hf_aliases["lm_head.weight"] = "model.decoder.embed_tokens.weight"
    else:
        if layout.output_key is None:
            raise ValueError("an untied output projection needs a fairseq key to live in")
        plan.add(layout.output_key, "lm_head.weight")
    if layout.learned_positions:
        for stack in ("encoder", "decoder"):
            plan.add(f"{stack}.embed_positions.weight", f"model.{stack}.embed_positions.weight")


def build_plan(shape: Shape, layout: Layout) -> Plan:
    plan = Plan()
    _embeddings(plan, shape, layout)
    for stack, count in (("encoder", shape.encoder_layers), ("decoder", shape.decoder_layers)):
        for index in range(count):
            if layout.flavor == FIXUP:
                _zero_layer(plan, stack, index, layout)
            else:
                _ln_layer(plan, stack, index, layout, shape.normalization)
    if layout.flavor == FIXUP:
        plan.add("encoder.shift0.bias", "model.encoder.output.shift.bias", negate=True)
        plan.add("encoder.scale0.weight", "model.encoder.output.scale.weight")
        plan.add("decoder.shift0.bias", "model.decoder.output.shift.bias", negate=True)
    elif shape.normalization == "pre_ln":
        for stack in ("encoder", "decoder"):
            _layer_norm(plan, f"{stack}.layer_norm", f"model.{stack}.output.norm")
    return plan


# ---------------------------------------------------------------------------------------------------------
# Running a plan


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


def _split(tensor: torch.Tensor, sizes: list[int], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if sum(sizes) != tensor.shape[0]:
        raise ValueError(f"{', '.join(keys)}: {tensor.shape[0]} rows cannot be split into {sizes}")
    if len(sizes) == 1:
        return {keys[0]: tensor}
    return dict(zip(keys, (part.clone() for part in torch.split(tensor, sizes, dim=0)), strict=True))


def _apply(group_tensors: list[torch.Tensor], negate: bool) -> torch.Tensor:
    merged = _concat(group_tensors)
    return -merged if negate else merged


def fairseq_to_hf(
    state: dict[str, torch.Tensor], plan: Plan, hf_shapes: dict[str, torch.Size]
) -> dict[str, torch.Tensor]:
    """Our state dict from a fairseq one; ``hf_shapes`` (of the target model) sizes fused splits."""
    for key, original in plan.fairseq_aliases.items():
        if key in state and not torch.equal(state[key], state[original]):
            raise ValueError(f"`{key}` differs from `{original}`, but the checkpoint's config ties them")
    out: dict[str, torch.Tensor] = {}
    for group in plan.groups:
        missing = [key for key in group.fairseq if key not in state]
        if missing:
            raise ValueError(f"the checkpoint has no `{missing[0]}`, which this architecture needs")
        merged = _apply([state[key] for key in group.fairseq], group.negate)
        sizes = [hf_shapes[key][0] if len(hf_shapes[key]) else 1 for key in group.hf]
        out.update(_split(merged, sizes, group.hf))
    for key, original in plan.hf_aliases.items():
        out[key] = out[original]
    return out


def hf_to_fairseq(state: dict[str, torch.Tensor], plan: Plan) -> dict[str, torch.Tensor]:
    """A fairseq state dict from ours; split fairseq groups (q, k, v) are equal thirds."""
    out: dict[str, torch.Tensor] = {}
    for group in plan.groups:
        merged = _apply([state[key] for key in group.hf], group.negate)
        parts = len(group.fairseq)
        if merged.shape[0] % parts:
            raise ValueError(f"{', '.join(group.hf)}: {merged.shape[0]} rows are not {parts} equal parts")
        out.update(_split(merged, [merged.shape[0] // parts] * parts, group.fairseq))
    for key, original in plan.fairseq_aliases.items():
        out[key] = out[original]  # the same tensor, as fairseq's tied modules save it
    return out


def planned_fairseq_keys(plan: Plan) -> set[str]:
    return {key for group in plan.groups for key in group.fairseq} | set(plan.fairseq_aliases)


def planned_hf_keys(plan: Plan) -> set[str]:
    return {key for group in plan.groups for key in group.hf} | set(plan.hf_aliases)


def is_buffer_key(key: str) -> bool:
    return key.endswith(BUFFER_SUFFIXES)
