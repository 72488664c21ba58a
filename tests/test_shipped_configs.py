"""Every YAML in configs/ loads and validates with the config class of the script it is for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fixup_transformer.training.config import load_config
from fixup_transformer.training.image_config import ImageTrainConfig
from fixup_transformer.training.mt_config import MTConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs_for_both_scripts():
    kinds = {"family" in yaml.safe_load(path.read_text()) for path in CONFIGS}
    assert kinds == {True, False}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    # Image recipes name a ResNet family; translation recipes have a model section.
    cls = ImageTrainConfig if "family" in yaml.safe_load(path.read_text()) else MTConfig
    cfg = load_config(cls, path)
    assert cfg.output_dir.startswith("runs/"), cfg.output_dir
