"""Fixup ResNets: the init rule number by number, depth behaviour at init, configs and input errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fixup_transformer.vision as V
from fixup_transformer.fixup import ScalarBias, ScalarScale, he_normal_std, scalar_parameter_names
from fixup_transformer.vision.modeling_fixup_resnet import (
    FixupBasicBlock,
    FixupBottleneck,
    SubsamplePadShortcut,
)

# Tiny per-layer nets: one thread (see the fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _he_std(conv: nn.Conv2d) -> float:
    w = conv.weight
    return he_normal_std(w.shape[0] * w.shape[2] * w.shape[3])


def _pooled_normalized_std(convs: list[nn.Conv2d]) -> tuple[float, int]:
    """Std of all weights, each divided by its conv's He std: 1 for He init, the gain if scaled."""
    values = torch.cat([(c.weight.detach() / _he_std(c)).flatten() for c in convs])
    return values.std().item(), values.numel()


def _assert_std(measured: float, expected: float, n: int) -> None:
    # Sampling error of a std estimate is ~ expected / sqrt(2n); allow 6 of those.
    assert abs(measured - expected) < 6 * expected / math.sqrt(2 * n), (measured, expected, n)


def test_basic_block_init_follows_the_rule():
    torch.manual_seed(0)
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(110))
    blocks = [m for m in model.modules() if isinstance(m, FixupBasicBlock)]
    assert len(blocks) == 54 == model.config.num_blocks
    std, n = _pooled_normalized_std([b.conv1 for b in blocks])
    _assert_std(std, 54**-0.5, n)
    for b in blocks:
        assert torch.count_nonzero(b.conv2.weight) == 0
    stem_std, n = _pooled_normalized_std([model.resnet.stem.conv])
    _assert_std(stem_std, 1.0, n)  # outside the branches: plain He
    assert torch.count_nonzero(model.classifier.fc.weight) == 0
    assert torch.count_nonzero(model.classifier.fc.bias) == 0
    # Rule 3: 4 scalar biases + 1 multiplier per block, one bias after the stem and one before the classifier.
    scalars = [m for m in model.modules() if isinstance(m, (ScalarBias, ScalarScale))]
    assert len(scalars) == 5 * 54 + 2
    assert len(scalar_parameter_names(model)) == len(scalars)
    for m in scalars:
        expected = 1.0 if isinstance(m, ScalarScale) else 0.0
        assert all(p.numel() == 1 and p.item() == expected for p in m.parameters())


def test_bottleneck_init_follows_the_rule():
    torch.manual_seed(0)
    config = V.FixupResNetConfig.imagenet(50, width_multiplier=0.25, num_labels=5)
    model = V.FixupResNetForImageClassification(config)
    blocks = [m for m in model.modules() if isinstance(m, FixupBottleneck)]
    assert len(blocks) == 16 == config.num_blocks
    std, n = _pooled_normalized_std([c for b in blocks for c in (b.conv1, b.conv2)])
    _assert_std(std, 16**-0.25, n)  # L^(-1/(2m-2)) with m = 3
    assert all(torch.count_nonzero(b.conv3.weight) == 0 for b in blocks)
    projections = [b.shortcut[0] for b in blocks if b.shortcut is not None]
    assert len(projections) == 4  # first block of every stage
    std, n = _pooled_normalized_std(projections)
    _assert_std(std, 1.0, n)  # the 1x1 downsample conv is not in a branch: plain He
    assert torch.count_nonzero(model.classifier.fc.weight) == 0


def test_no_normalization_modules_by_default_and_batchnorm_baseline_has_them():
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    fixup = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(20))
    assert not any(isinstance(m, norm_types) for m in fixup.modules())
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in fixup.modules())
    bn = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(20, normalization="batchnorm"))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 19
    assert scalar_parameter_names(bn) == []
    # With BatchNorm, "fixup" init zeroes the branch-final BN weight instead of the conv.
    finals = [b.norm2 for b in bn.modules() if isinstance(b, FixupBasicBlock)]
    assert all(torch.count_nonzero(n.weight) == 0 for n in finals)
    kaiming = V.FixupResNetForImageClassification(
        V.FixupResNetConfig.cifar(20, normalization="batchnorm", init="kaiming")
    )
    assert all(m.weight.eq(1).all() for m in kaiming.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.count_nonzero(kaiming.classifier.fc.weight) > 0


def test_logits_are_zero_at_init():
    model = V.fixup_resnet32_cifar(width_multiplier=0.5)
    out = model(torch.randn(3, 3, 32, 32), labels=torch.tensor([0, 1, 2]))
    assert torch.equal(out.logits, torch.zeros(3, 10))
    assert out.loss.item() == pytest.approx(math.log(10), abs=1e-6)


def _feature_rms(depth: int, init: str) -> float:
    torch.manual_seed(0)
    config = V.FixupResNetConfig.cifar(depth, width_multiplier=0.25, init=init)
    model = V.FixupResNetModel(config).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 32, 32)).pooler_output
    return features.pow(2).mean().sqrt().item()


