"""Image data: .npz / image-folder / Hub loaders and their errors; torch augmentation and mixup."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixup_transformer.errors import ImageDataError
from fixup_transformer.vision.augment import mixup, normalize, random_crop_flip
from fixup_transformer.vision.data import load_hub_cifar10, load_image_folder, load_images, load_npz


def _write_npz(path, n=6, **overrides):
    arrays = {
        "x": np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        "y": np.arange(n, dtype=np.int64) % 3,
        "classes": np.array(["a", "b", "c"]),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_load_npz_round_trip(tmp_path):
    arrays = _write_npz(tmp_path / "d.npz")
    data = load_npz(tmp_path / "d.npz")
    assert np.array_equal(data.images, arrays["x"]) and data.classes == ["a", "b", "c"]
    images, labels = data.tensors()
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images[2].permute(1, 2, 0), torch.from_numpy(arrays["x"][2]))
    assert len(data.subset(4)) == 4


def test_load_npz_missing_keys_names_file_and_keys(tmp_path):
    _write_npz(tmp_path / "bad.npz", y=None, classes=None)
    with pytest.raises(KeyError, match=r"bad\.npz.*\['y', 'classes'\]"):
        load_npz(tmp_path / "bad.npz")


def test_load_npz_refuses_pickled_arrays(tmp_path):
    _write_npz(tmp_path / "obj.npz", classes=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz(tmp_path / "obj.npz")


def test_load_npz_rejects_labels_out_of_range(tmp_path):
    _write_npz(tmp_path / "lab.npz", y=np.array([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match="labels must lie in"):
        load_npz(tmp_path / "lab.npz")


def test_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "nope.npz")
    with pytest.raises(ImageDataError, match="cannot load train images from .*nowhere"):
        load_images(str(tmp_path / "nowhere"), "train")


def test_unreadable_data_is_one_image_data_error_naming_the_source(tmp_path):
    # What the scripts turn into one line and exit code 2, never a traceback.
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 not a whole archive")
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    _write_npz(tmp_path / "nokeys.npz", classes=None)
    for name in ("cut.npz", "text.npz", "nokeys.npz"):
        with pytest.raises(ImageDataError, match=name):
            load_images(str(tmp_path / name), "test")
    folder = tmp_path / "folder" / "cat"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageDataError, match="folder"):
        load_images(str(tmp_path / "folder"), "train")


def test_fractional_labels_are_refused_not_truncated(tmp_path):
    _write_npz(tmp_path / "soft.npz", y=np.array([0.0, 1.0, 2.7, 0.0, 1.0, 2.0]))
    with pytest.raises(ImageDataError, match=r"soft\.npz: labels must be class indices.*2\.7 \(index 2\)"):
        load_npz(tmp_path / "soft.npz")
    _write_npz(tmp_path / "whole.npz", y=np.array([0.0, 1.0, 2.0, 0.0, 1.0, 2.0]))
    assert load_npz(tmp_path / "whole.npz").labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("cat", 2), ("dog", 3)):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
                tmp_path / "train" / name / f"{i}.png"
            )
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    data = load_images(str(tmp_path), "train")
    assert data.classes == ["cat", "dog"] and sorted(data.labels) == [0, 0, 1, 1, 1]
    assert data.images.shape == (5, 10, 12, 3)
    # round-robin over the classes: a prefix (train_samples) is balanced, not one class
    assert list(data.labels) == [0, 1, 0, 1, 1] and list(data.subset(2).labels) == [0, 1]
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "train" / "cat" / "gray.jpg")
    with pytest.raises(ValueError, match=r"different sizes, e\.g\. 5x5 \(.*gray\.jpg\), 12x10 \(.*0\.png\)"):
        load_image_folder(tmp_path / "train")
    resized = load_image_folder(tmp_path / "train", image_size=8)
    assert resized.images.shape == (6, 8, 8, 3)


def test_image_folder_turns_photos_upright_like_the_pipeline(tmp_path):
    # A phone photo stored sideways with an EXIF orientation tag: training must see what pipeline() sees.
    from transformers.image_utils import load_image

    (tmp_path / "cat").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    path = tmp_path / "cat" / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(
        path, exif=exif
    )
    served = np.asarray(load_image(str(path)))
    assert served.shape == (48, 32, 3)
    assert load_image_folder(tmp_path).images[0].shape == served.shape


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "cat" / "ok.png")
    whole = (tmp_path / "cat" / "ok.png").read_bytes()
    (tmp_path / "cat" / "cut.png").write_bytes(whole[: len(whole) // 2])  # a half-written copy
    with pytest.raises(ImageDataError, match=r"cut\.png: cannot read the image"):
        load_images(str(tmp_path), "train")


def test_a_folder_without_train_and_test_parts_is_both_splits_and_says_so(tmp_path):
    from fixup_transformer.training.image import load_data
    from fixup_transformer.training.image_config import ImageTrainConfig

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    with pytest.warns(UserWarning, match="the test images are the training images"):
        load_data(ImageTrainConfig(train_data=str(tmp_path)))


def test_a_single_class_is_refused_before_training_a_regression(tmp_path):
    from fixup_transformer.training.image import load_data
    from fixup_transformer.training.image_config import ImageTrainConfig

    np.savez(
        tmp_path / "one.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.int64), classes=["cat"]
    )
    config = ImageTrainConfig(train_data=str(tmp_path / "one.npz"), test_data=str(tmp_path / "one.npz"))
    with pytest.warns(UserWarning), pytest.raises(ImageDataError, match=r"one.npz: 1 class\(es\) \['cat'\]"):
        load_data(config)


def test_hub_loader_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Offline.*local .npz"):
        load_hub_cifar10("test", "fixup-transformer-tests/surely-not-cached")


def test_shared_cifar10_files_load(cifar10):
    data = load_images(str(cifar10), "test")
    assert data.images.shape[1:] == (32, 32, 3) and len(data.classes) == 10
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"


def test_random_crop_flip_is_a_shifted_window_and_reproducible():
    images = torch.arange(4 * 3 * 6 * 6, dtype=torch.float32).view(4, 3, 6, 6) + 1
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    again = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again) and out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(4):
        windows = [padded[i, :, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        candidates = windows + [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in candidates)
    assert torch.equal(random_crop_flip(images, torch.Generator(), padding=0, flip=False), images)


def test_random_crop_flip_flips_about_half():
    images = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).expand(1000, 1, 1, 8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=0)
    flipped = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.4 < flipped < 0.6


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    x = torch.randn(16, 3, 4, 4)
    y = torch.arange(16)  # one class per image, so each target row reveals the mixing partner
    mixed, targets = mixup(x, y, 16, alpha=0.7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(targets.sum(1), torch.ones(16))
    lams = set()
    for i in range(16):
        lam = targets[i, i].item()
        partner = i if lam == 1.0 else int(torch.nonzero(targets[i] * (torch.arange(16) != i))[0])
        torch.testing.assert_close(mixed[i], lam * x[i] + (1 - lam) * x[partner])
        if partner != i:
            lams.add(round(lam, 6))
    assert len(lams) == 1 and 0 < lams.pop() < 1  # one lambda per batch
    again, _ = mixup(x, y, 16, alpha=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed)
    plain_x, one_hot = mixup(x, y, 16, alpha=0.0, generator=torch.Generator())
    assert torch.equal(plain_x, x) and torch.equal(one_hot.argmax(1), y)


def test_normalize_uses_channel_statistics():
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(images, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_hidden_or_empty_class_folders_are_not_classes(tmp_path):
    # .ipynb_checkpoints / __MACOSX are skipped; a class folder without images would be a dead output.
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    assert load_image_folder(tmp_path).classes == ["cat", "dog"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match=r"class folder .*empty holds no"):
        load_image_folder(tmp_path)


def test_npz_layout_mistakes_get_advice(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8), dtype=np.uint8)  # channels first
    _write_npz(tmp_path / "chw.npz", x=x)
    with pytest.raises(ImageDataError, match=r"x\.transpose\(0, 2, 3, 1\)"):
        load_npz(tmp_path / "chw.npz")
    _write_npz(tmp_path / "names.npz", y=np.array(["a", "b", "c", "a", "b", "c"]))
    with pytest.raises(ImageDataError, match=r"names\.npz: labels 'y' must be integer class indices"):
        load_npz(tmp_path / "names.npz")


def test_imagenet_layout_val_is_the_test_split_and_a_missing_one_is_named(tmp_path):
    from fixup_transformer.vision.data import split_location

    for part in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / part / name).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / part / name / "0.png")
    assert split_location(str(tmp_path), "test") == str((tmp_path / "val").resolve())
    assert load_images(str(tmp_path), "test").classes == ["cat", "dog"]
    for name in ("cat", "dog"):
        (tmp_path / "val" / name / "0.png").unlink()
        (tmp_path / "val" / name).rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=r"has train/ but no test/ or val/ or validation/"):
        split_location(str(tmp_path), "test")


def test_image_sources_expand_variables_with_defaults_like_the_mt_data_paths(tmp_path, monkeypatch):
    from fixup_transformer.vision.data import split_location

    (tmp_path / "images" / "cat").mkdir(parents=True)
    monkeypatch.delenv("FIXUP_IMAGES", raising=False)
    source = "${FIXUP_IMAGES:-" + str(tmp_path) + "}/images"
    assert split_location(source, "train") == str((tmp_path / "images").resolve())
