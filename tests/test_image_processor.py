"""Image processor, Auto-class registration, save/load in a fresh process, and the HF pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import fixup_transformer.vision as V
from fixup_transformer.vision import CIFAR10_MEAN, CIFAR10_STD

# Tiny per-layer nets: one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small trained-looking CIFAR checkpoint (random non-zero weights, so logits are not all zero)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    config = V.FixupResNetConfig.cifar(8, width_multiplier=0.5)
    model = V.FixupResNetForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    V.FixupResNetImageProcessor.for_config(config).save_pretrained(path)
    return path, model


def test_register_vision_is_idempotent_and_auto_classes_resolve(checkpoint):
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    V.register_vision()
    V.register_vision()
    path, _ = checkpoint
    config = AutoConfig.from_pretrained(path)
    assert type(config) is V.FixupResNetConfig
    assert type(AutoModel.from_config(config)) is V.FixupResNetModel
    assert type(AutoModelForImageClassification.from_config(config)) is V.FixupResNetForImageClassification
    assert "auto_map" not in json.loads((path / "config.json").read_text())


def test_cifar_processor_normalizes_like_the_training_loop():
    processor = V.FixupResNetImageProcessor.cifar()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = processor(Image.fromarray(rgb), return_tensors="pt").pixel_values
    expected = (
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]
    ) / (torch.tensor(CIFAR10_STD)[:, None, None])
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0], expected, atol=1e-5, rtol=0)
    from fixup_transformer.vision.augment import normalize

    torch.testing.assert_close(
        normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None], CIFAR10_MEAN, CIFAR10_STD),
        pixels,
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("family, depth", [("cifar", 8), ("imagenet", 18)])
def test_the_exported_processor_feeds_the_model_what_training_did(family, depth):
    # The trainer normalizes its (here 32 x 48) images as they are; the processor saved with the model must
    # do the same, or the pipeline scores differently from the reported top-1 (the ImageNet preset would
    # resize to 37 and crop to 32).
    from fixup_transformer.training.image import processor_for_training_images
    from fixup_transformer.training.image_config import ImageTrainConfig
    from fixup_transformer.vision.augment import normalize

    model_config = ImageTrainConfig(family=family, depth=depth).model_config(image_size=32)
    processor = processor_for_training_images(model_config, 32, 48)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    pixels = processor(list(rgb), return_tensors="pt").pixel_values
    expected = normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2), processor.image_mean, processor.image_std)
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)


def test_imagenet_processor_resizes_and_center_crops():
    processor = V.FixupResNetImageProcessor.for_config(V.FixupResNetConfig.imagenet(18))
    image = Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8))
    pixels = processor(image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])


def test_processor_save_load_round_trip(tmp_path):
    from transformers import AutoImageProcessor

    processor = V.FixupResNetImageProcessor.imagenet(image_size=160)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is V.FixupResNetImageProcessor
    assert loaded.to_dict() == processor.to_dict()


def test_fresh_process_loads_identical_logits_via_auto_classes(checkpoint, tmp_path):
    path, model = checkpoint
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))
    assert json.loads((path / "config.json").read_text())["model_type"] == "fixup_resnet"
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        import fixup_transformer.vision  # registers the Auto classes
        from transformers import AutoImageProcessor, AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(path)!r}).eval()
        processor = AutoImageProcessor.from_pretrained({str(path)!r})
        images = list(np.load({str(tmp_path / "images.npy")!r}))
        with torch.no_grad():
            logits = model(**processor(images, return_tensors="pt")).logits
        np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
        print(type(model).__name__, type(processor).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FixupResNetForImageClassification FixupResNetImageProcessor" in result.stdout
    processor = V.FixupResNetImageProcessor.cifar()
    with torch.no_grad():
        expected = model(**processor(list(images), return_tensors="pt")).logits
    fresh = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    assert expected.abs().max() > 1e-3  # not the trivial all-zero logits of an untrained Fixup net
    torch.testing.assert_close(fresh, expected, atol=1e-6, rtol=1e-6)


def test_image_classification_pipeline_on_saved_checkpoint(checkpoint):
    from transformers import pipeline

    path, model = checkpoint
    classifier = pipeline("image-classification", model=str(path))
    rgb = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    predictions = classifier(Image.fromarray(rgb), top_k=10)
    assert {p["label"] for p in predictions} == set(V.CIFAR10_CLASSES)
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        probs = model(
            **V.FixupResNetImageProcessor.cifar()(Image.fromarray(rgb), return_tensors="pt")
        ).logits.softmax(-1)
    best = int(probs.argmax())
    assert predictions[0]["label"] == model.config.id2label[best]
    assert predictions[0]["score"] == pytest.approx(float(probs[0, best]), abs=1e-5)