def test_output_scale_at_init_is_bounded_in_depth_for_fixup_but_not_for_kaiming():
    fixup = [_feature_rms(d, "fixup") for d in (20, 110, 1202)]
    kaiming = [_feature_rms(d, "kaiming") for d in (20, 110, 1202)]
    assert all(math.isfinite(v) and v > 0 for v in fixup)
    assert max(fixup) / min(fixup) < 2.0, fixup
    # Without normalization, He init roughly doubles the variance per block: 10^k growth, then overflow.
    assert kaiming[1] > 100 * kaiming[0], kaiming
    assert not math.isfinite(kaiming[2]) or kaiming[2] > 1e6 * kaiming[0], kaiming


def test_ten_thousand_layer_net_builds_and_runs_on_cpu():
    config = V.FixupResNetConfig.cifar(6 * 1667 + 2, width_multiplier=0.125)  # 10,004 layers
    model = V.FixupResNetForImageClassification(config)
    assert config.num_blocks == 5001
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 16))
    assert torch.equal(out.logits, torch.zeros(1, 10))
    hidden = model.resnet(torch.randn(1, 3, 16, 16)).last_hidden_state
    assert torch.isfinite(hidden).all()


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).view(2, 4, 4, 4)
    y = SubsamplePadShortcut(8, 2)(x)
    assert y.shape == (2, 8, 2, 2)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 4:]) == 0
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(20))
    shortcuts = [m for m in model.modules() if isinstance(m, SubsamplePadShortcut)]
    assert len(shortcuts) == 2  # entering stages 2 and 3; parameter-free
    assert sum(p.numel() for m in shortcuts for p in m.parameters()) == 0


@pytest.mark.parametrize(
    ("depth", "hidden", "blocks"),
    [(18, (64, 128, 256, 512), 8), (34, (64, 128, 256, 512), 16), (101, (256, 512, 1024, 2048), 33)],
)
def test_imagenet_table(depth, hidden, blocks):
    config = V.FixupResNetConfig.imagenet(depth)
    assert config.hidden_sizes == hidden and config.num_blocks == blocks
    assert config.num_labels == 1000 and config.image_size == 224


def test_imagenet_model_output_shapes():
    model = V.FixupResNetModel(V.FixupResNetConfig.imagenet(18, width_multiplier=0.125))
    out = model(torch.randn(1, 3, 64, 64), output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 64, 2, 2)
    assert out.pooler_output.shape == (1, 64)
    assert [h.shape[1] for h in out.hidden_states] == [8, 8, 16, 32, 64]


def test_presets_and_factories():
    config = V.FixupResNetConfig.cifar(depth=56)
    assert config.id2label[0] == "airplane" and config.label2id["truck"] == 9
    assert config.depths == (9, 9, 9) and config.model_type == "fixup_resnet"
    assert V.FixupResNetConfig.cifar(20, width_multiplier=2).hidden_sizes == (32, 64, 128)
    assert V.FixupResNetConfig.cifar(20, num_labels=100).num_labels == 100
    model = V.fixup_resnet20_cifar(normalization="batchnorm", init="kaiming")
    assert model.config.depth == 20 and model.config.normalization == "batchnorm"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 21}, "6n+2"),
        ({"depth": 2}, "6n+2"),
        ({"family": "imagenet", "depth": 20}, "18, 34, 50, 101, 152"),
        ({"normalization": "layernorm"}, "normalization must be one of ['none', 'batchnorm']"),
        ({"init": "xavier"}, "init must be one of ['fixup', 'kaiming']"),
        ({"family": "mnist"}, "family must be one of"),
        ({"width_multiplier": 0.0}, "width_multiplier"),
    ],
)
def test_invalid_config_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        V.FixupResNetConfig(**kwargs)


def test_config_field_types_are_checked_and_named():
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="field 'depth'"):
        V.FixupResNetConfig(depth="20")


def test_bad_inputs_raise_clear_errors():
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 32, 32, 3))  # channels-last
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"torch.float64 but the model's weights are torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))  # e.g. from a numpy array
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts float32 inputs itself, not float64
        assert model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 10)
        with pytest.raises(TypeError, match="torch.float64"):
            model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]"):
        model(x, labels=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]"):
        model(x, labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="batch size"):
        model(x, labels=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="soft labels"):
        model(x, labels=torch.rand(2, 5))


