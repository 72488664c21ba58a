"""The Fixup encoder-decoder Transformer (Zhang, Dauphin, Ma, ICLR 2019), as a transformers model type.

One code path serves the paper's model and its baselines: ``config.normalization`` places LayerNorm
(none / post / pre) and ``config.init`` picks the initialization (fixup / t_fixup / xavier / normal).

Per residual branch (attention or FFN) the layer computes

    x = post_norm(x + scale * dropout(branch(pre_norm(x))))

with ``post_norm``/``pre_norm`` the identity unless LayerNorm is asked for, ``scale`` a learned scalar
(init 0 under the default ``fixup_zero="multiplier"``, 1 otherwise), and, inside each branch, a learned scalar bias before every linear and activation:

    attention:  out_proj(Attention(qkv_proj(x + b0)))
    FFN:        fc2(dropout(relu(fc1(x + b1) + b2)) + b3)

Linears have no bias; the scalars take their place (the authors' fairseq ``transformer_zero``). With
``normalization="none"`` the encoder output is ``(x + b) * s`` and the decoder output ``x + b``.
In training mode the per-layer scalars act through the weights (``s * W(x + b) = (sW)x + s b W·1``, see
``folding.py``): the same function, without an activation-sized tensor per scalar.
The whole initialization (which layer is zero, which is scaled and by how much) is computed in one place,
:func:`transformer_init_plan`, and applied by ``_init_weights``; the formulas live in
:mod:`fixup_transformer.fixup`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import initialization as hf_init
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple, is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..fixup import (
    InitsOwnedModules,
    ScalarBias,
    ScalarScale,
    chunked_normal_,
    chunked_xavier_uniform_,
    fixup_depth_factor,
    zero_,
)
from .configuration_fixup_transformer import FixupTransformerConfig
from .dropout import dropout
from .folding import fold_into_linear, is_plain_linear, scaled_shifted_linear
from .output_loss import IGNORE_INDEX, label_smoothed_loss_sums, linear_label_smoothed_loss_sums

# transformers drops an all-ones padding mask (so SDPA may pick a flash kernel), but finding that out reads
# the mask back to the host: a device sync per forward and per decoding step (the cross-attention mask).
# Translation batches are padded anyway, so the mask is always built (transformers without the option keep
# their check).
NO_PADDING_CHECK = (
    {"allow_is_bidirectional_skip": False}
    if "allow_is_bidirectional_skip" in inspect.signature(create_bidirectional_mask).parameters
    else {}
)

# ---------------------------------------------------------------------------------------------------------
# The init plan: every number the initialization uses, computed from the config in one place
# ---------------------------------------------------------------------------------------------------------

# fairseq's Xavier gain for q/k/v, equal to the fans of one fused 3d x d matrix: sqrt(6 / 4d) = sqrt(6 / 2d) / sqrt(2).
FUSED_QKV_GAIN = 2**-0.5


@dataclass(frozen=True)
class AttentionInit:
    """Gains on the base init of an attention branch's q, k, v and output projections; 0 = starts at zero."""

    q: float
    k: float
    v: float
    out: float
    multiplier: float = 1.0  # the branch's scalar multiplier (Fixup rule 3, or rule 1's zero)


@dataclass(frozen=True)
class FeedForwardInit:
    """Gains on the base init of an FFN branch's two linears; 0 = starts at zero."""

    fc1: float
    fc2: float
    multiplier: float = 1.0


@dataclass(frozen=True)
class StackInit:
    """One stack's share of the plan: its token embedding's std and the gains of each branch kind."""

    embedding_std: float
    self_attn: AttentionInit
    ffn: FeedForwardInit
    cross_attn: AttentionInit | None = None  # the decoder's


@dataclass(frozen=True)
class TransformerInitPlan:
    """The whole initialization of a model, read by ``_init_weights``.

    Every linear inside a branch is drawn from the base init (Xavier-uniform with the fans of one ``d x d``
    part of a fused projection, or N(0, ``init_std``) under ``init="normal"``) times its gain.
    """

    encoder: StackInit
    decoder: StackInit
    output_projection_std: float  # untied lm_head; 0 = starts at zero (rule 1). A tied one is the embedding.
    learned_position_std: float
    normal_std: float | None  # N(0, std) base init instead of Xavier-uniform (the transformers convention)


