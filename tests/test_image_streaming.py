"""stream: true, image folders decoded batch by batch: crops, file lists, worker-independent batches, and the
trainer end to end with exact resume and a top-1 that the exported pipeline reproduces."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from process_helpers import run_process_group, train_image, two_cpu_processes
from safetensors.torch import load_file

from fixup_transformer.errors import ImageDataError
from fixup_transformer.vision.streaming import (
    TrainBatches,
    image_files,
    random_resized_crop_box,
    train_loader,
)

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("blue", "green", "red")

pytestmark = pytest.mark.usefixtures("single_thread")


def _write_folder(root: Path, per_class: int, seed: int) -> None:
    """JPEGs of several sizes whose colour says their class (so a tiny model can learn them)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(30, 70)), int(rng.integers(30, 70))
            pixels = rng.integers(0, 80, (h, w, 3))
            pixels[..., 2 - label] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"img{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    _write_folder(root / "train", per_class=12, seed=0)
    _write_folder(root / "val", per_class=4, seed=1)
    return root


def test_random_resized_crop_boxes_stay_inside_with_the_allowed_area_and_aspect():
    rng = np.random.default_rng(0)
    for width, height in [(400, 300), (64, 64), (35, 61)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            assert w >= 1 and h >= 1
            if (w, h) != (width, height):  # a drawn box (the fallback may take the whole image)
                assert 0.08 * 0.9 <= w * h / (width * height) <= 1.0
                assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # Too elongated for any drawn box: the central crop of the widest allowed aspect ratio, as torchvision.
    assert random_resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)
    assert random_resized_crop_box(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)
    # The same generator state gives the same box.
    a, b = np.random.default_rng([1, 2]), np.random.default_rng([1, 2])
    assert random_resized_crop_box(300, 200, a) == random_resized_crop_box(300, 200, b)


def test_image_files_are_round_robin_without_hidden_files_and_fingerprinted_by_names_and_labels(tmp_path):
    _write_folder(tmp_path / "train", per_class=2, seed=0)
    (tmp_path / "train" / "red" / "._img0.jpg").write_bytes(b"macOS resource fork")  # not an image
    files = image_files(str(tmp_path), "train")
    assert files.classes == list(CLASSES)
    assert files.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert [files.path(i).name for i in range(len(files))] == ["img0.jpg"] * 3 + ["img1.jpg"] * 3
    assert files.path(2) == tmp_path / "train" / "red" / "img0.jpg"
    assert files.subset(3).labels.tolist() == [0, 1, 2]
    before = files.fingerprint()
    # A repaired (re-encoded) image indexes the same position: the run may resume.
    Image.new("RGB", (5, 5)).save(tmp_path / "train" / "red" / "img1.jpg")
    assert image_files(str(tmp_path), "train").fingerprint() == before
    # Another file list does not.
    (tmp_path / "train" / "red" / "img1.jpg").rename(tmp_path / "train" / "red" / "img9.jpg")
    assert image_files(str(tmp_path), "train").fingerprint() != before


def test_stream_refuses_archives_and_hub_sources_and_names_them(tmp_path):
    archive = tmp_path / "data.npz"
    np.savez(archive, x=np.zeros((2, 4, 4, 3), np.uint8), y=np.array([0, 1]), classes=np.array(["a", "b"]))
    with pytest.raises(ImageDataError, match=r"data\.npz: stream reads image folders"):
        image_files(str(archive), "train")
    with pytest.raises(ImageDataError, match="hub:uoft-cs/cifar10: stream reads local image folders"):
        image_files("hub:uoft-cs/cifar10", "train")
    with pytest.raises(ImageDataError, match="cannot list train images"):
        image_files(str(tmp_path / "missing"), "train")


def _batches(files, epoch: int, rank: int, world: int, workers: int, start: int = 0):
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(epoch))
    dataset = TrainBatches(files, order, (0, epoch), 6, rank, world, 24, (0.08, 1.0), True)
    return list(train_loader(dataset, start, workers))


