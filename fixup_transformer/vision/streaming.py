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
import os
from collections.abc import Iterable, Iterator, Sequence
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
    """An image folder as a file list: ``path(i)`` has class index ``labels[i]`` into ``classes``.

    The paths are one NumPy bytes array, not a list of ``Path`` objects: DataLoader workers forked from the
    trainer would touch every object's reference count and so copy the whole list into each worker (about
    0.3 GB per worker for ImageNet's 1.28M files).
    """

    paths: np.ndarray  # bytes (os.fsencode), one per image
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> Path:
        return Path(os.fsdecode(self.paths[i]))

    def subset(self, n: int | None) -> ImageFiles:
        """The first ``n`` files (balanced over classes: the list is round-robin), or all when ``n`` is None."""
        if n is None or n >= len(self):
            return self
        return ImageFiles(self.paths[:n], self.labels[:n], self.classes)

    def fingerprint(self) -> str:
        """``<files>:<hash>`` of the class-folder/file names and labels, in order: what each position of the
        epoch's permutation indexes. Not the bytes: reading (or stat-ing) 1.28M files at every start is slow,
        and a corrupt image replaced by a good copy must not stop a run from resuming."""
        digest = hashlib.sha256("\n".join(self.classes).encode())
        for i, label in enumerate(self.labels):
            path = self.path(i)
            digest.update(f"{path.parent.name}/{path.name}\t{label}\n".encode())
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
    paths = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
    return ImageFiles(paths, np.asarray(labels, dtype=np.int64), classes)


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
        self.files = files
        self.order = order.numpy()
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
            i = int(indices[position])
            images.append(augmented_image(self.files.path(i), self.image_size, rng, self.scale, self.hflip))
            labels.append(int(self.files.labels[i]))
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)


class EvalImages(Dataset):
    """Item ``i``: image ``indices[i]`` resized and cropped by the image processor, as uint8 ``[3, S, S]``
    (rescaling and normalization happen on the device, as for training batches: a quarter of the bytes to move
    through the workers' shared memory), and its label."""

    def __init__(self, files: ImageFiles, indices: range, processor):
        self.files, self.indices, self.processor = files, indices, processor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        image = read_rgb(self.files.path(index))
        pixels = self.processor(images=image, return_tensors="pt", do_rescale=False, do_normalize=False)
        return pixels["pixel_values"][0], int(self.files.labels[index])


def train_loader(
    dataset: TrainBatches, start: int, num_workers: int, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``start, start + 1, ...`` of ``dataset`` in order (each worker decodes whole batches)."""
    loader = DataLoader(
        dataset,
        batch_size=None,  # the dataset's items are batches already
        sampler=range(start, len(dataset)),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return _one_line_errors(loader)


def eval_loader(
    files: ImageFiles, processor, rank: int, world: int, batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share (every ``world``-th image from ``rank``): uint8 ``[n, 3, S, S]`` and labels."""
    dataset = EvalImages(files, range(rank, len(files), world), processor)
    return _one_line_errors(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))


def _one_line_errors(loader: Iterable) -> Iterator:
    """``loader``'s items; an unreadable image stops it with the one-line ``ImageDataError`` naming the file.

    torch re-raises a worker's exception with the worker's whole traceback as its message; the last line,
    ``<module>.ImageDataError: <message>``, holds all a user needs.
    """
    try:
        yield from loader
    except ImageDataError as err:
        last = str(err).rstrip().rsplit("\n", 1)[-1]
        prefix = f"{ImageDataError.__module__}.{ImageDataError.__name__}: "
        raise ImageDataError(last.removeprefix(prefix)) from None


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
