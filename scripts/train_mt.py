#!/usr/bin/env python
"""Train a Fixup (or LayerNorm-baseline) Transformer for machine translation.

    python scripts/train_mt.py --config configs/multi30k_de_en.yaml [--key value ...]
    accelerate launch scripts/train_mt.py --config configs/iwslt14_de_en.yaml --train.mixed_precision bf16

Every option is a field of fixup_transformer.training.mt_config.MTConfig (``--help`` lists them).
"""

import sys

from fixup_transformer.training.config import ConfigError, parse_config
from fixup_transformer.training.mt import NonFiniteLossError, train
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.process import exit_process


def main(argv=None) -> int:
    try:
        cfg = parse_config(MTConfig, argv, prog="train_mt.py")
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_process(main())
