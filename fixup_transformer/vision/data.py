"""Image datasets as in-memory uint8 arrays: local ``.npz``, an image folder, or CIFAR-10 from the Hub.

CIFAR-sized data fits in memory many times over, and keeping it as one uint8 tensor lets the training
loop index batches and augment them on the accelerator, with no worker processes (the CPU machines this
runs on have two cores). Vision data lives here, apart from the MT text pipeline in ``fixup_transformer.data``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageDataError
from ..paths import resolve_path

NPZ_KEYS = ("x", "y", "classes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Local file names of the shared CIFAR-10 copy (see shared/data/README.md, section 4).
CIFAR10_LOCAL_SPLITS = {"train": "train_subset.npz", "test": "test_shared.npz"}


@dataclass
class ImageArrays:
    """``images``: uint8 ``[N, H, W, C]`` (RGB); ``labels``: int64 ``[N]``; ``classes``: names by index."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = int(np.flatnonzero((self.labels < 0) | (self.labels >= len(self.classes)))[0])
            raise ValueError(
                f"labels must lie in [0, {len(self.classes) - 1}] (one per class name), got "
                f"{int(self.labels[bad])} at index {bad}"
            )
        if self.images.shape[-1] != 3:
            # The trainer normalizes with 3-channel mean/std and the processor converts inputs to RGB: other
            # channel counts would broadcast silently into a wrong 3-channel model.
            raise ValueError(
                f"images have {self.images.shape[-1]} channel(s) (shape {list(self.images.shape)}); only "
                "RGB [N, H, W, 3] is supported: "
                + (
                    "channels come first here, use x.transpose(0, 2, 3, 1)"
                    if self.images.ndim == 4 and self.images.shape[1] == 3
                    else "convert grayscale with np.repeat(x, 3, axis=-1)"
                )
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> ImageArrays:
        """The first ``n`` examples (the shared files are already shuffled), or all when ``n`` is None."""
        if n is None or n >= len(self):
            return self
        return ImageArrays(self.images[:n], self.labels[:n], self.classes)

    def fingerprint(self) -> str:
        """``<images>:<hash>`` of the images, labels and classes, in order: what the data is, not where."""
        digest = hashlib.sha256(np.ascontiguousarray(self.images).data)
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).data)
        digest.update("\n".join(self.classes).encode())
        return f"{len(self)}:{digest.hexdigest()[:16]}"

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[N, C, H, W]`` images and int64 labels, ready to index batches from."""
        images = torch.from_numpy(np.ascontiguousarray(self.images.transpose(0, 3, 1, 2)))
        return images, torch.from_numpy(self.labels.astype(np.int64))


def load_npz(path: str | os.PathLike) -> ImageArrays:
    """Load an archive with keys ``x`` (uint8 [N,H,W,C]), ``y`` (int [N]) and ``classes`` (str [K])."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image archive not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise KeyError(f"{path} lacks required key(s) {missing}; it has {sorted(archive.files)}")
        images, labels, classes = archive["x"], archive["y"], [str(c) for c in archive["classes"]]
    if not np.issubdtype(labels.dtype, np.number):
        raise ImageDataError(
            f"{path}: labels 'y' must be integer class indices into 'classes', got {labels.dtype} values"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        fractional = np.flatnonzero(np.asarray(labels, dtype=np.float64) % 1 != 0)
        if fractional.size:  # astype(int64) would truncate 2.7 to class 2 without a word
            raise ImageDataError(
                f"{path}: labels must be class indices, got {labels.dtype} values such as "
                f"{labels[fractional[0]]} (index {int(fractional[0])})"
            )
    try:
        return ImageArrays(images, labels.astype(np.int64), classes)
    except ValueError as err:
        raise ImageDataError(f"{path}: {err}") from None


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[Path], list[int]]:
    """The classes (sorted sub-folder names), image files and their labels of ``root/<class>/*``.

    Files come round-robin over the classes (the first image of each class, then the second, ...), so that a
    prefix (train_samples / test_samples) is balanced, not one class.
    """
    root = Path(root)
    # Hidden folders (.ipynb_checkpoints, .git) and macOS archive debris are no classes.
    classes = (
        sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
        if root.is_dir()
        else []
    )
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in image folder {root}")
    per_class = []
    for name in classes:
        # Hidden files too: macOS leaves "._name.JPEG" resource forks beside the images of copied folders.
        files = [
            f
            for f in sorted((root / name).iterdir())
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
        ]
        if not files:  # a class without images would be an output that never trains
            raise ImageDataError(f"class folder {root / name} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        per_class.append(files)
    order = sorted(((rank, label) for label, files in enumerate(per_class) for rank in range(len(files))))
    return classes, [per_class[label][rank] for rank, label in order], [label for _, label in order]


def read_rgb(file: Path):
    """One image file as an upright RGB PIL image; an unreadable file raises ``ImageDataError`` naming it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as img:
            # Upright as the camera meant it, as transformers' load_image (the pipeline) serves it.
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError) as err:  # truncated or not an image: Pillow's message has no path
        raise ImageDataError(f"{file}: cannot read the image ({err})") from None


def load_image_folder(root: str | os.PathLike, image_size: int | None = None) -> ImageArrays:
    """``root/<class>/*.png|jpg`` in memory, in :func:`list_image_folder`'s order.

    Images are converted to RGB; with ``image_size`` they are resized to a square of that side, otherwise
    they must all have the same size.
    """
    from PIL import Image

    classes, files, labels = list_image_folder(root)
    images, file_of_shape = [], {}
    for file in files:
        img = read_rgb(file)
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
        images.append(array)
        file_of_shape.setdefault(array.shape, file)
    if len(file_of_shape) > 1:
        examples = ", ".join(
            f"{shape[1]}x{shape[0]} ({file})" for shape, file in sorted(file_of_shape.items())
        )
        raise ValueError(
            f"images under {root} have different sizes, e.g. {examples}; set image_size to resize them"
        )
    return ImageArrays(np.stack(images), np.asarray(labels, dtype=np.int64), classes)


def load_hub_cifar10(split: str, dataset_name: str = "uoft-cs/cifar10") -> ImageArrays:
    """CIFAR-10 from the Hugging Face Hub through ``datasets`` (needs the network or a warm cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_name, split=split)
    except Exception as err:  # datasets raises several types for "offline / not cached"
        raise RuntimeError(
            f"could not load {dataset_name!r} split {split!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{err}). Offline? Use a local .npz (data_dir / FIXUP_DATA_DIR) or an image folder instead."
        ) from err
    image_col = "img" if "img" in ds.column_names else "image"
    images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in ds[image_col]])
    return ImageArrays(images, np.asarray(ds["label"], dtype=np.int64), list(ds.features["label"].names))


def load_images(source: str, split: str, image_size: int | None = None) -> ImageArrays:
    """Resolve a dataset ``source`` for ``split`` ("train" / "test").

    - ``hub:<name>``: a Hub dataset (``hub:uoft-cs/cifar10``);
    - a ``.npz`` file: used as is (for either split, so pass the matching file);
    - a folder holding ``train_subset.npz`` / ``test_shared.npz`` (the shared CIFAR-10 copy);
    - a folder with ``<split>/<class>/`` images, or ``<class>/`` images directly.
    """
    try:
        return _load_images(source, split, image_size)
    except ImageDataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile) as err:
        # missing or unreadable files, a non-archive .npz, a corrupt image, a missing key: the user's data
        raise ImageDataError(f"cannot load {split} images from {source}: {err}") from None


# The test split of a folder source: ImageNet's own layout is train/ + val/.
TEST_FOLDERS = ("test", "val", "validation")


def split_location(source: str, split: str) -> str:
    """Where :func:`load_images` reads ``split`` of ``source``: ``hub:<name>:<split>`` or a path. Two splits
    with one location are the same images (e.g. a single archive, or a folder without train/test parts)."""
    if source.startswith("hub:"):
        return f"{source}:{split}"
    path = resolve_path(source)  # ${VAR:-default} and ~ as in the MT configs' data paths
    if path.suffix == ".npz":
        return str(path.resolve())
    if split in CIFAR10_LOCAL_SPLITS and (path / CIFAR10_LOCAL_SPLITS[split]).is_file():
        return str((path / CIFAR10_LOCAL_SPLITS[split]).resolve())
    folders = TEST_FOLDERS if split == "test" else (split,)
    for name in folders:
        if (path / name).is_dir():
            return str((path / name).resolve())
    if path.is_dir() and (path / "train").is_dir():  # split into parts, but not this one
        raise FileNotFoundError(
            f"image folder {path} has train/ but no {' or '.join(f + '/' for f in folders)} for the {split} "
            "split; pass its location as test_data"
        )
    if path.is_dir():
        return str(path.resolve())
    raise FileNotFoundError(f"image data source {source!r} (split {split!r}) not found")


def _load_images(source: str, split: str, image_size: int | None) -> ImageArrays:
    if source.startswith("hub:"):
        return load_hub_cifar10(split, source[4:])
    location = Path(split_location(source, split))
    return load_npz(location) if location.suffix == ".npz" else load_image_folder(location, image_size)


__all__ = [
    "ImageArrays",
    "load_npz",
    "list_image_folder",
    "read_rgb",
    "load_image_folder",
    "load_hub_cifar10",
    "load_images",
    "split_location",
]
