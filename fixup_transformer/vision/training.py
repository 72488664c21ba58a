"""The image-classification training loop behind ``scripts/train_image.py`` (Accelerate, SGD, mixup).

Data are held as uint8 tensors and batches are drawn from a permutation seeded by ``(seed, epoch)``;
crops, flips and mixup use a generator seeded by ``(seed, epoch, batch)``. Resuming a checkpoint taken
anywhere (end of epoch, ``stop_after_steps``, time budget) therefore replays exactly the batches an
uninterrupted run would have seen. Each process takes every ``world``-th example of the global batch, so
``batch_size`` is the global batch and the schedule does not depend on the number of processes.

Shared pieces come from :mod:`fixup_transformer.training`: YAML config parsing, optimizer parameter groups
(Fixup scalars at ``lr * scalar_lr_multiplier``), LR multipliers, atomic checkpoints and JSON-lines metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..hub import add_remote_code
from ..paths import shared_data_dir
from ..training import schedules
from ..training.checkpoint import (
    export_pretrained,
    find_resume_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from ..training.config import ConfigError, dump_config, dump_yaml, field_doc, parse_config, require
from ..training.errors import ImageDataError
from ..training.metrics import MetricsWriter
from ..training.optim import OptimConfig, build_optimizer
from ..training.runlock import lock_run_dir
from .augment import mixup, normalize, random_crop_flip
from .configuration_fixup_resnet import FixupResNetConfig
from .data import ImageArrays, load_images
from .image_processing_fixup_resnet import FixupResNetImageProcessor
from .modeling_fixup_resnet import FixupResNetForImageClassification


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
    # ---- augmentation ----
    crop_padding: int = field_doc(4, "Random-crop zero padding in pixels (0 disables cropping).")
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
    channels_last: bool = field_doc(True, "Use channels-last memory format (faster convolutions on CPU/GPU).")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field_doc(
        None, "Accelerate mixed precision; None = whatever `accelerate launch` configured."
    )
    progress_bar: bool = field_doc(True, "Show a tqdm progress bar (loss, lr, img/s).")
    num_threads: int | None = field_doc(
        None,
        "torch CPU threads per process (None = torch's default, one per core). On a CPU shared with other "
        "jobs, 1 avoids OpenMP threads spinning against each other, which can slow small convs many-fold.",
    )

    def validate(self) -> None:
        for name in ("batch_size", "epochs", "eval_batch_size", "eval_every_epochs"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        require(self.mixup_alpha >= 0, "mixup_alpha", self.mixup_alpha, ">= 0")
        ok = 0 <= self.warmup_epochs < self.epochs
        require(ok, "warmup_epochs", self.warmup_epochs, "in [0, epochs)")
        self.optim.validate()
        # Builds (and so checks) the model config: bad depth / family combinations fail before any data loads.
        try:
            self.model_config()
        except ValueError as err:
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


def lr_multiplier(cfg: ImageTrainConfig, steps_per_epoch: int):
    """The epoch-based schedule of ``cfg`` as a per-update multiplier (shared schedule functions)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return schedules.cosine(cfg.epochs * steps_per_epoch, warmup)
    return schedules.step([m * steps_per_epoch for m in cfg.milestones], cfg.gamma, warmup)


def _generator(*keys: int) -> torch.Generator:
    # A fresh generator per (seed, epoch[, batch]): reproducible regardless of what ran before.
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _resolve_source(source: str | None) -> str:
    return source if source else str(shared_data_dir() / "cifar10")