def transformer_init_plan(config: FixupTransformerConfig) -> TransformerInitPlan:
    """The init of ``config.init``, top to bottom: baselines, Fixup (the paper), T-Fixup (Huang et al. 2020)."""
    d = config.d_model
    if config.init in ("xavier", "normal"):
        # Baselines: fairseq's Xavier (q/k/v at its 1/sqrt(2) gain, the rest at gain 1) or N(0, init_std)
        # everywhere (BART/Marian in transformers).
        std = config.init_std if config.init == "normal" else d**-0.5
        qkv = FUSED_QKV_GAIN if config.init == "xavier" else 1.0
        attention, ffn = AttentionInit(qkv, qkv, qkv, 1.0), FeedForwardInit(1.0, 1.0)
        stack = StackInit(std, attention, ffn)
        return TransformerInitPlan(
            encoder=stack,
            decoder=replace(stack, cross_attn=attention),
            output_projection_std=std,
            learned_position_std=std,  # BART's learned positions are N(0, init_std) too
            normal_std=config.init_std if config.init == "normal" else None,
        )
    if config.init == "fixup":
        # Rule 2: in-branch weights x L^(-1/(2m-2)), m = 4 in attention (q, k, v, out), m = 2 in the FFN.
        # Rule 1: each branch's last layer starts at 0, or (fixup_zero="multiplier", the default) keeps the
        # scaled init while the branch multiplier starts at 0 instead; the untied classifier starts at 0.
        zero_multiplier = config.fixup_zero == "multiplier"
        multiplier = 0.0 if zero_multiplier else 1.0

        def attention(depth: int) -> AttentionInit:
            gain = fixup_depth_factor(depth, layers_per_branch=4)
            qkv = gain * FUSED_QKV_GAIN
            return AttentionInit(qkv, qkv, qkv, out=gain if zero_multiplier else 0.0, multiplier=multiplier)

        ffn_gain = fixup_depth_factor(config.fixup_depth, layers_per_branch=2)
        ffn = FeedForwardInit(ffn_gain, fc2=ffn_gain if zero_multiplier else 0.0, multiplier=multiplier)
        stack = StackInit(d**-0.5, attention(config.fixup_depth), ffn)
        cross_depth = config.fixup_cross_attention_depth
        cross_depth = config.fixup_depth if cross_depth is None else cross_depth
        return TransformerInitPlan(
            encoder=stack,
            decoder=replace(stack, cross_attn=attention(cross_depth)),
            output_projection_std=0.0,
            learned_position_std=d**-0.5,
            normal_std=None,
        )
    # T-Fixup: value/output projections, the FFN and the embeddings scaled per stack; q and k keep fairseq's
    # 1/sqrt(2) gain, as in the T-Fixup reference code. A shared embedding takes the encoder's factor.
    encoder_gain = 0.67 * config.encoder_layers ** (-0.25)
    decoder_gain = (9 * config.decoder_layers) ** (-0.25)

    def t_fixup_stack(gain: float, embedding_factor: float, cross: bool) -> StackInit:
        attention = AttentionInit(FUSED_QKV_GAIN, FUSED_QKV_GAIN, gain, gain)
        return StackInit(
            d**-0.5 * embedding_factor, attention, FeedForwardInit(gain, gain), attention if cross else None
        )

    encoder_embedding = (9 * config.encoder_layers) ** (-0.25)
    # One shared table is scaled once, by the encoder's factor (T-Fixup's code skips the decoder's scaling
    # under share_all_embeddings); both stacks must say so, or re-initialising the decoder redraws it.
    decoder_embedding = (
        encoder_embedding
        if config.share_encoder_decoder_embeddings
        else (9 * config.decoder_layers) ** (-0.25)
    )
    return TransformerInitPlan(
        encoder=t_fixup_stack(encoder_gain, encoder_embedding, cross=False),
        decoder=t_fixup_stack(decoder_gain, decoder_embedding, cross=True),
        output_projection_std=d**-0.5,
        learned_position_std=d**-0.5,
        normal_std=None,
    )


def init_branch_linear_(linear: nn.Linear, gains: list[float], normal_std: float | None) -> None:
    """Draw one branch linear (a fused one chunk by chunk) from the base init times its gains."""
    if not any(gains):
        zero_(linear.weight)
    elif normal_std is not None:
        chunked_normal_(linear.weight, gains, normal_std)
    else:
        chunked_xavier_uniform_(linear.weight, gains)
    zero_(linear.bias)


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


def scalar_bias(config: FixupTransformerConfig) -> nn.Module:
    """A Fixup scalar bias, or the identity once the scalars have been folded into the linears."""
    return ScalarBias() if config.branch_scalars else nn.Identity()


def scalar_scale(config: FixupTransformerConfig, init_value: float) -> nn.Module:
    """A Fixup branch multiplier, or the identity once folded."""
    return ScalarScale(init_value) if config.branch_scalars else nn.Identity()


