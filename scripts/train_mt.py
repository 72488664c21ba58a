#!/usr/bin/env python
"""Train a Fixup (or LayerNorm-baseline) Transformer for machine translation.

    python scripts/train_mt.py --config configs/multi30k_de_en.yaml [--key value ...]
    accelerate launch scripts/train_mt.py --config configs/iwslt14_de_en.yaml --train.mixed_precision bf16

Every option is a field of fixup_transformer.training.mt_config.MTConfig (``--help`` lists them).

The logic lives in ``fixup_transformer.cli.train_mt`` (installed as the ``fixup-train-mt`` command).
"""

from fixup_transformer.cli.train_mt import main, run  # noqa: F401  (main: imported by the tests)

if __name__ == "__main__":
    run()
