"""Configuration of the Fixup encoder-decoder Transformer.

Field names follow transformers' Marian/BART configs wherever the concept is the same, so that users
and tools (generate, Trainer, PEFT) find what they expect. The fields that are new here are the two
switches that run the paper's baselines through the same code (``normalization`` and ``init``) and
the options of the Fixup recipe itself.
"""

import copy

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..choices import require_choice

NORMALIZATIONS = ("none", "post_ln", "pre_ln")
INITS = ("fixup", "t_fixup", "xavier", "normal")
LEGACY_FIXUP_ZERO = "last_layer"  # the default until fixup_zero="multiplier" became it
FIXUP_ZEROS = ("last_layer", "multiplier")
POSITION_EMBEDDINGS = ("sinusoidal", "learned")
ACTIVATIONS = ("relu", "gelu")
# The fields that take one of a few names, with their choices (validated here, listed by --help).
CHOICES = {
    "normalization": NORMALIZATIONS,
    "init": INITS,
    "fixup_zero": FIXUP_ZEROS,
    "position_embedding": POSITION_EMBEDDINGS,
    "activation_function": ACTIVATIONS,
}


@strict
class FixupTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`FixupTransformerModel`] and [`FixupTransformerForConditionalGeneration`].

    The defaults are fairseq's `transformer_iwslt_de_en` size (d 512, FFN 1024, 4 heads, 6+6 layers)
    with the Fixup recipe of Zhang et al. (ICLR 2019): no LayerNorm, bias-free linears, scalar biases and
    multipliers, and the Fixup init.

    Args:
        vocab_size: size of the (joint) vocabulary; with `decoder_vocab_size`, of the source vocabulary.
        decoder_vocab_size: size of the target vocabulary (decoder embedding and output projection) when it
            differs from the source's, as with fairseq's separate dictionaries; `None` (default): `vocab_size`.
            Needs `share_encoder_decoder_embeddings=False`.
        d_model: width of the residual stream.
        encoder_layers / decoder_layers: number of layers of each stack.
        encoder_attention_heads / decoder_attention_heads: heads per attention; must divide `d_model`.
        encoder_ffn_dim / decoder_ffn_dim: inner width of the feed-forward blocks.
        activation_function: `"relu"` (the paper's) or `"gelu"`.
        dropout: dropout on embeddings and on each residual branch's output (fairseq `--dropout`).
        attention_dropout: dropout on attention probabilities.
        activation_dropout: dropout after the FFN activation (fairseq `--activation-dropout`).
        max_position_embeddings: longest sequence for learned positions; sinusoidal positions have no
            limit, but inputs longer than this are rejected for both so behaviour does not depend on it.
        position_embedding: `"sinusoidal"` (fairseq-style, default) or `"learned"`.
        scale_embedding: multiply token embeddings by `sqrt(d_model)` (fairseq default; with the
            N(0, d^-1/2) embedding init this gives unit-scale inputs).
        share_encoder_decoder_embeddings: one embedding matrix for the joint source/target vocabulary.
        tie_word_embeddings: the output projection reuses the decoder's input embedding. Off by default:
            Fixup's rule 1 (zero classifier, initial loss ln V) cannot hold for a tied projection without
            zeroing the input embeddings, and a tied Fixup decoder at init predicts its own input token
            (initial loss ~22 at d 512). Tied, the projection keeps the embedding's init (N(0, d^-1/2) under `fixup`/`xavier`,
            scaled by T-Fixup's factor under `t_fixup`, N(0, `init_std`) under `normal`).
        normalization: `"none"` (Fixup, default), `"post_ln"` (the original Transformer), `"pre_ln"`.
        init: `"fixup"` (default), `"t_fixup"` (Huang et al. 2020), or, for the LayerNorm baselines,
            `"xavier"` (fairseq's: Xavier-uniform linears, N(0, d^-1/2) embeddings) or `"normal"` (transformers'
            BART/Marian: every linear, embedding and output projection N(0, `init_std`)).
        init_std: the std of `init="normal"` (transformers' `init_std`, 0.02); unused by the other inits.
        fixup_cross_attention_depth: depth `L` used for the decoder's cross-attention projections under
            Fixup. `None` (default) uses the true `L = 2 * encoder_layers + 3 * decoder_layers`; the
            authors' fairseq code hard-coded 12 here, so set 12 to reproduce it exactly.
        fixup_zero: which factor of each residual branch starts at 0 under `init="fixup"`.
            `"multiplier"` (default): the branch multiplier starts at 0 and the last linear gets the same
            scaled Xavier init as the rest of the branch (the placement of SkipInit / ReZero). Stable under
            Adam without warmup at d 512 where the paper's placement spikes; train the zero gates at a larger
            lr (`optim.gate_lr_multiplier`, default 10x). `"last_layer"`: the paper's rule 1, the branch's
            last linear is 0 and its multiplier 1, as the authors' code; it needs the warmup of the paper's
            recipe at d 512 (docs/fixup.md and docs/depth.md have the measurements). Checkpoints saved
            before `"multiplier"` became the default do not name this field and load as `"last_layer"`.
        label_smoothing: label smoothing of the loss returned when `labels` are given (fairseq uses 0.1),
            spread over all classes as torch's `cross_entropy(label_smoothing=...)` does.
        loss_without_logits: when `labels` are given in training mode with gradients on, compute the loss
            from the decoder output chunk by chunk without keeping the `[tokens, vocabulary]` logits (the
            largest activation of a translation model; `output_loss.py`); `logits` is then `None`, and with
            `return_dict=False` the tuple has no logits entry (transformers drops `None` outputs), so index
            outputs by name in training. Set False to get training logits (e.g. for accuracy). Evaluation
            always returns logits, and so does a forward traced by `torch.compile`, where inductor fuses
            the usual loss (on an H200, base size, 32k-token batches: 1.46x the chunked loss's speed, at
            0.87x Marian's memory).
        linear_bias: give the attention and FFN linears biases, as fairseq's LayerNorm Transformer has
            (converted checkpoints); only with `normalization="post_ln"` or `"pre_ln"`. Off by default.
        position_offset: the position of the first token (fairseq: `padding_idx + 1` = 2). Learned position
            tables then have `max_position_embeddings` rows including the offset. 0 by default.
        scalars_folded: set by `fold_scalars()`: the scalar biases and multipliers live inside the linear
            weights and biases, for inference. Such a checkpoint is no longer trainable as Fixup.
    """

    model_type = "fixup_transformer"
    keys_to_ignore_at_inference = ["cache", "nll_loss"]  # nll_loss: one per batch, not per sample
    attribute_map = {
        "num_attention_heads": "encoder_attention_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 10000
    decoder_vocab_size: int | None = None
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 4
    decoder_attention_heads: int = 4
    encoder_ffn_dim: int = 1024
    decoder_ffn_dim: int = 1024
    activation_function: str = "relu"
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0
    max_position_embeddings: int = 1024
    position_embedding: str = "sinusoidal"
    scale_embedding: bool = True
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = False
    normalization: str = "none"
    init: str = "fixup"
    init_std: float | int = 0.02
    fixup_cross_attention_depth: int | None = None
    fixup_zero: str = "multiplier"
    label_smoothing: float | int = 0.0
    loss_without_logits: bool = True
    scalars_folded: bool = False
    linear_bias: bool = False
    position_offset: int = 0
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = 1
    forced_eos_token_id: int | list[int] | None = None

    @property
    def target_vocab_size(self) -> int:
        """Rows of the decoder embedding and the output projection."""
        return self.vocab_size if self.decoder_vocab_size is None else self.decoder_vocab_size

    def get_text_config(self, decoder=None, encoder=None) -> "PreTrainedConfig":
        # For a flat encoder-decoder config, transformers' decoder view is a copy with every `decoder_*`
        # field renamed (`decoder_vocab_size` -> `vocab_size`); `None` there means "the same as
        # `vocab_size`", which the strict copy must not receive as a vocabulary size.
        if decoder and not encoder and self.decoder_vocab_size is None:
            resolved = copy.deepcopy(self)
            resolved.decoder_vocab_size = self.vocab_size
            return PreTrainedConfig.get_text_config(resolved, decoder=decoder, encoder=encoder)
        return super().get_text_config(decoder=decoder, encoder=encoder)

    @classmethod
    def symmetric(
        cls, layers: int, d_model: int, heads: int, ffn_dim: int, **overrides
    ) -> "FixupTransformerConfig":
        """N+N layers, encoder and decoder of one width: the shape that depth and stability probes sweep."""
        return cls(
            d_model=d_model,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ffn_dim,
            decoder_ffn_dim=ffn_dim,
            **overrides,
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # transformers saves only non-default fields: a saved config without `fixup_zero` predates the
        # "multiplier" default (it is always written now, see `to_diff_dict`) and was the paper's placement.
        if "fixup_zero" not in config_dict:
            config_dict = {**config_dict, "fixup_zero": LEGACY_FIXUP_ZERO}
        result = super().from_dict(config_dict, **kwargs)
        # transformers applies from_pretrained's keyword overrides with setattr, after __post_init__ ran.
        (result[0] if isinstance(result, tuple) else result)._validate_fixup_fields()
        return result

    def to_diff_dict(self) -> dict:
        diff = super().to_diff_dict()
        diff["fixup_zero"] = self.fixup_zero  # explicit even when default: the default changed once
        return diff

    @property
    def branch_scalars(self) -> bool:
        """Where Fixup's scalars exist (rule 3), stated once for every part of the model.

        Each residual branch carries its scalar biases and multiplier as modules in *every* variant, the
        LayerNorm baselines too, so that the twins differ only in normalization and init; ``fold_scalars()``
        then moves them into the linears' biases. The stack outputs carry Fixup's output bias (and the
        encoder's multiplier) only without LayerNorm: see :attr:`stack_output_scalars`.
        """
        return not self.scalars_folded

    @property
    def stack_output_scalars(self) -> bool:
        """Fixup's bias (and encoder multiplier) at the end of each stack: only with ``normalization="none"``
        (a normalized stack ends in a LayerNorm)."""
        return self.normalization == "none"

    @property
    def fixup_depth(self) -> int:
        """Number of residual branches `L`: 2 per encoder layer (attention, FFN), 3 per decoder layer."""
        return 2 * self.encoder_layers + 3 * self.decoder_layers

    def __post_init__(self, **kwargs):
        # Validated here rather than in a `validate_*` strict validator so that users get a plain
        # `ValueError` (which strict would wrap in its own exception type).
        self._validate_fixup_fields()
        super().__post_init__(**kwargs)

    def _validate_fixup_fields(self) -> None:
        """Reject impossible or unsupported settings with an error naming the field."""
        for name, allowed in CHOICES.items():
            require_choice("FixupTransformerConfig", name, getattr(self, name), allowed)
        for name in (
            "vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if self.d_model % heads != 0:
                raise ValueError(f"`d_model` ({self.d_model}) must be divisible by `{name}` ({heads}).")
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if self.init in ("fixup", "t_fixup") and self.normalization != "none":
            raise ValueError(
                f"`init={self.init!r}` replaces normalization and requires `normalization='none'`, got "
                f"`normalization={self.normalization!r}`; use `init='xavier'` for the LayerNorm baselines."
            )
        if not self.init_std > 0:
            raise ValueError(f"`init_std` must be > 0, got {self.init_std}.")
        if self.linear_bias and self.normalization == "none":
            raise ValueError(
                "`linear_bias=True` is for the LayerNorm variants (`normalization='post_ln'` or 'pre_ln', e.g. "
                "converted fairseq models); Fixup replaces linear biases by its scalar biases."
            )
        if self.position_offset < 0 or self.position_offset >= self.max_position_embeddings:
            raise ValueError(
                f"`position_offset` ({self.position_offset}) must be in [0, max_position_embeddings="
                f"{self.max_position_embeddings})."
            )
        self._validate_vocab_sizes()
        if self.fixup_cross_attention_depth is not None and self.fixup_cross_attention_depth < 1:
            raise ValueError(
                f"`fixup_cross_attention_depth` must be None or >= 1, got {self.fixup_cross_attention_depth}."
            )

    def _validate_vocab_sizes(self) -> None:
        if self.decoder_vocab_size is not None:
            if self.decoder_vocab_size < 1:
                raise ValueError(f"`decoder_vocab_size` must be None or >= 1, got {self.decoder_vocab_size}.")
            if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
                raise ValueError(
                    f"`decoder_vocab_size` ({self.decoder_vocab_size}) != `vocab_size` ({self.vocab_size}) "
                    "needs `share_encoder_decoder_embeddings=False` (one shared matrix has one size)."
                )
        # pad indexes both embeddings; decoding starts from a target id.
        limits = {"pad_token_id": min(self.vocab_size, self.target_vocab_size)}
        limits["decoder_start_token_id"] = self.target_vocab_size
        for name, limit in limits.items():
            value = getattr(self, name)
            if value is not None and not 0 <= value < limit:
                raise ValueError(f"`{name}` ({value}) must be in [0, {limit}) (the vocabulary size).")


__all__ = ["FixupTransformerConfig"]
