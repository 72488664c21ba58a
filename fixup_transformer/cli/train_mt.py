"""``fixup-train-mt``: train a Fixup (or LayerNorm-baseline) Transformer for machine translation.

    fixup-train-mt --config configs/multi30k_de_en.yaml [--key value ...]
    accelerate launch scripts/train_mt.py --config configs/iwslt14_de_en.yaml --train.mixed_precision bf16
    accelerate launch -m fixup_transformer.cli.train_mt --config ...     # the same without a checkout

Every option is a field of fixup_transformer.training.mt_config.MTConfig (``--help`` lists them).
``scripts/train_mt.py`` is a thin wrapper around this module.
"""

from ..errors import run_script
from ..training.config import parse_config
from ..training.mt import train
from ..training.mt_config import MTConfig
from ..training.process import exit_process


def main(argv=None) -> int:
    """Exit codes: 0 done (or already complete), 2 usage/config/data errors, 1 the run failed (e.g. NaN).

    The project's own errors print as one ``error: ...`` line (``errors.py``); others are bugs
    and keep their traceback.
    """
    return run_script(_train, argv)


def _train(argv) -> int:
    train(parse_config(MTConfig, argv, prog=None))
    return 0


def run() -> None:
    """Console-script entry point; ends multi-process runs safely (``training/process.py``)."""
    exit_process(main())


if __name__ == "__main__":
    run()
