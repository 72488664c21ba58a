"""The training step's hot path: no host reads, and a non-finite step skipped on the device.

A host read of a device tensor (``item``/``int``/``bool``/``float``/``tolist``) makes the CPU wait for
the GPU; counting them on CPU pins the property down without a GPU. The loop reads the accumulated step
sums once per log interval (``StepAccumulator.read``), which is the one read allowed.
"""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from transformer_helpers import EOS, PAD, poison_training_loss, random_batch, tiny_config

from fixup_transformer.text import FixupTransformerForConditionalGeneration
from fixup_transformer.training import mt_step
from fixup_transformer.training.mt_config import MTConfig
from fixup_transformer.training.optim import OptimConfig, build_optimizer
from fixup_transformer.training.step_guard import StepAccumulator, uses_device_skip

HOST_READS = ("item", "__int__", "__bool__", "__float__", "tolist")


@pytest.fixture
def fresh_accelerator_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _setup(seed: int = 0, optimizer_name: str = "adamw"):
    torch.manual_seed(seed)
    model = FixupTransformerForConditionalGeneration(tiny_config())
    optimizer = build_optimizer(model, OptimConfig(name=optimizer_name, lr=1e-3))
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, accelerator


def _batch(seed: int) -> dict[str, torch.Tensor]:
    source, labels = random_batch(4, 7, seed=seed), random_batch(4, 6, seed=seed + 100)
    labels[0, -2:] = -100  # padded target positions
    return {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": labels}


def _count_host_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    for method in HOST_READS:
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counting)
    return reads


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_training_steps_read_nothing_back_to_the_host(monkeypatch):
    model, optimizer, accelerator = _setup()
    assert uses_device_skip(optimizer)
    cfg = MTConfig()
    steps = StepAccumulator(accelerator.device)
    model.train()
    reads = _count_host_reads(monkeypatch)
    for update in (1, 2, 3):
        micro = [_batch(2 * update), _batch(2 * update + 1)]  # update_freq 2
        outcome = mt_step.train_step(model, optimizer, accelerator, micro, cfg, (PAD, EOS), steps.halted)
        steps.add(outcome.sums, outcome.grad_norm, outcome.not_finite, update)
    monkeypatch.undo()
    assert reads == []
    window = steps.read()
    assert window.first_bad is None
    assert window.tokens == window.total_tokens == 3 * 2 * (4 * 6 - 2)
    assert window.loss > 0 and window.grad_norm > 0


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("optimizer_name", ["adamw", "radam"])  # fused: decided on the device; RAdam: not
def test_a_non_finite_step_and_every_later_one_change_nothing(monkeypatch, optimizer_name):
    model, optimizer, accelerator = _setup(optimizer_name=optimizer_name)
    assert uses_device_skip(optimizer) == (optimizer_name == "adamw")
    cfg = MTConfig()
    steps = StepAccumulator(accelerator.device)
    model.train()

    def step(update: int):
        outcome = mt_step.train_step(
            model, optimizer, accelerator, [_batch(update)], cfg, (PAD, EOS), steps.halted
        )
        steps.add(outcome.sums, outcome.grad_norm, outcome.not_finite, update)

    step(1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in optimizer.optimizer.state.values()]
    poison_training_loss(monkeypatch, lambda loss, n: loss + (loss * 0).sqrt())  # finite value, NaN gradient
    step(2)
    monkeypatch.undo()
    step(3)  # finite again, but the run is halted: it must not apply either
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for before, state in zip(moments, optimizer.optimizer.state.values(), strict=True):
        assert torch.equal(before, state["exp_avg"]) and float(state["step"]) == 1.0
    window = steps.read()
    update, loss, grad_norm = window.first_bad
    assert update == 2 and math.isfinite(loss) and math.isnan(grad_norm)
    assert window.tokens == 4 * 6 - 2  # only update 1 counted


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from fixup_transformer import hardware

    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
    for flags, expected in [
        ({"avx2", "avx512_bf16"}, "no"),
        ({"avx512_bf16", "amx_bf16", "amx_tile"}, "bf16"),
    ]:
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert hardware.resolve_mixed_precision("auto") == expected
    assert hardware.resolve_mixed_precision("fp16") == "fp16"  # an explicit choice is kept
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    # torch counts emulated bf16 as supported unless asked not to (a V100 or T4 then reports True)
    monkeypatch.setattr(
        hardware.torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert hardware.resolve_mixed_precision("auto") == "no"  # e.g. a V100: fp32, never fp16 unasked
    assert hardware.resolve_mixed_precision("auto", cpu=True) == "bf16"  # train.cpu: the CPU decides


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_an_fp16_overflow_is_reported_as_skipped_with_the_fused_optimizer():
    """fp16 (GradScaler) with the fused AdamW that build_optimizer makes: an overflowing step changes no
    weight and is reported as skipped (Accelerate's own flag misses it: GradScaler always calls a fused
    optimizer's step); a finite one is applied and not reported."""
    torch.manual_seed(0)
    model = FixupTransformerForConditionalGeneration(tiny_config())
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3))
    assert optimizer.defaults.get("fused")
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # fp32 gradients x 2^127: inf
    model, optimizer = accelerator.prepare(model, optimizer)
    cfg, halted = MTConfig(), torch.zeros((), dtype=torch.bool)
    before = [p.detach().clone() for p in model.parameters()]
    outcome = mt_step.train_step(model, optimizer, accelerator, [_batch(1)], cfg, (PAD, EOS), halted)
    assert outcome.skipped and not accelerator.optimizer_step_was_skipped
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    accelerator.scaler.update(1.0)  # a scale that cannot overflow
    outcome = mt_step.train_step(model, optimizer, accelerator, [_batch(2)], cfg, (PAD, EOS), halted)
    assert not outcome.skipped
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_cudnn_attention_is_turned_off_only_where_cuda_is(monkeypatch):
    """Variable-shape translation work: cuDNN's attention builds a graph per new shape (bf16 training 6x
    slower on an H200), so training and evaluation turn it off on CUDA and leave other machines alone."""
    from fixup_transformer import hardware

    was_on = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)
        assert not hardware.skip_per_shape_attention_builds()
        assert torch.backends.cuda.cudnn_sdp_enabled()
        monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
        assert hardware.skip_per_shape_attention_builds()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert not hardware.skip_per_shape_attention_builds()  # already off: nothing to report
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was_on)