def test_streamed_batches_depend_only_on_seed_epoch_batch_and_position(folder):
    files = image_files(str(folder), "train")
    one = _batches(files, epoch=0, rank=0, world=1, workers=0)
    assert len(one) == len(files) // 6
    images, labels = one[0]
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 24, 24) and labels.dtype == torch.long
    # Two worker processes decode the same batches, and a loader started at batch 2 (a resume) continues them.
    for (a, la), (b, lb) in zip(one, _batches(files, 0, 0, 1, workers=2), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for (a, _), (b, _) in zip(one[2:], _batches(files, 0, 0, 1, workers=0, start=2), strict=True):
        assert torch.equal(a, b)
    # Two processes' shares interleave to the whole batch, crops included.
    rank0, rank1 = _batches(files, 0, 0, 2, 0), _batches(files, 0, 1, 2, 0)
    for (whole, labels), (a, la), (b, lb) in zip(one, rank0, rank1, strict=True):
        assert torch.equal(whole[0::2], a) and torch.equal(whole[1::2], b)
        assert torch.equal(labels[0::2], la) and torch.equal(labels[1::2], lb)
    # Another epoch: another order and other crops.
    other = _batches(files, epoch=1, rank=0, world=1, workers=0)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(one, other, strict=True))


@pytest.mark.slow
def test_streamed_training_resumes_exactly_and_its_top1_is_the_pipelines(folder, tmp_path):
    common = [
        "--train_data", str(folder), "--stream", "true", "--num_workers", "2", "--image_size", "32",
        "--family", "cifar", "--depth", "8", "--width_multiplier", "0.25", "--batch_size", "6",
        "--epochs", "2", "--schedule", "step", "--milestones", "1", "--mixup_alpha", "0.7",
        "--optim.lr", "0.05", "--progress_bar", "false", "--num_threads", "1",
    ]  # fmt: skip
    full, paused = tmp_path / "full", tmp_path / "paused"
    result = train_image([*common, "--output_dir", str(full)])
    assert result.returncode == 0, result.stderr[-4000:]
    # 6 updates per epoch: a checkpoint inside the first epoch (5), at its end (6) and at the pause (7).
    extra = ["--checkpoint_every_steps", "5", "--keep_checkpoints", "5", "--stop_after_steps", "7"]
    result = train_image([*common, "--output_dir", str(paused), *extra])
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoints = paused / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-5", "checkpoint-6", "checkpoint-7"]
    for name in ("checkpoint-6", "checkpoint-7"):  # as if killed right after update 5's checkpoint
        shutil.rmtree(checkpoints / name)
    result = train_image([*common, "--output_dir", str(paused), "--resume", "--num_workers", "0"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout + result.stderr and "update 5" in result.stdout + result.stderr

    # Resumed mid-epoch with another worker count: the same weights bit for bit, the same epoch losses.
    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(paused / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (paused / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records[:2]] == [r["train_loss"] for r in resumed[:2]]
    final = records[-1]
    assert final["kind"] == "final" and final["step"] == 12

    # The export's processor is the ImageNet evaluation transform at the run's size ...
    processor = json.loads((full / "final" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["do_center_crop"] is True
    assert processor["size"] == {"shortest_edge": round(32 * 256 / 224)}
    # ... and the reported test top-1 is what pipeline("image-classification") scores on the test images.
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(full / "final"))
    files = image_files(str(folder), "test")
    images = [Image.open(files.path(i)).convert("RGB") for i in range(len(files))]
    predicted = [classify(image, top_k=1)[0]["label"] for image in images]
    correct = sum(p == files.classes[y] for p, y in zip(predicted, files.labels, strict=True))
    assert final["test_top1"] == pytest.approx(correct / len(files))
    assert not math.isnan(final["test_top1"])


@pytest.mark.slow
def test_an_unreadable_image_stops_the_run_with_one_line_naming_it_and_a_repaired_one_resumes(
    folder, tmp_path
):
    from fixup_transformer.training.image import _generator

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    files = image_files(str(data), "train")
    order = torch.randperm(len(files), generator=_generator(0, 0))  # the trainer's epoch-0 order at seed 0
    broken = files.path(int(order[5 * 6]))  # first image of the last batch (6 a batch, 6 batches)
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # truncated
    args = [
        "--train_data", str(data), "--stream", "true", "--num_workers", "1", "--image_size", "32",
        "--family", "cifar", "--depth", "8", "--width_multiplier", "0.25", "--batch_size", "6",
        "--epochs", "1", "--progress_bar", "false", "--num_threads", "1", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = train_image([*args, "--stop_after_steps", "1"])
    assert result.returncode == 0, result.stderr[-3000:]  # its batch comes later in the epoch
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-1").is_dir()
    result = train_image([*args, "--resume"])
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if str(broken) in line]
    assert len(error) == 1 and "cannot read the image" in error[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr, result.stderr[
        -3000:
    ]
    broken.write_bytes(good)  # repaired: the run resumes from its checkpoint
    result = train_image([*args, "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr


@pytest.mark.slow
def test_two_streaming_processes_train_like_one(folder, tmp_path):
    """Each process decodes its share of every global batch, with the crops of those positions: without mixup
    (whose partners stay within a share) two gloo processes make the updates of one."""
    common = [
        "--train_data", str(folder), "--stream", "true", "--num_workers", "1", "--image_size", "32",
        "--family", "cifar", "--depth", "8", "--width_multiplier", "0.25", "--batch_size", "6",
        "--epochs", "2", "--optim.lr", "0.05", "--progress_bar", "false", "--num_threads", "1", "--cpu", "true",
    ]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "accelerate.commands.launch", *two_cpu_processes()]
    returncode, stderr = run_process_group(
        [*launch, str(REPO / "scripts" / "train_image.py"), *common, "--output_dir", str(two)], 300
    )
    assert returncode == 0, stderr[-3000:]
    result = train_image([*common, "--output_dir", str(one)])
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(str(one / "final" / "model.safetensors"))
    b = load_file(str(two / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    top1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()][-1]["test_top1"]
    assert records[-1]["test_top1"] == pytest.approx(top1)  # each rank scored its half of the test images


def test_imagenet_config_is_the_papers_recipe_and_streams():
    from fixup_transformer.training.config import load_config
    from fixup_transformer.training.image_config import ImageTrainConfig

    cfg = load_config(ImageTrainConfig, REPO / "configs" / "imagenet_resnet50.yaml")
    assert (cfg.family, cfg.depth, cfg.normalization, cfg.init) == ("imagenet", 50, "none", "fixup")
    assert cfg.stream and cfg.image_size == 224 and cfg.crop_scale == [0.08, 1.0]
    assert (cfg.epochs, cfg.batch_size, cfg.milestones, cfg.gamma, cfg.mixup_alpha) == (
        90,
        256,
        [30, 60],
        0.1,
        0.7,
    )
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.scalar_lr_multiplier) == (
        "sgd",
        0.1,
        1e-4,
        0.1,
    )


def test_the_decode_benchmark_runs_on_a_folder_of_your_own(folder, tmp_path):
    """benchmarks/image_decode.py --folder: one JSON record with every rate (smoke run; no timing asserted)."""
    output = tmp_path / "decode.json"
    args = ["--folder", str(folder), "--size", "24", "--repeats", "1", "--workers", "0", "--batch-size", "6"]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "image_decode.py"), *args, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(output.read_text())
    assert record["images"] == 36 and record["source"] == str(folder)
    for key in ("train_images_per_s_one_core", "eval_images_per_s_one_core", "loader_images_per_s"):
        assert record[key] > 0, key