def linear(config: FixupTransformerConfig, in_features: int, out_features: int) -> nn.Linear:
    # Bias-free as in the authors' code; a folded model carries the folded scalars as linear biases.
    return nn.Linear(in_features, out_features, bias=config.scalars_folded or config.linear_bias)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Out-of-range ids would index garbage (CPU) or crash asynchronously (CUDA); fail clearly instead.

    The check runs on the device (``torch._assert_async``): reading the ids' min/max back to the host
    would stall a GPU pipeline twice per stack on every step, and at every decoding step of ``generate``.
    On CPU it raises at once; on CUDA at the next synchronisation, with this message.
    """
    if is_torchdynamo_compiling() or input_ids.numel() == 0:
        return
    in_range = ((input_ids >= 0) & (input_ids < vocab_size)).all()
    torch._assert_async(
        in_range,
        f"`{name}` contains a token id outside the vocabulary [0, {vocab_size}) of this model (was the input "
        "made with another tokenizer?)",
    )


class FixupSinusoidalPositions(nn.Module):
    """fairseq's sinusoidal positions: sines in the first half of the features, cosines in the second.

    Computed on the fly from the positions (a few hundred flops per token), so nothing is stored in the
    checkpoint and any length works.
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.embedding_dim // 2
        step = math.log(10000.0) / max(half - 1, 1)
        frequencies = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32) * -step)
        angles = positions.float().unsqueeze(-1) * frequencies
        table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        if self.embedding_dim % 2:
            table = nn.functional.pad(table, (0, 1))
        return table.to(dtype)


class FixupLearnedPositions(nn.Embedding):
    """Learned positions: N(0, d^-1/2) as in fairseq (N(0, init_std) under init="normal", as in BART)."""

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return super().forward(positions).to(dtype)


def position_embeddings(config: FixupTransformerConfig) -> nn.Module:
    if config.position_embedding == "learned":
        return FixupLearnedPositions(config.max_position_embeddings, config.d_model)
    return FixupSinusoidalPositions(config.d_model)


class FixupTokenEmbedding(nn.Embedding):
    """Token embedding that carries its std from the init plan (it depends on the stack under T-Fixup)."""

    def __init__(self, config: FixupTransformerConfig, num_embeddings: int, init_std: float) -> None:
        super().__init__(num_embeddings, config.d_model, padding_idx=config.pad_token_id)
        self.init_std = init_std

    def reset_parameters(self) -> None:
        """Nothing here: the model's ``_init_weights`` draws the table (nn.Embedding's own N(0, 1) draw would
        only be overwritten)."""


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (softmax(QK^T * scaling + mask) V); transformers' sdpa path must match it."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class FixupAttention(nn.Module):
    """Multi-head attention with a scalar bias on its input and no linear biases.

    Self-attention uses one fused QKV projection; cross-attention projects the query from the decoder
    and keys/values (fused) from the encoder output, once per source: they are cached in the
    ``EncoderDecoderCache`` after the first decoding step.
    """

    def __init__(
        self,
        config: FixupTransformerConfig,
        num_heads: int,
        init: AttentionInit,
        causal: bool,
        cross_attention: bool = False,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.num_heads = num_heads
        self.head_dim = d // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_cross_attention = cross_attention
        self.is_causal = causal  # read by transformers' sdpa integration
        self.layer_idx = layer_idx
        self.init_gains = init

        self.input_shift = scalar_bias(config)
        self.output_scale = scalar_scale(config, init.multiplier)  # applied through out_proj
        if cross_attention:
            self.q_proj = linear(config, d, d)
            self.kv_proj = linear(config, d, 2 * d)
        else:
            self.qkv_proj = linear(config, d, 3 * d)
        self.out_proj = linear(config, d, d)

    def projections_with_gains(self) -> list[tuple[nn.Linear, list[float]]]:
        """Each projection with the init gain of each of its fused parts, in the order they are drawn."""
        g = self.init_gains
        if self.is_cross_attention:
            inputs = [(self.q_proj, [g.q]), (self.kv_proj, [g.k, g.v])]
        else:
            inputs = [(self.qkv_proj, [g.q, g.k, g.v])]
        return [*inputs, (self.out_proj, [g.out])]

    def projections(self) -> list[nn.Linear]:
        inputs = [self.q_proj, self.kv_proj] if self.is_cross_attention else [self.qkv_proj]
        return [*inputs, self.out_proj]

    def fold_scalars_(self) -> None:
        """Inference: the input shift goes into the query (or QKV) projection, the multiplier into out_proj."""
        fold_into_linear(self.q_proj if self.is_cross_attention else self.qkv_proj, self.input_shift)
        if self.is_cross_attention:
            fold_into_linear(self.kv_proj)
        fold_into_linear(self.out_proj, output_scale=self.output_scale)
        self.input_shift = self.output_scale = nn.Identity()

    def _split_heads(self, states: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """``parts`` tensors of ``[batch, heads, length, head_dim]``, views of the fused projection's output.

        Unbound before the heads move ahead of the positions: in backward the parts' gradients then stack
        into one buffer laid out as the projection's output, with no copy to make it contiguous (a permute
        before the unbind cost one ``[tokens, parts * d]`` copy per attention and step; one part needs no
        stack at all)."""
        batch, length, _ = states.shape
        if parts == 1:
            return (states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2),)
        states = states.view(batch, length, parts, self.num_heads, self.head_dim)
        return tuple(part.transpose(1, 2) for part in states.unbind(2))

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        fold = self.training  # see scaled_shifted_linear: weight-side scalars pay off for training batches

        if self.is_cross_attention:
            query = scaled_shifted_linear(hidden_states, self.q_proj, self.input_shift, fold=fold)
            (query,) = self._split_heads(query, 1)
            reuse = isinstance(cache, EncoderDecoderCache) and cache.is_updated.get(self.layer_idx, False)
            if reuse:
                layer_cache = cache.cross_attention_cache.layers[self.layer_idx]
                key, value = layer_cache.keys, layer_cache.values
            else:
                key, value = self._split_heads(self.kv_proj(key_value_states), 2)
                if isinstance(cache, EncoderDecoderCache):
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
        else:
            qkv = scaled_shifted_linear(hidden_states, self.qkv_proj, self.input_shift, fold=fold)
            query, key, value = self._split_heads(qkv, 3)
            if cache is not None:
                self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                key, value = self_cache.update(key, value, self.layer_idx)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch, length, -1)
        output = scaled_shifted_linear(output, self.out_proj, output_scale=self.output_scale, fold=fold)
        return output, weights


