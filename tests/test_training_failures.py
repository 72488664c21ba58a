"""Training runs that never lie (issue 10): faults, reruns and bad inputs on the real data.

Each test reproduces one failure mode with ``configs/tiny_test.yaml`` (300 Multi30k pairs, a d=32 model,
seconds per run): a diverging run must not save or name a NaN checkpoint; rerunning a finished command
must do nothing; a corrupt newest checkpoint is skipped, named, and not deleted; a second run on the same
output_dir is refused (and a killed one's lock is taken over); resuming with changed settings applies what
may change and refuses the rest; the scripts print one clear line for the project's own errors; image
data the ResNet cannot use is refused naming the file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from test_train_mt_e2e import OFFLINE_ENV, REPO, TINY, load_script, tiny_config, train_losses
from transformer_helpers import poison_training_loss

from fixup_transformer.errors import (
    CheckpointError,
    ConfigError,
    ImageDataError,
    ResumeMismatchError,
    RunLockedError,
)
from fixup_transformer.training import mt, mt_data
from fixup_transformer.training.checkpoint import checkpoint_problem, list_checkpoints
from fixup_transformer.training.metrics import read_metrics
from fixup_transformer.training.runlock import LOCK_FILE, RunLock
from fixup_transformer.training.schedules import schedule_multiplier


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate fixes mixed precision once per process; reset it around a test that changes it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def no_test(**overrides):
    """Overrides for runs that do not need the final test translation (saves seconds)."""
    return {"eval__test_split": "none", **overrides}


# ----------------------------------------------------------------------------------------------------------
# 1. A diverging step is never applied, never saved, and the named "last good" checkpoint is finite


@pytest.mark.slow
def test_diverging_run_saves_no_nan_checkpoint_and_names_a_finite_one(multi30k, tmp_path):
    """The issue's recipe: lr 1e3 gives a finite loss with an inf/NaN gradient norm a few updates in."""
    run = tmp_path / "run"
    cfg = tiny_config(
        multi30k,
        run,
        optim__lr=1e3,
        schedule__warmup_updates=2000,
        train__max_updates=60,
        checkpoint__save_interval_updates=1,
        checkpoint__keep_last=0,
        **no_test(),
    )
    with pytest.raises(mt.NonFiniteLossError, match="non-finite gradient norm") as first:
        mt.train(cfg)
    saved = list_checkpoints(run / "checkpoints")
    assert saved, "the run should have saved checkpoints before diverging"
    assert all(checkpoint_problem(p) is None for p in saved)  # every checkpoint on disk is finite, usable
    last = saved[-1]
    assert f"Last good checkpoint: {last}." in str(first.value)
    error = read_metrics(run / "metrics.jsonl")[-1]
    assert error["kind"] == "error" and error["step"] == int(last.name.split("-")[1]) + 1

    # A rerun resumes from that finite checkpoint and stops at the same update, saving nothing new.
    with pytest.raises(mt.NonFiniteLossError) as again:
        mt.train(cfg)
    assert str(again.value) == str(first.value)
    assert list_checkpoints(run / "checkpoints") == saved


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_finite_loss_with_nan_gradient_is_not_applied(multi30k, tmp_path, monkeypatch, precision):
    # update 3: the value is unchanged (+0) but d sqrt(0 * x) / dx is NaN
    poison_training_loss(monkeypatch, lambda loss, n: loss + (loss * 0).sqrt() if n == 3 else loss)
    run = tmp_path / "run"
    cfg = tiny_config(
        multi30k, run, train__mixed_precision=precision, checkpoint__save_interval_updates=2, **no_test()
    )
    trainers = []
    real_init = mt.MTTrainer.__init__

    def keep(self, *args, **kwargs):
        trainers.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(mt.MTTrainer, "__init__", keep)
    with pytest.raises(
        mt.NonFiniteLossError, match=r"non-finite gradient norm \(nan.* at update 3 .*checkpoint-2"
    ):
        mt.train(cfg)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-2"]
    assert max(train_losses(run)) == 2  # update 3 was neither applied nor logged as a train record
    # ... and the weights the run stopped with are those of update 2, the ones the message points to.
    from safetensors.torch import load_file

    saved = load_file(str(run / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    live = trainers[0].accelerator.unwrap_model(trainers[0].model).state_dict()
    assert saved and all(torch.equal(live[name], saved[name]) for name in saved)


# ----------------------------------------------------------------------------------------------------------
# 2. Rerunning a finished command does nothing; one killed in its final export only finishes the export


def _snapshot(run: Path) -> dict[str, bytes | int]:
    files = [
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "last/model.safetensors",
        "best/model.safetensors",
    ]
    snap: dict[str, bytes | int] = {name: (run / name).read_bytes() for name in files}
    snap.update({f"mtime {name}": (run / name).stat().st_mtime_ns for name in files})
    snap["checkpoints"] = len(list_checkpoints(run / "checkpoints"))
    return snap


@pytest.mark.slow
def test_rerunning_a_finished_run_does_nothing(multi30k, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(multi30k, run, data__test_limit=4)
    real_export = mt.export_pretrained

    def killed_in_last_export(model, output_dir, *args, **kwargs):
        if Path(output_dir).name == "last":
            raise KeyboardInterrupt("killed during the final export")
        return real_export(model, output_dir, *args, **kwargs)

    monkeypatch.setattr(mt, "export_pretrained", killed_in_last_export)
    with pytest.raises(KeyboardInterrupt):
        mt.train(cfg)
    monkeypatch.setattr(mt, "export_pretrained", real_export)
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 9)) and not (run / "results.json").exists()

    summary = mt.train(cfg)  # only the end-of-run steps: no update is trained again
    assert "budget (max_updates) already spent at update 8" in capsys.readouterr().out
    assert train_losses(run) == losses
    assert summary["step"] == 8 and json.loads((run / "last" / "export_info.json").read_text())["step"] == 8

    before = _snapshot(run)
    assert mt.train(cfg) == summary  # the same command once more: complete, nothing is touched
    assert "is already complete (update 8); nothing to do" in capsys.readouterr().out
    assert _snapshot(run) == before

    # Changed eval settings on a complete run: nothing is re-tested, so nothing claims to be applied and
    # config.yaml keeps the settings the results were made with.
    changed = tiny_config(multi30k, run, data__test_limit=4, eval__beam=4)
    assert mt.train(changed) == summary
    out = capsys.readouterr().out
    assert "not applied (the run is complete" in out and "eval.beam 2 -> 4" in out and "applied:" not in out
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------------------------------------
# 3. A corrupt newest checkpoint is named and skipped (never deleted); resume continues exactly


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped_and_resume_stays_exact(multi30k, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(multi30k, run, **no_test())
    mt.train(cfg)
    reference = train_losses(run)
    bad = run / "checkpoints" / "checkpoint-8"
    weights = bad / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # as a full disk or a killed copy would leave it

    with pytest.raises(CheckpointError, match=r"checkpoint-8: unreadable model\.safetensors"):
        mt.train(tiny_config(multi30k, run, checkpoint__resume=str(bad), **no_test()))  # named explicitly

    capsys.readouterr()
    mt.train(cfg)  # auto: falls back to checkpoint-4 and trains 5..8 again
    out = capsys.readouterr().out
    assert f"skipping checkpoint {bad}: unreadable model.safetensors" in out
    assert "resuming from checkpoint-4, the newest usable checkpoint" in out
    assert train_losses(run) == reference  # bit-identical to the uninterrupted run
    assert checkpoint_problem(bad) is None  # re-saved when training reached update 8 again


# ----------------------------------------------------------------------------------------------------------
# 4. One run per output_dir


def test_run_lock_refuses_a_second_holder_and_reports_a_stale_one(tmp_path):
    (tmp_path / LOCK_FILE).write_text("pid 999999 on elsewhere since yesterday\n")  # left by a kill -9
    with RunLock(tmp_path) as first:
        assert first.stale_holder == "pid 999999 on elsewhere since yesterday"
        with pytest.raises(
            RunLockedError, match=rf"{re.escape(str(tmp_path))} is in use by another run \(pid {os.getpid()} "
        ):
            RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean exit leaves no stale trace
    with RunLock(tmp_path) as again:
        assert again.stale_holder is None


def test_image_training_refuses_a_locked_output_dir(tmp_path):
    from fixup_transformer.training.config import load_config
    from fixup_transformer.training.image import train as train_image
    from fixup_transformer.training.image_config import ImageTrainConfig

    cfg = load_config(ImageTrainConfig, None, {"output_dir": str(tmp_path), "depth": "8", "epochs": "1"})
    with RunLock(tmp_path), pytest.raises(RunLockedError, match="is in use by another run"):
        train_image(cfg)  # refused before any data is read


def _train_cmd(multi30k: Path, run: Path, *overrides: str) -> list[str]:
    script = str(REPO / "scripts" / "train_mt.py")
    return [sys.executable, script, "--config", str(TINY), "--data.data_dir", str(multi30k), "--output_dir", str(run), *overrides]  # fmt: skip


@pytest.mark.slow
def test_second_run_on_the_same_output_dir_is_refused_until_the_first_dies(multi30k, tmp_path, capsys):
    run = tmp_path / "run"
    # A long first run (it saves nothing until the end) ...
    first = subprocess.Popen(
        _train_cmd(multi30k, run, "--train.max_updates", "100000", "--checkpoint.save_interval_updates", "0"),
        env=OFFLINE_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180  # a generous bound on start-up, not a timing assertion
        while f"pid {first.pid} " not in (
            (run / LOCK_FILE).read_text() if (run / LOCK_FILE).exists() else ""
        ):
            assert first.poll() is None, "the first run exited early"
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.5)
        second = subprocess.run(
            _train_cmd(multi30k, run, "--train.max_updates", "4"),
            env=OFFLINE_ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"error: output_dir {run} is in use by another run (pid {first.pid} " in second.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # ... killed: its lock dies with it
        first.wait()

    mt.train(tiny_config(multi30k, run, train__max_updates=4, **no_test()))  # in-process: saves a start-up
    assert f"stale lock in {run} taken over: its holder (pid {first.pid} " in capsys.readouterr().out
    # The killed run saved no checkpoint, so this one started afresh: its records alone, once each.
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    assert "max_updates: 4" in (run / "config.yaml").read_text()


# ----------------------------------------------------------------------------------------------------------
# 5. Saved settings = settings used


@pytest.mark.slow
def test_resume_applies_a_new_lr_schedule_and_refuses_shape_changes(multi30k, tmp_path, capsys):
    run = tmp_path / "run"
    mt.train(tiny_config(multi30k, run, train__max_updates=4, **no_test()))
    capsys.readouterr()

    with pytest.raises(ResumeMismatchError) as mismatch:  # refused before any weights are loaded
        mt.train(tiny_config(multi30k, run, model__d_model=64, data__vocab_size=100, **no_test()))
    assert "checkpoint-4" in str(mismatch.value)
    assert "data.vocab_size 200 -> 100" in str(mismatch.value) and "model.d_model 32 -> 64" in str(
        mismatch.value
    )

    cfg = tiny_config(multi30k, run, optim__lr=1e-3, train__max_updates=6, **no_test())
    mt.train(cfg)
    assert "applied: optim.lr 0.003 -> 0.001, train.max_updates 4 -> 6" in capsys.readouterr().out
    records = read_metrics(run / "metrics.jsonl")
    resume = next(r for r in records if r["kind"] == "resume")
    assert resume["step"] == 4 and resume["changed"]["optim.lr"] == [0.003, 0.001]
    multiplier = schedule_multiplier(cfg.schedule, 1e-3)
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}
    assert [lrs[5], lrs[6]] == pytest.approx([1e-3 * multiplier(4), 1e-3 * multiplier(5)])  # the new schedule
    assert "lr: 0.001" in (run / "config.yaml").read_text()
    assert "lr: 0.001" in (run / "checkpoints" / "checkpoint-6" / "training_config.yaml").read_text()


def test_other_training_data_under_the_same_settings_is_not_given_the_old_tokenizer(
    multi30k, tmp_path, capsys
):
    # What the data *is* counts, not where data_dir points: a fingerprint of the cleaned pairs is recorded.
    import shutil

    other = tmp_path / "other"
    shutil.copytree(multi30k, other)
    for lang in ("de", "en"):  # the same files with their first 300 pairs dropped
        lines = gzip.decompress((multi30k / f"train.{lang}.gz").read_bytes()).split(b"\n")
        (other / f"train.{lang}.gz").write_bytes(gzip.compress(b"\n".join(lines[300:])))
    run, accelerator = tmp_path / "run", Accelerator(cpu=True)
    mt_data.prepare_data(tiny_config(multi30k, run), accelerator)
    with pytest.raises(ResumeMismatchError, match="the training pairs differ"):
        mt_data.prepare_data(tiny_config(other, run), accelerator, resuming=True)
    capsys.readouterr()
    mt_data.prepare_data(tiny_config(other, run), accelerator)  # a fresh run retrains
    assert "data.train_fingerprint" in capsys.readouterr().out


def test_resuming_with_another_number_of_processes_is_refused(multi30k, tmp_path):
    # batches_done counts one process's share of the epoch: another count would repeat or skip batches.
    run = tmp_path / "run"
    mt.train(tiny_config(multi30k, run, train__max_updates=4, **no_test()))
    state_file = run / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["num_processes"] == 1
    state_file.write_text(json.dumps({**state, "num_processes": 2}))
    with pytest.raises(ResumeMismatchError, match=r"saved by 2 process\(es\), this run has 1"):
        mt.train(tiny_config(multi30k, run, train__max_updates=6, **no_test()))


def test_literal_special_tokens_in_a_corpus_are_reported(capsys):
    mt_data.warn_about_special_token_text([("Ein </s> Hund", "A dog"), ("Zwei", "Two")], print)
    assert "1 sentence pair(s) contain a literal <pad>, </s>, <unk>" in capsys.readouterr().out


def test_a_tokenizer_is_reused_only_if_built_from_the_same_data_settings(multi30k, tmp_path, capsys):
    run = tmp_path / "run"
    accelerator = Accelerator(cpu=True)
    first = mt_data.prepare_data(tiny_config(multi30k, run), accelerator)  # a run that failed after this
    assert len(first.tokenizer) == 200
    settings = json.loads((run / "tokenizer" / mt_data.TOKENIZER_SETTINGS_FILE).read_text())
    assert settings["data.vocab_size"] == 200

    smaller = tiny_config(multi30k, run, data__vocab_size=100)
    with pytest.raises(ResumeMismatchError, match=r"data.vocab_size 200 -> 100"):
        mt_data.prepare_data(smaller, accelerator, resuming=True)  # a resumed run must not get another one
    capsys.readouterr()
    assert len(mt_data.prepare_data(smaller, accelerator).tokenizer) == 100  # a fresh run retrains
    assert (
        "other data settings (data.vocab_size 200 -> 100); training a new tokenizer"
        in capsys.readouterr().out
    )


# ----------------------------------------------------------------------------------------------------------
# 6. The scripts print one clear line for the project's own errors (exit code 2 for usage errors)


def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-3\ntrain:\n  max_updates: 4\n")
    assert load_script("train_mt").main(["--config", str(bad)]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"config error: {bad}: not valid YAML: ")
    assert "line 3, column" in lines[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--data.max_tokens", "-5"], "data.max_tokens must be > 0, got -5"),
        (["--data.vocab_size", "0"], "data.vocab_size must be >= 4, got 0"),
        (["--optim.lr", "-1"], "optim.lr must be > 0, got -1.0"),
        (["--data.data_dir", "{empty}"], "corpus file not found"),
        (["--data.vocab_size", "5"], "data.vocab_size=5: SentencePiece cannot build this vocabulary"),
        (["--data.max_tokens", "3"], "no training batches with data.max_tokens=3"),
        (["--model.init_std", "-1"], "model: `init_std` must be > 0, got -1.0"),
        (["--train.trackers", "[tensorbord]"], "train.trackers: unknown tracker 'tensorbord'"),
        (
            ["--schedule.name", "cosine", "--schedule.warmup_updates", "10"],
            "must exceed schedule.warmup_updates",
        ),
        (["--checkpoint.average_last", "9"], "checkpoint.average_last=9 needs as many kept checkpoints"),
        (["--data.max_ratio", "0.9"], "data.max_ratio must be >= 1, got 0.9"),
        (["--data.tgt_lang", "de"], "data.tgt_lang must be different from data.src_lang"),
        (["--data.max_len", "1"], "no training pairs left after cleaning"),
        (
            ["--model.max_position_embeddings", "8"],
            "model.max_position_embeddings=8 is shorter than validation pair",
        ),
    ],
)
def test_train_script_user_errors_are_one_line_exit_2(multi30k, tmp_path, capfd, overrides, message):
    overrides = [o.replace("{empty}", str(tmp_path)) for o in overrides]
    argv = ["--config", str(TINY), "--data.data_dir", str(multi30k), "--output_dir", str(tmp_path / "run")]
    assert load_script("train_mt").main([*argv, *overrides]) == 2
    errors = [
        line for line in capfd.readouterr().err.splitlines() if line.startswith(("error", "config error"))
    ]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "run" / LOCK_FILE).exists() or (tmp_path / "run" / LOCK_FILE).read_text() == ""


