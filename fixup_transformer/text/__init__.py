"""The Fixup encoder-decoder Transformer: configuration and modeling in transformers' file conventions."""

from .configuration_fixup_transformer import FixupTransformerConfig
from .modeling_fixup_transformer import (
    FixupTransformerForConditionalGeneration,
    FixupTransformerModel,
    FixupTransformerPreTrainedModel,
)


def register_text() -> None:
    """Register the Fixup Transformer with transformers' Auto classes (idempotent, no ``auto_map``)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

    AutoConfig.register(FixupTransformerConfig.model_type, FixupTransformerConfig, exist_ok=True)
    AutoModel.register(FixupTransformerConfig, FixupTransformerModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(
        FixupTransformerConfig, FixupTransformerForConditionalGeneration, exist_ok=True
    )


__all__ = [
    "FixupTransformerConfig",
    "FixupTransformerModel",
    "FixupTransformerForConditionalGeneration",
    "FixupTransformerPreTrainedModel",
    "register_text",
]
