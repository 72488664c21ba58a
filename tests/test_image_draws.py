"""The image training loop's randomness, recorded from a tiny real run: a new data order every epoch, new
crops, flips and mixup draws every batch, all fixed by the seed (and by nothing else); and the BatchNorm
baseline ResNet at init."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fixup_transformer.vision as V
from fixup_transformer.training import image
from fixup_transformer.training.image import ImageTrainer
from fixup_transformer.training.image_config import ImageTrainConfig

N_IMAGES, SIDE, PADDING, BATCH, EPOCHS = 16, 8, 4, 4, 2
STEPS = N_IMAGES // BATCH

# Tiny per-layer nets: one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps its state per process; start and leave it clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def coded_images() -> np.ndarray:
    """uint8 [N, H, W, 3] whose pixels say where they come from: channel 0 = row + 1, channel 1 = column + 1,
    channel 2 = image index + 1. Zero padding is 0 in every channel, so a crop reveals its draw."""
    rows, cols = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    images = np.zeros((N_IMAGES, SIDE, SIDE, 3), dtype=np.uint8)
    images[..., 0], images[..., 1] = rows + 1, cols + 1
    images[..., 2] = (np.arange(N_IMAGES) + 1)[:, None, None]
    return images


def decode_crop(crop: torch.Tensor) -> tuple[int, int, int, bool]:
    """(image index, crop row offset, crop column offset, flipped) of one uint8 [3, H, W] crop."""
    crop = crop.long()
    inside = crop[0] > 0
    r, c = (int(v) for v in torch.nonzero(inside)[0])  # the first pixel that is not padding
    row = crop[1][r][inside[r]]  # the column codes along that row
    flipped = bool(row[0] > row[-1])
    offset_y = int(crop[0, r, c]) - 1 - r + PADDING
    offset_x = int(crop[1, r, c]) - 1 - (SIDE - 1 - c if flipped else c) + PADDING
    return int(crop[2, r, c]) - 1, offset_y, offset_x, flipped


def test_the_crop_decoder_reads_back_the_image_the_window_and_the_flip():
    images = torch.from_numpy(coded_images().transpose(0, 3, 1, 2))
    padded = torch.nn.functional.pad(images, (PADDING,) * 4)
    for index, offset_y, offset_x in [(0, 0, 0), (5, 8, 8), (15, 3, 7), (9, 8, 0)]:
        window = padded[index, :, offset_y : offset_y + SIDE, offset_x : offset_x + SIDE]
        assert decode_crop(window) == (index, offset_y, offset_x, False)
        assert decode_crop(window.flip(2)) == (index, offset_y, offset_x, True)


def record_run(tmp_path, name: str, seed: int, disturb_global_rng: int) -> dict:
    """Train 2 epochs of 4 batches on 16 coded images; record each batch's permutation, crops and mixup."""
    records = {"perm": {}, "crops": {}, "mixup": {}}
    current = {}
    real_batch, real_crop, real_mixup = ImageTrainer._batch, image.random_crop_flip, image.draw_mixup

    def batch(self, perm, b):
        current["key"] = (self.state.epoch, b)
        records["perm"][current["key"]] = perm.clone()
        return real_batch(self, perm, b)

    def crop(images, generator, padding, flip):
        out = real_crop(images, generator, padding, flip)
        records["crops"][current["key"]] = [decode_crop(c) for c in out]
        return out

    def mixup(batch_size, alpha, generator):
        lam, partner = real_mixup(batch_size, alpha, generator)
        records["mixup"][current["key"]] = (lam, partner.tolist())
        return lam, partner

    data = tmp_path / "data.npz"
    if not data.exists():
        labels = np.arange(N_IMAGES) % 2
        np.savez(data, x=coded_images(), y=labels, classes=np.array(["even", "odd"]))
    cfg = ImageTrainConfig(
        depth=8,
        width_multiplier=0.25,
        train_data=str(data),
        test_data=str(data),
        test_samples=4,
        crop_padding=PADDING,
        hflip=True,
        mixup_alpha=0.5,
        batch_size=BATCH,
        epochs=EPOCHS,
        eval_every_epochs=EPOCHS,
        output_dir=str(tmp_path / name),
        seed=seed,
        cpu=True,
        channels_last=False,
        mixed_precision="no",
        progress_bar=False,
        num_threads=1,
    )
    # Patched for this run only: a second run must not wrap (and write through) the first run's recorders.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageTrainer, "_batch", batch)
        patch.setattr(image, "random_crop_flip", crop)
        patch.setattr(image, "draw_mixup", mixup)
        with pytest.warns(UserWarning, match="test images are the training images"):
            trainer = ImageTrainer(cfg)
        try:
            # The draws must depend on (seed, epoch, batch) only, not on the global RNG's state at the time.
            torch.manual_seed(disturb_global_rng)
            assert trainer.fit() is None
        finally:
            trainer.close()
    keys = [(epoch, b) for epoch in range(EPOCHS) for b in range(STEPS)]
    assert all(list(records[kind]) == keys for kind in records), records
    return records


