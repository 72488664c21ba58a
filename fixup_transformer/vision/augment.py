"""Batched image augmentation and normalization in plain torch (no torchvision).

Every random draw takes an explicit ``torch.Generator`` so that a training run, resumed from a checkpoint,
sees exactly the same crops, flips and mixup pairs as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` in 0..255 -> float, ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Zero-pad by ``padding``, take a random crop of the original size, flip half the images horizontally.

    Vectorized with one gather (no Python loop over the batch). Apply it to the uint8 images, before
    :func:`normalize`: the authors' torchvision pipeline padded before normalizing, i.e. with black pixels.
    """
    b, _, h, w = images.shape
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
        rows = (oy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # [B,1,H,1]
        cols = (ox[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # [B,1,1,W]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def mixup(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): one ``lam ~ Beta(alpha, alpha)`` per batch, partner = a permutation.

    Returns mixed float images and soft targets ``[B, num_classes]``. ``alpha <= 0`` returns one-hot targets.
    """
    targets = F.one_hot(labels, num_classes).float()
    if alpha <= 0:
        return images, targets
    lam, perm = draw_mixup(images.shape[0], alpha, generator)
    perm = perm.to(images.device)
    return mix(lam, images, images[perm]), mix(lam, targets, targets[perm])


def mix(lam: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mixup's convex combination ``lam * a + (1 - lam) * b`` (images, or soft targets)."""
    return lam * a + (1 - lam) * b


def draw_mixup(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """The random part of :func:`mixup`: ``lam ~ Beta(alpha, alpha)`` and each example's partner.

    Drawn for a whole (global) batch, it lets each process mix only its own share of that batch and still
    get exactly what one process mixing the whole batch would.
    """
    # torch's Beta sampler takes no generator; derive a NumPy generator from ours to stay reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(batch_size, generator=generator)


__all__ = ["normalize", "random_crop_flip", "mixup", "draw_mixup", "mix"]
