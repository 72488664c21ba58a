"""How many images per second one CPU core decodes and augments for ``stream: true`` (ImageNet-style JPEGs).

Writes ``--images`` synthetic JPEGs of ImageNet's typical size (500 x 375 by default, quality 90; smooth colour
fields with mild noise, so that a file is about the size of an ImageNet photo rather than of incompressible
noise), then times, on one core in this process:

- ``train``: :func:`fixup_transformer.vision.streaming.augmented_image` (decode, random-resized crop to 224,
  flip), the work of one training image in a DataLoader worker;
- ``eval``: the exported image processor's resize (short side 256) and center crop of one test image;

and the trainer's loader (:class:`TrainBatches` through :func:`train_loader`) with ``--workers`` processes.
It says how many ``num_workers`` a GPU needs: divide the GPU's images per second by the per-core rate.
Real photos vary in size and entropy; time a folder of your own with ``--folder``.

    python benchmarks/image_decode.py --output runs/image_decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fixup_transformer.vision.image_processing_fixup_resnet import FixupResNetImageProcessor
from fixup_transformer.vision.streaming import (
    CROP_SCALE,
    TrainBatches,
    augmented_image,
    image_files,
    train_loader,
)


def write_photos(root: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "train" / "synthetic"
    folder.mkdir(parents=True)
    (root / "train" / "other").mkdir()
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(a * x + i), np.cos(b * y), np.sin(c * (x + y))], axis=-1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 16, base.shape), 0, 255).astype(np.uint8)
        target = folder if i % 2 == 0 else root / "train" / "other"
        Image.fromarray(pixels).save(target / f"photo{i}.jpg", quality=90)


def per_image_seconds(fn, count: int, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            fn(i)
        times.append((time.perf_counter() - start) / count)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument(
        "--folder", help="an image folder (train/<class>/*.jpg) to time instead of synthetic JPEGs"
    )
    parser.add_argument("--size", type=int, default=224, help="crop side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes for the loader timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.folder) if args.folder else Path(scratch)
        if not args.folder:
            write_photos(root, args.images, args.width, args.height)
        files = image_files(str(root), "train")
        count = len(files)
        megabytes = sum(files.path(i).stat().st_size for i in range(count)) / count / 1e6
        processor = FixupResNetImageProcessor.imagenet(args.size)

        def train_one(i: int) -> None:
            augmented_image(files.path(i), args.size, np.random.default_rng(i), CROP_SCALE, True)

        def eval_one(i: int) -> None:
            image = Image.open(files.path(i)).convert("RGB")
            processor(images=image, return_tensors="pt", do_rescale=False, do_normalize=False)

        train = per_image_seconds(train_one, count, args.repeats)
        evaluation = per_image_seconds(eval_one, count, args.repeats)

        batches = TrainBatches(
            files, torch.randperm(count), (0, 0), args.batch_size, 0, 1, args.size, CROP_SCALE, True
        )
        loader_rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            n = sum(len(labels) for _, labels in train_loader(batches, 0, args.workers))
            loader_rates.append(n / (time.perf_counter() - start))

    result = {
        "images": count,
        "source": args.folder or f"synthetic {args.width}x{args.height} JPEG, quality 90",
        "mean_file_mb": round(megabytes, 3),
        "crop": args.size,
        "train_images_per_s_one_core": round(1 / statistics.median(train), 1),
        "eval_images_per_s_one_core": round(1 / statistics.median(evaluation), 1),
        "loader_workers": args.workers,
        "loader_images_per_s": round(statistics.median(loader_rates), 1),
        "note": "loader timing includes starting its worker processes",
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