def test_wall_clock_sections_are_exclusive_and_carry_over(monkeypatch):
    from fixup_transformer.training import wallclock

    now = iter([0.0, 1.0, 3.0, 10.0, 10.0, 12.0])  # validation 0-10 with an export 1-3; steps 10-12
    monkeypatch.setattr(wallclock.time, "monotonic", lambda: next(now))
    saved = {"steps": 5.0}  # from the training state of a resumed run
    clock = wallclock.WallClock(saved)
    with clock.section("validation"):
        with clock.section("exports"):
            pass
    with clock.section("steps"):
        pass
    assert saved == {"steps": 7.0, "validation": 8.0, "exports": 2.0}
    assert clock.summary(20.0).startswith("validation 8s (40%), steps 7s (35%), other 3s (15%)")


def _batch_of_length(seed: int, length: int) -> dict[str, torch.Tensor]:
    source, labels = random_batch(4, length, seed=seed), random_batch(4, length - 1, seed=seed + 100)
    mask = torch.ones_like(source)
    source[0, -2:], mask[0, -2:], labels[0, -2:] = PAD, 0, -100  # a shorter sentence in the batch
    return {"input_ids": source, "attention_mask": mask, "labels": labels}


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_compiled_training_steps_match_eager_ones_over_changing_lengths():
    """train.compile: the compiled forward+loss gives the eager updates (dropout 0), with no recompile
    per batch shape (dynamic shapes): the lengths after the second one add no graph. The loss is in the
    graph (from the logits, which inductor fuses), not a graph break into the eager chunked loss: on an
    H200 the break cost 1/3 of a compiled step's speed."""
    cfg = MTConfig()
    runs, graphs = {}, []
    for name, forward_loss in (("eager", None), ("compiled", mt_step.compiled_forward_loss())):
        torch._dynamo.utils.counters.clear()
        model, optimizer, accelerator = _setup()
        model.train()
        steps, sums = StepAccumulator(accelerator.device), []
        for update, length in enumerate((7, 9, 12, 8), start=1):
            batch = [_batch_of_length(update, length)]
            outcome = mt_step.train_step(
                model, optimizer, accelerator, batch, cfg, (PAD, EOS), steps.halted, forward_loss
            )
            sums.append(outcome.sums.clone())
            if name == "compiled" and update in (2, 4):
                graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        runs[name] = (torch.stack(sums), model.state_dict())
    torch.testing.assert_close(runs["compiled"][0], runs["eager"][0], rtol=1e-5, atol=1e-5)
    for key, value in runs["eager"][1].items():
        torch.testing.assert_close(runs["compiled"][1][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert graphs[1] == graphs[0]  # lengths 12 and 8 reuse the graphs of 7 and 9
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


def test_running_sums_are_float64_except_where_the_device_has_none():
    from fixup_transformer.hardware import sum_dtype
    from fixup_transformer.training.step_guard import StepAccumulator

    assert sum_dtype("cpu") == sum_dtype(torch.device("cuda")) == torch.float64
    assert sum_dtype("mps") == torch.float32  # Apple's MPS has no float64: a float64 sum would fail at once
    # The loop's accumulators follow it (meta stands in for an accelerator here; it has float64).
    accumulator = StepAccumulator(torch.device("meta"))
    assert {accumulator.window.dtype, accumulator.grad_norms.dtype, accumulator.first_bad.dtype} == {
        torch.float64
    }
