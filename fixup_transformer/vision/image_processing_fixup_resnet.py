"""Image processor of the Fixup ResNets: resize / center-crop / rescale / normalize, PIL + NumPy backend.

Built on transformers' ``PilBackend`` (the v5 CPU backend) rather than the torchvision backend so that it
works without torchvision. The two presets reproduce the authors' evaluation transforms: CIFAR images are
used at 32x32 with CIFAR-10 channel statistics; ImageNet images are resized (short side 256), center-cropped
to 224 and normalized with the ImageNet statistics.
"""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

# CIFAR-10 channel mean and "std" in [0, 1] units, as the Fixup authors' cifar_train.py normalizes. Their std
# is the widespread (0.2023, 0.1994, 0.2010), not the training set's per-pixel std (0.2470, 0.2435, 0.2616):
# inputs come out ~1.2x larger. Kept for the paper's recipe; a saved processor carries its own values.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class FixupResNetImageProcessor(PilBackend):
    """Defaults are the CIFAR preset; use :meth:`imagenet` or :meth:`for_config` for the other family."""

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = list(CIFAR10_MEAN)
    image_std = list(CIFAR10_STD)
    size = {"height": 32, "width": 32}
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def cifar(cls, image_size: int = 32, **kwargs) -> FixupResNetImageProcessor:
        """Resize to ``image_size`` square (a no-op for CIFAR images), CIFAR-10 mean/std."""
        kwargs.setdefault("size", {"height": image_size, "width": image_size})
        return cls(**kwargs)

    @classmethod
    def imagenet(cls, image_size: int = 224, **kwargs) -> FixupResNetImageProcessor:
        """Short side to ``image_size * 256 / 224``, center crop ``image_size``, ImageNet mean/std."""
        kwargs.setdefault("size", {"shortest_edge": round(image_size * 256 / 224)})
        kwargs.setdefault("crop_size", {"height": image_size, "width": image_size})
        kwargs.setdefault("do_center_crop", True)
        kwargs.setdefault("image_mean", list(IMAGENET_DEFAULT_MEAN))
        kwargs.setdefault("image_std", list(IMAGENET_DEFAULT_STD))
        return cls(**kwargs)

    @classmethod
    def for_config(cls, config, **kwargs) -> FixupResNetImageProcessor:
        """The preset matching a :class:`FixupResNetConfig` (family and image size)."""
        preset = cls.cifar if config.family == "cifar" else cls.imagenet
        return preset(image_size=config.image_size, **kwargs)


__all__ = ["FixupResNetImageProcessor", "CIFAR10_MEAN", "CIFAR10_STD"]
