"""The stability promise at the standard width: Fixup without warmup trains wherever its LN twins do.

A fast slice of ``benchmarks/stability.py`` (d_model 512, 8 heads, FFN 2048, 12+12 layers, a fixed
16 x 16 copy-task batch, 30 plain Adam steps at lr 1e-3 without warmup, fp32 and fp16 autocast with a
GradScaler). It checks the default, ``fixup_zero="multiplier"``: the paper's placement of the zero
(``fixup_zero="last_layer"``, which needs warmup) spiked to 3e5 and NaN in this cell while both LayerNorm
twins stayed finite. T-Fixup is checked with the optimizer its reference code runs, RAdam (with Adam it
spikes on its first updates at this width). Toy widths do not reproduce these failures (docs/depth.md has
the grid).
"""

from __future__ import annotations

import pytest
import torch

from fixup_transformer.hardware import cpu_has_native_fp16
from fixup_transformer.stability import Cell, copy_task_batches, is_stable, run_cell

VOCAB, LAYERS, LR, STEPS = 8000, 12, 1e-3, 30


@pytest.fixture(scope="module")
def batches():
    return copy_task_batches(VOCAB, batch_size=16, length=16, count=1)


def describe(result: dict) -> str:
    losses = " ".join(f"{loss:.3g}" for loss in result["losses"])
    return f"{result['variant']} ({result['optimizer']}) {result['precision']}: skipped {result['skipped_steps']}; losses {losses}"


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fixup_without_warmup_is_stable_where_the_layernorm_twins_are(batches, precision, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: this cell runs on CPU above (fp32; fp16 where the CPU has it)")
    if device == "cpu" and precision == "fp16" and not cpu_has_native_fp16():
        pytest.skip(
            "this CPU has no native fp16 arithmetic (no avx512_fp16 / amx_fp16 flag): fp16 matmuls are emulated, "
            "~70x slower than fp32, so a d 512 fp16 cell would take hours; run benchmarks/stability.py "
            "--precisions fp16 on a GPU or an fp16-capable CPU"
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    try:
        cells = {
            "post_ln": Cell("post_ln", LAYERS, LR, 0, precision),
            "pre_ln": Cell("pre_ln", LAYERS, LR, 0, precision),
            "fixup": Cell("fixup", LAYERS, LR, 0, precision),
            # T-Fixup with its reference code's optimizer (with plain Adam it spikes on its first updates)
            "t_fixup": Cell("t_fixup", LAYERS, LR, 0, precision, optimizer="radam"),
        }
        results = {name: run_cell(cell, batches, STEPS, VOCAB, device=device) for name, cell in cells.items()}
    finally:
        torch.set_num_threads(previous)
    fixup = results["fixup"]
    report = "\n".join(describe(r) for r in results.values())
    # The twins stay finite in this cell (measured); if one stopped doing so, the comparison would be void.
    assert not results["post_ln"]["diverged"] and not results["pre_ln"]["diverged"], report
    assert is_stable(fixup), report
    assert fixup["first_loss"] == pytest.approx(8.987, abs=0.01), report  # rule 1: ln V at init
    assert is_stable(results["t_fixup"]), report
