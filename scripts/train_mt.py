#!/usr/bin/env python
"""Train a Fixup (or LayerNorm-baseline) Transformer for machine translation.

    python scripts/train_mt.py --config configs/multi30k_de_en.yaml [--key value ...]
    accelerate launch scripts/train_mt.py --config configs/iwslt14_de_en.yaml --train.mixed_precision bf16

Every option is a field of fixup_transformer.training.mt_config.MTConfig (``--help`` lists them).
"""

from fixup_transformer.training.config import parse_config
from fixup_transformer.training.errors import run_script
from fixup_transformer.training.mt import train
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.process import exit_process


def main(argv=None) -> int:
    """Exit codes: 0 done (or already complete), 2 usage/config/data errors, 1 the run failed (e.g. NaN).

    The project's own errors print as one ``error: ...`` line (``training/errors.py``); others are bugs
    and keep their traceback.
    """
    return run_script(_train, argv)


def _train(argv) -> int:
    train(parse_config(MTConfig, argv, prog="train_mt.py"))
    return 0


if __name__ == "__main__":
    exit_process(main())
