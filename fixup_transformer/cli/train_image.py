"""``fixup-train-image``: train a Fixup (or BatchNorm / Kaiming baseline) ResNet on images.

    fixup-train-image --config configs/cifar10_resnet110.yaml [--key value ...]
    accelerate launch scripts/train_image.py --config configs/cifar10_resnet110.yaml
    fixup-train-image --help        # every config field with its documentation

The training itself lives in :mod:`fixup_transformer.training.image`; ``scripts/train_image.py`` is a thin
wrapper around this module.
"""

from ..errors import run_script
from ..training.image import main as train_main
from ..training.process import exit_process


def main(argv=None) -> int:
    """Exit codes: 0 trained (or paused), 2 usage/config/data errors, 1 the run failed."""
    return run_script(train_main, argv)  # the project's own errors: one line, no traceback


def run() -> None:
    """Console-script entry point; ends multi-process runs safely (``training/process.py``)."""
    exit_process(main())


if __name__ == "__main__":
    run()
