"""Image training: SGD on real CIFAR-10 lowers the loss; configs; train_image.py end to end with exact resume."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from process_helpers import run_process_group, train_image, two_cpu_processes
from safetensors.torch import load_file

import fixup_transformer.vision as V
from fixup_transformer.training.config import ConfigError, load_config
from fixup_transformer.training.image_config import ImageTrainConfig
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.vision.augment import normalize
from fixup_transformer.vision.data import load_images

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "cifar10_resnet20_cpu.yaml"


# Tiny per-layer nets: one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_sgd_steps_on_real_cifar10_reduce_the_loss(cifar10):
    data = load_images(str(cifar10), "test").subset(128)
    images, labels = data.tensors()
    x = normalize(images, V.CIFAR10_MEAN, V.CIFAR10_STD)
    torch.manual_seed(0)
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8))
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["scalars"]["lr"] == pytest.approx(0.01)  # Fixup scalars at lr / 10
    assert len(groups["scalars"]["params"]) == 5 * 3 + 2
    losses = []
    for _ in range(12):
        loss = model(pixel_values=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2.302585, abs=1e-5)  # zero logits at init
    # Fixup starts slowly (the zero classifier passes no gradient to the trunk on the first update), but
    # every later loss must be below the first and the last clearly lower.
    assert all(loss < losses[0] for loss in losses[1:]), losses
    assert losses[-1] < losses[0] - 0.05, losses


def test_shipped_configs_load_and_the_batchnorm_twin_differs_only_in_normalization_and_init():
    fixup = load_config(ImageTrainConfig, CPU_CONFIG)
    bn = load_config(ImageTrainConfig, REPO / "configs" / "cifar10_resnet20_cpu_batchnorm.yaml")
    big = load_config(ImageTrainConfig, REPO / "configs" / "cifar10_resnet110.yaml")
    assert (fixup.depth, fixup.normalization, fixup.init) == (20, "none", "fixup")
    assert (bn.normalization, bn.init) == ("batchnorm", "kaiming")
    a, b = (
        yaml.safe_load(CPU_CONFIG.read_text()),
        yaml.safe_load((REPO / "configs" / "cifar10_resnet20_cpu_batchnorm.yaml").read_text()),
    )
    assert {k for k in a if a[k] != b[k]} == {"normalization", "init", "output_dir"}
    assert (big.depth, big.epochs, big.batch_size, big.milestones) == (110, 200, 128, [100, 150])
    assert big.optim.name == "sgd" and big.optim.lr == 0.1 and big.optim.scalar_lr_multiplier == 0.1
    # The authors' ResNet-110 run: mixup with their script's weight decay (5e-4 goes with mixup off).
    assert (big.mixup_alpha, big.optim.weight_decay) == (1.0, 1e-4)


def test_unknown_or_invalid_config_keys_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("depth: 20\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(ImageTrainConfig, path)
    with pytest.raises(ConfigError, match="normalization"):
        load_config(ImageTrainConfig, None, {"normalization": "groupnorm"})
    with pytest.raises(ValueError, match="6n\\+2"):
        load_config(ImageTrainConfig, None, {"depth": "21"})
    for key, value, message in [
        ("train_samples", "-5", "train_samples must be >= 1"),
        ("gamma", "-1", "gamma must be > 0"),
        ("milestones", "[-2]", "milestones must be epochs >= 0"),
        ("crop_padding", "-3", "crop_padding must be >= 0"),
        ("image_size", "0", "image_size must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(ImageTrainConfig, None, {key: value})


def _epoch_records(path: Path) -> list[dict]:
    drop = {"img_per_s", "train_seconds", "time_breakdown"}
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


@pytest.mark.slow
def test_train_image_script_end_to_end_with_exact_resume(cifar10, tmp_path):
    common = [
        "--config", str(CPU_CONFIG),
        "--train_data", str(cifar10),
        "--depth", "8", "--width_multiplier", "0.25",
        "--train_samples", "256", "--test_samples", "200", "--batch_size", "64",
        "--epochs", "2", "--schedule", "step", "--milestones", "1", "--mixup_alpha", "0.7",
        "--progress_bar", "false", "--num_threads", "1",
    ]  # fmt: skip
    accelerate = shutil.which("accelerate")
    launcher = (
        [accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no"]
        if accelerate
        else [sys.executable]
    )  # fmt: skip
    full = tmp_path / "full"
    result = train_image([*common, "--output_dir", str(full)], launcher)
    assert result.returncode == 0, result.stderr[-4000:]

    paused = tmp_path / "paused"
    result = train_image([*common, "--output_dir", str(paused), "--stop_after_steps", "5"], [sys.executable])
    assert result.returncode == 0, result.stderr[-4000:]
    assert (paused / "checkpoints" / "checkpoint-5" / "trainer_state.json").is_file()
    assert not (paused / "final").exists()
    # Rerun without --resume: refused, nothing touched (a fresh run there would mix with the old one's files)
    metrics_before = (paused / "metrics.jsonl").read_bytes()
    checkpoints_before = sorted(p.name for p in (paused / "checkpoints").iterdir())
    result = train_image([*common, "--output_dir", str(paused)], [sys.executable])
    assert result.returncode == 2 and "already has checkpoints; resume with --resume" in result.stderr
    assert (paused / "metrics.jsonl").read_bytes() == metrics_before
    assert sorted(p.name for p in (paused / "checkpoints").iterdir()) == checkpoints_before
    # A resume may not change what the checkpoint's optimizer state would silently override
    result = train_image(
        [*common, "--output_dir", str(paused), "--resume", "--optim.lr", "0.05"], [sys.executable]
    )
    assert result.returncode == 2 and "optim.lr" in result.stderr and "cannot resume" in result.stderr
    result = train_image([*common, "--output_dir", str(paused), "--resume"], [sys.executable])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout + result.stderr

    # The resumed run is the uninterrupted run: same weights bit for bit, same metrics.
    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(paused / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    records = _epoch_records(full / "metrics.jsonl")
    assert records == _epoch_records(paused / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["epoch", "epoch", "final"]
    # the lr each epoch trained at: the step schedule divides it by 10 from epoch 2 (milestone 1)
    assert [r["lr"] for r in records[:2]] == pytest.approx([0.1, 0.01]) and records[-1]["step"] == 8
    assert 0.0 <= records[-1]["test_top1"] <= 1.0

    # The exported checkpoint is a standard HF image classifier.
    from transformers import pipeline

    final = full / "final"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in final.iterdir()
    }
    # ... with its model code, for trust_remote_code=True where this package is absent (tests/test_hub_export.py)
    assert json.loads((final / "config.json").read_text())["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_fixup_resnet.FixupResNetForImageClassification"
    )
    assert (final / "modeling_fixup_resnet.py").is_file()
    predictions = pipeline("image-classification", model=str(final))(
        load_images(str(cifar10), "test").subset(1).tensors()[0][0].permute(1, 2, 0).numpy()
    )
    assert predictions[0]["label"] in V.CIFAR10_CLASSES


@pytest.mark.slow
def test_two_processes_train_like_one_and_stop_together_on_the_time_budget(cifar10, tmp_path):
    """Global batch split over 2 gloo processes (crops, flips and mixup too) = one process with the whole
    batch; a time budget stops both ranks at the same update, one where they agree (a multiple of
    log_interval)."""
    common = [
        "--config", str(CPU_CONFIG), "--train_data", str(cifar10),
        "--depth", "8", "--width_multiplier", "0.25", "--train_samples", "256", "--test_samples", "64",
        "--batch_size", "64", "--epochs", "2", "--progress_bar", "false", "--num_threads", "1",
        "--cpu", "true", "--max_minutes", "null", "--log_interval", "3", "--mixup_alpha", "0.7",
    ]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    script = str(REPO / "scripts" / "train_image.py")
    two = tmp_path / "two"
    returncode, stderr = run_process_group(
        [*launch, *two_cpu_processes(), script, *common, "--output_dir", str(two)], 300
    )
    assert returncode == 0, stderr[-3000:]
    one = tmp_path / "one"
    result = train_image([*common, "--output_dir", str(one)], [sys.executable])
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(str(one / "final" / "model.safetensors"))
    b = load_file(str(two / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)

    # Paused mid-epoch and resumed on 2 processes: the epoch's loss counts both ranks' share before the
    # pause (only the main process writes the checkpoint's state).
    paused = tmp_path / "paused"
    for extra in (["--stop_after_steps", "3"], ["--resume", "auto"]):
        returncode, stderr = run_process_group(
            [*launch, *two_cpu_processes(), script, *common, *extra, "--output_dir", str(paused)], 300
        )
        assert returncode == 0, stderr[-3000:]

    def epoch_losses(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train_loss"] for r in records if r["kind"] == "epoch"]

    assert epoch_losses(paused) == epoch_losses(two)

    budget = tmp_path / "budget"
    overrides = ["--epochs", "50", "--max_minutes", "0.01", "--output_dir", str(budget)]
    returncode, stderr = run_process_group([*launch, *two_cpu_processes(), script, *common, *overrides], 300)
    assert returncode == 0, stderr[-3000:]
    final = [json.loads(line) for line in (budget / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["stopped_early"] == "max_minutes" and final["step"] % 3 == 0, final


def test_a_rerun_of_a_spent_time_budget_trains_no_extra_update(cifar10, tmp_path):
    run = tmp_path / "budget"
    argv = [
        "--config", str(CPU_CONFIG), "--train_data", str(cifar10),
        "--depth", "8", "--width_multiplier", "0.25", "--train_samples", "256", "--test_samples", "64",
        "--batch_size", "64", "--epochs", "50", "--progress_bar", "false", "--num_threads", "1",
        "--max_minutes", "0.01", "--output_dir", str(run),
    ]  # fmt: skip
    assert train_image(argv, [sys.executable]).returncode == 0
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    files = ["metrics.jsonl", "config.yaml", "final/model.safetensors", "final/export_info.json"]
    before = {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files}
    # The finished run, rerun with --resume and a changed evaluation setting: nothing to do, nothing written,
    # and the change is reported as not applied (--resume itself is not a setting of the run).
    result = train_image([*argv, "--resume", "auto", "--eval_batch_size", "32"], [sys.executable])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "is already complete" in out and "nothing to do" in out, out[-2000:]
    assert "not applied" in out and "eval_batch_size" in out and "resume None" not in out, out[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == steps
    assert {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files} == before


def test_evaluation_leaves_the_model_in_the_mode_it_came_in():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from fixup_transformer.training.image import evaluate_accuracy

    model = V.FixupResNetForImageClassification(
        V.FixupResNetConfig.cifar(8, normalization="batchnorm", init="kaiming")
    )
    images, labels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    cfg = SimpleNamespace(eval_batch_size=2, channels_last=False)
    mean, std = [0.5] * 3, [0.25] * 3
    for training in (True, False):
        model.train(training)
        accuracy = evaluate_accuracy(model, images, labels, Accelerator(cpu=True), mean, std, cfg)
        assert 0.0 <= accuracy["test_top1"] <= accuracy["test_top5"] <= 1.0  # CIFAR-10: both reported
        assert model.training is training and all(m.training is training for m in model.modules())


@pytest.mark.parametrize("classes", [7, 5])
def test_top5_counts_a_label_among_the_five_highest_scores_and_only_beyond_five_classes(classes):
    from types import SimpleNamespace

    from accelerate import Accelerator

    from fixup_transformer.training.image import accuracy_of_batches

    class FixedScores(torch.nn.Module):  # the image whose pixel value is i gets the scores of row i
        def __init__(self, scores):
            super().__init__()
            self.scores, self.config = scores, SimpleNamespace(num_labels=scores.size(1))

        def forward(self, pixel_values):
            return SimpleNamespace(logits=self.scores[pixel_values.long().flatten()])

    scores = torch.arange(classes, dtype=torch.float).flip(0).repeat(4, 1)  # class 0 first, then 1, 2, ...
    labels = torch.tensor([0, 4, 5, 1])[: 4 if classes > 5 else 2] % classes
    images = torch.arange(len(labels)).float()
    batches = [(images[:1], labels[:1]), (images[1:], labels[1:])]
    accuracy = accuracy_of_batches(FixedScores(scores), batches, Accelerator(cpu=True), channels_last=False)
    if classes > 5:  # ranks 1, 5, 6, 2: top-1 one of four, top-5 three of four
        assert accuracy == {"test_top1": 0.25, "test_top5": 0.75}
    else:  # top-5 of five classes would always be 1: not reported
        assert accuracy == {"test_top1": 0.5}
