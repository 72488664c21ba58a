"""Train a Fixup (or BatchNorm / Kaiming baseline) ResNet on images.

    accelerate launch scripts/train_image.py --config configs/cifar10_resnet110.yaml [--key value ...]
    python scripts/train_image.py --help        # every config field with its documentation

All logic lives in ``fixup_transformer.training.image``; ``fixup_transformer.cli.train_image`` (installed as
the ``fixup-train-image`` command) reports the project's own errors as one line, exit code 2 (usage) or 1.
"""

from fixup_transformer.cli.train_image import main, run  # noqa: F401  (main: for callers importing the script)

if __name__ == "__main__":
    run()
