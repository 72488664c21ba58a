"""A checkpoint without some Fixup scalars loads them at their init values (bias 0, multiplier init_value)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from transformer_helpers import tiny_config, trained_like

from fixup_transformer.fixup import ScalarBias, ScalarScale
from fixup_transformer.text import FixupTransformerForConditionalGeneration


def test_scalars_missing_from_a_checkpoint_start_at_their_fixup_init_and_the_rest_loads(tmp_path):
    torch.manual_seed(0)
    model = trained_like(
        FixupTransformerForConditionalGeneration(tiny_config())
    )  # every scalar moved off init
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    scalar_modules = {
        name: module for name, module in model.named_modules() if isinstance(module, ScalarBias | ScalarScale)
    }
    dropped = [key for key in state if key.rsplit(".", 1)[0] in scalar_modules]
    assert dropped
    for key in dropped:
        del state[key]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path)
    for name, module in loaded.named_modules():
        if isinstance(module, ScalarBias):
            assert module.bias.item() == 0.0, name
        elif isinstance(module, ScalarScale):
            assert module.weight.item() == module.init_value, name
    loaded_params = dict(loaded.named_parameters())
    for key, tensor in state.items():
        if key in loaded_params:
            torch.testing.assert_close(loaded_params[key], tensor, msg=key)
