"""The image-classification training loop behind ``scripts/train_image.py`` (Accelerate, SGD, mixup).

It has the MT loop's shape (:mod:`fixup_transformer.training.mt`): a trainer object that holds the run,
a ``TrainerState`` saved with every checkpoint, the time budget decided together by all processes
(``state.out_of_time``), a wall-clock breakdown per phase, and :meth:`ImageTrainer.fit` /
:meth:`ImageTrainer.finish`.

- **Exact resume**: data are held as uint8 tensors and batches are drawn from a permutation seeded by
  ``(seed, epoch)``; crops, flips and mixup use a generator seeded by ``(seed, epoch, batch)``. Resuming a
  checkpoint taken anywhere (end of epoch, ``stop_after_steps``, time budget) replays exactly the batches
  an uninterrupted run would have seen.
- **``stream: true``** (ImageNet-sized folders): only the file list is held; DataLoader workers decode each
  batch (:mod:`fixup_transformer.vision.streaming`), with each image's random-resized crop and flip seeded
  by ``(seed, epoch, batch, position)``, so resume stays exact. Test images go through the exported processor.
- **``batch_size`` is the global batch**: each process takes every ``world``-th example of it, so the
  schedule does not depend on the number of processes.
- **No host read per step**: the epoch's loss sum stays on the device and is read every ``log_interval``
  updates (the progress bar) and at the end of the epoch, where a non-finite loss stops the run before a
  checkpoint of broken weights is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ImageDataError, NonFiniteLossError, ResumeMismatchError
from ..hardware import sum_dtype
from ..hub import add_remote_code
from ..paths import shared_data_dir
from ..vision.augment import draw_mixup, mix, mixup, normalize, random_crop_flip
from ..vision.data import ImageArrays, load_images, split_location
from ..vision.image_processing_fixup_resnet import FixupResNetImageProcessor
from ..vision.modeling_fixup_resnet import FixupResNetForImageClassification
from ..vision.streaming import ImageFiles, TrainBatches, eval_loader, image_files, train_loader
from .checkpoint import (
    TRAINING_CONFIG_FILE,
    check_replaceable_export,
    export_pretrained,
    find_resume_checkpoint,
    load_training_checkpoint,
    read_trainer_state,
    save_training_checkpoint,
    set_aside_checkpoints_after,
)
from .config import ConfigError, dump_config, dump_yaml, parse_config
from .image_config import ImageTrainConfig
from .metrics import MetricsWriter
from .optim import build_optimizer
from .process import check_process_count, keep_alive
from .resume import changes_line, check_resume_config
from .runlock import lock_run_dir
from .schedules import build_scheduler
from .state import TrainerState, epoch_of_last_update, out_of_time
from .wallclock import WallClock


@dataclasses.dataclass
class ImageTrainerState(TrainerState):
    """The shared counters plus the epoch's running training loss (the mean over processes of each
    process's sum of its share's batch losses, which is what the epoch loss reduces)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    # of the training images and labels, in order (ImageArrays.fingerprint)
    data_fingerprint: str | None = None


def _generator(*keys: int) -> torch.Generator:
    # A fresh generator per (seed, epoch[, batch]): reproducible regardless of what ran before.
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _resolve_source(source: str | None) -> str:
    return source if source else str(shared_data_dir() / "cifar10")


def _sources(cfg: ImageTrainConfig) -> tuple[str, str]:
    """The train and test sources of ``cfg``, with a warning when both are the same images."""
    train_source = _resolve_source(cfg.train_data)
    test_source = _resolve_source(cfg.test_data or cfg.train_data)
    try:
        train_location = split_location(train_source, "train")
        same = train_location == split_location(test_source, "test")
    except FileNotFoundError:
        same = False  # the loaders say which source is missing
    if same:
        warnings.warn(
            f"the test images are the training images ({train_location}): 'test top-1' "
            "is not a held-out score; pass --test_data, or a folder with train/ and test/ parts",
            stacklevel=3,
        )
    return train_source, test_source


