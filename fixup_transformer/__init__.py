"""fixup-transformer: Fixup initialization (Zhang, Dauphin, Ma, ICLR 2019) as HuggingFace model types.

Importing this package registers the model types with transformers' Auto classes, so that
``AutoConfig``, ``AutoModel`` and ``AutoModelForSeq2SeqLM`` load Fixup checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .text import (
    FixupTransformerConfig,
    FixupTransformerForConditionalGeneration,
    FixupTransformerModel,
    FixupTransformerPreTrainedModel,
)

__version__ = "0.1.0"


def _register_text() -> None:
    AutoConfig.register(FixupTransformerConfig.model_type, FixupTransformerConfig, exist_ok=True)
    AutoModel.register(FixupTransformerConfig, FixupTransformerModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(
        FixupTransformerConfig, FixupTransformerForConditionalGeneration, exist_ok=True
    )


_register_text()

__all__ = [
    "FixupTransformerConfig",
    "FixupTransformerModel",
    "FixupTransformerForConditionalGeneration",
    "FixupTransformerPreTrainedModel",
]
