"""Atomic checkpoint writes, resume discovery, checkpoint averaging, HF export."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from fixup_transformer.errors import CheckpointError
from fixup_transformer.training import checkpoint as ckpt


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)


def make_accelerator_and_model():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def test_atomic_write_crash_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    ckpt.atomic_write_text(target, "old")

    def crash(*args, **kwargs):
        raise OSError("disk died")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError):
        ckpt.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary leftovers


def test_atomic_writes_give_files_the_mode_of_a_plain_open(tmp_path):
    # mkstemp's 0600 would make results, exports and checkpoints unreadable to the rest of a team.
    old_umask = os.umask(0o022)
    try:
        ckpt.atomic_write_text(tmp_path / "results.json", "{}")
        ckpt.save_state_dict({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    finally:
        os.umask(old_umask)
    for name in ("results.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_crash_mid_checkpoint_leaves_previous_intact(tmp_path, monkeypatch):
    accelerator, model, optimizer = make_accelerator_and_model()
    out = tmp_path / "checkpoints"
    first = ckpt.save_training_checkpoint(accelerator, out, 10, {"epoch": 1}, config_yaml="a: 1\n")
    assert ckpt.is_complete_checkpoint(first) and (first / ckpt.WEIGHTS_FILE).exists()
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    real_save_state = accelerator.save_state

    def crash_after_partial_write(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # weights and optimizer are on disk ...
        raise KeyboardInterrupt("killed")  # ... but the process dies before the checkpoint is complete

    with torch.no_grad():
        model.lin.weight.add_(1.0)
    monkeypatch.setattr(accelerator, "save_state", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_training_checkpoint(accelerator, out, 20, {"epoch": 2})

    assert ckpt.list_checkpoints(out) == [first]  # the partial one is not a checkpoint ...
    assert not (out / "checkpoint-20").exists()  # ... and does not even look like one
    assert ckpt.resolve_resume("auto", tmp_path) == first
    monkeypatch.undo()
    state = ckpt.load_training_checkpoint(accelerator, first)
    assert state == {"epoch": 1, "step": 10}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_keep_last_and_resume_errors(tmp_path):
    accelerator, _, _ = make_accelerator_and_model()
    out = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        ckpt.save_training_checkpoint(accelerator, out, step, {}, keep_last=2)
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(out)] == [3, 4]
    assert ckpt.resolve_resume(str(tmp_path), tmp_path).name == "checkpoint-4"
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "fresh") is None
    with pytest.raises(CheckpointError, match="^checkpoint.resume .*nope: not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path, "checkpoint.resume")


def test_average_checkpoints_math(tmp_path):
    tensors = [
        {
            "w": torch.tensor([1.0, 2.0]),
            "h": torch.tensor([1.0], dtype=torch.float16),
            "i": torch.tensor([7]),
        },
        {
            "w": torch.tensor([3.0, 6.0]),
            "h": torch.tensor([2.0], dtype=torch.float16),
            "i": torch.tensor([7]),
        },
        {
            "w": torch.tensor([5.0, 1.0]),
            "h": torch.tensor([4.0], dtype=torch.float16),
            "i": torch.tensor([7]),
        },
    ]
    paths = []
    for n, state in enumerate(tensors):
        path = tmp_path / f"checkpoint-{n}" / ckpt.WEIGHTS_FILE
        path.parent.mkdir()
        save_file(state, str(path))
        paths.append(path.parent)  # directories are accepted too
    avg = ckpt.average_state_dicts(paths)
    torch.testing.assert_close(avg["w"], torch.tensor([3.0, 3.0]))
    assert avg["h"].dtype == torch.float16 and avg["h"].item() == pytest.approx(7 / 3, abs=1e-3)
    assert avg["i"].item() == 7
    with pytest.raises(ValueError, match="only .safetensors"):
        ckpt.average_state_dicts([tmp_path / "model.bin"])


def test_export_pretrained_is_atomic(tmp_path, monkeypatch):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=16, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, max_position_embeddings=32,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=1,
    )  # fmt: skip
    model = MarianMTModel(config)
    out = ckpt.export_pretrained(model, tmp_path / "best", config_yaml="a: 1\n", extra_json={"step": 5})
    assert (out / "model.safetensors").exists() and (out / ckpt.TRAINING_CONFIG_FILE).read_text() == "a: 1\n"

    def crash(*args, **kwargs):
        raise RuntimeError("crash during export")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(RuntimeError):
        ckpt.export_pretrained(model, tmp_path / "best", extra_json={"step": 6})
    assert '"step": 5' in (out / "export_info.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["best"]
    reloaded = MarianMTModel.from_pretrained(out)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)


class SharedNet(nn.Module):
    """Two modules holding one weight, as the Transformer's shared encoder/decoder embeddings do."""

    def __init__(self):
        super().__init__()
        self.first = nn.Embedding(5, 3)
        self.second = nn.Embedding(5, 3)
        self.second.weight = self.first.weight


def test_shared_weights_save_quietly_and_come_back_shared(tmp_path, caplog):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(SharedNet(), torch.optim.SGD(SharedNet().parameters(), lr=0.1))
    saved = model.first.weight.detach().clone()
    with caplog.at_level("WARNING"):
        path = ckpt.save_training_checkpoint(accelerator, tmp_path / "checkpoints", 1, {})
    assert "Removed shared tensor" not in caplog.text
    # Logging stays as it was for everything else.
    assert not logging.getLogger("accelerate.utils.other").filters
    with torch.no_grad():
        model.first.weight.zero_()
    ckpt.load_training_checkpoint(accelerator, path)
    assert torch.equal(model.first.weight, saved) and model.second.weight is model.first.weight
