"""fixup-transformer: Fixup initialization (Zhang, Dauphin, Ma, ICLR 2019) as HuggingFace model types.

Importing this package registers the model types with transformers' Auto classes, so that
``AutoConfig``, ``AutoModel``, ``AutoModelForSeq2SeqLM`` (the Transformer) and
``AutoModelForImageClassification`` / ``AutoImageProcessor`` (the ResNets) load Fixup checkpoints.
"""

from .text import (
    FixupTransformerConfig,
    FixupTransformerForConditionalGeneration,
    FixupTransformerModel,
    FixupTransformerPreTrainedModel,
    register_text,
)
from .vision import (
    FixupResNetConfig,
    FixupResNetForImageClassification,
    FixupResNetImageProcessor,
    FixupResNetModel,
    register_vision,
)

__version__ = "0.1.0"

register_text()
register_vision()

__all__ = [
    "FixupTransformerConfig",
    "FixupTransformerModel",
    "FixupTransformerForConditionalGeneration",
    "FixupTransformerPreTrainedModel",
    "FixupResNetConfig",
    "FixupResNetModel",
    "FixupResNetForImageClassification",
    "FixupResNetImageProcessor",
    "register_text",
    "register_vision",
]