def _check_classes(train: list[str], test: list[str], train_source: str, test_source: str) -> None:
    if len(train) < 2:  # one output is a regression in transformers' convention, not a classifier
        raise ImageDataError(
            f"{train_source}: {len(train)} class(es) {train}; classification needs 2 or more"
        )
    if test != train:
        raise ImageDataError(f"class names differ: {train} in {train_source} vs {test} in {test_source}")


def load_data(cfg: ImageTrainConfig) -> tuple[ImageArrays, ImageArrays]:
    """The train and test images of ``cfg``; they must agree on classes and image shape."""
    train_source, test_source = _sources(cfg)
    train = load_images(train_source, "train", cfg.image_size).subset(cfg.train_samples)
    test = load_images(test_source, "test", cfg.image_size).subset(cfg.test_samples)
    _check_classes(train.classes, test.classes, train_source, test_source)
    if test.images.shape[1:] != train.images.shape[1:]:
        raise ImageDataError(
            f"train images are {train.images.shape[1:]} ({train_source}), test images "
            f"{test.images.shape[1:]} ({test_source})"
        )
    return train, test


def load_files(cfg: ImageTrainConfig) -> tuple[ImageFiles, ImageFiles]:
    """The train and test file lists of ``cfg`` (``stream: true``); they must agree on classes."""
    train_source, test_source = _sources(cfg)
    train = image_files(train_source, "train").subset(cfg.train_samples)
    test = image_files(test_source, "test").subset(cfg.test_samples)
    _check_classes(train.classes, test.classes, train_source, test_source)
    return train, test


def processor_for_streamed_images(model_config) -> FixupResNetImageProcessor:
    """The processor of a ``stream`` run: the ImageNet evaluation transform (short side ``S * 256/224``,
    center crop ``S``) with the family's channel statistics; the test images are scored through it."""
    statistics = FixupResNetImageProcessor.for_config(model_config)
    return FixupResNetImageProcessor.imagenet(
        model_config.image_size, image_mean=statistics.image_mean, image_std=statistics.image_std
    )


def processor_for_training_images(model_config, height: int, width: int) -> FixupResNetImageProcessor:
    """The processor exported with a trained model: it gives the model what training and the reported top-1
    gave it, i.e. the training images' own size (a no-op resize for such images; no crop, unlike the
    ImageNet evaluation preset) and the family's channel statistics."""
    statistics = FixupResNetImageProcessor.for_config(model_config)
    return FixupResNetImageProcessor(
        size={"height": height, "width": width},
        do_center_crop=False,
        image_mean=statistics.image_mean,
        image_std=statistics.image_std,
    )


def evaluate_accuracy(model, images: torch.Tensor, labels: torch.Tensor, accelerator, mean, std, cfg) -> dict:
    """Test accuracies (:func:`accuracy_of_batches`) of in-memory uint8 images: each process scores its share."""
    rank, world = accelerator.process_index, accelerator.num_processes
    images, labels = images[rank::world], labels[rank::world]
    size = cfg.eval_batch_size
    batches = (
        (normalize(images[i : i + size].to(accelerator.device), mean, std), labels[i : i + size])
        for i in range(0, len(labels), size)
    )
    return accuracy_of_batches(model, batches, accelerator, cfg.channels_last)


