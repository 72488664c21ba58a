"""fixup-transformer: Fixup initialization as HuggingFace model types.

Importing this package registers the model types with transformers' Auto classes.
"""

__version__ = "0.1.0"