class FixupFeedForward(nn.Module):
    """``s * fc2(dropout(act(fc1(x + b1) + b2)) + b3)``: bias-free linears, a scalar bias before each op,
    and the branch multiplier ``s``."""

    def __init__(self, config: FixupTransformerConfig, ffn_dim: int, init: FeedForwardInit) -> None:
        super().__init__()
        self.init_gains = init
        self.activation = nn.ReLU() if config.activation_function == "relu" else nn.GELU()
        self.activation_dropout = config.activation_dropout
        self.input_shift = scalar_bias(config)
        self.fc1 = linear(config, config.d_model, ffn_dim)
        self.activation_shift = scalar_bias(config)
        self.output_shift = scalar_bias(config)
        self.fc2 = linear(config, ffn_dim, config.d_model)
        self.output_scale = scalar_scale(config, init.multiplier)

    def fold_scalars_(self) -> None:
        """Inference: the shifts around fc1 go into fc1, the output shift and the multiplier into fc2."""
        fold_into_linear(self.fc1, self.input_shift, output_shift=self.activation_shift)
        fold_into_linear(self.fc2, self.output_shift, output_scale=self.output_scale)
        self.input_shift = self.activation_shift = self.output_shift = self.output_scale = nn.Identity()

    def projections_with_gains(self) -> list[tuple[nn.Linear, list[float]]]:
        return [(self.fc1, [self.init_gains.fc1]), (self.fc2, [self.init_gains.fc2])]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        fold = self.training  # see scaled_shifted_linear
        hidden_states = scaled_shifted_linear(
            hidden_states, self.fc1, self.input_shift, output_shift=self.activation_shift, fold=fold
        )
        hidden_states = self.activation(hidden_states)
        hidden_states = dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return scaled_shifted_linear(
            hidden_states, self.fc2, self.output_shift, output_scale=self.output_scale, fold=fold
        )


class ResidualConnection(nn.Module):
    """Everything around one residual branch but its scalars: LayerNorm placement and dropout.

    ``normalize_input`` is applied to the branch input (pre-LN), ``forward`` adds the branch output back
    (``post_norm(x + dropout(branch_output))``). The branch multiplier lives in the branch itself, so that
    it can act on the branch's last weight matrix rather than on its output.
    """

    def __init__(self, config: FixupTransformerConfig) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(config.d_model) if config.normalization == "pre_ln" else nn.Identity()
        self.post_norm = nn.LayerNorm(config.d_model) if config.normalization == "post_ln" else nn.Identity()
        self.dropout = config.dropout

    def normalize_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pre_norm(hidden_states)

    def forward(self, residual: torch.Tensor, branch_output: torch.Tensor) -> torch.Tensor:
        branch_output = dropout(branch_output, p=self.dropout, training=self.training)
        return self.post_norm(residual + branch_output)


class FixupEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: FixupTransformerConfig, layer_idx: int, init: StackInit) -> None:
        super().__init__()
        heads = config.encoder_attention_heads
        self.self_attn = FixupAttention(config, heads, init.self_attn, causal=False, layer_idx=layer_idx)
        self.self_attn_residual = ResidualConnection(config)
        self.ffn = FixupFeedForward(config, config.encoder_ffn_dim, init.ffn)
        self.ffn_residual = ResidualConnection(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs
    ) -> torch.Tensor:
        branch, _ = self.self_attn(
            self.self_attn_residual.normalize_input(hidden_states), attention_mask=attention_mask, **kwargs
        )
        hidden_states = self.self_attn_residual(hidden_states, branch)
        branch = self.ffn(self.ffn_residual.normalize_input(hidden_states))
        return self.ffn_residual(hidden_states, branch)


class FixupDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: FixupTransformerConfig, layer_idx: int, init: StackInit) -> None:
        super().__init__()
        heads = config.decoder_attention_heads
        self.self_attn = FixupAttention(config, heads, init.self_attn, causal=True, layer_idx=layer_idx)
        self.self_attn_residual = ResidualConnection(config)
        self.encoder_attn = FixupAttention(
            config, heads, init.cross_attn, causal=False, cross_attention=True, layer_idx=layer_idx
        )
        self.encoder_attn_residual = ResidualConnection(config)
        self.ffn = FixupFeedForward(config, config.decoder_ffn_dim, init.ffn)
        self.ffn_residual = ResidualConnection(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        branch, _ = self.self_attn(
            self.self_attn_residual.normalize_input(hidden_states),
            cache=cache,
            attention_mask=attention_mask,
            **kwargs,
        )
        hidden_states = self.self_attn_residual(hidden_states, branch)
        branch, _ = self.encoder_attn(
            self.encoder_attn_residual.normalize_input(hidden_states),
            key_value_states=encoder_hidden_states,
            cache=cache,
            attention_mask=encoder_attention_mask,
            **kwargs,
        )
        hidden_states = self.encoder_attn_residual(hidden_states, branch)
        branch = self.ffn(self.ffn_residual.normalize_input(hidden_states))
        return self.ffn_residual(hidden_states, branch)


class StackOutput(nn.Module):
    """What closes a stack: Fixup's output bias (and, for the encoder, multiplier); pre-LN's final LayerNorm."""

    def __init__(self, config: FixupTransformerConfig, with_scale: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model) if config.normalization == "pre_ln" else nn.Identity()
        self.shift = ScalarBias() if config.stack_output_scalars else nn.Identity()
        self.scale = ScalarScale() if config.stack_output_scalars and with_scale else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.scale(self.shift(self.norm(hidden_states)))


# ---------------------------------------------------------------------------------------------------------
# Pretrained-model plumbing
# ---------------------------------------------------------------------------------------------------------


class FixupTransformerPreTrainedModel(InitsOwnedModules, PreTrainedModel):
    config: FixupTransformerConfig
    config_class = FixupTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FixupEncoderLayer", "FixupDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True  # decoding with a static cache compiles with fullgraph=True (tested)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The init plan applied module by module. Branches and embeddings carry their share of the plan
        # from construction (they differ per stack); plain nn.Linear children are drawn by their owner, so
        # transformers' generic N(0, 0.02) init never touches them.
        plan = transformer_init_plan(self.config)
        if isinstance(module, FixupAttention | FixupFeedForward):
            for linear, gains in module.projections_with_gains():
                init_branch_linear_(linear, gains, plan.normal_std)
        elif isinstance(module, FixupTokenEmbedding):
            if not getattr(module.weight, "_is_hf_initialized", False):
                hf_init.normal_(module.weight, mean=0.0, std=module.init_std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, ScalarBias | ScalarScale):
            module.reset_parameters()
        elif isinstance(module, FixupLearnedPositions):
            hf_init.normal_(module.weight, mean=0.0, std=plan.learned_position_std)
        elif isinstance(module, nn.LayerNorm):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
        elif (
            isinstance(module, FixupTransformerForConditionalGeneration)
            and not self.config.tie_word_embeddings
        ):
            # A tied output projection *is* the embedding (the tie is applied after this runs).
            if plan.output_projection_std == 0.0:
                zero_(module.lm_head.weight)  # Fixup rule 1: the classifier starts at zero
            else:
                hf_init.normal_(module.lm_head.weight, mean=0.0, std=plan.output_projection_std)

    def _get_resized_embeddings(
        self, old_embeddings, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True
    ):
        # Without mean resizing transformers draws the added rows with `_init_weights` of a plain
        # nn.Embedding, which this plan leaves at torch's N(0, 1); draw them as the table's own init.
        old_rows = old_embeddings.weight.shape[0]
        resized = super()._get_resized_embeddings(
            old_embeddings, new_num_tokens, pad_to_multiple_of, mean_resizing
        )
        if not mean_resizing and isinstance(resized, FixupTokenEmbedding):
            with torch.no_grad():
                resized.weight[old_rows:].normal_(0.0, resized.init_std)
        return resized

    def _get_resized_lm_head(self, old_lm_head, new_num_tokens=None, transposed=False, mean_resizing=True):
        # As above, for the untied output projection: added rows start as the plan's (zero under Fixup).
        old_rows = old_lm_head.weight.shape[1 if transposed else 0]
        resized = super()._get_resized_lm_head(old_lm_head, new_num_tokens, transposed, mean_resizing)
        if not mean_resizing:
            std = transformer_init_plan(self.config).output_projection_std
            added = resized.weight[:, old_rows:] if transposed else resized.weight[old_rows:]
            with torch.no_grad():
                if std == 0.0:
                    added.zero_()
                else:
                    added.normal_(0.0, std)
        return resized

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        if new_num_tokens is None and pad_to_multiple_of is None:  # transformers' no-op call: change nothing
            return super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.config.decoder_vocab_size not in (None, self.config.vocab_size):
            # Separate source and target vocabularies (fairseq's two dictionaries): the source side only, as
            # MarianMTModel does; `resize_decoder_token_embeddings` resizes the target side.
            old = self.get_input_embeddings()
            embeddings = self._get_resized_embeddings(old, new_num_tokens, pad_to_multiple_of, mean_resizing)
            embeddings.requires_grad_(old.weight.requires_grad)
            self.set_input_embeddings(embeddings)
            return embeddings
        # One vocabulary. transformers resizes the input embedding (the encoder's) and the output
        # projection; with unshared embeddings the decoder's own table must follow, or target ids past the
        # old size break.
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        base = getattr(self, self.base_model_prefix, self)
        if not self.config.share_encoder_decoder_embeddings and isinstance(base, FixupTransformerModel):
            decoder = base.decoder
            decoder.embed_tokens = self._get_resized_embeddings(
                decoder.embed_tokens, embeddings.num_embeddings, mean_resizing=mean_resizing
            )
        # Both sides have the new size (also if decoder_vocab_size was given explicitly).
        self.config.decoder_vocab_size = None
        return embeddings

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # Sharing the encoder/decoder embedding and tying the output projection are two separate
        # choices here, while transformers gates every tie on `tie_word_embeddings` alone.
        # Each model sets `_tied_weights_keys` from its config in __init__ (save_pretrained reads it too).
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys or {})