@torch.no_grad()
def accuracy_of_batches(model, batches, accelerator, channels_last: bool) -> dict[str, float]:
    """``{"test_top1": ..., "test_top5": ...}`` over this process's ``(pixel_values, labels)`` batches, counted
    over all processes; top-5 only for models of more than five classes (ImageNet's second number; with five
    or fewer it is 1 by definition). The model is left in the mode it came in."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.long, device=accelerator.device)  # top-1 hits, top-5 hits, images
    for x, y in batches:
        x = x.to(accelerator.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(pixel_values=x).logits
        y = y.to(accelerator.device)
        counts[0] += (logits.argmax(-1) == y).sum()  # argmax: the label the pipeline ranks first
        counts[1] += (logits.topk(min(5, logits.size(-1)), dim=-1).indices == y.unsqueeze(1)).any(dim=1).sum()
        counts[2] += y.numel()
    model.train(was_training)
    top1, top5, total = accelerator.reduce(counts, "sum").tolist()
    classes = accelerator.unwrap_model(model).config.num_labels  # also on a process without test images
    accuracy = {"test_top1": top1 / max(1, total)}
    if classes > 5:
        accuracy["test_top5"] = top5 / max(1, total)
    return accuracy


ACCURACY_LABELS = {"test_top1": "top-1", "test_top5": "top-5"}


def accuracy_text(record: dict, prefix: str) -> str:
    """``"<prefix> top-1 76.10%, top-5 92.87%"`` for the accuracies in ``record`` (empty without them)."""
    present = [f"{label} {100 * record[key]:.2f}%" for key, label in ACCURACY_LABELS.items() if key in record]
    return f"{prefix} {', '.join(present)}" if present else ""


# What a resumed image run may change: where its data lives, what it evaluates, its budget, how it runs and
# logs (where the run and its checkpoint are found is never compared: resume.RUN_LOCATION_KEYS).
CHANGEABLE_ON_RESUME = (
    "train_data",
    "test_data",
    "test_samples",
    "eval_batch_size",
    "eval_every_epochs",
    "keep_checkpoints",
    "epochs",
    "max_minutes",
    "stop_after_steps",
    "cpu",
    "channels_last",
    "progress_bar",
    "log_interval",
    "num_threads",
    "num_workers",
    "checkpoint_every_steps",
)


class ImageTrainer:
    """Holds the run's objects; :meth:`fit` trains, :meth:`finish` evaluates and exports."""

    def __init__(self, cfg: ImageTrainConfig):
        from accelerate import Accelerator

        cfg.validate()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator(cpu=cfg.cpu, mixed_precision=cfg.mixed_precision)
        check_process_count(self.accelerator.num_processes, "--cpu true")
        self.lock = lock_run_dir(self.out, self.accelerator, log=self.accelerator.print)  # before any write
        try:
            self._setup()
        except BaseException:
            self.close()  # the lock must not outlive a failed start
            raise

    def _setup(self) -> None:
        from accelerate.utils import set_seed

        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.seed)
        if cfg.stream:
            self.train_files, self.test_files = load_files(cfg)
            classes, fingerprint = self.train_files.classes, self.train_files.fingerprint()
            num_train, num_test = len(self.train_files), len(self.test_files)
            # the crop side: image_size, else the family's (ImageNet 224, as the authors' script; CIFAR 32)
            height = width = cfg.image_size or cfg.model_config().image_size
        else:
            train, test = load_data(cfg)
            (self.train_x, self.train_y), (self.test_x, self.test_y) = train.tensors(), test.tensors()
            classes, fingerprint, num_train, num_test = (
                train.classes,
                train.fingerprint(),
                len(train),
                len(test),
            )
            height, width = train.images.shape[1:3]
        model_config = cfg.model_config(classes, image_size=height)
        model = FixupResNetForImageClassification(model_config)
        self.processor = (
            processor_for_streamed_images(model_config)
            if cfg.stream
            else processor_for_training_images(model_config, height, width)
        )
        self.num_labels = model_config.num_labels
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.num_train, self.data_fingerprint = num_train, fingerprint
        self.steps_per_epoch = num_train // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {num_train} training images")
        if num_test == 0:
            raise ConfigError("no test images to evaluate on (test_samples 0, or an empty test_data)")
        if cfg.batch_size % acc.num_processes:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must divide evenly over {acc.num_processes} processes"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        optimizer = build_optimizer(model, cfg.optim)
        schedule = cfg.schedule_config(self.steps_per_epoch)
        if cfg.schedule == "cosine" and schedule.warmup_updates >= schedule.total_updates:
            # warmup_epochs < epochs can still round to a warmup as long as the run
            raise ConfigError(
                f"warmup_epochs {cfg.warmup_epochs} is {schedule.warmup_updates} updates, as long as the whole "
                f"run ({schedule.total_updates}): the cosine schedule needs fewer"
            )
        self.scheduler = build_scheduler(optimizer, schedule, cfg.optim.lr)
        # The scheduler is deliberately not `prepare`d (Accelerate would step it once per process);
        # it is registered so that save_state/load_state include it.
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", enabled=acc.is_main_process)
        self.state = ImageTrainerState(data_fingerprint=self.data_fingerprint)
        self.completed: dict | None = None  # the final record, when this is a rerun of a finished run
        self._resume()
        self.clock = WallClock(self.state.time_breakdown)
        if acc.is_main_process and self.completed is None:  # config.yaml: the settings of the results
            dump_config(cfg, self.out / "config.yaml")
        self.config_yaml = dump_yaml(cfg)
        self.last_eval: tuple[int, dict] | None = None  # (update, test accuracies) of the newest evaluation
        self.lr_used = self.optimizer.param_groups[0]["lr"]  # main group's lr of the newest update

    def _resume(self) -> None:
        path, _ = find_resume_checkpoint(  # skips unusable ones; refuses a fresh run over old checkpoints
            self.cfg.resume, self.out, log=self.accelerator.print, resume_option="--resume"
        )
        if path is None:
            return
        # Only settings that this loop re-reads may change (a changed lr would be silently overridden by
        # the optimizer state in the checkpoint); anything else is refused, naming the keys.
        changes = check_resume_config(path / TRAINING_CONFIG_FILE, self.cfg, ("*",), CHANGEABLE_ON_RESUME)
        saved = ImageTrainerState.from_dict(read_trainer_state(path))
        if saved.data_fingerprint is None:
            self.accelerator.print(
                f"{path.name} predates training-data fingerprints: nothing checks that {self.cfg.train_data} "
                "still holds the same images in the same order (image folders are read round-robin over "
                "classes since 2026-11-27)"
            )
        elif saved.data_fingerprint != self.data_fingerprint:
            # The settings may all be equal while the files under train_data changed: the batch position
            # and the epoch's permutation would then index other images.
            raise ResumeMismatchError(
                f"cannot resume from {path}: the training images differ from the ones it was trained on "
                f"({saved.data_fingerprint} -> {self.data_fingerprint}); use a new output_dir"
            )
        self.state = ImageTrainerState.from_dict(load_training_checkpoint(self.accelerator, path))
        self.state.data_fingerprint = self.data_fingerprint
        self.completed = self._completed_record()
        if self.completed is not None:  # a rerun of a finished command: nothing is written
            if changes:
                hint = "raise epochs or max_minutes to train on"
                self.accelerator.print(changes_line(path.name, changes, hint))
            return
        self.metrics.truncate_after(self.state.step, drop_at_step=("final",))
        if self.accelerator.is_main_process:  # newer checkpoints are not this run's timeline (mt.py says why)
            for moved in set_aside_checkpoints_after(self.out / "checkpoints", self.state.step):
                self.accelerator.print(f"{moved.name}: newer than the resumed {path.name}, set aside")
        self.accelerator.wait_for_everyone()
        epoch = epoch_of_last_update(self.state.epoch, self.state.batches_done)
        self.accelerator.print(f"resumed from {path} at update {self.state.step} (epoch {epoch})")
        if changes:
            self.accelerator.print(changes_line(path.name, changes))

    def _completed_record(self) -> dict | None:
        """The ``final`` record of the resumed update when the run already ended there (its epochs or its
        time budget spent, and the ``final/`` export written for it), else None."""
        step = self.state.step
        if step < self.total_steps and not out_of_time(self.accelerator, self.state, self.cfg.max_minutes):
            return None
        try:
            record = json.loads((self.out / "final" / "export_info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        complete = isinstance(record, dict) and record.get("kind") == "final" and record.get("step") == step
        return record if complete else None

    def close(self) -> None:
        """Release the output_dir lock (idempotent; process exit releases it too)."""
        self.lock.release()

    # -- training --------------------------------------------------------------------------------------

    def fit(self) -> str | None:
        """Train until the epochs are done or a budget stops it; returns the reason (None: all epochs)."""
        cfg, state = self.cfg, self.state
        self._segment = (time.monotonic(), state.train_seconds)
        self.model.train()
        # A rerun of a run whose budget is spent trains no extra update (it only redoes the end of run).
        stop = self._budget_stop(agree=True) if state.step > 0 else None
        while state.epoch < cfg.epochs and stop is None:
            stop = self._train_epoch()
            if state.batches_done == self.steps_per_epoch:
                self._end_epoch()
            with self.clock.section("checkpoints"):
                self._save_checkpoint()
        return stop

    def _train_epoch(self) -> str | None:
        """The rest of the current epoch, or until a budget stops it (the reason)."""
        from tqdm.auto import tqdm

        cfg, acc, state = self.cfg, self.accelerator, self.state
        perm = torch.randperm(self.num_train, generator=_generator(cfg.seed, state.epoch))
        batches = (
            self._streamed_batches(perm)
            if cfg.stream
            else (self._batch(perm, b) for b in range(state.batches_done, self.steps_per_epoch))
        )
        # A resumed epoch's loss so far is the mean over processes of their sums (see the end of this
        # method): every process starts from it, so the mean over any number of processes stays exact.
        self._loss_sum = torch.full((), state.loss_sum, dtype=sum_dtype(acc.device), device=acc.device)
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=state.batches_done,
            desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress_bar and acc.is_local_main_process),
            dynamic_ncols=True,
        )
        stop, window_start = None, time.monotonic()
        for b in range(state.batches_done, self.steps_per_epoch):
            with self.clock.section("data"):
                x, labels = next(batches)
            with self.clock.section("steps"):
                self._step(x, labels)
            state.batches_done, state.loss_count = b + 1, state.loss_count + 1
            state.step += 1
            start, prior = self._segment
            state.train_seconds = prior + time.monotonic() - start
            bar.update(1)
            log = state.step % cfg.log_interval == 0
            if log:
                rate = cfg.log_interval * cfg.batch_size / max(time.monotonic() - window_start, 1e-9)
                bar.set_postfix(
                    loss=f"{self._epoch_loss():.3f}",
                    lr=f"{self.lr_used:.4g}",
                    img_s=f"{rate:.0f}",
                )
                window_start = time.monotonic()
            stop = self._budget_stop(agree=log)
            if stop:
                break  # fit() writes the checkpoint
            every = cfg.checkpoint_every_steps
            if every and state.step % every == 0 and state.batches_done < self.steps_per_epoch:
                # (an epoch's end is checkpointed by fit() anyway)
                self._store_loss_sum()
                with self.clock.section("checkpoints"):
                    self._save_checkpoint()
        bar.close()
        batches.close()  # a budget stop leaves the epoch unfinished: stop its loader's workers now
        self._store_loss_sum()
        return stop

    def _store_loss_sum(self) -> None:
        """Put the epoch's loss sum so far into the state a checkpoint saves. Only the main process writes the
        checkpoint's state: it keeps the mean over all processes of their sums."""
        self.state.loss_sum = float(self.accelerator.reduce(self._loss_sum.clone(), "mean"))

    def _batch(self, perm: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of batch ``b`` of the epoch, augmented, on the device.

        The random draws (crops, flips, mixup partners) are made for the whole global batch and then
        sliced, so that a run gives the same updates on any number of processes (normalization-free
        models; the BatchNorm twin normalizes each process's share with its own batch statistics).
        """
        cfg, acc = self.cfg, self.accelerator
        idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        gen = _generator(cfg.seed, self.state.epoch, b)
        images = random_crop_flip(self.train_x[idx], gen, cfg.crop_padding, cfg.hflip)  # uint8, small
        labels = self.train_y[idx]
        share = slice(acc.process_index, None, acc.num_processes)
        x, y = self._to_device(images[share]), labels[share].to(acc.device)
        if cfg.mixup_alpha > 0:
            lam, partner = draw_mixup(len(idx), cfg.mixup_alpha, gen)
            x = mix(lam, x, self._to_device(images[partner][share]))
            targets = F.one_hot(y, self.num_labels).float()
            partner_targets = F.one_hot(labels[partner][share].to(acc.device), self.num_labels).float()
            y = mix(lam, targets, partner_targets)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _streamed_batches(self, perm: torch.Tensor):
        """This process's shares of the epoch's batches from ``state.batches_done`` on, decoded by the loader's
        workers and mixed up on the device (partners within the share: each process holds only its own)."""
        cfg, acc, state = self.cfg, self.accelerator, self.state
        dataset = TrainBatches(
            self.train_files,
            perm,
            (cfg.seed, state.epoch),
            cfg.batch_size,
            acc.process_index,
            acc.num_processes,
            self.processor.crop_size["height"],
            cfg.crop_scale,
            cfg.hflip,
        )
        loader = train_loader(dataset, state.batches_done, cfg.num_workers, acc.device.type == "cuda")
        for b, (images, labels) in enumerate(loader, start=state.batches_done):
            x, y = self._to_device(images), labels.to(acc.device)
            if cfg.mixup_alpha > 0:
                gen = _generator(cfg.seed, state.epoch, b, acc.process_index)
                x, y = mixup(x, y, self.num_labels, cfg.mixup_alpha, gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalized floats on the device (the copy stays uint8: 4x less to move)."""
        images = images.to(self.accelerator.device, non_blocking=True)  # pinned by the stream loader on GPUs
        return normalize(images, self.processor.image_mean, self.processor.image_std)

    def _step(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        with self.accelerator.autocast():
            loss = self.model(pixel_values=x, labels=labels).loss
        self.accelerator.backward(loss)
        if self.cfg.optim.clip_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_norm)
        self.optimizer.step()
        self.lr_used = self.optimizer.param_groups[0]["lr"]  # before the schedule moves on (host float)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss_sum += loss.detach().to(self._loss_sum.dtype)

    def _epoch_loss(self) -> float:
        """Mean training loss of the epoch so far (one host read); a non-finite one stops the run."""
        # Each process sums the losses of its share of every batch: the mean over processes is the run's.
        loss = float(self.accelerator.reduce(self._loss_sum.clone(), "mean")) / max(1, self.state.loss_count)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) in epoch {self.state.epoch + 1}, by update "
                f"{self.state.step}; nothing was saved since. Lower optim.lr or add warmup_epochs."
            )
        return loss

    def _budget_stop(self, agree: bool) -> str | None:
        """Why training must pause or stop after this update, or None (the same verdict on every process)."""
        cfg, step = self.cfg, self.state.step
        if step >= self.total_steps:
            return None  # the last update: the epochs are done, not a budget
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
            return "stop_after_steps"
        if out_of_time(self.accelerator, self.state, cfg.max_minutes, agree):
            return "max_minutes"
        return None

    def _end_epoch(self) -> None:
        """Record the finished epoch (and evaluate when due); reset the epoch counters."""
        cfg, state = self.cfg, self.state
        train_loss = self._epoch_loss()
        epoch = state.epoch + 1
        state.epoch, state.batches_done, state.loss_sum, state.loss_count = epoch, 0, 0.0, 0
        record = {
            "kind": "epoch",
            "epoch": epoch,
            "step": state.step,
            "train_loss": train_loss,
            "lr": self.lr_used,  # the rate of the epoch's last update
            "img_per_s": state.step * cfg.batch_size / max(state.train_seconds, 1e-9),
            "train_seconds": state.train_seconds,
            "time_breakdown": self.clock.rounded(),
        }
        if epoch % cfg.eval_every_epochs == 0 or epoch == cfg.epochs:
            record.update(self._evaluate())
        self.metrics.write(record)
        self.accelerator.print(f"epoch {epoch}: train loss {train_loss:.4f}{accuracy_text(record, ', test')}")

    def _evaluate(self) -> dict[str, float]:
        with self.clock.section("evaluation"):
            cfg, acc = self.cfg, self.accelerator
            if cfg.stream:
                loader = eval_loader(
                    self.test_files,
                    self.processor,
                    acc.process_index,
                    acc.num_processes,
                    cfg.eval_batch_size,
                    cfg.num_workers,
                )
                batches = ((self._to_device(images), labels) for images, labels in loader)
                accuracy = accuracy_of_batches(self.model, batches, acc, cfg.channels_last)
            else:
                mean, std = self.processor.image_mean, self.processor.image_std
                accuracy = evaluate_accuracy(self.model, self.test_x, self.test_y, acc, mean, std, cfg)
        self.last_eval = (self.state.step, accuracy)
        return accuracy

    def _save_checkpoint(self) -> None:
        if self.state.loss_count:
            self._epoch_loss()  # never write a checkpoint after a non-finite loss (raises)
        save_training_checkpoint(
            self.accelerator,
            self.out / "checkpoints",
            self.state.step,
            dataclasses.asdict(self.state),
            self.config_yaml,
            keep_last=self.cfg.keep_checkpoints,
        )

    # -- end of training -------------------------------------------------------------------------------

    def finish(self, stop: str | None) -> dict:
        """Test top-1 of the final weights, the ``final`` HF export and the summary record."""
        acc, state = self.accelerator, self.state
        if stop == "stop_after_steps":
            acc.print(f"paused at update {state.step}; continue with --resume")
            return {"kind": "paused", "step": state.step}
        accuracy = (
            self.last_eval[1] if self.last_eval and self.last_eval[0] == state.step else self._evaluate()
        )
        final = {
            "kind": "final",
            "epoch": state.epoch,
            "step": state.step,
            **accuracy,
            "train_seconds": state.train_seconds,
            "time_breakdown": self.clock.rounded(),
            "stopped_early": stop,
        }
        self.metrics.write(final)
        check_replaceable_export(self.out / "final")  # every process: a refusal must not hang the others
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            with self.clock.section("exports"):
                export_pretrained(
                    model.to(memory_format=torch.contiguous_format),
                    self.out / "final",
                    tokenizer=self.processor,
                    config_yaml=self.config_yaml,
                    extra_json=final,
                    # Model code + auto_map beside the weights: loads with trust_remote_code=True without
                    # this package.
                    finalize=lambda tmp: add_remote_code(tmp, model.config),
                )
        acc.wait_for_everyone()
        acc.print(f"final{accuracy_text(final, ' test')} -> {self.out / 'final'}")
        # The sections include the final evaluation and export, which come after the training clock stops.
        total = max(state.train_seconds, sum(self.clock.seconds.values()))
        acc.print(f"time: {self.clock.summary(total)}")
        return final


def train(cfg: ImageTrainConfig) -> dict:
    """Run (or resume) training as configured; returns the final metrics record."""
    trainer = ImageTrainer(cfg)
    try:
        if trainer.completed is not None:
            trainer.accelerator.print(
                f"{trainer.out} is already complete (update {trainer.state.step}); nothing to do. "
                f"Results: {trainer.out / 'final'}"
            )
            return trainer.completed
        return trainer.finish(trainer.fit())
    finally:
        trainer.close()
        keep_alive(trainer)  # multi-process: freed only by exit_process (gloo teardown deadlock, process.py)


def main(argv: list[str] | None = None) -> dict:
    """Entry point of ``scripts/train_image.py``: ``--config FILE.yaml`` plus ``--key value`` overrides."""
    return train(parse_config(ImageTrainConfig, argv, prog=None))


__all__ = [
    "ImageTrainConfig",
    "ImageTrainer",
    "ImageTrainerState",
    "train",
    "main",
    "accuracy_of_batches",
    "evaluate_accuracy",
]