@torch.no_grad()
def evaluate_top1(model, images: torch.Tensor, labels: torch.Tensor, accelerator, mean, std, cfg) -> float:
    """Top-1 accuracy over this process's share of the data, summed over processes."""
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    images, labels = images[rank::world], labels[rank::world]
    correct = torch.zeros((), dtype=torch.long, device=accelerator.device)
    total = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for start in range(0, len(labels), cfg.eval_batch_size):
        x = normalize(images[start : start + cfg.eval_batch_size].to(accelerator.device), mean, std)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(pixel_values=x).logits
        y = labels[start : start + cfg.eval_batch_size].to(accelerator.device)
        correct += (logits.argmax(-1) == y).sum()
        total += y.numel()
    model.train()
    correct, total = accelerator.reduce(correct, "sum"), accelerator.reduce(total, "sum")
    return float(correct) / max(1, int(total))


def _load_data(cfg: ImageTrainConfig) -> tuple[ImageArrays, ImageArrays]:
    train_source = _resolve_source(cfg.train_data)
    test_source = _resolve_source(cfg.test_data or cfg.train_data)
    train = load_images(train_source, "train").subset(cfg.train_samples)
    test = load_images(test_source, "test").subset(cfg.test_samples)
    if test.classes != train.classes:
        raise ImageDataError(
            f"class names differ: {train.classes} in {train_source} vs {test.classes} in {test_source}"
        )
    if test.images.shape[1:] != train.images.shape[1:]:
        raise ImageDataError(
            f"train images are {train.images.shape[1:]} ({train_source}), test images "
            f"{test.images.shape[1:]} ({test_source})"
        )
    return train, test


def train(cfg: ImageTrainConfig) -> dict:
    """Run (or resume) training as configured; returns the final metrics record."""
    from accelerate import Accelerator

    cfg.validate()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    lock = lock_run_dir(cfg.output_dir, accelerator, log=accelerator.print)  # one run per output_dir
    try:
        return _train_locked(cfg, accelerator)
    finally:
        lock.release()


