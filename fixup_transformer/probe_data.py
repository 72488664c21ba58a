"""Small, fixed batches of real data for depth and stability probes (diagnostics, depth benchmarks, tests).

A probe compares models on the *same* inputs, so the batches are built once, deterministically, and
handed to every model: CIFAR-10 images from the shared ``train_subset.npz`` (already shuffled, so the
first images are a class-balanced-enough sample) and Multi30k de-en pairs tokenized with a small joint
SentencePiece vocabulary trained on a subset of the training text.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import TranslationCollator, encode_pairs, load_local_parallel, train_tokenizer
from .vision.augment import normalize
from .vision.data import CIFAR10_LOCAL_SPLITS, load_npz
from .vision.image_processing_fixup_resnet import CIFAR10_MEAN, CIFAR10_STD


def cifar_batches(
    data_dir: str | os.PathLike, batch_size: int, num_batches: int = 1
) -> list[dict[str, torch.Tensor]]:
    """The first ``batch_size * num_batches`` training images, normalized, as model-input dicts.

    ``data_dir`` is the shared data root (holding ``cifar10/``), the ``cifar10`` folder itself, or the
    ``.npz`` file. No augmentation: a probe must see identical pixels in every run.
    """
    path = Path(data_dir)
    if path.suffix != ".npz":
        folder = path / "cifar10" if (path / "cifar10").is_dir() else path
        path = folder / CIFAR10_LOCAL_SPLITS["train"]
    arrays = load_npz(path).subset(batch_size * num_batches)
    if len(arrays) < batch_size * num_batches:
        raise ValueError(f"{path} has {len(arrays)} images, fewer than {batch_size} x {num_batches}")
    images, labels = arrays.tensors()
    pixels = normalize(images, CIFAR10_MEAN, CIFAR10_STD)
    return [
        {"pixel_values": pixels[i : i + batch_size], "labels": labels[i : i + batch_size]}
        for i in range(0, batch_size * num_batches, batch_size)
    ]


def multi30k_batches(
    data_dir: str | os.PathLike,
    batch_size: int,
    num_batches: int = 1,
    vocab_size: int = 1000,
    max_tokens: int = 24,
    tokenizer_pairs: int = 4000,
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Multi30k de->en training batches and the vocabulary size they were encoded with.

    A joint SentencePiece unigram vocabulary of ``vocab_size`` pieces is trained on the first
    ``tokenizer_pairs`` training pairs; pairs whose source or target exceeds ``max_tokens`` tokens
    (``</s>`` included) are skipped rather than truncated (a truncated target teaches a wrong ending),
    and the first ``batch_size * num_batches`` remaining pairs become the batches, in file order.
    ``data_dir`` is the shared data root (holding ``multi30k/``) or the ``multi30k`` folder itself.
    """
    folder = Path(data_dir)
    if (folder / "multi30k").is_dir():
        folder = folder / "multi30k"
    pairs = load_local_parallel(folder, "train", "de", "en")
    tokenizer = train_tokenizer(pairs[:tokenizer_pairs], vocab_size=vocab_size)
    needed = batch_size * num_batches
    encoded = encode_pairs(pairs[: max(needed * 4, tokenizer_pairs)], tokenizer)
    keep = [
        encoded[i]
        for i in range(len(encoded))
        if len(encoded.src_ids[i]) <= max_tokens and len(encoded.tgt_ids[i]) <= max_tokens
    ][:needed]
    if len(keep) < needed:
        raise ValueError(f"only {len(keep)} pairs of at most {max_tokens} tokens; asked for {needed}")
    collate = TranslationCollator()
    batches = [collate(keep[i : i + batch_size]) for i in range(0, needed, batch_size)]
    return batches, len(tokenizer)


__all__ = ["cifar_batches", "multi30k_batches"]
