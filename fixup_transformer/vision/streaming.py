"""Image folders too large for memory (ImageNet), decoded batch by batch by DataLoader workers.

The in-memory arrays of :mod:`fixup_transformer.vision.data` suit CIFAR; ImageNet's 1.28M JPEGs do not fit,
so with ``stream: true`` the image trainer keeps only the file list and decodes each batch in worker
processes, with the augmentation of the authors' ImageNet script (torchvision's ``RandomResizedCrop(224)`` and
``RandomHorizontalFlip``). Evaluation runs each image through the exported image processor (short side
256/224 of the crop, center crop), so the reported top-1 is what ``pipeline("image-classification")`` gives.

Exact resume, as with the in-memory data: batch ``b`` of an epoch is slice ``b`` of the epoch's seeded
permutation, and each image's crop and flip come from a generator seeded by ``(seed, epoch, b, position in
the global batch)``: what a worker returns depends on nothing else, neither on which worker nor on how many.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ImageDataError
from .data import list_image_folder, read_rgb, split_location

# torchvision's RandomResizedCrop defaults, which the authors' ImageNet script used.
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class ImageFiles:
    """An image folder as a file list: ``files[i]`` has class index ``labels[i]`` into ``classes``."""

    files: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, n: int | None) -> ImageFiles:
        """The first ``n`` files (balanced over classes: the list is round-robin), or all when ``n`` is None."""
        if n is None or n >= len(self):
            return self
        return ImageFiles(self.files[:n], self.labels[:n], self.classes)

    def fingerprint(self) -> str:
        """``<files>:<hash>`` of the names, sizes and labels in order: reading every pixel of ImageNet at each
        start would take minutes, and a replaced or re-encoded file changes its size in practice."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for file, label in zip(self.files, self.labels, strict=True):
            digest.update(f"{file.parent.name}/{file.name}\t{file.stat().st_size}\t{label}\n".encode())
        return f"{len(self)}:{digest.hexdigest()[:16]}"


def image_files(source: str, split: str) -> ImageFiles:
    """The files of ``split`` of an image-folder ``source`` (``<split>/<class>/*.jpg`` or ``<class>/*.jpg``)."""
    if source.startswith("hub:"):
        raise ImageDataError(
            f"{source}: stream reads local image folders (<split>/<class>/*.jpg); load Hub datasets in "
            "memory (stream: false) or save them as an image folder"
        )
    try:
        location = Path(split_location(source, split))
        if location.suffix == ".npz":
            raise ImageDataError(
                f"{location}: stream reads image folders (<split>/<class>/*.jpg), not .npz archives, which "
                "are loaded in memory (stream: false)"
            )
        classes, files, labels = list_image_folder(location)
    except OSError as err:
        raise ImageDataError(f"cannot list {split} images of {source}: {err}") from None
    return ImageFiles(files, np.asarray(labels, dtype=np.int64), classes)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: Sequence[float] = CROP_SCALE,
    ratio: Sequence[float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a crop covering a random ``scale`` fraction of the image with a random aspect
    ratio in ``ratio`` (log-uniform), as torchvision's ``RandomResizedCrop``: ten tries, then the central crop
    of the largest box with an allowed aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def augmented_image(
    file: Path, size: int, rng: np.random.Generator, scale: Sequence[float], hflip: bool
) -> torch.Tensor:
    """One training image: random-resized crop to ``size`` x ``size`` (bilinear), maybe flipped; uint8 [3, S, S]."""
    from PIL import Image

    img = read_rgb(file)
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng, scale)
    img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


class TrainBatches(Dataset):
    """Item ``b``: this process's share of batch ``b`` of one epoch, decoded and augmented.

    Returns uint8 images ``[n, 3, S, S]`` and int64 labels ``[n]``, where the share is every ``world``-th
    position of the global batch, starting at ``rank`` (as the in-memory loop splits its batches).
    """

    def __init__(
        self,
        files: ImageFiles,
        order: torch.Tensor,
        seed_key: tuple[int, int],
        batch_size: int,
        rank: int,
        world: int,
        image_size: int,
        scale: Sequence[float],
        hflip: bool,
    ):
        self.files, self.labels = files.files, files.labels
        self.order = order.tolist()
        self.seed_key = seed_key  # (seed, epoch)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.image_size, self.scale, self.hflip = image_size, tuple(scale), hflip

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        images, labels = [], []
        for position in range(self.rank, len(indices), self.world):
            rng = np.random.default_rng([*self.seed_key, b, position])
            i = indices[position]
            images.append(augmented_image(self.files[i], self.image_size, rng, self.scale, self.hflip))
            labels.append(int(self.labels[i]))
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)


class EvalImages(Dataset):
    """Item ``i``: image ``indices[i]`` through the image processor (float ``[3, S, S]``) and its label."""

    def __init__(self, files: ImageFiles, indices: Sequence[int], processor):
        self.files, self.labels, self.indices, self.processor = (
            files.files,
            files.labels,
            list(indices),
            processor,
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        pixels = self.processor(images=read_rgb(self.files[index]), return_tensors="pt")["pixel_values"][0]
        return pixels, int(self.labels[index])


def train_loader(dataset: TrainBatches, start: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches ``start, start + 1, ...`` of ``dataset`` in order (each worker decodes whole batches)."""
    return DataLoader(
        dataset,
        batch_size=None,  # the dataset's items are batches already
        sampler=range(start, len(dataset)),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def eval_loader(
    files: ImageFiles, processor, rank: int, world: int, batch_size: int, num_workers: int
) -> DataLoader:
    """This process's share (every ``world``-th image from ``rank``) in batches of processed images."""
    dataset = EvalImages(files, range(rank, len(files), world), processor)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)


__all__ = [
    "CROP_SCALE",
    "CROP_RATIO",
    "ImageFiles",
    "image_files",
    "random_resized_crop_box",
    "augmented_image",
    "TrainBatches",
    "EvalImages",
    "train_loader",
    "eval_loader",
]