def test_label_range_is_checked_on_the_device_off_cpu():
    # On a GPU, reading the labels' min/max back would stall every training step. Meta tensors cannot be
    # read at all, so a host read here raises: the check must stay on the device.
    from fixup_transformer.vision.modeling_fixup_resnet import classification_loss

    logits = torch.empty(4, 10, device="meta")
    loss = classification_loss(logits, torch.empty(4, dtype=torch.long, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()


def test_soft_labels_give_the_mixup_loss():
    torch.manual_seed(0)
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8))
    with torch.no_grad():
        model.classifier.fc.weight.normal_()
    x = torch.randn(2, 3, 32, 32)
    a, b = torch.tensor([1, 4]), torch.tensor([7, 0])
    soft = 0.3 * nn.functional.one_hot(a, 10).float() + 0.7 * nn.functional.one_hot(b, 10).float()
    mixed = model(x, labels=soft).loss
    expected = 0.3 * model(x, labels=a).loss + 0.7 * model(x, labels=b).loss
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_problem_type_picks_transformers_loss(num_labels):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    targets = {
        "regression": torch.randn(4, num_labels).squeeze(-1) if num_labels == 1 else torch.randn(4, 3),
        "multi_label_classification": torch.randint(0, 2, (4, num_labels)).float(),
    }
    for problem_type, labels in targets.items():
        config = V.FixupResNetConfig.cifar(8, num_labels=num_labels, problem_type=problem_type)
        model = V.FixupResNetForImageClassification(config)
        with torch.no_grad():
            model.classifier.fc.weight.normal_()
        output = model(x, labels=labels)
        logits = output.logits.squeeze(-1) if problem_type == "regression" else output.logits
        expected = (
            nn.functional.mse_loss(logits, labels)
            if problem_type == "regression"
            else nn.functional.binary_cross_entropy_with_logits(logits, labels)
        )
        assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5), problem_type


def test_gradient_checkpointing_is_refused_for_batchnorm_and_exact_for_fixup():
    # A recomputed forward would update BatchNorm's running statistics a second time per step.
    batchnorm = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8, normalization="batchnorm"))
    for enable in (batchnorm.activation_checkpointing_enable, batchnorm.gradient_checkpointing_enable):
        with pytest.raises(ValueError, match="BatchNorm running statistics twice"):
            enable()
    torch.manual_seed(0)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8)).train()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # transformers' current API: no deprecation warning
                model.activation_checkpointing_enable()
        model(x, labels=labels).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_from_pretrained_keeps_loaded_weights(tmp_path):
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8, width_multiplier=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # zero-init layers and scalars now differ from their init
    model.save_pretrained(tmp_path)
    loaded = V.FixupResNetForImageClassification.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_batchnorm_baseline_trains_a_step_and_keeps_running_stats(tmp_path):
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8, normalization="batchnorm"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    opt.step()
    bn = model.resnet.stem.norm
    assert bn.num_batches_tracked.item() == 1 and not torch.equal(
        bn.running_mean, torch.zeros_like(bn.running_mean)
    )
    model.save_pretrained(tmp_path)
    loaded = V.FixupResNetForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(loaded.resnet.stem.norm.running_mean, bn.running_mean)


def test_one_label_without_problem_type_is_a_regression_as_in_transformers():
    torch.manual_seed(0)
    model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(8, num_labels=1))
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([0.3, -1.2])
    output = model(x, labels=targets)
    torch.testing.assert_close(output.loss, F.mse_loss(output.logits.squeeze(-1), targets))


def test_imagenet_family_defaults_to_its_image_size():
    from fixup_transformer.vision import FixupResNetConfig

    assert FixupResNetConfig(family="imagenet", depth=50).image_size == 224
    assert FixupResNetConfig().image_size == 32
    assert FixupResNetConfig(family="imagenet", depth=50, image_size=160).image_size == 160


def test_trainer_updates_are_the_same_with_gradient_accumulation(tmp_path):
    """One Trainer update over 8 images, in one batch of 8 or in 2 accumulated batches of 4: the same
    update. The loss is a batch mean without num_items_in_batch, so the Trainer must divide by its
    accumulation steps (it skips that for models that accept loss kwargs: the update was 2x too big)."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    data = [{"pixel_values": images[i], "labels": labels[i]} for i in range(8)]

    def first_update(batch_size: int, accumulation: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = V.FixupResNetForImageClassification(V.FixupResNetConfig.cifar(depth=8, width_multiplier=0.25))
        before = model.classifier.fc.weight.detach().clone()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"run{accumulation}"), per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.1, optim="sgd",
            lr_scheduler_type="constant", weight_decay=0.0, report_to=[], save_strategy="no",
            logging_strategy="no", use_cpu=True, seed=0, data_seed=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=data)
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(data)
        trainer.train()
        return model.classifier.fc.weight.detach() - before

    torch.testing.assert_close(first_update(4, 2), first_update(8, 1), rtol=1e-4, atol=1e-6)
