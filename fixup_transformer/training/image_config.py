"""The image-classification recipe behind ``scripts/train_image.py``: every field, typed, defaulted and
documented once (``--help`` prints them). The model fields' choices come from ``FixupResNetConfig``, which
validates them again when the model is built; the schedule is stated in epochs, as image recipes are, and
handed to the loop as the shared ``ScheduleConfig``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from huggingface_hub.errors import StrictDataclassError

from ..vision.configuration_fixup_resnet import FixupResNetConfig
from ..vision.streaming import CROP_SCALE
from .config import ConfigError, field_doc, require
from .optim import OptimConfig
from .schedules import ScheduleConfig


@dataclasses.dataclass
class ImageTrainConfig:
    """Every field of an image-classification run (YAML keys and ``--key value`` overrides)."""

    # ---- model ----
    # (choices from FixupResNetConfig, which validates them again when the model is built)
    family: Literal[FixupResNetConfig.families] = field_doc(
        "cifar", "ResNet family: cifar (6n+2) or imagenet (18-152)."
    )
    depth: int = field_doc(110, "Number of layers: 6n+2 for cifar, one of 18/34/50/101/152 for imagenet.")
    width_multiplier: float = field_doc(1.0, "Multiplies all stage widths (16/32/64 for cifar).")
    normalization: Literal[FixupResNetConfig.normalizations] = field_doc(
        "none", "none = Fixup architecture (scalar biases/multipliers); batchnorm = the BN baseline."
    )
    init: Literal[FixupResNetConfig.inits] = field_doc(
        "fixup", "fixup = the Fixup rule; kaiming = plain He init."
    )
    # ---- data ----
    train_data: str | None = field_doc(
        None,
        "Training images: a .npz (x, y, classes), a folder with train_subset.npz/test_shared.npz, an image "
        "folder (<split>/<class>/*.png), or hub:<dataset> (e.g. hub:uoft-cs/cifar10). "
        "Default: $FIXUP_DATA_DIR/cifar10, else <repo>/../shared/data/cifar10.",
    )
    test_data: str | None = field_doc(None, "Test images, same forms as train_data (default: as train_data).")
    train_samples: int | None = field_doc(None, "Use only the first N training images (None = all).")
    test_samples: int | None = field_doc(None, "Evaluate on the first N test images (None = all).")
    image_size: int | None = field_doc(
        None,
        "Resize the images of image folders to this square side (None: keep; they must then share one size). "
        "The exported image processor resizes to the same size. With stream: the side of the training and "
        "test crops (None: the family's, 224 for imagenet and 32 for cifar).",
    )
    stream: bool = field_doc(
        False,
        "Read image folders batch by batch with DataLoader workers instead of into memory (ImageNet-sized "
        "data). Training images get a random-resized crop to image_size and a flip, as in the authors' ImageNet "
        "script; test images go through the exported image processor (short side image_size * 256/224, center "
        "crop). Mixup partners are drawn within each process's share of a batch, so a run resumed on another "
        "number of processes continues with other mixup pairs.",
    )
    num_workers: int = field_doc(
        4, "stream: DataLoader worker processes per training process (0: decode in the training process)."
    )
    # ---- augmentation ----
    crop_padding: int = field_doc(
        4, "Random-crop zero padding in pixels (0 disables cropping); in-memory data only."
    )
    crop_scale: list[float] = field_doc(
        list(CROP_SCALE),
        "stream: range of the image area a random-resized crop covers (torchvision's default).",
    )
    hflip: bool = field_doc(True, "Random horizontal flips.")
    mixup_alpha: float = field_doc(0.0, "Mixup Beta(alpha, alpha) parameter; 0 disables mixup.")
    # ---- optimization ----
    optim: OptimConfig = field_doc(
        OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
        "Optimizer (shared with the MT recipe); scalars train at optim.lr * optim.scalar_lr_multiplier.",
    )
    batch_size: int = field_doc(128, "Global batch size (split across processes).")
    epochs: int = field_doc(200, "Training epochs (the length of the LR schedule).")
    schedule: Literal["step", "cosine"] = field_doc(
        "step", "step: lr * gamma at each milestone epoch; cosine: half-cosine to 0 over all epochs."
    )
    milestones: list[int] = field_doc(
        [100, 150], "step schedule: epochs at which the lr is multiplied by gamma."
    )
    gamma: float = field_doc(0.1, "step schedule: LR decay factor.")
    warmup_epochs: float = field_doc(0.0, "Linear LR warmup from 0, in epochs (fractions allowed).")
    # ---- run control ----
    output_dir: str = field_doc(
        "runs/image", "Run directory: checkpoints/, metrics.jsonl, final/ (HF model)."
    )
    seed: int = field_doc(0, "Seed of the model init, data order and augmentation.")
    eval_batch_size: int = field_doc(500, "Batch size for test-set evaluation.")
    eval_every_epochs: int = field_doc(1, "Evaluate top-1 on the test split every N epochs (and at the end).")
    keep_checkpoints: int = field_doc(2, "Keep the newest N training checkpoints.")
    checkpoint_every_steps: int | None = field_doc(
        None,
        "Also checkpoint every N updates inside an epoch (ImageNet's epochs are long: a killed job resumes from "
        "the newest checkpoint, exactly). None: at the end of each epoch, a pause or a spent time budget only.",
    )
    max_minutes: float | None = field_doc(
        None,
        "Training-time budget in minutes, summed over resumed runs; when spent, training stops early, then "
        "evaluates and exports as usual. None = no budget.",
    )
    stop_after_steps: int | None = field_doc(
        None,
        "Pause after this many optimizer updates in total (checkpoint, no export), as a pre-empted job "
        "would; continue with --resume. The LR schedule is unaffected.",
    )
    resume: str | None = field_doc(
        None, "Resume: 'auto' (or a bare --resume) = newest checkpoint in output_dir, or a checkpoint path."
    )
    cpu: bool = field_doc(False, "Force CPU (also selects the gloo backend for multi-process runs).")
    channels_last: bool = field_doc(True, "Use channels-last memory format (faster convolutions on CPU/GPU).")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field_doc(
        None, "Accelerate mixed precision; None = whatever `accelerate launch` configured."
    )
    progress_bar: bool = field_doc(True, "Show a tqdm progress bar (loss, lr, img/s).")
    log_interval: int = field_doc(
        20,
        "Every N updates: refresh the progress bar's loss (one host read) and, with several processes, agree "
        "on the time budget. The loss of each epoch is recorded in metrics.jsonl either way.",
    )
    num_threads: int | None = field_doc(
        None,
        "torch CPU threads per process (None = torch's default, one per core). On a CPU shared with other "
        "jobs, 1 avoids OpenMP threads spinning against each other, which can slow small convs many-fold.",
    )

    def validate(self) -> None:
        require(bool(self.output_dir.strip()), "output_dir", self.output_dir, "a directory (not empty)")
        require(0 <= self.seed < 2**32, "seed", self.seed, "in [0, 2**32)")
        for name in ("batch_size", "epochs", "eval_batch_size", "eval_every_epochs", "log_interval"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        require(self.mixup_alpha >= 0, "mixup_alpha", self.mixup_alpha, ">= 0")
        ok = 0 <= self.warmup_epochs < self.epochs
        require(ok, "warmup_epochs", self.warmup_epochs, "in [0, epochs)")
        for name in ("train_samples", "test_samples", "image_size"):
            if getattr(self, name) is not None:
                require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1 (or null: all)")
        require(self.crop_padding >= 0, "crop_padding", self.crop_padding, ">= 0")
        require(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        every = self.checkpoint_every_steps
        require(every is None or every >= 1, "checkpoint_every_steps", every, ">= 1 (or null: per epoch)")
        ok = len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        require(ok, "crop_scale", self.crop_scale, "two area fractions [low, high] with 0 < low <= high <= 1")
        require(all(m >= 0 for m in self.milestones), "milestones", self.milestones, "epochs >= 0")
        self.schedule_config(1).validate(prefix="")  # gamma and the rest, named as this config names them
        self.optim.validate()
        # Builds (and so checks) the model config: bad depth / family combinations fail before any data loads.
        try:
            self.model_config()
        except (ValueError, StrictDataclassError) as err:
            raise ConfigError(str(err)) from None

    def model_config(
        self, classes: list[str] | None = None, image_size: int | None = None
    ) -> FixupResNetConfig:
        extra = {}
        if classes is not None:
            extra["id2label"] = dict(enumerate(classes))
            extra["label2id"] = {c: i for i, c in enumerate(classes)}
        make = FixupResNetConfig.cifar if self.family == "cifar" else FixupResNetConfig.imagenet
        if image_size is not None:
            extra["image_size"] = image_size
        return make(
            depth=self.depth,
            width_multiplier=self.width_multiplier,
            normalization=self.normalization,
            init=self.init,
            **extra,
        )

    def schedule_config(self, steps_per_epoch: int) -> ScheduleConfig:
        """The epoch-based schedule of this recipe as the shared (update-based) ``ScheduleConfig``."""
        return ScheduleConfig(
            name=self.schedule,
            warmup_updates=round(self.warmup_epochs * steps_per_epoch),
            warmup_init_lr=0.0,  # linear warmup from 0
            total_updates=self.epochs * steps_per_epoch,
            milestones=[m * steps_per_epoch for m in self.milestones],
            gamma=self.gamma,
        )


__all__ = ["ImageTrainConfig"]