def _train_locked(cfg: ImageTrainConfig, accelerator) -> dict:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    out = Path(cfg.output_dir)
    set_seed(cfg.seed)

    train_arrays, test_arrays = _load_data(cfg)
    model_config = cfg.model_config(train_arrays.classes, image_size=train_arrays.images.shape[1])
    model = FixupResNetForImageClassification(model_config)
    processor = FixupResNetImageProcessor.for_config(model_config)
    mean, std = processor.image_mean, processor.image_std
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_x, train_y = train_arrays.tensors()
    test_x, test_y = test_arrays.tensors()
    steps_per_epoch = len(train_y) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_y)} training images")
    if cfg.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must divide evenly over {accelerator.num_processes} processes"
        )
    total_steps = cfg.epochs * steps_per_epoch

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = LambdaLR(optimizer, lr_multiplier(cfg, steps_per_epoch))
    # The scheduler is deliberately not `prepare`d (Accelerate would step it once per process);
    # it is registered so that save_state/load_state include it.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    metrics = MetricsWriter(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    state = {"epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "loss_sum": 0.0, "loss_count": 0}
    step = 0
    resume = "auto" if cfg.resume in ("true", "True") else cfg.resume
    resume_path, _ = find_resume_checkpoint(resume, out, log=accelerator.print)  # skips unusable ones
    if resume_path is not None:
        state = load_training_checkpoint(accelerator, resume_path)
        step = int(state.pop("step"))
        metrics.truncate_after(step)
        accelerator.print(f"resumed from {resume_path} at update {step} (epoch {state['epoch']})")
    if accelerator.is_main_process:
        dump_config(cfg, out / "config.yaml")
    config_yaml = dump_yaml(cfg)

    def checkpoint() -> None:
        save_training_checkpoint(
            accelerator, out / "checkpoints", step, dict(state), config_yaml, keep_last=cfg.keep_checkpoints
        )

    rank, world = accelerator.process_index, accelerator.num_processes
    num_labels = model_config.num_labels
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    stop_reason = None
    last_eval_step = None
    test_top1 = None
    model.train()
    while state["epoch"] < cfg.epochs and stop_reason is None:
        epoch = state["epoch"]
        perm = torch.randperm(len(train_y), generator=_generator(cfg.seed, epoch))
        bar = tqdm(
            total=steps_per_epoch,
            initial=state["batch_in_epoch"],
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress_bar and accelerator.is_local_main_process),
            dynamic_ncols=True,
        )
        for b in range(state["batch_in_epoch"], steps_per_epoch):
            t0 = time.perf_counter()
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank::world]
            gen = _generator(cfg.seed, epoch, b)
            images = random_crop_flip(train_x[idx], gen, cfg.crop_padding, cfg.hflip).to(accelerator.device)
            x = normalize(images, mean, std)
            labels = train_y[idx].to(accelerator.device)
            if cfg.mixup_alpha > 0:
                x, labels = mixup(x, labels, num_labels, cfg.mixup_alpha, gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                loss = model(pixel_values=x, labels=labels).loss
            accelerator.backward(loss)
            if cfg.optim.clip_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["batch_in_epoch"] = b + 1
            state_loss = float(loss.detach())
            state["loss_sum"] += state_loss
            state["loss_count"] += 1
            dt = time.perf_counter() - t0
            state["train_seconds"] += dt
            bar.update(1)
            bar.set_postfix(
                loss=f"{state_loss:.3f}",
                lr=f"{scheduler.get_last_lr()[0]:.4g}",
                img_s=f"{cfg.batch_size / dt:.0f}",
            )
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < total_steps:
                stop_reason = "stop_after_steps"
            elif state["train_seconds"] >= budget_s and step < total_steps:
                stop_reason = "max_minutes"
            if stop_reason:
                break
        bar.close()
        if state["batch_in_epoch"] == steps_per_epoch:  # epoch finished
            train_loss = state["loss_sum"] / max(1, state["loss_count"])
            state.update(epoch=epoch + 1, batch_in_epoch=0, loss_sum=0.0, loss_count=0)
            record = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": step,
                "train_loss": train_loss,
                "lr": scheduler.get_last_lr()[0],
                "img_per_s": step * cfg.batch_size / max(state["train_seconds"], 1e-9),
                "train_seconds": state["train_seconds"],
            }
            if (epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs:
                test_top1 = evaluate_top1(model, test_x, test_y, accelerator, mean, std, cfg)
                last_eval_step = step
                record["test_top1"] = test_top1
            metrics.write(record)
            accelerator.print(
                f"epoch {epoch + 1}: train loss {train_loss:.4f}"
                + (f", test top-1 {100 * test_top1:.2f}%" if "test_top1" in record else "")
            )
        checkpoint()

    if stop_reason == "stop_after_steps":
        accelerator.print(f"paused at update {step}; continue with --resume")
        return {"kind": "paused", "step": step}

    if last_eval_step != step:
        test_top1 = evaluate_top1(model, test_x, test_y, accelerator, mean, std, cfg)
    final = {
        "kind": "final",
        "epoch": state["epoch"],
        "step": step,
        "test_top1": test_top1,
        "train_seconds": state["train_seconds"],
        "stopped_early": stop_reason,
    }
    metrics.write(final)
    if accelerator.is_main_process:
        export_pretrained(
            accelerator.unwrap_model(model).to(memory_format=torch.contiguous_format),
            out / "final",
            tokenizer=processor,
            config_yaml=config_yaml,
            extra_json=final,
            # Model code + auto_map beside the weights: loads with trust_remote_code=True without this package.
            finalize=lambda tmp: add_remote_code(tmp, accelerator.unwrap_model(model).config),
        )
    accelerator.wait_for_everyone()
    accelerator.print(f"final test top-1 {100 * test_top1:.2f}% -> {out / 'final'}")
    return final


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``scripts/train_image.py``: ``--config FILE.yaml`` plus ``--key value`` overrides."""
    cfg = parse_config(ImageTrainConfig, argv, prog="train_image.py")
    return train(cfg)


__all__ = ["ImageTrainConfig", "train", "main", "evaluate_top1", "lr_multiplier"]
