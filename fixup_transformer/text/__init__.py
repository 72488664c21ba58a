"""The Fixup encoder-decoder Transformer: configuration and modeling in transformers' file conventions."""

from .configuration_fixup_transformer import FixupTransformerConfig
from .modeling_fixup_transformer import (
    FixupTransformerForConditionalGeneration,
    FixupTransformerModel,
    FixupTransformerPreTrainedModel,
)

__all__ = [
    "FixupTransformerConfig",
    "FixupTransformerModel",
    "FixupTransformerForConditionalGeneration",
    "FixupTransformerPreTrainedModel",
]
