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


def test_a_crash_while_replacing_an_export_keeps_the_previous_copy(tmp_path, monkeypatch):
    final = tmp_path / "best"
    with ckpt.atomic_directory(final) as tmp:
        (tmp / "weights").write_text("old")
    real_replace, calls = os.replace, []

    def dies_before_the_new_copy_lands(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old copy is out of the way, the new one not yet in place
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_before_the_new_copy_lands)
    with pytest.raises(KeyboardInterrupt), ckpt.atomic_directory(final) as tmp:
        (tmp / "weights").write_text("new")
    monkeypatch.undo()
    assert not final.exists() and (tmp_path / ".old-best" / "weights").read_text() == "old"
    ckpt.recover_dir(final)  # what the next export (export_pretrained) does first
    assert (final / "weights").read_text() == "old" and not (tmp_path / ".old-best").exists()
    with ckpt.atomic_directory(final) as tmp:  # and a replacement that completes replaces it
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _corrupt_one_member(archive, member_prefix="data/"):
    """Flip a byte inside the stored payload of a torch zip archive's tensor data (its CRC no longer holds)."""
    import zipfile

    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if member_prefix in i.filename and i.file_size > 0)
    raw = bytearray(archive.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start] ^= 0xFF
    archive.write_bytes(bytes(raw))


def test_damaged_checkpoints_are_named_and_skipped_never_unpickled(tmp_path):
    accelerator, model, optimizer = make_accelerator_and_model()
    out = tmp_path / "checkpoints"
    model.lin(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # AdamW state exists: optimizer.bin holds tensors
    good = ckpt.save_training_checkpoint(accelerator, out, 1, {})
    assert ckpt.checkpoint_problem(good) is None

    crc = ckpt.save_training_checkpoint(accelerator, out, 2, {})
    _corrupt_one_member(crc / "optimizer.bin")
    assert ckpt.checkpoint_problem(crc) == f"optimizer.bin is corrupt (bad CRC in {_bad_member(crc)})"

    cut = ckpt.save_training_checkpoint(accelerator, out, 3, {})
    rng = next(cut.glob("random_states_*.pkl"))
    rng.write_bytes(rng.read_bytes()[: rng.stat().st_size // 2])
    assert ckpt.checkpoint_problem(cut).startswith(f"unreadable {rng.name}")

    nan = ckpt.save_training_checkpoint(accelerator, out, 4, {})
    weights = load_file_dict(nan / ckpt.WEIGHTS_FILE)
    weights["lin.weight"][0, 0] = float("nan")
    save_file(weights, str(nan / ckpt.WEIGHTS_FILE))
    assert (
        ckpt.checkpoint_problem(nan)
        == f"{ckpt.WEIGHTS_FILE} has non-finite values in 1 tensors (e.g. lin.weight)"
    )

    logged = []
    path, skipped = ckpt.find_resume_checkpoint("auto", tmp_path, log=logged.append)
    assert path == good and [p.name for p, _ in skipped] == ["checkpoint-4", "checkpoint-3", "checkpoint-2"]
    assert all(p.is_dir() for p in (crc, cut, nan))  # skipped, never deleted
    with pytest.raises(
        CheckpointError, match=r"cannot resume from .*checkpoint-2: optimizer\.bin is corrupt"
    ):
        ckpt.find_resume_checkpoint(str(crc), tmp_path)


def _bad_member(checkpoint):
    import zipfile

    with zipfile.ZipFile(checkpoint / "optimizer.bin") as z:
        return z.testzip()


def load_file_dict(path):
    from safetensors.torch import load_file

    return dict(load_file(str(path)))


def test_a_checkpoint_that_does_not_fit_the_model_names_itself(tmp_path):
    accelerator, model, optimizer = make_accelerator_and_model()
    path = ckpt.save_training_checkpoint(accelerator, tmp_path / "checkpoints", 5, {})
    weights = load_file_dict(path / ckpt.WEIGHTS_FILE)
    weights["lin.weight"] = torch.zeros(3, 4)  # another model's shape
    save_file(weights, str(path / ckpt.WEIGHTS_FILE))
    with pytest.raises(
        CheckpointError,
        match=rf"^cannot restore checkpoint {path}: RuntimeError: Error\(s\) in loading state_dict for Net: size mismatch for lin\.weight.*\]\)\.$",
    ):
        ckpt.load_training_checkpoint(accelerator, path)