def test_evaluate_script_names_a_missing_model_dir_or_tokenizer(tmp_path, capsys):
    evaluate = load_script("evaluate_mt").main
    assert evaluate(["--model", str(tmp_path / "nope"), "--cpu"]) == 2
    assert capsys.readouterr().err.strip() == f"error: model dir not found: {tmp_path / 'nope'}"
    (tmp_path / "config.json").write_text("{}")
    assert evaluate(["--model", str(tmp_path), "--cpu"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: no tokenizer in {tmp_path} ")
    (tmp_path / "tokenizer.json").write_text("{}")  # a model dir without training_config.yaml
    assert evaluate(["--model", str(tmp_path), "--data-dir", str(tmp_path), "--cpu"]) == 2
    assert "source/target languages unknown" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# 7. Image data the ResNet cannot use is refused, naming the file


def test_one_channel_images_and_bad_labels_are_refused_naming_the_file(cifar10, tmp_path, capsys):
    with np.load(cifar10 / "test_shared.npz") as real:
        x, y, classes = real["x"][:64], real["y"][:64], real["classes"]
    gray = tmp_path / "gray.npz"
    np.savez(gray, x=x.mean(axis=-1, keepdims=True).astype(np.uint8), y=y, classes=classes)  # 32x32x1
    from fixup_transformer.errors import run_script
    from fixup_transformer.training.image import main as train_image
    from fixup_transformer.vision.data import load_npz

    with pytest.raises(ImageDataError, match=rf"{re.escape(str(gray))}: images have 1 channel\(s\)"):
        load_npz(gray)
    argv = ["--train_data", str(gray), "--depth", "8", "--epochs", "1", "--output_dir", str(tmp_path / "run")]
    assert run_script(train_image, argv) == 2  # refused before training, not trained as 3 channels
    assert f"error: {gray}: images have 1 channel(s)" in capsys.readouterr().err

    labels = tmp_path / "labels.npz"
    y = y.copy()
    y[5] = len(classes)
    np.savez(labels, x=x, y=y, classes=classes)
    with pytest.raises(
        ImageDataError, match=rf"{re.escape(str(labels))}: labels must lie in \[0, 9\].*got 10 at index 5"
    ):
        load_npz(labels)


def test_the_position_check_ignores_pairs_the_batching_drops(multi30k, tmp_path):
    # A pair over data.max_tokens never reaches the model (the sampler drops it), so it cannot need positions.
    from types import SimpleNamespace

    cfg = tiny_config(multi30k, tmp_path, model__max_position_embeddings=64)
    lengths = lambda *n: SimpleNamespace(num_tokens=np.array(n))  # noqa: E731
    mt.check_lengths_fit_positions(SimpleNamespace(train=lengths(10, 3000), valid=lengths(20)), cfg)
    with pytest.raises(
        ConfigError, match="max_position_embeddings=64 is shorter than the longest training pair"
    ):
        mt.check_lengths_fit_positions(SimpleNamespace(train=lengths(10, 300), valid=lengths(20)), cfg)
    # Validation is never filtered: the error names the line of the pair that does not fit.
    with pytest.raises(ConfigError, match=r"validation pair 2 \(line 2 of the validation files: 70 pieces"):
        mt.check_lengths_fit_positions(SimpleNamespace(train=lengths(10), valid=lengths(20, 70, 30)), cfg)
    # The first pair too long, not the longest: a valid_limit below the longest would not help.
    with pytest.raises(ConfigError, match=r"pair 2 .*70 pieces.*longest has 90.*valid_limit below 2 "):
        mt.check_lengths_fit_positions(SimpleNamespace(train=lengths(10), valid=lengths(20, 70, 90)), cfg)


def test_an_image_warmup_as_long_as_the_run_is_a_config_error(cifar10, tmp_path, capsys):
    from fixup_transformer.errors import run_script
    from fixup_transformer.training.image import main as train_image

    argv = [
        "--train_data", str(cifar10), "--depth", "8", "--train_samples", "256",
        "--test_samples", "64", "--batch_size", "64", "--epochs", "1", "--warmup_epochs", "0.9",
        "--schedule", "cosine", "--num_threads", "1", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert run_script(train_image, argv) == 2
    assert "warmup_epochs 0.9 is 4 updates, as long as the whole run (4)" in capsys.readouterr().err


def test_resuming_an_image_run_on_changed_images_is_refused(cifar10, tmp_path, capsys):
    # The settings can be equal while the files under train_data changed: the epoch's permutation and the
    # batch position would then index other images.
    from fixup_transformer.errors import run_script
    from fixup_transformer.training.image import main as train_image

    with np.load(cifar10 / "test_shared.npz") as real:
        x, y, classes = real["x"][:128], real["y"][:128], real["classes"]
    data = tmp_path / "train.npz"
    np.savez(data, x=x, y=y, classes=classes)
    argv = [
        "--train_data", str(data), "--test_data", str(data), "--depth", "8", "--width_multiplier", "0.25",
        "--batch_size", "32", "--epochs", "1", "--num_threads", "1", "--progress_bar", "false",
        "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert run_script(train_image, [*argv, "--stop_after_steps", "2"]) == 0
    x = x.copy()
    x[0, 0, 0, 0] ^= 1
    np.savez(data, x=x, y=y, classes=classes)
    capsys.readouterr()
    assert run_script(train_image, [*argv, "--resume"]) == 2
    assert "the training images differ from the ones it was trained on" in capsys.readouterr().err


def test_a_multi_process_launch_that_accelerate_ran_as_single_processes_is_refused(monkeypatch):
    # Without GPUs and without cpu=True, `accelerate launch --num_processes 2` starts two independent
    # one-process runs that would race for the output folder.
    from fixup_transformer.training.process import check_process_count

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"one of 2 processes.*set up 1: .*pass --train.cpu true"):
        check_process_count(1, "--train.cpu true")
    check_process_count(2, "--train.cpu true")
    monkeypatch.delenv("WORLD_SIZE")
    check_process_count(1, "--cpu true")


def test_both_trainers_check_the_process_count_before_taking_the_output_folder(monkeypatch, tmp_path):
    import accelerate

    from fixup_transformer.training import mt
    from fixup_transformer.training.image import ImageTrainer
    from fixup_transformer.training.image_config import ImageTrainConfig

    class SingleProcessAccelerator:  # what Accelerate sets up without GPUs and without cpu=True
        num_processes = 1

        def __init__(self, **kwargs):
            pass

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(mt, "Accelerator", SingleProcessAccelerator)
    monkeypatch.setattr(accelerate, "Accelerator", SingleProcessAccelerator)
    with pytest.raises(ConfigError, match="pass --train.cpu true"):
        mt.build_accelerator(tiny_config(tmp_path, tmp_path / "mt", train__trackers=[]))
    with pytest.raises(ConfigError, match="pass --cpu true"):
        ImageTrainer(ImageTrainConfig(output_dir=str(tmp_path / "image")))
    assert not (tmp_path / "image").exists()  # refused before the run lock is taken


def test_the_mt_process_group_waits_as_long_as_the_config_says(monkeypatch, tmp_path):
    # The first process trains SentencePiece while the others wait in a barrier: Accelerate's default NCCL
    # timeout (10 minutes) would kill a large-corpus run before its first update.
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    from fixup_transformer.training import mt

    seen = {}

    class RecordingAccelerator:
        num_processes = 1

        def __init__(self, **kwargs):
            seen.update(kwargs)

        def print(self, *args):
            pass

    monkeypatch.setattr(mt, "Accelerator", RecordingAccelerator)
    mt.build_accelerator(
        tiny_config(tmp_path, tmp_path / "mt", train__trackers=[], train__ddp_timeout_minutes=90)
    )
    (handler,) = [h for h in seen["kwargs_handlers"] if isinstance(h, InitProcessGroupKwargs)]
    assert handler.timeout == timedelta(minutes=90)
    with pytest.raises(ConfigError, match="train.ddp_timeout_minutes"):
        tiny_config(tmp_path, tmp_path / "mt", train__ddp_timeout_minutes=0)


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_fp16_where_accelerate_cannot_scale_it_is_a_config_error(tmp_path):
    # Accelerate gives a CPU no fp16 autocast and no GradScaler: the run would be fp32 under an fp16 label.
    from fixup_transformer.training import mt

    cfg = tiny_config(tmp_path, tmp_path / "mt", train__trackers=[], train__mixed_precision="fp16")
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: fp16 .* silently be fp32"):
        mt.build_accelerator(cfg)


def test_the_time_budget_is_decided_and_recorded_on_the_slowest_clock():
    # Several processes: the verdict and the saved clock are both the max over processes, so a run stopped
    # by max_minutes is recorded as spent (the saving main process starts its clock last).
    from types import SimpleNamespace

    from fixup_transformer.training.state import out_of_time

    class TwoProcesses:
        num_processes, device = 2, torch.device("cpu")

        def __init__(self, other_clock: float) -> None:
            self.other_clock, self.reductions = other_clock, 0

        def reduce(self, tensor, reduction):
            assert reduction == "max"
            self.reductions += 1
            return torch.maximum(tensor, torch.full_like(tensor, self.other_clock))

    state, accelerator = SimpleNamespace(train_seconds=170.0), TwoProcesses(other_clock=181.0)
    assert not out_of_time(accelerator, state, 3.0, agree=False)  # between log boundaries: no host read
    assert accelerator.reductions == 0 and state.train_seconds == 170.0
    assert out_of_time(accelerator, state, 3.0)  # the other process is past 180 s
    assert state.train_seconds == 181.0  # what the checkpoint records: a rerun finds the budget spent
    state = SimpleNamespace(train_seconds=170.0)
    assert not out_of_time(TwoProcesses(other_clock=120.0), state, 3.0) and state.train_seconds == 170.0


def test_a_last_export_redone_after_a_kill_keeps_its_validation_scores(multi30k, tmp_path, monkeypatch):
    # The final update's validation result lives in the checkpoint: an export killed and redone on resume
    # (no new validation, the weights are the same) still carries the scores in export_info and the card.
    run = tmp_path / "run"
    real_export = mt.export_pretrained

    def killed_at_last(model, output_dir, *args, **kwargs):
        if Path(output_dir).name == "last":
            raise KeyboardInterrupt
        return real_export(model, output_dir, *args, **kwargs)

    monkeypatch.setattr(mt, "export_pretrained", killed_at_last)
    with pytest.raises(KeyboardInterrupt):
        mt.train(tiny_config(multi30k, run, eval__test_split="none"))
    monkeypatch.setattr(mt, "export_pretrained", real_export)
    mt.train(tiny_config(multi30k, run, eval__test_split="none", checkpoint__resume="auto"))
    info = json.loads((run / "last" / "export_info.json").read_text())
    assert info["step"] == 8 and "valid_loss" in info and "valid_bleu" in info