class FixupTransformerStack(FixupTransformerPreTrainedModel):
    """What the encoder and decoder share: token and position embeddings, the layers, the stack output."""

    def __init__(
        self,
        config: FixupTransformerConfig,
        layer_class: type,
        num_layers: int,
        vocab_size: int,
        init: StackInit,
        output_scale: bool,
    ) -> None:
        super().__init__(config)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = FixupTokenEmbedding(config, vocab_size, init.embedding_std)
        self.embed_positions = position_embeddings(config)
        self.layers = nn.ModuleList([layer_class(config, i, init) for i in range(num_layers)])
        # Fixup's encoder output is (x + b) * s, its decoder output x + b.
        self.output = StackOutput(config, with_scale=output_scale)
        self.gradient_checkpointing = False
        self.post_init()

    def embed(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        past_length: int,
        name: str,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled token embeddings, layer input with positions and dropout); ``name`` is for errors.

        With an ``attention_mask`` (over past and current tokens) positions count only the unmasked
        tokens, as fairseq's ``make_positions`` skips pads: a left-padded sentence gets the same positions
        as the same sentence unpadded.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(f"Pass exactly one of `{name}` and the matching `inputs_embeds`.")
        if inputs_embeds is None:
            # An adapter-wrapped table (PEFT's LoRA Embedding) has no num_embeddings; its base layer has.
            table = getattr(self.embed_tokens, "get_base_layer", lambda: self.embed_tokens)()
            check_token_ids(input_ids, table.num_embeddings, name)
            inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds * self.embed_scale
        positions = _positions(inputs_embeds.shape[1], past_length, inputs_embeds.device, self.config)
        if attention_mask is not None and attention_mask.dim() == 2:
            counted = attention_mask.long().cumsum(-1)[:, -inputs_embeds.shape[1] :] - 1
            positions = counted.clamp(min=0)
        positions = positions + self.config.position_offset  # fairseq: the first token is at padding_idx + 1
        hidden_states = inputs_embeds + self.embed_positions(positions, inputs_embeds.dtype)
        hidden_states = dropout(hidden_states, p=self.config.dropout, training=self.training)
        return inputs_embeds, hidden_states


class FixupTransformerEncoder(FixupTransformerStack):
    _can_record_outputs = {"hidden_states": FixupEncoderLayer, "attentions": FixupAttention}

    def __init__(self, config: FixupTransformerConfig) -> None:
        init = transformer_init_plan(config).encoder
        super().__init__(config, FixupEncoderLayer, config.encoder_layers, config.vocab_size, init, True)

    # No merge_with_config_defaults: its only field here would be config.use_cache, which an encoder has no
    # use for (under gradient checkpointing it warned that use_cache was being turned off).
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        inputs_embeds, hidden_states = self.embed(input_ids, inputs_embeds, 0, "input_ids", attention_mask)

        mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **NO_PADDING_CHECK,
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.output(hidden_states))


