"""Checkpoints go through transformers' own save/load: safetensors, Auto classes, a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformer_helpers import random_batch, tiny_config, trained_like

from fixup_transformer import FixupTransformerForConditionalGeneration

LOAD_IN_FRESH_PROCESS = """
import sys, torch
import fixup_transformer  # registers the model type; nothing else is imported from it
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
path = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]))  # same kernels' blocking as the parent, so logits are bit-identical
assert AutoConfig.from_pretrained(path).model_type == "fixup_transformer"
model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
inputs = torch.load(path + "/inputs.pt")
with torch.no_grad():
    logits = model(input_ids=inputs["source"], decoder_input_ids=inputs["target"]).logits
torch.save(logits, path + "/reloaded_logits.pt")
base = AutoModel.from_pretrained(path)
print(type(model).__name__, type(base).__name__)
"""


@pytest.mark.parametrize("tie", [True, False])
def test_save_then_auto_load_in_a_fresh_process_gives_identical_logits(tmp_path: Path, tie: bool):
    torch.manual_seed(0)
    model = trained_like(
        FixupTransformerForConditionalGeneration(tiny_config(tie_word_embeddings=tie))
    ).eval()
    source, target = random_batch(2, 7), random_batch(2, 5, seed=1)
    with torch.no_grad():
        logits = model(input_ids=source, decoder_input_ids=target).logits
    model.save_pretrained(tmp_path)
    torch.save({"source": source, "target": target}, tmp_path / "inputs.pt")

    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "fixup_transformer" and config["tie_word_embeddings"] is tie

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(tmp_path), str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FixupTransformerForConditionalGeneration", "FixupTransformerModel"]
    reloaded = torch.load(tmp_path / "reloaded_logits.pt")
    torch.testing.assert_close(reloaded, logits, rtol=0, atol=0)


def test_from_pretrained_does_not_reinitialise_loaded_zero_or_trained_weights(tmp_path: Path):
    torch.manual_seed(0)
    model = trained_like(FixupTransformerForConditionalGeneration(tiny_config(tie_word_embeddings=False)))
    model.save_pretrained(tmp_path)
    reloaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path)
    for (name, original), (_, loaded) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(original, loaded), name
    # Zeros where the init would draw values (and values where it would put zeros) stay as loaded too.
    with torch.no_grad():
        zeroed = [p for n, p in model.named_parameters() if n.endswith(("fc1.weight", "qkv_proj.weight"))]
        for parameter in zeroed:
            parameter.zero_()
    model.save_pretrained(tmp_path)
    reloaded = FixupTransformerForConditionalGeneration.from_pretrained(tmp_path)
    for (name, original), (_, loaded) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(original, loaded), name
    assert zeroed and all(
        not p.any() for n, p in reloaded.named_parameters() if n.endswith(("fc1.weight", "qkv_proj.weight"))
    )


def test_checkpoint_that_does_not_match_the_config_is_a_clear_error(tmp_path: Path, caplog):
    FixupTransformerForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder_ffn_dim"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        FixupTransformerForConditionalGeneration.from_pretrained(tmp_path)
    # transformers' load report (logged just before the error) names each key and both shapes.
    assert "model.encoder.layers.{0, 1}.ffn.fc1.weight" in caplog.text
    assert "ckpt: torch.Size([64, 32]) vs model:torch.Size([128, 32])" in caplog.text


def test_from_pretrained_overrides_are_validated_like_constructor_arguments(tmp_path: Path):
    # transformers sets from_pretrained's keyword overrides after the config's own checks ran.
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="label_smoothing"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, label_smoothing=1.5)
    with pytest.raises(ValueError, match="normalization"):
        AutoConfig.from_pretrained(tmp_path, normalization="post_ln")  # with init="fixup"
    config, unused = AutoConfig.from_pretrained(tmp_path, dropout=0.3, return_unused_kwargs=True)
    assert config.dropout == 0.3 and unused == {}
