#!/usr/bin/env python
"""Convert fairseq Transformer checkpoints to this package's model type and back (no fairseq needed).

    python scripts/convert_fairseq.py to-hf checkpoints/checkpoint_best.pt exports/fairseq_de_en \
        --data-dir data-bin/iwslt14.tokenized.de-en
    python scripts/convert_fairseq.py to-fairseq exports/fairseq_de_en checkpoints/converted.pt

Supported: the Fixup authors' transformer_zero fork and fairseq's transformer (post-LN and pre-LN).
See the README section "From fairseq" and fixup_transformer/convert/fairseq.py.
"""

import sys

from fixup_transformer.convert.fairseq import main

if __name__ == "__main__":
    sys.exit(main())