class FixupTransformerDecoder(FixupTransformerStack):
    _can_record_outputs = {
        "hidden_states": FixupDecoderLayer,
        "attentions": OutputRecorder(FixupAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(FixupAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: FixupTransformerConfig) -> None:
        init = transformer_init_plan(config).decoder
        super().__init__(
            config, FixupDecoderLayer, config.decoder_layers, config.target_vocab_size, init, False
        )

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers' old name, as in BART
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if encoder_hidden_states is None:
            raise ValueError("The decoder needs `encoder_hidden_states` (the encoder output) to attend to.")
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        past_length = cache.get_seq_length() if cache is not None else 0
        inputs_embeds, hidden_states = self.embed(
            input_ids, inputs_embeds, past_length, "decoder_input_ids", attention_mask
        )
        # No all-ones mask is built when none is given: transformers would have to read it back to the host
        # to find that it hides nothing (a device sync per step).
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        causal_mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=self_cache
        )
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            **NO_PADDING_CHECK,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,  # positional, so gradient checkpointing passes it through
                encoder_attention_mask=cross_mask,
                cache=cache,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.output(hidden_states), cache=cache
        )


def _positions(
    length: int, offset: int, device: torch.device, config: FixupTransformerConfig
) -> torch.Tensor:
    # Skipped for a static cache's length, a tensor: the comparison would be a host read at every decoding
    # step (eager) or a graph break (compiled). The dynamic cache's length is an int.
    if (
        not isinstance(offset, torch.Tensor)
        and not is_torchdynamo_compiling()
        and config.position_offset + offset + length > config.max_position_embeddings
    ):
        raise ValueError(
            f"Sequence of {offset + length} positions is longer than `max_position_embeddings` "
            f"({config.max_position_embeddings}) of this model; truncate the input or raise that config field."
        )
    return torch.arange(length, device=device) + offset  # a static length, even when offset is a tensor


class FixupTransformerModel(FixupTransformerPreTrainedModel):
    """The bare encoder-decoder, returning the decoder's last hidden state."""

    def __init__(self, config: FixupTransformerConfig) -> None:
        super().__init__(config)
        if config.share_encoder_decoder_embeddings:
            std = transformer_init_plan(config).encoder.embedding_std  # T-Fixup: the encoder's factor
            self.shared = FixupTokenEmbedding(config, config.vocab_size, std)
            self._tied_weights_keys = {
                "encoder.embed_tokens.weight": "shared.weight",
                "decoder.embed_tokens.weight": "shared.weight",
            }
        self.encoder = FixupTransformerEncoder(config)
        self.decoder = FixupTransformerDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value
        if self.config.share_encoder_decoder_embeddings:
            self.shared = value
            self.decoder.embed_tokens = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