def test_the_order_and_the_augmentation_draws_are_new_every_epoch_and_batch_and_fixed_by_the_seed(
    tmp_path, fresh_accelerator_state
):
    run = record_run(tmp_path, "run", seed=3, disturb_global_rng=0)

    # A permutation of all images per epoch, one per epoch (every batch of an epoch indexes the same one)...
    perms = [run["perm"][(epoch, 0)] for epoch in range(EPOCHS)]
    for epoch, perm in enumerate(perms):
        assert sorted(perm.tolist()) == list(range(N_IMAGES))
        assert all(torch.equal(run["perm"][(epoch, b)], perm) for b in range(STEPS))
    assert not torch.equal(perms[0], perms[1])  # ...and a new one in the next epoch
    # ...and the images that were cropped (read back from their pixels) are the permutation's, in order.
    for (epoch, b), crops in run["crops"].items():
        assert [index for index, *_ in crops] == perms[epoch][b * BATCH : (b + 1) * BATCH].tolist()

    # Crop offsets and flips: a new draw for every batch, within an epoch and at the same batch of the next.
    draws = {key: [tuple(d[1:]) for d in crops] for key, crops in run["crops"].items()}
    for offset_y, offset_x, _ in (d for batch in draws.values() for d in batch):
        assert 0 <= offset_y <= 2 * PADDING and 0 <= offset_x <= 2 * PADDING
    assert len({tuple(batch) for batch in draws.values()}) == len(draws), draws
    all_draws = [d for batch in draws.values() for d in batch]
    assert len({d[2] for d in all_draws}) == 2  # both flipped and unflipped images occur
    assert len({d[:2] for d in all_draws}) > len(all_draws) // 2  # many different crop windows
    # Mixup: a new lambda (and partner permutation) for every batch.
    lams = [lam for lam, _ in run["mixup"].values()]
    assert len(set(lams)) == len(lams) and all(0 < lam < 1 for lam in lams), lams
    for _, partner in run["mixup"].values():
        assert sorted(partner) == list(range(BATCH))

    # The same seed gives the same order and draws, whatever the global RNG did in between.
    again = record_run(tmp_path, "again", seed=3, disturb_global_rng=12345)
    assert all(torch.equal(again["perm"][key], run["perm"][key]) for key in run["perm"])
    assert again["crops"] == run["crops"] and again["mixup"] == run["mixup"]


def test_the_batchnorm_baseline_at_init_has_unit_running_statistics_and_sane_eval_logits():
    torch.manual_seed(0)
    config = V.FixupResNetConfig.cifar(8, normalization="batchnorm", init="kaiming")
    model = V.FixupResNetForImageClassification(config).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 7  # the stem and 2 per block of the 3 blocks
    for norm in norms:
        assert torch.equal(norm.running_mean, torch.zeros_like(norm.running_mean))
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert int(norm.num_batches_tracked) == 0

    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # as normalized images
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()
    # Eval mode normalizes with the running statistics: with mean 0 and var 1 the BatchNorms are (almost)
    # the identity and the logits stay O(1). A running_var of 0 would divide by sqrt(eps) at each of them.
    assert 1e-2 < logits.std().item() and logits.abs().max().item() < 10.0, logits
    assert not torch.allclose(logits[0], logits[1])  # the inputs reach the classifier
    assert math.isfinite(model(pixel_values=pixels, labels=torch.arange(8)).loss.item())
