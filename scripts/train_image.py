"""Train a Fixup (or BatchNorm / Kaiming baseline) ResNet on images.

    accelerate launch scripts/train_image.py --config configs/cifar10_resnet110.yaml [--key value ...]
    python scripts/train_image.py --help        # every config field with its documentation

All logic lives in ``fixup_transformer.vision.training``.
"""

from fixup_transformer.training.errors import run_script
from fixup_transformer.training.process import exit_process
from fixup_transformer.vision.training import main

if __name__ == "__main__":
    exit_process(run_script(main))  # the project's own errors: one line, exit code 2 (usage) or 1