@dataclass
class FixupSeq2SeqLMOutput(Seq2SeqLMOutput):
    r"""
    nll_loss: the cross entropy without label smoothing, normalised as `loss` is (for logging; no gradient).
    """

    nll_loss: torch.FloatTensor | None = None


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: ``[start, y_1, ..., y_{n-1}]``, with ignored labels as pad."""
    for name, value in (("pad_token_id", pad_token_id), ("decoder_start_token_id", decoder_start_token_id)):
        if value is None:
            raise ValueError(f"config.{name} must be set to build decoder inputs from `labels`.")
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == IGNORE_INDEX, pad_token_id)


class FixupTransformerForConditionalGeneration(FixupTransformerPreTrainedModel, GenerationMixin):
    """Encoder-decoder with a language-modelling head, for translation and other seq2seq tasks."""

    def __init__(self, config: FixupTransformerConfig) -> None:
        super().__init__(config)
        self.model = FixupTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.target_vocab_size, bias=False)
        if config.tie_word_embeddings:
            source = "shared" if config.share_encoder_decoder_embeddings else "decoder.embed_tokens"
            self._tied_weights_keys = {"lm_head.weight": f"model.{source}.weight"}
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def resize_decoder_token_embeddings(
        self, new_num_tokens: int, mean_resizing: bool = True
    ) -> nn.Embedding:
        """The target side of separate vocabularies (MarianMTModel's method): the decoder's embedding and
        the output projection, and ``config.decoder_vocab_size``; ``resize_token_embeddings`` resizes the
        source side."""
        if self.config.share_encoder_decoder_embeddings:
            raise ValueError(
                "`resize_decoder_token_embeddings` is for unshared embeddings "
                "(`share_encoder_decoder_embeddings=False`); use `resize_token_embeddings`."
            )
        decoder = self.model.decoder
        decoder.embed_tokens = self._get_resized_embeddings(
            decoder.embed_tokens, new_num_tokens, mean_resizing=mean_resizing
        )
        if not self.config.tie_word_embeddings:
            self.lm_head = self._get_resized_lm_head(
                self.lm_head, new_num_tokens, mean_resizing=mean_resizing
            )
        self.config.decoder_vocab_size = new_num_tokens
        self.tie_weights()
        return decoder.embed_tokens

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs,
    ) -> FixupSeq2SeqLMOutput:
        r"""
        labels: target token ids (`-100` is ignored); when given, decoder inputs are `labels` shifted right
            behind `decoder_start_token_id`, and `loss` is the label-smoothed cross entropy
            (`config.label_smoothing`) averaged over the non-ignored tokens, or summed and divided by
            `num_items_in_batch` when the Trainer passes it (exact gradient accumulation); `nll_loss` is
            the unsmoothed cross entropy, normalised the same way. In training (gradients on) the loss is
            computed without the logits (`config.loss_without_logits`), and `logits` is `None`.
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs: Seq2SeqModelOutput = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        logits = loss = nll_loss = None
        if labels is None or not self._loss_skips_logits():
            logits = self.lm_head(hidden)
        if labels is not None:
            uniform = self._uniform_label_mass()
            if logits is None:
                sums = linear_label_smoothed_loss_sums(hidden, self.lm_head.weight, labels, uniform)
            else:
                sums = label_smoothed_loss_sums(logits, labels, uniform)
            denominator = (
                num_items_in_batch
                if num_items_in_batch is not None
                else (labels != IGNORE_INDEX).sum().clamp(min=1)
            )
            if isinstance(denominator, torch.Tensor):
                denominator = denominator.to(sums[0].device)
            loss, nll_loss = (total / denominator for total in sums)
        return FixupSeq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            nll_loss=nll_loss,
        )

    def _loss_skips_logits(self) -> bool:
        """Training with gradients through a plain output linear (an adapter-wrapped one keeps the usual path).

        Not under ``torch.compile``: the chunked loss is a graph break there and runs eager, while inductor
        fuses the usual loss (config docstring)."""
        head = self.lm_head
        return (
            self.config.loss_without_logits
            and self.training
            and torch.is_grad_enabled()
            and is_plain_linear(head)
            and head.bias is None
            and not torch.compiler.is_compiling()
        )

    def _uniform_label_mass(self) -> float:
        """Label smoothing as torch's: ``label_smoothing / V`` on every class, the rest on the target."""
        return float(self.config.label_smoothing) / self.config.target_vocab_size

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @staticmethod
    def _reorder_cache(cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search's cache reorder (``generate`` calls this hook when a model has it).

        Only the self-attention keys/values differ between beams. Beam search picks each sentence's new
        beams among that sentence's old ones, and the cross-attention keys/values of one sentence's beams
        are copies of one encoder output, so transformers' ``index_select`` of them at every step would
        rebuild the same tensors.
        """
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    @torch.no_grad()
    def fold_scalars(self) -> FixupTransformerForConditionalGeneration:
        """Fold the scalar biases and multipliers of every layer into linear weights and biases, in place.

        ``W(x + b) = Wx + b * W·1``, a bias before an activation moves into the preceding linear's bias,
        and the branch multiplier scales the branch's last linear. The result computes the same function
        (within fp32 rounding) with fewer element-wise ops, for inference; it is no longer a Fixup model
        for training. The stack-output scalars of the encoder/decoder (one op per sequence) are kept.
        """
        if self.training:
            # Folding replaces parameters: an optimizer built before it would silently stop updating them.
            raise RuntimeError(
                "fold_scalars() is for inference and replaces the linear weights; call model.eval() first "
                "(to keep training, train the unfolded model and fold a copy for inference)."
            )
        if self.config.scalars_folded:
            return self
        wrapped = [
            f"{name}.{child_name}"
            for name, module in self.named_modules()
            if isinstance(module, FixupAttention | FixupFeedForward)
            for child_name, child in module.named_children()
            if child_name.endswith(("proj", "fc1", "fc2")) and type(child) is not nn.Linear
        ]
        if wrapped:  # checked before anything changes, so a refusal leaves the model as it was
            raise TypeError(
                f"fold_scalars() writes into plain nn.Linear layers; {wrapped[0]} is wrapped "
                f"({len(wrapped)} layers in all, e.g. by a PEFT adapter): merge it first "
                "(peft: model = model.merge_and_unload())."
            )
        for module in self.modules():
            if isinstance(module, FixupAttention | FixupFeedForward):
                module.fold_scalars_()
        self.config.scalars_folded = True
        return self


__all__ = [
    "FixupTransformerPreTrainedModel",
    "FixupTransformerModel",
    "FixupTransformerForConditionalGeneration",
    "FixupTransformerEncoder",
    "FixupTransformerDecoder",
]
